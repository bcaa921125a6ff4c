"""net_virtio_user: a port that plays VM1 (vhost-user front-end + virtio-net driver).

Devargs (as DPDK's virtio-user, plus the emulated IOMMU): ``path=`` (the
back-end's socket), ``server=0|1`` (1: we listen, the back-end connects),
``queues=``, ``queue_size=``, ``mrg_rxbuf=0|1`` (ask for mergeable rx
buffers), ``packed_vq=0|1`` (packed virtqueues, ``vq_packed.py``; the
back-end must offer VIRTIO_F_RING_PACKED), ``iommu=off|static|buffers|demand|transient``, ``rx_grant=wo|rw``
(the permission rx buffers are granted with), ``mem=`` (guest RAM layout,
see ``layout.py``).

IOMMU modes (VIRTIO_F_IOMMU_PLATFORM; IOVA = GPA):
- ``static``: all RAM granted read-write at connect;
- ``buffers``: only the rings and the packet buffers, each with its
  direction's permission (tx buffers RO, rx buffers WO);
- ``demand``: the rings at connect; every buffer page (4 KiB) only when the
  back-end asks for it (MISS), as QEMU answers for a guest behind a strict
  vIOMMU that mapped the buffer; grants stay until the connection ends;
- ``transient``: the rings; each buffer is granted just before the device
  sees it and revoked (INVALIDATE, acked) once the device returned it.
Buffers are granted with their direction's permission: tx RO, rx
``rx_grant`` (WO by default, as Linux maps DMA_FROM_DEVICE; RW as some
IOMMUs round it up).
MISSes are answered with the grant that covers the address if the mode
allows it, else refused (counted).

A control thread connects (or accepts), negotiates like QEMU, then serves
the back-end's requests and the transient grants; it reconnects after a
disconnect.  The kernels (``vq.py``) never wait for it except, in transient
mode, for the grant of the buffers they post.
"""
from __future__ import annotations

import logging
import mmap
import os
import selectors
import threading
import time
from typing import Callable

import numpy as np

from ..atomics_py import store_flag
from ..ethdev import (
    DevargQueuePairs, LinkStatus, PortDriver, PortError, int_in_range, new_stats, parse_bool, parse_int, parse_path, register_driver,
)
from ..placement import pin_control_thread
from ..vhost_user.frontend import FrontendError, FrontendListener, FrontendSession
from ..shm import create_shared, release_shared
from ..vhost_user.messages import (
    VHOST_F_LOG_ALL, VHOST_LOG_PAGE, VHOST_USER_F_PROTOCOL_FEATURES, InflightInfo, IotlbPerm, MemoryRegion,
    ProtocolFeature,
)
from ..guestmem.window import Window
from ..guestmem.views import mem_views
from ..virtio.features import VIRTIO_F_ANY_LAYOUT, VIRTIO_F_IOMMU_PLATFORM, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX, net_hdr_len
from ..virtio.packed import (
    AVAIL_USED_MASK, D_FLAGS, DESC_SIZE, EVENT_FLAGS, POS_MASK, RING_EVENT_FLAGS_DISABLE, WRAP_BIT,
)
from ..virtio.split import VRING_AVAIL_F_NO_INTERRUPT
from .guest_memory import PAGE_SIZE, GuestMemory
from .iotlb_batch import MSG_SIZE, REPLY_SIZE, UPDATE, call_batch, put_iotlb
from .miss import MissAnswerer
from .layout import DEFAULT_MEM, Placer, parse_mem
from .transient import N_TR, TR_GRANTS, TR_INVALIDATES, batch_capacity, transient_round
from . import notify, rxtx  # noqa: F401  (register the fallback-interrupt and burst kernels)
from .vq import (
    DRVCTL_WAKE_FD, N_DRV, N_DRV_XSTATS, DRV_AVAIL, DRV_BUF, DRV_DESC, DRV_DONE_TAIL, DRV_EVENT_IDX, DRV_FREE_HEAD, DRV_FREE_TAIL, DRV_HDR_LEN,
    DRV_AVAIL_IDX, DRV_KICK_FD, DRV_LAST_USED, DRV_MRG, DRV_PACKED,
    DRV_NUM, DRV_POSTED, DRV_READY, DRV_STRIDE, DRV_TRANSIENT, DRV_USED, DRV_XSTAT_NAMES,
    VirtioUserState,
)

log = logging.getLogger("vhostpci.port")

IOMMU_MODES = ("off", "static", "buffers", "demand", "transient")
# With per-buffer grants (buffers, transient) each buffer has its page, so a
# grant exposes exactly one buffer; otherwise two per page (fewer TLB misses).
BUF_STRIDE = {"off": 2048, "static": 2048, "buffers": PAGE_SIZE, "demand": PAGE_SIZE, "transient": PAGE_SIZE}
RX_GRANTS = {"wo": IotlbPerm.WO, "rw": IotlbPerm.RW}
MAX_QUEUE_PAIRS = 16
PF = ProtocolFeature
WANT_PROTOCOL = (PF.MQ.mask | PF.REPLY_ACK.mask | PF.BACKEND_REQ.mask | PF.STATUS.mask | PF.LOG_SHMFD.mask
                 | PF.INFLIGHT_SHMFD.mask | PF.CONFIGURE_MEM_SLOTS.mask | PF.RARP.mask)
VIEW_SIZE = 1 << 40  # our own RAM seen at offset = GPA, room for hot-added regions
STATUS_DRIVER_OK = 1 | 2 | 8 | 4  # ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
POLL_S = 0.1
REQUEST_TIMEOUT_S = 5.0  # a back-end busy compiling its kernels can be slow to reply
RECONNECT_MAX_S = 1.0


def _iommu(text: str) -> str:
    if text not in IOMMU_MODES:
        raise ValueError(f"iommu must be one of {', '.join(IOMMU_MODES)}")
    return text


def _rx_grant(text: str) -> IotlbPerm:
    if text not in RX_GRANTS:
        raise ValueError(f"rx_grant must be one of {', '.join(RX_GRANTS)}")
    return RX_GRANTS[text]


def _queue_size(text: str) -> int:
    n = parse_int(text)
    if n < 2 or n > 32768 or n & (n - 1):
        raise ValueError(f"queue_size must be a power of two in 2..32768, got {n}")
    return n


def _mem(text: str) -> list[tuple[int, int]]:
    return parse_mem(text)


@register_driver
class VirtioUserDriver(DevargQueuePairs, PortDriver):
    """VM1's virtio-net device, driven from our own lcores."""

    prefix = "net_virtio_user"
    devargs = {"path": parse_path, "server": parse_bool, "queues": int_in_range("queues", 1, MAX_QUEUE_PAIRS), "queue_size": _queue_size,
               "mrg_rxbuf": parse_bool, "packed_vq": parse_bool, "iommu": _iommu, "rx_grant": _rx_grant, "mem": _mem}
    devarg_defaults = {"path": "", "server": False, "queues": 1, "queue_size": 256, "mrg_rxbuf": True,
                       "packed_vq": False, "iommu": "off", "rx_grant": IotlbPerm.WO, "mem": parse_mem(DEFAULT_MEM)}

    def __init__(self, name: str, args: dict) -> None:
        super().__init__(name, args)
        if not args["path"]:
            raise PortError(f"{name}: devarg path=<unix socket> is required")
        self.nb_rxq = self.nb_txq = args["queues"]
        self.mode = args["iommu"]
        num = args["queue_size"]
        nvq = 2 * args["queues"]
        try:
            self.memory = GuestMemory(args["mem"], name=f"{name}-ram")
        except (ValueError, OSError) as e:
            raise PortError(f"{name}: guest memory: {e}") from None
        self._closers: list[Callable[[], None]] = [self.memory.close]
        try:
            top = max(r.gpa + r.size for r in self.memory.regions)
            self.view = Window(max(-(-top // PAGE_SIZE) * PAGE_SIZE, VIEW_SIZE))  # our own RAM, at offset = GPA
            self._closers.insert(0, self.view.close)
            for r in self.memory.regions:
                self.view.add_region(r.fd, r.gpa, r.size, 0, r.userspace_addr)
            placer = Placer(args["mem"])
            self.places = [placer.ring(num, BUF_STRIDE[self.mode], packed=args["packed_vq"]) for _ in range(nvq)]
        except (ValueError, OSError) as e:
            self.close()
            raise PortError(f"{name}: {e}") from None
        self.vq = np.zeros((nvq, N_DRV), np.int64)
        self.free = np.zeros((nvq, num), np.int32)
        self.stage = np.zeros((nvq, num), np.int32)
        self.done = np.zeros((nvq, num), np.int32)
        self.owned = np.zeros((nvq, num), np.uint8)
        self.blen = np.zeros((nvq, num), np.int64)
        self._xstats = np.zeros((nvq, N_DRV_XSTATS), np.int64)
        self._stats = new_stats(args["queues"])
        self.ctl = np.full(8, -1, np.int64)
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.ctl[DRVCTL_WAKE_FD] = self._wake_fd
        self._kick = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(nvq)]
        self._call = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(nvq)]
        self._closers.insert(0, self._close_fds)
        self._init_rings()
        # iommu=transient (transient.py): which buffers hold a grant, and a round's scratch
        self.granted = np.zeros((nvq, num), np.uint8)
        self._buf_uaddr = np.array([self.memory.gpa_to_uaddr(p.buf, p.buf_end - p.buf) for p in self.places], np.int64)
        self._buf_perms = np.array([int(self._buf_perm(v)) for v in range(nvq)], np.int64)
        self._batch = np.zeros(batch_capacity(nvq, num) * MSG_SIZE, np.uint8)
        self._one = np.zeros(MSG_SIZE, np.uint8)  # _grant's single message
        self._reply = np.zeros(REPLY_SIZE, np.uint8)
        self._upto = np.zeros((nvq, 2), np.int64)
        self._transient = np.zeros(N_TR, np.int64)
        self.session: FrontendSession | None = None
        self.features = 0
        self.connections = 0
        self.misses_granted = 0
        self.misses_refused = 0
        self.grants_sent = 0  # standing grants and MISS answers (transient ones: self._transient)
        self._misses: MissAnswerer | None = None  # this session's compiled MISS answers (iommu=demand)
        self._answered_before = 0  # what earlier sessions' compiled paths answered
        self._link = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._listener: FrontendListener | None = None
        self._calls: list[tuple[Callable, list]] = []  # work for the control thread (run_in_control)
        self._calls_lock = threading.Lock()
        self.dirty_log: mmap.mmap | None = None
        self._log_fd = -1
        self._closers.insert(0, self._drop_log)
        self.inflight_fd = -1  # the back-end's inflight region (INFLIGHT_SHMFD), kept across back-ends
        self.inflight_info: InflightInfo | None = None
        self._closers.insert(0, self._drop_inflight)
        self.closed = False

    # ---------------------------------------------------------------- setup
    def _init_rings(self) -> None:
        num = self.args["queue_size"]
        packed = self.args["packed_vq"]
        for v, p in enumerate(self.places):
            self.memory.view(p.start, p.used_end - p.start)[:] = 0
            if packed:  # we poll: the driver area's flags say DISABLE
                self.memory.write(p.avail + EVENT_FLAGS, RING_EVENT_FLAGS_DISABLE.to_bytes(2, "little"))
            else:
                self.memory.write(p.avail, VRING_AVAIL_F_NO_INTERRUPT.to_bytes(2, "little"))
            row = self.vq[v]
            row[DRV_PACKED] = int(packed)
            row[DRV_AVAIL_IDX] = row[DRV_LAST_USED] = 1 << WRAP_BIT if packed else 0  # wrap counters start at 1
            row[DRV_NUM] = num
            row[DRV_DESC], row[DRV_AVAIL], row[DRV_USED] = p.desc, p.avail, p.used
            row[DRV_BUF], row[DRV_STRIDE] = p.buf, p.stride
            row[DRV_KICK_FD] = self._kick[v]
            row[DRV_TRANSIENT] = int(self.mode == "transient")
            self.free[v] = np.arange(num, dtype=np.int32)
            row[DRV_FREE_HEAD], row[DRV_FREE_TAIL] = 0, num

    def _close_fds(self) -> None:
        for fd in [self._wake_fd, *self._kick, *self._call]:
            os.close(fd)
        self.ctl[DRVCTL_WAKE_FD] = -1
        self.vq[:, DRV_KICK_FD] = -1

    # ---------------------------------------------------------------- port ops
    def start(self) -> None:
        if self.closed:
            raise PortError(f"{self.name}: closed")
        if self._thread is not None:
            return
        if self.args["server"]:
            try:
                self._listener = FrontendListener(self.args["path"], timeout=POLL_S, request_timeout=REQUEST_TIMEOUT_S)
            except OSError as e:
                raise PortError(f"{self.name}: cannot listen on {self.args['path']}: {e}") from None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"virtio-user-ctl {self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            if self._thread.is_alive():
                log.error("%s: control thread did not stop", self.name)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def close(self) -> None:
        if getattr(self, "closed", False):
            return
        self.stop() if hasattr(self, "_stop") else None
        self.closed = True
        for fn in self._closers:
            try:
                fn()
            except Exception as e:  # keep releasing the rest
                log.error("%s: close: %s", self.name, e)
        self._closers = []

    def kernel_state(self) -> VirtioUserState:
        if self.closed:
            raise PortError(f"{self.name}: closed")
        return VirtioUserState(mem_views(self.view.array), self.vq, self.free, self.stage, self.done, self.owned,
                               self.blen, self._xstats, self._stats, self.ctl, self.port_id)

    def stats_array(self) -> np.ndarray:
        return self._stats

    def mac(self) -> bytes:
        return bytes([0x02, 0x56, 0x55, 0x53, 0, int(self.name[len(self.prefix):]) & 0xFF])

    def link(self) -> LinkStatus:
        return LinkStatus(up=self._link, speed_mbps=10000 if self._link else 0)

    def wait_link(self, up: bool = True, timeout: float = 5.0) -> bool:
        """Wait until the link is ``up`` (tests, demo); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._link != up and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._link == up

    def intr_fds(self, queue: int) -> list[int]:
        """The call eventfd the device signals when it returns buffers on rx
        queue ``queue`` (receive vring 2q; ours for the port's lifetime)."""
        if self.closed or self.session is None:
            return []
        return [self._call[2 * queue]]

    def rx_buffers_posted(self, queue: int = 0) -> int:
        """Receive buffers the device can fill now on ``queue`` (posted, not yet used)."""
        row = self.vq[2 * queue]
        return int(row[DRV_POSTED] - row[DRV_DONE_TAIL])

    def xstats(self) -> dict[str, int]:
        totals = self._xstats.sum(axis=0)
        out = {name: int(totals[k]) for k, name in enumerate(DRV_XSTAT_NAMES)}
        out.update(iotlb_grants_sent=self.grants_sent + int(self._transient[TR_GRANTS]) + self._compiled_answers(),
                   iotlb_invalidates_sent=int(self._transient[TR_INVALIDATES]),
                   iotlb_misses_granted=self.misses_granted + self._compiled_answers(),
                   iotlb_misses_fast=self._compiled_answers(),  # of those granted, by the compiled path
                   iotlb_misses_refused=self.misses_refused)
        return out

    def _compiled_answers(self) -> int:
        """MISSes the compiled path answered, every session so far (each one UPDATE)."""
        m = self._misses  # read once: the control thread may drop it meanwhile
        return self._answered_before + (m.answered if m is not None else 0)

    def info(self) -> dict:
        out = {
            "socket": f"{self.args['path']} ({'server' if self.args['server'] else 'client'})",
            "connected": "yes" if self.session is not None else "no",
            "features": f"{self.features:#x}",
            "iommu": self.mode,
            "guest memory": ", ".join(f"[{r.gpa:#x}, {r.gpa + r.size:#x})" for r in self.memory.regions),
        }
        out.update(self.xstats())
        return out

    # ---------------------------------------------------------------- control thread
    def _run(self) -> None:
        pin_control_thread()
        delay = 0.05
        while not self._stop.is_set():
            session = self._connect()
            if session is None:
                self._stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            self.connections += 1
            try:
                self._negotiate(session)
                self.session = session
                self._link = True
                log.info("%s: connected to %s (features %#x, iommu %s)", self.name, self.args["path"],
                         self.features, self.mode)
                delay = 0.05
                self._serve(session)
            except (FrontendError, OSError, ValueError) as e:
                log.warning("%s: vhost-user connection: %s", self.name, e)
            except Exception:  # the control thread must survive anything
                log.exception("%s: control thread error", self.name)
            finally:
                self._link = False
                self.session = None
                session.close()
                self._unmap_all_pending()
            if not self._stop.is_set():
                self._stop.wait(delay)

    def _connect(self) -> FrontendSession | None:
        try:
            if self._listener is not None:
                return self._listener.accept(POLL_S)
            return FrontendSession.connect(self.args["path"], timeout=POLL_S, request_timeout=REQUEST_TIMEOUT_S)
        except FrontendError:
            return None

    def _negotiate(self, s: FrontendSession) -> None:
        """QEMU's order: features, owner, protocol features, queues, back-end
        channel, memory, grants, then each ring."""
        offered = s.get_features()
        want = (1 << VIRTIO_F_VERSION_1) | (offered & (1 << VIRTIO_F_ANY_LAYOUT))
        if self.args["queues"] > 1:
            want |= 1 << VIRTIO_NET_F_MQ
        if self.args["mrg_rxbuf"] and offered & (1 << VIRTIO_NET_F_MRG_RXBUF):
            want |= 1 << VIRTIO_NET_F_MRG_RXBUF
        want |= offered & (1 << VIRTIO_RING_F_EVENT_IDX)
        if self.mode != "off":
            want |= 1 << VIRTIO_F_IOMMU_PLATFORM
        if self.args["packed_vq"]:
            want |= 1 << VIRTIO_F_RING_PACKED
        missing = want & ~offered
        if missing:
            raise FrontendError(f"back-end offers features {offered:#x}, lacking {missing:#x} (needed for "
                                f"queues={self.args['queues']}, iommu={self.mode}, "
                                f"packed_vq={int(self.args['packed_vq'])})")
        s.set_owner()
        protocol = 0
        if offered & (1 << VHOST_USER_F_PROTOCOL_FEATURES):
            want |= 1 << VHOST_USER_F_PROTOCOL_FEATURES
            protocol = s.get_protocol_features() & WANT_PROTOCOL
            s.set_protocol_features(protocol)
        nvq = 2 * self.args["queues"]
        if protocol & PF.MQ.mask and s.get_queue_num() < nvq:
            raise FrontendError(f"back-end has fewer than the {nvq} vrings queues={self.args['queues']} needs")
        if protocol & PF.BACKEND_REQ.mask:
            s.set_backend_req_fd()
        elif self.mode != "off":
            log.warning("%s: back-end has no request channel: it cannot report IOTLB misses", self.name)
        s.set_features(want)
        self.features = want
        s.send_memory(self.memory)  # ADD_MEM_REG per region with CONFIGURE_MEM_SLOTS, else SET_MEM_TABLE
        if protocol & PF.INFLIGHT_SHMFD.mask:
            self._set_inflight(s, nvq)
        for iova, size, perm in self._standing_grants():
            self._grant(s, iova, size, perm)
        for iova, size, perm in self._transient_grants():  # transient grants still in flight
            self._grant(s, iova, size, perm)
        hdr = net_hdr_len(want)
        for v, p in enumerate(self.places):
            self.vq[v, DRV_HDR_LEN] = hdr
            self.vq[v, DRV_MRG] = int(bool(want & (1 << VIRTIO_NET_F_MRG_RXBUF)))
            self.vq[v, DRV_EVENT_IDX] = int(bool(want & (1 << VIRTIO_RING_F_EVENT_IDX)))
            s.set_vring_num(v, p.num)
            s.set_vring_base(v, self._device_progress(v))  # the device resumes after what it returned
            s.set_vring_addr(v, *(self._ring_addr(a) for a in (p.desc, p.used, p.avail)))
            s.set_vring_kick(v, self._kick[v])
            s.set_vring_call(v, self._call[v])
            if want & (1 << VHOST_USER_F_PROTOCOL_FEATURES):
                s.set_vring_enable(v, True)
            store_flag(self.vq[v], DRV_READY, 1)
        if protocol & PF.STATUS.mask:
            s.set_status(STATUS_DRIVER_OK)

    def _device_progress(self, v: int) -> int:
        """Where a (new) back-end resumes ring ``v``: after the last entry the
        device returned.  Split: used->idx.  Packed: the driver's used
        position moved past every descriptor already marked used (what a
        lost back-end returned and the driver has not reaped yet), as
        ``idx | wrap << 15``."""
        p = self.places[v]
        if not self.args["packed_vq"]:
            return int.from_bytes(self.memory.read(p.used + 2, 2), "little")
        pos = int(self.vq[v, DRV_LAST_USED])
        for _ in range(p.num):
            idx, wrap = pos & POS_MASK, pos >> WRAP_BIT & 1
            flags = int.from_bytes(self.memory.read(p.desc + DESC_SIZE * idx + D_FLAGS, 2), "little")
            if (flags & AVAIL_USED_MASK) != (AVAIL_USED_MASK if wrap else 0):
                break
            idx += 1
            if idx == p.num:
                idx, wrap = 0, wrap ^ 1
            pos = idx | wrap << WRAP_BIT
        return pos

    def _set_inflight(self, s: FrontendSession, nvq: int) -> None:
        """QEMU's inflight steps: the first back-end allocates the region
        (GET_INFLIGHT_FD); every back-end, the first and each restarted one,
        gets it with SET_INFLIGHT_FD before the rings, so a successor finds
        what a killed predecessor had in flight."""
        if self.inflight_fd < 0:
            self.inflight_fd, self.inflight_info = s.get_inflight_fd(nvq, self.args["queue_size"])
        assert self.inflight_info is not None
        s.set_inflight_fd(self.inflight_fd, self.inflight_info)

    def _drop_inflight(self) -> None:
        if self.inflight_fd >= 0:
            os.close(self.inflight_fd)
        self.inflight_fd, self.inflight_info = -1, None

    def _ring_addr(self, gpa: int) -> int:
        """What SET_VRING_ADDR carries: our virtual address, or the IOVA with an IOMMU."""
        return gpa if self.mode != "off" else self.memory.gpa_to_uaddr(gpa)

    def _standing_grants(self) -> list[tuple[int, int, int]]:
        """(iova, size, perm) granted for the whole connection in this mode."""
        if self.mode == "off":
            return []
        if self.mode == "static":
            return [(r.gpa, r.size, IotlbPerm.RW) for r in self.memory.regions]
        out = []
        for v, p in enumerate(self.places):
            out.append((p.start, p.ro_end - p.start, IotlbPerm.RO))
            out.append((p.rw_start, p.used_end - p.rw_start, IotlbPerm.RW))
            if self.mode == "buffers":
                out.append((p.buf, p.buf_end - p.buf, self._buf_perm(v)))
        return out

    def _buf_perm(self, v: int) -> IotlbPerm:
        return self.args["rx_grant"] if v % 2 == 0 else IotlbPerm.RO  # rx rings are even

    def _grant(self, s: FrontendSession, iova: int, size: int, perm: int) -> None:
        """One UPDATE, sent and acked from compiled code (``iotlb_batch``), as
        QEMU answers a MISS in C: the MISS round trip then measures the
        back-end, not this front-end's Python codec."""
        put_iotlb(self._one, 0, iova, size, self.memory.gpa_to_uaddr(iova, size), int(perm), UPDATE)
        got = call_batch(s.channel.fileno(), self._one, 1, self._reply, int(REQUEST_TIMEOUT_S * 1e9))
        if got != 0:
            raise FrontendError(f"IOTLB UPDATE of {size:#x} bytes at {iova:#x}: "
                                + ("the back-end refused it" if got > 0 else "no reply"))
        self.grants_sent += 1

    def _serve(self, s: FrontendSession) -> None:
        sel = selectors.DefaultSelector()
        misses: MissAnswerer | None = None
        try:
            misses = self._miss_answerer(s)
            sel.register(self._wake_fd, selectors.EVENT_READ, "wake")
            sel.register(s.channel.fileno(), selectors.EVENT_READ, "main")
            if s.backend_channel is not None:
                sel.register(s.backend_channel.fileno(), selectors.EVENT_READ, "backend")
            while not self._stop.is_set():
                if misses is not None:  # MISSes answered in compiled code until something else needs Python
                    try:
                        misses.wait(POLL_S)
                    except ConnectionError as e:
                        raise FrontendError(str(e)) from e
                for key, _ in sel.select(0.0 if misses is not None else POLL_S):
                    if key.data == "wake":
                        try:
                            os.eventfd_read(self._wake_fd)
                        except BlockingIOError:
                            pass
                    elif key.data == "backend" and (misses is None or misses.leaves_python_work()):
                        s.poll_backend_requests(self._on_miss, timeout=0.0)
                    elif key.data == "main" and s.channel.peer_closed():
                        raise FrontendError("back-end closed the connection")
                self._run_calls(s)
                if self.mode == "transient":
                    self._service_transient(s)
        finally:
            sel.close()
            if misses is not None:  # its count outlives the session (xstats may under-count meanwhile, never twice)
                self._misses = None
                self._answered_before += misses.answered

    def _miss_answerer(self, s: FrontendSession) -> MissAnswerer | None:
        """iommu=demand: the compiled MISS answers for this session (``miss.py``)."""
        if self.mode != "demand" or s.backend_channel is None:
            return None
        areas = [(p.buf, p.buf_end, int(self._buf_perm(v)), int(self._buf_uaddr[v])) for v, p in enumerate(self.places)]
        self._misses = MissAnswerer(s.backend_channel.fileno(), s.channel.fileno(), areas, s.reply_ack,
                                    [self._wake_fd, s.channel.fileno()], REQUEST_TIMEOUT_S)
        return self._misses

    def _on_miss(self, iova: int, perm: int) -> bool:
        s = self.session
        if self.mode == "demand":
            for v, p in enumerate(self.places):
                if p.buf <= iova < p.buf_end:
                    page = iova - iova % PAGE_SIZE
                    if s is not None:
                        self._grant(s, page, PAGE_SIZE, self._buf_perm(v))
                    self.misses_granted += 1
                    return True
        for start, size, gperm in self._standing_grants() + self._transient_grant_of(iova):
            if start <= iova < start + size:
                if s is not None:
                    self._grant(s, start, size, gperm)
                self.misses_granted += 1
                return True
        self.misses_refused += 1
        log.warning("%s: IOTLB miss at %#x refused: not granted in iommu=%s", self.name, iova, self.mode)
        return False

    def _service_transient(self, s: FrontendSession | None) -> None:
        """Grant what the kernels staged, revoke what the device returned
        (``transient.py``: one compiled round, its messages in one batch)."""
        fd = s.channel.fileno() if s is not None else -1
        if transient_round(self.vq, self.stage, self.done, self.granted, self._buf_uaddr, self._buf_perms, fd,
                           self._batch, self._reply, self._upto, self._transient, int(REQUEST_TIMEOUT_S * 1e9)) < 0:
            raise FrontendError("transient grants: the back-end refused one, or no reply came")

    def _transient_grant_of(self, iova: int) -> list[tuple[int, int, IotlbPerm]]:
        """The transient grant of the buffer holding ``iova``, if it holds one
        (a MISS looks up one buffer, not every grant)."""
        for v, p in enumerate(self.places):
            if p.buf <= iova < p.buf_end:
                i = (iova - p.buf) // p.stride
                return [(p.buf + i * p.stride, p.stride, self._buf_perm(v))] if self.granted[v, i] else []
        return []

    def _transient_grants(self) -> list[tuple[int, int, IotlbPerm]]:
        """The buffers holding a transient grant now: (iova, size, perm)."""
        out = []
        for v, p in enumerate(self.places):
            for i in np.flatnonzero(self.granted[v]):
                out.append((p.buf + int(i) * p.stride, p.stride, self._buf_perm(v)))
        return out

    # ------------------------------------------------------- control-thread calls
    def run_in_control(self, fn: Callable[[FrontendSession], object], timeout: float = 5.0) -> object:
        """Run ``fn(session)`` in the control thread (it owns the session) and
        return its result; raises what it raised, or TimeoutError."""
        if self.session is None:
            raise PortError(f"{self.name}: not connected")
        box: list = []
        done = threading.Event()
        with self._calls_lock:
            self._calls.append((fn, [box, done]))
        os.eventfd_write(self._wake_fd, 1)
        if not done.wait(timeout):
            raise TimeoutError(f"{self.name}: control thread did not run the call in {timeout} s")
        ok, value = box
        if not ok:
            raise value
        return value

    def _run_calls(self, s: FrontendSession) -> None:
        with self._calls_lock:
            calls, self._calls = self._calls, []
        for fn, (box, done) in calls:
            try:
                box[:] = [True, fn(s)]
            except Exception as e:  # handed back to the caller
                box[:] = [False, e]
            done.set()

    def announce(self) -> None:
        """SEND_RARP with our MAC, as QEMU does after a migration when the
        guest cannot announce itself; PortError if the back-end lacks RARP."""
        def send(s: FrontendSession) -> None:
            if not s.protocol_features & PF.RARP.mask:
                raise PortError(f"{self.name}: the back-end does not support SEND_RARP")
            s.send_rarp(self.mac())
        self.run_in_control(send)

    # ------------------------------------------------------- memory hotplug
    def add_memory(self, gpa: int, size: int) -> None:
        """Hot-add guest RAM ``[gpa, gpa + size)`` (as a pc-dimm would): a
        new memfd region, handed to a connected back-end with ADD_MEM_REG
        (needs CONFIGURE_MEM_SLOTS), and to every later one at connect."""
        try:
            region = self.memory.add_region(gpa, size, name=f"{self.name}-dimm")
        except (ValueError, OSError) as e:
            raise PortError(f"{self.name}: cannot add memory: {e}") from None
        self.view.add_region(region.fd, region.gpa, region.size, 0, region.userspace_addr)
        if self.mode == "static":
            log.warning("%s: iommu=static grants only the memory present at connect", self.name)
        if self.session is None:
            return
        try:
            self.run_in_control(lambda s: self._send_region(s, "add", region))
        except (FrontendError, TimeoutError, PortError) as e:
            raise PortError(f"{self.name}: back-end refused the new memory: {e}") from None

    def remove_memory(self, gpa: int) -> None:
        """Hot-remove the region starting at ``gpa`` (REM_MEM_REG first: the
        back-end stops using it before it goes); it must hold no ring or buffer."""
        region = next((r for r in self.memory.regions if r.gpa == gpa), None)
        if region is None:
            raise PortError(f"{self.name}: no memory region starts at gpa {gpa:#x}")
        for p in self.places:
            if region.gpa < p.buf_end and p.start < region.gpa + region.size:
                raise PortError(f"{self.name}: memory at gpa {gpa:#x} holds rings or buffers; not removable")
        if self.session is not None:
            try:
                self.run_in_control(lambda s: self._send_region(s, "remove", region))
            except (FrontendError, TimeoutError, PortError) as e:
                raise PortError(f"{self.name}: back-end refused the removal: {e}") from None
        self.view.remove_region(region.gpa, region.size, region.userspace_addr)
        self.memory.remove_region(gpa)

    @staticmethod
    def _send_region(s: FrontendSession, what: str, region) -> None:
        if not s.protocol_features & PF.CONFIGURE_MEM_SLOTS.mask:
            raise PortError("the back-end does not support CONFIGURE_MEM_SLOTS (memory hotplug)")
        mr = MemoryRegion(region.gpa, region.size, region.userspace_addr, 0)
        if what == "add":
            s.add_mem_reg(mr, region.fd)
        else:
            s.rem_mem_reg(mr)

    def start_dirty_log(self) -> mmap.mmap:
        """Migration's first step, as QEMU does it: a log of one bit per 4 KiB
        page of guest RAM (SET_LOG_BASE), then VHOST_F_LOG_ALL.  Returns the
        log mapping (shared with the back-end)."""
        def start(s: FrontendSession) -> mmap.mmap:
            top = max(r.gpa + r.size for r in self.memory.regions)
            size = -(-top // VHOST_LOG_PAGE // 8)
            fd, mm = create_shared(f"{self.name}-dirty-log", -(-size // PAGE_SIZE) * PAGE_SIZE)
            self._drop_log()
            self._log_fd, self.dirty_log = fd, mm
            s.set_log_base(fd, size)
            self.features |= 1 << VHOST_F_LOG_ALL
            s.set_features(self.features)
            return mm
        return self.run_in_control(start)  # type: ignore[return-value]

    def _drop_log(self) -> None:
        release_shared(self.dirty_log, self._log_fd, f"{self.name}: dirty log")
        self.dirty_log, self._log_fd = None, -1

    def _unmap_all_pending(self) -> None:
        """Disconnected: the back-end's grants died with it; let the kernels go on."""
        if self.mode == "transient" and not self.closed:
            self._service_transient(None)

