"""net_vhost_pci: the vhost-pci port, VM2's end of a vhost-user connection.

Devargs: ``path=`` (unix socket, required), ``client=0|1`` (0: we listen and
VM1's hypervisor connects; 1: we connect and reconnect with back-off),
``queues=`` (queue pairs), ``iommu_support=0|1`` (offer
VIRTIO_F_IOMMU_PLATFORM, so VM1 grants memory through IOTLB messages).

The port is the ``BackendDevice`` of a ``BackendServer`` (control thread):
the session tells it about memory, rings, features and the link, and it
turns that into the numpy control words its kernels (``vq.py``) read.  The
window is the port's for its whole life, so the kernel state never changes
across reconnects; the session only remaps it.  The inflight region
(INFLIGHT_SHMFD) gets the same treatment: a reservation of its own, mapped
from the front-end's fd while one is set (``inflight_changed``), recovered
from when a ring starts (``inflight.recover``).
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import os
import time
from typing import Callable

import numpy as np

from ..atomics_py import store_flag
from ..ethdev import (
    DevargQueuePairs, LinkStatus, PortDriver, PortError, int_in_range, new_stats, parse_bool, parse_path, register_driver,
)
from ..vhost_user.backend import VIRTIO_CONFIG_S_DRIVER_OK, BackendSession, HandlerError, VringInfo
from ..vhost_user.server import BackendServer
from ..vhost_user.messages import VHOST_F_LOG_ALL, InflightInfo, IotlbPerm, ProtocolFeature
from ..virtio.split import (
    AVAIL_ALIGN, DESC_ALIGN, USED_ALIGN, VIRTIO_F_ANY_LAYOUT, VIRTIO_F_IOMMU_PLATFORM, VIRTIO_F_VERSION_1,
    VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, mem_views,
    net_hdr_len, ring_sizes,
)
from .vq import (
    CTL_INFLIGHT, CTL_WAKE_FD, N_VQ, N_XSTATS, VQ_AVAIL, VQ_CALL_FD, VQ_DESC, VQ_EVENT_IDX, VQ_HDR_LEN, VQ_IF_BASE, VQ_IF_COUNTER,
    VQ_IOMMU, VQ_LAST_AVAIL, VQ_LAST_USED, VQ_MRG, VQ_MISS_IOVA, VQ_MISS_PENDING, VQ_MISS_WRITE, VQ_NUM, VQ_PENDING,
    VQ_READY, VQ_RESUB_N, VQ_RESUB_POS, VQ_USED, XS_REPAIRED, XS_RESUBMITTED, XSTAT_NAMES, VhostPciState,
    flush_inflight,
)
from .inflight import RESUB_DELIVERED, queue_area, recover
from ..guestmem.translate import translate
from .dirty_log import LOG_ADDR, LOG_ON, LOG_SIZE, new_logctl
from . import notify  # noqa: F401  (registers the fallback-interrupt kernels)
from .missahead import MAX_AHEAD, MAX_ASK, misses_ahead
from .txhold import HOLD_CAP  # also registers the port's burst kernels
from ..guestmem.window import Window

log = logging.getLogger("vhostpci.port")

MAX_QUEUE_PAIRS = 16
WINDOW_SIZE = 1 << 40
QUIESCE_TIMEOUT_S = 1.0
MISS_RESEND_S = 0.1  # a MISS with no UPDATE in reply is sent again after this

PF = ProtocolFeature
PROTOCOL_FEATURES = (PF.MQ.mask | PF.REPLY_ACK.mask | PF.BACKEND_REQ.mask | PF.STATUS.mask | PF.LOG_SHMFD.mask
                     | PF.INFLIGHT_SHMFD.mask)
MAX_VRING_SIZE = 32768
MAX_TRACKED_MBUFS = 1 << 20
PAGE = mmap.PAGESIZE


@register_driver
class VhostPciDriver(DevargQueuePairs, PortDriver):
    """One vhost-pci port; also the vhost-user ``BackendDevice`` of its server."""

    prefix = "net_vhost_pci"
    devargs = {"path": parse_path, "client": parse_bool, "queues": int_in_range("queues", 1, MAX_QUEUE_PAIRS),
               "iommu_support": parse_bool}
    devarg_defaults = {"path": "", "client": False, "queues": 1, "iommu_support": True}

    def __init__(self, name: str, args: dict) -> None:
        super().__init__(name, args)
        if not args["path"]:
            raise PortError(f"{name}: devarg path=<unix socket> is required")
        self.nb_rxq = self.nb_txq = args["queues"]
        nvq = 2 * args["queues"]
        self.window = Window(WINDOW_SIZE)
        self.vq = np.zeros((nvq, N_VQ), np.int64)
        self.vq[:, VQ_CALL_FD] = -1
        self.vq[:, VQ_IF_BASE] = -1
        self.resub = np.zeros((nvq, MAX_VRING_SIZE), np.uint16)  # untouched pages cost nothing
        # by mbuf index: the source of what dequeue filled (commit records); an mbuf
        # beyond it goes untracked: at worst delivered twice after a kill, never lost
        self.src = np.zeros(MAX_TRACKED_MBUFS, np.uint64)
        self.hold = np.zeros((args["queues"], HOLD_CAP), np.int64)  # tx mbufs parked on a miss (txhold.py)
        self.inflight = Window(-(-nvq * queue_area(MAX_VRING_SIZE) // PAGE) * PAGE, table_capacity=1, max_regions=1)
        self._inflight_info: InflightInfo | None = None  # set while the region is mapped
        self._rx_used_at_start: dict[int, int] = {}  # receive vring -> used->idx when it started (this connection)
        self._xstats = np.zeros((nvq, N_XSTATS), np.int64)
        self._stats = new_stats(args["queues"])
        self.ctl = np.full(8, -1, np.int64)
        self.logctl = new_logctl()
        self._log_all = False
        self._log_mapped = False
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.ctl[CTL_WAKE_FD] = self._wake_fd
        self.server: BackendServer | None = None
        self.quiesce_hook: Callable[[float], None] | None = None  # set by the forwarding runtime
        self._features = 0
        self._status = 0  # virtio device status (SET_STATUS), 0: not reported
        self._held: set[int] = set()  # rings set up, waiting for DRIVER_OK
        self._link = False
        self._miss_sent: dict[int, float] = {}  # vring -> time of the last MISS sent
        self._ahead = np.zeros(MAX_AHEAD, np.int64)  # pages missahead.py found
        self._asked: dict[tuple[int, int], float] = {}  # (page, perm) -> when asked, until an UPDATE covers it
        self.misses_ahead = 0
        self.misses_sent = 0
        self.iotlb_updates = self.iotlb_invalidates = 0  # IOTLB messages from VM1, all sessions
        self.closed = False
        self._kstate: VhostPciState | None = None

    # ---------------------------------------------------------------- port ops
    def start(self) -> None:
        if self.closed:
            raise PortError(f"{self.name}: closed")
        if self.server is not None:
            return
        self._warm_control_kernels()
        server = BackendServer(self.args["path"], self, client=self.args["client"], name=self.name)
        try:
            server.start()
        except OSError as e:
            raise PortError(f"{self.name}: cannot listen on {self.args['path']}: {e}") from None
        self.server = server
        log.info("%s: vhost-user %s on %s", self.name, "client" if self.args["client"] else "server",
                 self.args["path"])

    def _warm_control_kernels(self) -> None:
        """Compile (or load from the cache) the kernels the control thread
        calls (inflight recovery and flush) now: a cold compile there takes
        seconds and would stall the session mid-request."""
        if (self.vq[:, VQ_IF_BASE] < 0).all():  # no-ops with tracking off
            flush_inflight(self.kernel_state(), 0)
            self._used_idx(0, 1)
        if not self.vq[:, VQ_READY].any():  # rings not ready: returns 0 at once
            misses_ahead(self.kernel_state(), 0, self._ahead)

    def stop(self) -> None:
        """Disconnect VM1 and stop serving the socket (port start serves it again)."""
        if self.server is not None:
            self.server.stop()
            if not self.server.stopped:
                raise PortError(f"{self.name}: control thread did not stop; socket {self.args['path']} kept")
            self.server = None

    def close(self) -> None:
        self.stop()
        if not self.closed:
            self.closed = True
            os.close(self._wake_fd)
            self.ctl[CTL_WAKE_FD] = -1
            self._kstate = None
            self.window.close()
            self.inflight.close()

    def kernel_state(self) -> VhostPciState:
        # Built once: the window and inflight reservations, the tables and
        # rows it holds live as long as the port (the control thread asks
        # for it on every IOTLB miss).
        if self.window.array is None:
            raise PortError(f"{self.name}: closed")
        if self._kstate is None:
            self._kstate = self._new_kernel_state()
        return self._kstate

    def _new_kernel_state(self) -> VhostPciState:
        w = self.window
        return VhostPciState(mem_views(w.array), w.table, w.table_count, w.gpa_table, w.gpa_table_count,
                             self.logctl, self.vq, self._xstats, self._stats, self.ctl, self.port_id,
                             mem_views(self.inflight.array), self.resub, self.src, self.hold)

    def stats_array(self) -> np.ndarray:
        return self._stats

    def mac(self) -> bytes:
        return bytes([0x02, 0x56, 0x50, 0x43, 0, int(self.name[len(self.prefix):]) & 0xFF])

    def link(self) -> LinkStatus:
        return LinkStatus(up=self._link, speed_mbps=10000 if self._link else 0)

    def xstats(self) -> dict[str, int]:
        totals = self._xstats.sum(axis=0)
        out = {name: int(totals[k]) for k, name in enumerate(XSTAT_NAMES)}
        out["iotlb_miss_requests"] = self.misses_sent
        out["iotlb_miss_ahead"] = self.misses_ahead
        out["iotlb_updates"] = self.iotlb_updates
        out["iotlb_invalidates"] = self.iotlb_invalidates
        return out

    def info(self) -> dict:
        session = self.server.session if self.server is not None else None
        out = {
            "socket": f"{self.args['path']} ({'client' if self.args['client'] else 'server'})",
            "connected": "yes" if session is not None else "no",
            "features": f"{self._features:#x}",
            "iommu": "yes" if self._features & (1 << VIRTIO_F_IOMMU_PLATFORM) else "no",
            "rings ready": int((self.vq[:, VQ_READY] != 0).sum()),
        }
        out.update(self.xstats())
        return out

    # ------------------------------------------------------- BackendDevice
    def features(self) -> int:
        f = ((1 << VIRTIO_F_VERSION_1) | (1 << VHOST_F_LOG_ALL) | (1 << VIRTIO_F_ANY_LAYOUT) | (1 << VIRTIO_NET_F_MRG_RXBUF)
             | (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX))
        if self.args["iommu_support"]:
            f |= 1 << VIRTIO_F_IOMMU_PLATFORM
        if self.args["queues"] > 1:
            f |= 1 << VIRTIO_NET_F_MQ
        return f

    def protocol_features(self) -> int:
        return PROTOCOL_FEATURES

    def num_queues(self) -> int:
        return 2 * self.args["queues"]

    def set_features(self, features: int) -> None:
        self._features = features
        self._log_all = bool(features & (1 << VHOST_F_LOG_ALL))
        self._update_log()

    def log_changed(self, log: mmap.mmap | None) -> None:
        """A new dirty log (SET_LOG_BASE), or None: the old one is about to be
        unmapped, so the kernels stop using it first."""
        if log is None:
            self._log_mapped = False
            self._update_log()
            self.quiesce()
            self.logctl[LOG_ADDR] = self.logctl[LOG_SIZE] = 0
            return
        anchor = ctypes.c_char.from_buffer(log)
        self.logctl[LOG_ADDR] = ctypes.addressof(anchor)
        del anchor  # the session owns the mapping; no export may keep it alive
        self.logctl[LOG_SIZE] = len(log)
        self._log_mapped = True
        self._update_log()

    def _update_log(self) -> None:
        on = self._log_all and self._log_mapped
        if bool(self.logctl[LOG_ON]) != on:
            store_flag(self.logctl, LOG_ON, int(on))
            log.info("%s: dirty logging %s", self.name, "on" if on else "off")

    def window_for(self, iommu: bool) -> Window:
        return self.window

    def memory_changed(self, window: Window | None) -> None:
        # The kernels hold the window's tables; nothing else to swap.  No
        # memory: the connection is gone or reset, so is the driver status.
        if window is None:
            self._status = 0
            self._held.clear()
            self._rx_used_at_start.clear()

    def vring_ready(self, index: int, vring: VringInfo) -> None:
        addr = vring.addr
        assert addr is not None
        iommu = bool(self._features & (1 << VIRTIO_F_IOMMU_PLATFORM))
        desc, avail, used = addr.desc_user_addr, addr.avail_user_addr, addr.used_user_addr
        sizes = ring_sizes(vring.num)
        if not iommu:  # ring addresses are VM1's virtual addresses: make them GPAs
            gpas = [self.window.uaddr_to_gpa(a, n) for a, n in zip((desc, avail, used), sizes)]
            if min(gpas) < 0:
                raise HandlerError(f"vring {index} addresses desc={desc:#x} avail={avail:#x} used={used:#x} "
                                   "are outside VM1 memory")
            desc, avail, used = gpas
        for what, a, align in (("desc", desc, DESC_ALIGN), ("avail", avail, AVAIL_ALIGN), ("used", used, USED_ALIGN)):
            if a % align:
                raise HandlerError(f"vring {index} {what} address {a:#x} is not {align}-aligned")
        row = self.vq[index]
        row[VQ_NUM] = vring.num
        row[VQ_DESC], row[VQ_AVAIL], row[VQ_USED] = (np.int64(np.uint64(a)) for a in (desc, avail, used))
        row[VQ_LAST_AVAIL] = row[VQ_LAST_USED] = vring.base & 0xFFFF
        row[VQ_CALL_FD] = vring.call_fd
        row[VQ_HDR_LEN] = net_hdr_len(self._features)
        row[VQ_IOMMU] = int(iommu)
        row[VQ_MRG] = int(bool(self._features & (1 << VIRTIO_NET_F_MRG_RXBUF)))
        row[VQ_EVENT_IDX] = int(bool(self._features & (1 << VIRTIO_RING_F_EVENT_IDX)))
        row[VQ_MISS_PENDING] = 0
        self._recover_inflight(index, vring)
        held = bool(self._status and not self._status & VIRTIO_CONFIG_S_DRIVER_OK)
        log.info("%s: vring %d ready (num %d, base %d, used->idx %s%s%s)", self.name, index, vring.num, vring.base,
                 self._used_idx(int(row[VQ_USED]), vring.num), ", iommu" if iommu else "",
                 ", starts with DRIVER_OK" if held else "")
        if held:
            self._held.add(index)  # the driver reports its status: wait for DRIVER_OK
            return
        store_flag(self.vq[index], VQ_READY, 1)

    def vring_stopped(self, index: int) -> int:
        self._held.discard(index)
        store_flag(self.vq[index], VQ_READY, 0)
        self.quiesce()
        given_back = int(flush_inflight(self.kernel_state(), index))
        row = self.vq[index]
        log.info("%s: vring %d stopped (last_avail %d, last_used %d, used->idx %s, given back %d)", self.name,
                 index, row[VQ_LAST_AVAIL], row[VQ_LAST_USED], self._used_idx(int(row[VQ_USED]), int(row[VQ_NUM])),
                 given_back)
        return (int(row[VQ_LAST_AVAIL]) - given_back) & 0xFFFF

    # ------------------------------------------------------- inflight (INFLIGHT_SHMFD)
    def inflight_changed(self, fd: int, info: InflightInfo | None) -> None:
        """The session mapped a region (GET/SET_INFLIGHT_FD; ``fd`` stays the
        session's) or, with None, is about to unmap it: kernels stop using
        it before it goes.  Rings pick a new one up when they (re)start."""
        if self._inflight_info is not None:
            for v in range(len(self.vq)):
                store_flag(self.vq[v], VQ_IF_BASE, -1)
            store_flag(self.ctl, CTL_INFLIGHT, 0)
            self.quiesce()
            self.inflight.unmap_all()
            self._inflight_info = None
        if info is None:
            return
        size = -(-info.mmap_size // PAGE) * PAGE
        if size > self.inflight.size or info.mmap_offset % PAGE:
            raise HandlerError(f"inflight region of {info.mmap_size} bytes at offset {info.mmap_offset} "
                               f"does not fit the port's {self.inflight.size}-byte reservation")
        self.inflight.add_region(fd, 0, size, info.mmap_offset, 0)
        self._inflight_info = info
        store_flag(self.ctl, CTL_INFLIGHT, 1)

    def _used_idx(self, addr: int, num: int) -> int | None:
        """used->idx of the used ring at ``addr`` (as the row holds it: a
        GPA, or an IOVA with an IOMMU), None if it is not mapped."""
        w = self.window
        addr &= 2 ** 64 - 1
        used = translate(w.table, w.table_count, np.int64(addr - (1 << 64) if addr >> 63 else addr), 6 + 8 * num, False)
        if used < 0:
            return None
        return int(w.array[used + 2: used + 4].view(np.uint16)[0])

    def _rx_used_before(self, vring: int) -> int | None:
        """A receive ring's used->idx as the killed back-end left it: its
        value when the ring started (this back-end may have published since),
        or the ring's own if it has not started yet."""
        if vring % 2 or vring >= len(self.vq):
            return None
        if vring in self._rx_used_at_start:
            return self._rx_used_at_start[vring]
        session = self.server.session if self.server is not None else None
        ring = session.vrings.get(vring) if session is not None else None
        if ring is None or ring.addr is None or not ring.num:
            return None
        addr = ring.addr.used_user_addr
        if not self._features & (1 << VIRTIO_F_IOMMU_PLATFORM):
            addr = self.window.uaddr_to_gpa(addr, 6 + 8 * ring.num)
            if addr < 0:
                return None
        return self._used_idx(addr, ring.num)

    def _recover_inflight(self, index: int, vring: VringInfo) -> None:
        """Before ring ``index`` starts: track it if a region covers it, and
        pick up what a killed predecessor left in flight (``inflight.recover``):
        last_avail_idx becomes used->idx plus the heads still in flight, which
        the kernel takes again first, in counter order."""
        row = self.vq[index]
        row[VQ_IF_BASE] = -1
        row[VQ_PENDING] = row[VQ_RESUB_N] = row[VQ_RESUB_POS] = 0
        info = self._inflight_info
        if info is None:
            return
        area = queue_area(info.queue_size)
        if index >= info.num_queues or vring.num > info.queue_size or (index + 1) * area > info.mmap_size:
            log.warning("%s: inflight region (%d queues of %d) does not cover vring %d of %d; untracked",
                        self.name, info.num_queues, info.queue_size, index, vring.num)
            return
        used_idx = self._used_idx(int(row[VQ_USED]), vring.num)
        if used_idx is None:
            log.warning("%s: vring %d used ring not mapped at start; inflight untracked", self.name, index)
            return
        if index % 2 == 0:
            self._rx_used_at_start[index] = used_idx
        heads, repaired, counter = recover(self.inflight.array, index * area, vring.num, used_idx, self._features,
                                           index % 2 == 1, self._rx_used_before)  # odd vrings: VM1 transmit
        self.resub[index, :len(heads)] = heads
        row[VQ_RESUB_N] = len(heads)
        row[VQ_IF_COUNTER] = counter
        self._xstats[index, XS_RESUBMITTED] += sum(1 for h in heads if not h & RESUB_DELIVERED)
        self._xstats[index, XS_REPAIRED] += repaired
        # taken heads are a prefix of the available entries after used->idx
        row[VQ_LAST_AVAIL] = (used_idx + len(heads)) & 0xFFFF
        row[VQ_LAST_USED] = used_idx
        row[VQ_IF_BASE] = index * area
        if heads or repaired or used_idx != vring.base & 0xFFFF:
            log.info("%s: vring %d inflight: %d resubmitted, %d repaired, used %d, base %d", self.name, index,
                     len(heads), repaired, used_idx, vring.base)

    def vring_call_changed(self, index: int, fd: int) -> None:
        """A new call eventfd (the session closes the old one after quiesce)."""
        self.vq[index, VQ_CALL_FD] = fd

    def status_changed(self, status: int) -> None:
        """SET_STATUS: rings set up before DRIVER_OK start only with it (as
        DPDK's vhost library does: the driver may still be filling them)."""
        self._status = status
        if status & VIRTIO_CONFIG_S_DRIVER_OK:
            for index in sorted(self._held):
                store_flag(self.vq[index], VQ_READY, 1)
            self._held.clear()

    def link_changed(self, up: bool) -> None:
        self._link = up
        log.info("%s: link %s", self.name, "up" if up else "down")

    def quiesce(self) -> None:
        hook = self.quiesce_hook
        if hook is not None:
            hook(QUIESCE_TIMEOUT_S)

    def iotlb_invalidated(self, iova: int, size: int) -> None:
        self.iotlb_invalidates += 1

    def iotlb_updated(self, iova: int, size: int) -> None:
        self.iotlb_updates += 1
        # A ring parked on an address this grant covers retries (and raises a
        # new miss if it still needs one).  Others stay parked: clearing them
        # on every update (the pages asked ahead arrive as updates too) made
        # each ring re-ask for its own page several times per packet.
        end = iova + size
        if self._asked:  # answered: a later miss on these pages is a new question
            first = iova & ~(PAGE - 1)
            self._asked = {k: t for k, t in self._asked.items() if not first <= k[0] < end}
        for v in range(len(self.vq)):
            if self.vq[v, VQ_MISS_PENDING] and iova <= int(self.vq[v, VQ_MISS_IOVA]) & (2 ** 64 - 1) < end:
                self._miss_sent.pop(v, None)
                store_flag(self.vq[v], VQ_MISS_PENDING, 0)

    def wake_fd(self) -> int:
        return self._wake_fd

    def service(self, session: BackendSession) -> None:
        """Send the IOTLB misses the kernels parked on (and re-send stale ones)."""
        now = time.monotonic()
        for v in range(len(self.vq)):
            if not self.vq[v, VQ_MISS_PENDING]:
                continue
            sent = self._miss_sent.get(v)
            if sent is not None and now - sent < MISS_RESEND_S:
                continue
            iova = int(self.vq[v, VQ_MISS_IOVA]) & (2 ** 64 - 1)
            perm = IotlbPerm.WO if self.vq[v, VQ_MISS_WRITE] else IotlbPerm.RO
            key = (iova & ~(PAGE - 1), int(perm))
            # Not again if the page was just asked for (ahead, or by another
            # ring) and is not answered yet: a second UPDATE of the same page
            # would cost a remap.
            if now - self._asked.get(key, -1.0) >= MISS_RESEND_S and session.send_iotlb_miss(iova, perm):
                self.misses_sent += 1
                self._asked[key] = now
            self._miss_sent[v] = now
            self._ask_ahead(session, v, iova, now)

    def _ask_ahead(self, session: BackendSession, v: int, iova: int, now: float) -> None:
        """Also ask for the ungranted pages of the chains queued behind the
        parked one (missahead.py): one round trip for a ring of fresh
        buffers.  At most MAX_ASK per call, and none once the channel is full."""
        if self.closed:
            return
        n = misses_ahead(self.kernel_state(), v, self._ahead)
        if len(self._asked) > 4096:  # forget old requests (they are re-asked when still needed)
            self._asked = {k: t for k, t in self._asked.items() if now - t < MISS_RESEND_S}
        parked = iova & ~(PAGE - 1)
        asked = 0
        for entry in self._ahead[:n].tolist():
            page, perm = entry & ~1, IotlbPerm.WO if entry & 1 else IotlbPerm.RO
            key = (page, int(perm))
            if page == parked or now - self._asked.get(key, -1.0) < MISS_RESEND_S:
                continue
            if asked == MAX_ASK or not session.send_iotlb_miss(page, perm):
                return
            self._asked[key] = now
            asked += 1
            self.misses_sent += 1
            self.misses_ahead += 1

    # ------------------------------------------------------- fallback interrupts
    def intr_fds(self, queue: int) -> list[int]:
        """The eventfd VM1 kicks when it posts on rx queue ``queue``'s ring
        (its transmit vring 2q+1), or [] if there is none now.  The session
        owns it and replaces it on reconnect: fetch it before every sleep
        (and dup it: it may be closed while the lcore sleeps)."""
        server = self.server
        session = server.session if server is not None else None
        ring = session.vrings.get(2 * queue + 1) if session is not None else None
        fd = ring.kick_fd if ring is not None else -1
        return [fd] if fd >= 0 else []
