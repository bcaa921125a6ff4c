"""The vhost-pci port as a vhost-user device: the session's callbacks.

``VhostPciDevice`` implements ``pmd.vhost_user.device.BackendDevice`` for
the port: it turns what the session says (features, memory, vrings, status,
log, inflight region, IOTLB messages) into the numpy control words its
kernels read (``state.py``), and owns every array of the kernel state.  The
window (``pmd.guestmem.window.Window``) is the device's for the port's whole
life, so the kernel state never changes across reconnects; the session only
remaps it.  The inflight region (INFLIGHT_SHMFD) gets the same treatment: a
reservation of its own, mapped from the front-end's fd while one is set,
recovered from when a ring starts (``inflight.recover``).  IOTLB misses are
``iotlb.py``'s.
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..atomics_py import store_flag
from ..ethdev import new_stats
from ..grace import GraceSet, wait_sections
from ..guestmem.translate import translate
from ..guestmem.views import mem_views
from ..guestmem.vmem import PAGE_SIZE
from ..guestmem.sigbus import Guard, guard
from ..guestmem.window import Window
from ..vhost_user.device import BackendDevice, HandlerError, VringInfo
from ..vhost_user.messages import VHOST_F_LOG_ALL, InflightInfo, ProtocolFeature
from ..virtio.features import (
    MAX_VRING_SIZE, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_F_ANY_LAYOUT, VIRTIO_F_IN_ORDER, VIRTIO_F_IOMMU_PLATFORM,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_VERSION_1,
    VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, has, net_hdr_len,
)
from ..virtio.packed import D_FLAGS, DESC_SIZE, EVENT_ALIGN, POS_MASK
from ..virtio.packed import ring_sizes as packed_ring_sizes
from ..virtio.split import AVAIL_ALIGN, DESC_ALIGN, USED_ALIGN, USED_IDX, ring_sizes
from .chain import VEC_MAX
from .dirty_log import LOG_ADDR, LOG_ON, LOG_SIZE, new_logctl
from .inflight import RESUB_DELIVERED, queue_area, recover
from .inflight_packed import is_published
from .inflight_packed import queue_area as packed_queue_area
from .inflight_packed import recover as recover_packed
from .iotlb import IotlbMisses
from .iotlb_ahead import MAX_AHEAD
from .iotlb_lend import LendPolicy
from .iotlb_serve import IotlbServer
from .state import (
    N_PORT_CTL, N_VQ, N_XSTATS, PEND_CAP, PORT_INFLIGHT, PORT_IOTLB_FD, PORT_IOTLB_LOOKED, PORT_IOTLB_OWNER, PORT_MISS_FD, PORT_RARP_DONE, PORT_RARP_MAC, PORT_RARP_REQ, PORT_WAKE_FD, VQ_AVAIL,
    VQ_AVAIL_LEFT, VQ_CALL_FD, VQ_DESC, VQ_EVENT_IDX, VQ_HDR_LEN, VQ_IF_BASE, VQ_IF_COUNTER, VQ_IOMMU, VQ_LAST_AVAIL,
    VQ_LAST_USED, VQ_MISS_ANSWERED, VQ_MISS_PENDING, VQ_IN_ORDER, VQ_MRG, VQ_NUM, VQ_PACKED, VQ_PARKED, VQ_PENDING,
    VQ_READER, VQ_READY, VQ_RESUB_N, VQ_RESUB_POS, VQ_USED, XS_MISS_AHEAD, XS_MISS_SENT, XS_REPAIRED, XS_RESUBMITTED, VhostPciState,
)
from .txhold import HOLD_CAP
from .vq import flush_inflight
from .vq_packed import write_back_packed

if TYPE_CHECKING:
    from ..vhost_user.backend import BackendSession

log = logging.getLogger("vhostpci.port")

WINDOW_SIZE = 1 << 40
QUIESCE_TIMEOUT_S = 1.0
MAX_TRACKED_MBUFS = 1 << 20
PF = ProtocolFeature
PROTOCOL_FEATURES = (PF.MQ.mask | PF.REPLY_ACK.mask | PF.BACKEND_REQ.mask | PF.STATUS.mask | PF.LOG_SHMFD.mask
                     | PF.INFLIGHT_SHMFD.mask | PF.CONFIGURE_MEM_SLOTS.mask | PF.RARP.mask)
# Virtio features every port offers (IOMMU_PLATFORM and MQ depend on its
# devargs).  IN_ORDER: every kernel uses chains in the order VM1 made them
# available (bad ones and inflight resubmissions included), as it requires.
BASE_FEATURES = ((1 << VIRTIO_F_VERSION_1) | (1 << VHOST_F_LOG_ALL) | (1 << VIRTIO_F_ANY_LAYOUT)
                 | (1 << VIRTIO_NET_F_MRG_RXBUF) | (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX)
                 | (1 << VIRTIO_F_RING_PACKED) | (1 << VIRTIO_F_IN_ORDER))
# Memory regions a front-end may hot-add (CONFIGURE_MEM_SLOTS), as QEMU's
# libvhost-user offers; the window holds a few more rows than that.
MAX_MEM_SLOTS = 509


class VhostPciDevice(BackendDevice):
    """The device behind one vhost-pci port (``queues`` queue pairs).

    ``lcores()`` returns the lcores polling the port, for grace periods
    (None while none do); ``vrings()`` the live session's vring
    table (empty without one): both come from the port."""

    def __init__(self, name: str, queues: int, iommu_support: bool,
                 lcores: Callable[[], GraceSet | None],
                 vrings: Callable[[], dict[int, VringInfo]], iotlb_lcore: bool | str = "auto",
                 iotlb_revoke: str = "auto") -> None:
        self.name = name
        self.queues = queues
        self.iommu_support = iommu_support
        self._lcores = lcores
        self._vrings = vrings
        nvq = 2 * queues
        self.window = Window(WINDOW_SIZE)
        self.vq = np.zeros((nvq, N_VQ), np.int64)
        self.vq[:, VQ_CALL_FD] = -1
        self.vq[:, VQ_IF_BASE] = -1
        self.vq[:, VQ_MISS_ANSWERED] = -1
        self.resub = np.zeros((nvq, MAX_VRING_SIZE), np.uint16)  # untouched pages cost nothing
        self.pend = np.zeros((nvq, PEND_CAP), np.uint16)
        # by mbuf index: the source of what dequeue filled (commit records); an mbuf
        # beyond it goes untracked: at worst delivered twice after a kill, never lost
        self.src = np.zeros(MAX_TRACKED_MBUFS, np.uint64)
        # mbufs parked on a miss (txhold.py); int32 as the burst arrays, so enqueue compiles once
        self.hold = np.zeros((queues, HOLD_CAP), np.int32)
        self.vec = np.zeros((nvq, VEC_MAX, 3), np.int64)  # chain.fill_vec's buffer vector, one per vring
        self.missmsg = np.zeros((nvq, 48), np.uint8)  # the MISS a parking vring sends (iotlb.send_miss)
        self.ahead = np.zeros((nvq, MAX_AHEAD), np.int64)  # the pages it asks ahead (iotlb.ask_ahead)
        self._miss_src = -1  # the session's back-end channel fd our PORT_MISS_FD dup is of
        self.pk = np.zeros((nvq, VEC_MAX, 3), np.int64)  # packed enqueue: one packet's used elements
        self.memo = np.zeros((nvq, 4), np.int64)  # a burst's last translation row (translate_remembered)
        area = nvq * max(queue_area(MAX_VRING_SIZE), packed_queue_area(MAX_VRING_SIZE))
        area = -(-area // PAGE_SIZE) * PAGE_SIZE
        self.inflight = Window(area, table_capacity=1, max_regions=1)
        self._inflight_info: InflightInfo | None = None  # set while the region is mapped
        self._rx_used_at_start: dict[int, int] = {}  # receive vring -> used->idx when it started (this connection)
        self._rx_flags_at_start: dict[int, np.ndarray] = {}  # packed: receive vring -> its flags then
        self.xstats = np.zeros((nvq, N_XSTATS), np.int64)
        self.stats = new_stats(queues)
        self.ctl = np.full(N_PORT_CTL, -1, np.int64)
        self.logctl = new_logctl()
        self._log_all = False
        self._log_mapped = False
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.ctl[PORT_WAKE_FD] = self._wake_fd
        self.ctl[PORT_RARP_REQ] = self.ctl[PORT_RARP_DONE] = self.ctl[PORT_RARP_MAC] = 0
        self.ctl[PORT_IOTLB_OWNER:PORT_IOTLB_LOOKED + 1] = 0  # the control thread's, no stamp yet ...
        self.ctl[PORT_IOTLB_FD] = -1  # ... nor a socket to lend (iotlb_lend.py)
        self._rxq_wake_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(queues)]
        # a SIGBUS in VM1's memory (it shrank a memory fd) wakes the control thread too
        self.window.set_fault_fd(self._wake_fd)
        self.inflight.set_fault_fd(self._wake_fd)
        self._log_guard: Guard | None = None
        self._log_faults = 0  # faults of earlier logs' guards
        self._faults_seen = 0
        self.negotiated = 0  # virtio features (SET_FEATURES)
        self._status = 0  # virtio device status (SET_STATUS), 0: not reported
        self._held: set[int] = set()  # rings set up, waiting for DRIVER_OK
        self.link = False
        self.port_id = 0
        self._kstate: VhostPciState | None = None
        self.iotlb = IotlbMisses(self.vq, self.window.granted_perm)
        self.iotlb_server = IotlbServer(self.window, self.vq, self.iotlb, QUIESCE_TIMEOUT_S,
                                        self.ctl, LendPolicy(iotlb_lcore, name=name), iotlb_revoke, name)
        self.closed = False

    # ---------------------------------------------------------------- state
    def kernel_state(self) -> VhostPciState:
        """The state the port's kernels take, built once: the window and
        inflight reservations and every array in it live as long as the port."""
        if self.closed:
            raise RuntimeError(f"{self.name}: closed")
        if self._kstate is None:
            w = self.window
            self._kstate = VhostPciState(
                mem_views(w.array), w.table, w.table_count, w.gpa_table, w.gpa_table_count, self.logctl, self.vq,
                self.xstats, self.stats, self.ctl, self.port_id, mem_views(self.inflight.array), self.resub,
                self.pend, self.src, self.hold, self.vec, self.pk, self.missmsg, self.iotlb.asked, self.ahead, self.memo,
                self.iotlb_server.bufs())
        return self._kstate

    def warm(self) -> None:
        """Compile (or load from the cache) the kernels the control thread
        calls (inflight recovery and flush, ask-ahead) now: a cold compile
        there takes seconds and would stall the session mid-request."""
        if (self.vq[:, VQ_IF_BASE] < 0).all():  # no-ops with tracking off
            flush_inflight(self.kernel_state(), 0)
            write_back_packed(self.kernel_state(), 0, np.zeros((0, 4), np.uint64))
            self._used_idx(0, 1)
        self.iotlb_server.warm()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._kstate = None
            self._unguard_log()
            self.window.close()  # no guard writes the wake fd after these
            self.inflight.close()
            self.ctl[PORT_WAKE_FD] = -1
            self.ctl[PORT_IOTLB_FD] = -1
            self.iotlb_server.close()
            os.close(self._wake_fd)
            if self.ctl[PORT_MISS_FD] >= 0:  # the kernels have stopped: no grace period to wait for
                os.close(int(self.ctl[PORT_MISS_FD]))
                self.ctl[PORT_MISS_FD] = -1
            for fd in self._rxq_wake_fds:
                os.close(fd)
            self._rxq_wake_fds = []

    # ---------------------------------------------------------- negotiation
    def features(self) -> int:
        f = BASE_FEATURES
        if self.iommu_support:
            f |= 1 << VIRTIO_F_IOMMU_PLATFORM
        if self.queues > 1:
            f |= 1 << VIRTIO_NET_F_MQ
        return f

    def protocol_features(self) -> int:
        return PROTOCOL_FEATURES

    def max_mem_slots(self) -> int:
        return MAX_MEM_SLOTS

    def send_rarp(self, mac: bytes) -> None:
        """SEND_RARP (VM1 migrated): the lcore polling rx queue 0 hands a
        RARP frame for ``mac`` to the forwarding engine (``announce.py``)."""
        self.ctl[PORT_RARP_MAC] = int.from_bytes(mac[:6], "little")
        store_flag(self.ctl, PORT_RARP_REQ, int(self.ctl[PORT_RARP_REQ]) + 1)
        os.eventfd_write(self._rxq_wake_fds[0], 1)  # a sleeping lcore hands it out now
        log.info("%s: SEND_RARP: announcing %s", self.name, ":".join(f"{b:02x}" for b in mac[:6]))

    def announcements(self) -> tuple[int, int]:
        """(RARP frames handed out, SEND_RARP requests received)."""
        return int(self.ctl[PORT_RARP_DONE]), int(self.ctl[PORT_RARP_REQ])

    def num_queues(self) -> int:
        return 2 * self.queues

    def set_features(self, features: int) -> None:
        self.negotiated = features
        self._log_all = has(features, VHOST_F_LOG_ALL)
        self._update_log()

    # ---------------------------------------------------------------- memory
    def log_changed(self, log: mmap.mmap | None) -> None:
        """A new dirty log (SET_LOG_BASE), or None: the old one is about to be
        unmapped, so the kernels stop using it first."""
        if log is None:
            self._log_mapped = False
            self._update_log()
            self.quiesce()
            self.logctl[LOG_ADDR] = self.logctl[LOG_SIZE] = 0
            self._unguard_log()
            return
        anchor = ctypes.c_char.from_buffer(log)
        self.logctl[LOG_ADDR] = ctypes.addressof(anchor)
        del anchor  # the session owns the mapping; no export may keep it alive
        self.logctl[LOG_SIZE] = len(log)
        self._log_guard = guard(int(self.logctl[LOG_ADDR]), len(log), self._wake_fd)
        self._log_mapped = True
        self._update_log()

    def _unguard_log(self) -> None:
        if self._log_guard is not None:
            self._log_faults += self._log_guard.faults
            self._log_guard.release()
            self._log_guard = None

    def _update_log(self) -> None:
        on = self._log_all and self._log_mapped
        if bool(self.logctl[LOG_ON]) != on:
            store_flag(self.logctl, LOG_ON, int(on))
            log.info("%s: dirty logging %s", self.name, "on" if on else "off")

    def memory(self, iommu: bool) -> Window:
        return self.window

    def memory_changed(self, window: Window | None) -> None:
        # The kernels hold the window's tables; nothing else to swap.  No
        # memory: the connection is gone or reset, so is the driver status.
        self._faults_seen = self.memory_faults()  # faults of the old memory are the old session's
        if window is None:
            self._status = 0
            self._held.clear()
            self._rx_used_at_start.clear()
            self._rx_flags_at_start.clear()
            self.iotlb.forget()
            self.iotlb_server.session_ended()
            self._set_miss_fd(-1)

    # ----------------------------------------------------------------- rings
    def vring_ready(self, index: int, vring: VringInfo) -> None:
        addr = vring.addr
        assert addr is not None
        iommu = has(self.negotiated, VIRTIO_F_IOMMU_PLATFORM)
        packed = has(self.negotiated, VIRTIO_F_RING_PACKED)
        desc, avail, used = addr.desc_user_addr, addr.avail_user_addr, addr.used_user_addr
        # packed: avail = the driver area, used = the device area (event suppression)
        sizes = packed_ring_sizes(vring.num) if packed else ring_sizes(vring.num)
        if not iommu:  # ring addresses are VM1's virtual addresses: make them GPAs
            gpas = [self.window.uaddr_to_gpa(a, n) for a, n in zip((desc, avail, used), sizes)]
            if min(gpas) < 0:
                raise HandlerError(f"vring {index} addresses desc={desc:#x} avail={avail:#x} used={used:#x} "
                                   "are outside VM1 memory")
            desc, avail, used = gpas
        aligns = (DESC_ALIGN, EVENT_ALIGN, EVENT_ALIGN) if packed else (DESC_ALIGN, AVAIL_ALIGN, USED_ALIGN)
        for what, a, align in zip(("desc", "avail", "used"), (desc, avail, used), aligns):
            if a % align:
                raise HandlerError(f"vring {index} {what} address {a:#x} is not {align}-aligned")
        row = self.vq[index]
        row[VQ_NUM] = vring.num
        row[VQ_DESC], row[VQ_AVAIL], row[VQ_USED] = (np.int64(np.uint64(a)) for a in (desc, avail, used))
        row[VQ_PACKED] = int(packed)
        row[VQ_IN_ORDER] = int(has(self.negotiated, VIRTIO_F_IN_ORDER))
        # packed: last_avail_idx | avail wrap counter << 15 (GET_VRING_BASE returns it the same way)
        base = vring.base & 0xFFFF
        if packed and base & POS_MASK >= vring.num:
            raise HandlerError(f"vring {index} base {base & POS_MASK} is beyond its {vring.num} descriptors")
        row[VQ_LAST_AVAIL] = row[VQ_LAST_USED] = base
        row[VQ_CALL_FD] = vring.call_fd
        row[VQ_HDR_LEN] = net_hdr_len(self.negotiated)
        row[VQ_IOMMU] = int(iommu)
        row[VQ_MRG] = int(has(self.negotiated, VIRTIO_NET_F_MRG_RXBUF))
        row[VQ_EVENT_IDX] = int(has(self.negotiated, VIRTIO_RING_F_EVENT_IDX))
        row[VQ_MISS_PENDING] = 0
        row[VQ_MISS_ANSWERED] = -1
        row[VQ_AVAIL_LEFT] = row[VQ_PARKED] = 0
        self._recover_inflight(index, vring)
        held = bool(self._status and not self._status & VIRTIO_CONFIG_S_DRIVER_OK)
        log.info("%s: vring %d ready (num %d, base %d, %s%s%s)", self.name, index, vring.num, vring.base,
                 "packed" if packed else f"used->idx {self._used_idx(int(row[VQ_USED]), vring.num)}",
                 ", iommu" if iommu else "",
                 ", starts with DRIVER_OK" if held else "")
        if held:
            self._held.add(index)  # the driver reports its status: wait for DRIVER_OK
            return
        self._start(index)

    def _start(self, index: int) -> None:
        """Publish vring ``index`` to the kernels; a VM1 transmit vring also
        wakes the lcore sleeping on its rx queue's wake-up eventfd."""
        store_flag(self.vq[index], VQ_READY, 1)
        if index % 2:
            os.eventfd_write(self._rxq_wake_fds[index // 2], 1)

    def wake_fd_of(self, queue: int) -> int:
        """The eventfd that wakes an lcore sleeping on rx queue ``queue``
        (``driver.intr_fds``): written when its vring (VM1's transmit vring
        2q+1) starts, and, for queue 0, when a RARP announcement is owed."""
        return self._rxq_wake_fds[queue]

    def vring_stopped(self, index: int) -> int:
        self._held.discard(index)
        store_flag(self.vq[index], VQ_READY, 0)
        self.quiesce()
        given_back = int(flush_inflight(self.kernel_state(), index))
        row = self.vq[index]
        used_idx = "packed" if row[VQ_PACKED] else self._used_idx(int(row[VQ_USED]), int(row[VQ_NUM]))
        log.info("%s: vring %d stopped (last_avail %d, last_used %d, used->idx %s, given back %d)", self.name,
                 index, row[VQ_LAST_AVAIL], row[VQ_LAST_USED], used_idx, given_back)
        return (int(row[VQ_LAST_AVAIL]) - given_back) & 0xFFFF

    # ------------------------------------------------------- inflight (INFLIGHT_SHMFD)
    def inflight_changed(self, fd: int, info: InflightInfo | None) -> None:
        """The session mapped a region (GET/SET_INFLIGHT_FD; ``fd`` stays the
        session's) or, with None, is about to unmap it: kernels stop using
        it before it goes.  Rings pick a new one up when they (re)start."""
        if self._inflight_info is not None:
            for v in range(len(self.vq)):
                store_flag(self.vq[v], VQ_IF_BASE, -1)
            store_flag(self.ctl, PORT_INFLIGHT, 0)
            self.quiesce()
            self.inflight.unmap_all()
            self._inflight_info = None
        if info is None:
            return
        size = -(-info.mmap_size // PAGE_SIZE) * PAGE_SIZE
        if size > self.inflight.size or info.mmap_offset % PAGE_SIZE:
            raise HandlerError(f"inflight region of {info.mmap_size} bytes at offset {info.mmap_offset} "
                               f"does not fit the port's {self.inflight.size}-byte reservation")
        self.inflight.add_region(fd, 0, size, info.mmap_offset, 0)
        self._inflight_info = info
        store_flag(self.ctl, PORT_INFLIGHT, 1)

    def _used_idx(self, addr: int, num: int) -> int | None:
        """used->idx of the used ring at ``addr`` (as the row holds it: a
        GPA, or an IOVA with an IOMMU), None if it is not mapped."""
        w = self.window
        addr &= 2 ** 64 - 1
        used = translate(w.table, w.table_count, np.int64(addr - (1 << 64) if addr >> 63 else addr),
                         ring_sizes(num)[2], False)
        if used < 0:
            return None
        return int(w.array[used + USED_IDX: used + USED_IDX + 2].view(np.uint16)[0])

    def _rx_used_before(self, vring: int) -> int | None:
        """A receive ring's used->idx as the killed back-end left it: its
        value when the ring started (this back-end may have published since),
        or the ring's own if it has not started yet."""
        if vring % 2 or vring >= len(self.vq):
            return None
        if vring in self._rx_used_at_start:
            return self._rx_used_at_start[vring]
        ring = self._vrings().get(vring)
        if ring is None or ring.addr is None or not ring.num:
            return None
        addr = ring.addr.used_user_addr
        if not has(self.negotiated, VIRTIO_F_IOMMU_PLATFORM):
            addr = self.window.uaddr_to_gpa(addr, ring_sizes(ring.num)[2])
            if addr < 0:
                return None
        return self._used_idx(addr, ring.num)

    def inflight_queue_area(self, queue_size: int, packed: bool) -> int:
        """The layouts the kernels write: the spec's, and for packed rings
        the commit records after it (``inflight_packed.py``)."""
        return packed_queue_area(queue_size) if packed else queue_area(queue_size)

    def _inflight_area(self, index: int, vring: VringInfo) -> int:
        """Ring ``index``'s area in the region, or -1 (none, or it does not cover the ring)."""
        info = self._inflight_info
        if info is None:
            return -1
        area = self.inflight_queue_area(info.queue_size, bool(self.vq[index, VQ_PACKED]))
        if index >= info.num_queues or vring.num > info.queue_size or (index + 1) * area > info.mmap_size:
            log.warning("%s: inflight region (%d queues of %d) does not cover vring %d of %d; untracked",
                        self.name, info.num_queues, info.queue_size, index, vring.num)
            return -1
        return index * area

    def _recover_inflight(self, index: int, vring: VringInfo) -> None:
        """Before ring ``index`` starts: track it if a region covers it, and
        pick up what a killed predecessor left in flight (``inflight.recover``):
        last_avail_idx becomes used->idx plus the heads still in flight, which
        the kernel takes again first, in counter order."""
        row = self.vq[index]
        row[VQ_IF_BASE] = -1
        row[VQ_PENDING] = row[VQ_RESUB_N] = row[VQ_RESUB_POS] = 0
        base = self._inflight_area(index, vring)
        if base < 0:
            return
        if row[VQ_PACKED]:
            self._recover_inflight_packed(index, vring, base)
            return
        used_idx = self._used_idx(int(row[VQ_USED]), vring.num)
        if used_idx is None:
            log.warning("%s: vring %d used ring not mapped at start; inflight untracked", self.name, index)
            return
        if index % 2 == 0:
            self._rx_used_at_start[index] = used_idx
        heads, repaired, counter = recover(self.inflight.array, base, vring.num, used_idx, self.negotiated,
                                           index % 2 == 1, self._rx_used_before)  # odd vrings: VM1 transmit
        self._resubmit(index, heads, repaired, counter)
        # taken heads are a prefix of the available entries after used->idx
        row[VQ_LAST_AVAIL] = (used_idx + len(heads)) & 0xFFFF
        row[VQ_LAST_USED] = used_idx
        row[VQ_IF_BASE] = base
        if heads or repaired or used_idx != vring.base & 0xFFFF:
            log.info("%s: vring %d inflight: %d resubmitted, %d repaired, used %d, base %d", self.name, index,
                     len(heads), repaired, used_idx, vring.base)

    def _resubmit(self, index: int, heads: list[int], repaired: int, counter: int) -> None:
        row = self.vq[index]
        self.resub[index, :len(heads)] = heads
        row[VQ_RESUB_N] = len(heads)
        row[VQ_IF_COUNTER] = counter
        self.xstats[index, XS_RESUBMITTED] += sum(1 for h in heads if not h & RESUB_DELIVERED)
        self.xstats[index, XS_REPAIRED] += repaired

    def _recover_inflight_packed(self, index: int, vring: VringInfo, base: int) -> None:
        """``_recover_inflight`` for a packed ring (``inflight_packed.recover``):
        the ring starts from the region's used position, where the chains
        still in flight are written back, in counter order (a transmit
        ring's resubmitted, a receive ring's filled again)."""
        row = self.vq[index]
        flags = self._ring_flags(index)
        if flags is None:
            log.warning("%s: vring %d ring not mapped at start; inflight untracked", self.name, index)
            return
        if index % 2 == 0:
            self._rx_flags_at_start[index] = flags
        got = recover_packed(self.inflight.array, base, vring.num, vring.base & 0xFFFF, self.negotiated,
                             index % 2 == 1, lambda i: int(flags[i]), self._rx_published)
        row[VQ_LAST_AVAIL] = row[VQ_LAST_USED] = got.pos
        if not write_back_packed(self.kernel_state(), index, got.descs):
            log.warning("%s: vring %d ring not mapped at start; inflight untracked", self.name, index)
            return
        self._resubmit(index, got.heads, got.repaired, got.next_counter)
        row[VQ_IF_BASE] = base
        if got.heads or got.repaired or got.pos != vring.base & 0xFFFF:
            log.info("%s: vring %d inflight: %d resubmitted, %d repaired, position %#x, base %#x", self.name,
                     index, len(got.heads), got.repaired, got.pos, vring.base)

    def _ring_flags(self, index: int) -> np.ndarray | None:
        """A copy of packed ring ``index``'s descriptor flags, None if it is not mapped."""
        w = self.window
        num = int(self.vq[index, VQ_NUM])
        desc = translate(w.table, w.table_count, self.vq[index, VQ_DESC], packed_ring_sizes(num)[0], False)
        if desc < 0:
            return None
        return w.array[desc: desc + DESC_SIZE * num].view(np.uint16)[D_FLAGS // 2::DESC_SIZE // 2].copy()

    def _rx_published(self, vring: int, pos: int) -> bool | None:
        """Whether packed receive ring ``vring`` showed position ``pos``
        published when it started (this back-end may have written since),
        or now if it has not started yet."""
        if vring % 2 or vring >= len(self.vq) or not self.vq[vring, VQ_PACKED]:
            return None
        flags = self._rx_flags_at_start.get(vring)
        if flags is None:
            flags = self._ring_flags(vring) if self.vq[vring, VQ_NUM] else None
        if flags is None or (pos & POS_MASK) >= len(flags):
            return None
        return is_published(int(flags[pos & POS_MASK]), pos)

    def vring_call_changed(self, index: int, fd: int) -> None:
        """A new call eventfd (the session closes the old one after quiesce)."""
        self.vq[index, VQ_CALL_FD] = fd

    def status_changed(self, status: int) -> None:
        """SET_STATUS: rings set up before DRIVER_OK start only with it (as
        DPDK's vhost library does: the driver may still be filling them)."""
        self._status = status
        if status & VIRTIO_CONFIG_S_DRIVER_OK:
            for index in sorted(self._held):
                self._start(index)
            self._held.clear()

    def link_changed(self, up: bool) -> None:
        self.link = up
        log.info("%s: link %s", self.name, "up" if up else "down")

    def quiesce(self) -> None:
        lcores = self._lcores()
        if lcores is not None:
            lcores.wait(QUIESCE_TIMEOUT_S)

    def quiesce_grants(self) -> None:
        """Only the vrings whose burst is inside the window (state.VQ_READER)."""
        pending = wait_sections(self.vq, VQ_READER, int(QUIESCE_TIMEOUT_S * 1e9))
        if pending:
            rings = [v for v in range(len(self.vq)) if pending >> min(v, 62) & 1]
            raise TimeoutError(f"vrings {rings} stayed inside a burst over {QUIESCE_TIMEOUT_S} s")

    # ----------------------------------------------------------------- IOTLB
    def iotlb_updated(self, iova: int, size: int) -> None:
        self.iotlb.updated(iova, size)

    def iotlb_invalidated(self, iova: int, size: int) -> None:
        self.iotlb.invalidated(iova, size)

    def iotlb_xstats(self) -> dict[str, int]:
        """IOTLB counters: misses asked, and VM1's messages by either path."""
        out = self.iotlb.xstats()
        out["iotlb_miss_requests"] += int(self.xstats[:, XS_MISS_SENT].sum() + self.xstats[:, XS_MISS_AHEAD].sum())
        out["iotlb_updates"] += self.iotlb_server.updates
        out["iotlb_invalidates"] += self.iotlb_server.invalidates
        out.update(self.iotlb_server.profile())
        return out

    def iotlb_fast(self, fd: int, reply: str, wait_fds: Sequence[int] = (), wait_s: float = 0.0) -> int:
        if self.closed:
            return 0
        return self.iotlb_server.serve(fd, reply, wait_fds, wait_s)

    def wake_fd(self) -> int:
        return self._wake_fd

    def memory_faults(self) -> int:
        """SIGBUS faults taken in VM1's memory (window, inflight region, dirty log)."""
        log_faults = self._log_faults + (self._log_guard.faults if self._log_guard is not None else 0)
        return self.window.faults[0] + self.inflight.faults[0] + log_faults

    def _vanished(self) -> str | None:
        """Why the session must go if VM1's memory vanished since the last
        check (a SIGBUS the guard turned into a zero page), else None."""
        total = self.memory_faults()
        if total <= self._faults_seen:
            return None
        self._faults_seen = total
        n, offset = self.window.faults
        where = f" (last at window offset {offset:#x})" if offset >= 0 else ""
        return (f"VM1's memory vanished under the port: {n} SIGBUS fault(s){where}; the front-end shrank a "
                "memory fd after its table was accepted")

    def service(self, session: BackendSession) -> None:
        if self.closed:
            return
        why = self._vanished()
        if why is not None:
            session.close(why, logging.ERROR)  # rings stopped, memory (and the zero pages) unmapped
            return
        fd = session.backend_channel_fd()
        if fd != self._miss_src:
            self._set_miss_fd(fd)
        self.iotlb.service(session)

    def _set_miss_fd(self, fd: int) -> None:
        """Kernels send their MISSes on a dup of ``fd`` (-1: not at all).
        The old dup is closed only after a grace period: no lcore is still
        sending on it (nor on whatever else would reuse its number)."""
        old = int(self.ctl[PORT_MISS_FD])
        store_flag(self.ctl, PORT_MISS_FD, -1)
        if old >= 0:
            try:
                self.quiesce()
            except TimeoutError as e:
                log.error("%s: closing the MISS channel: %s; closing anyway", self.name, e)
            os.close(old)
        self._miss_src = fd
        if fd >= 0:
            store_flag(self.ctl, PORT_MISS_FD, os.dup(fd))
