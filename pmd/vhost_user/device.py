"""The device contract of a vhost-user back-end: what a device implements.

Modelled on rust-vmm's ``VhostUserBackend`` trait: ``BackendDevice`` is one
base class with a documented default for every hook, so the session
(``backend.py``) calls hooks unconditionally and never asks whether a device
has one.  Every call comes from the control thread.

The session does not build the device's memory either: ``memory(iommu)``
returns the object VM1's memory is mapped into (``GuestMemory``; the
vhost-pci port's is a ``pmd.guestmem.window.Window`` its kernels hold for
the port's whole life).  The session drives it -- regions on
SET_MEM_TABLE, grants on IOTLB messages, emptied on reset and disconnect --
and never closes it.
"""
from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .messages import InflightInfo, VringAddr

if TYPE_CHECKING:  # only for annotations: the session imports this module
    from .backend import BackendSession

__all__ = ["BackendDevice", "GuestMemory", "HandlerError", "VringInfo"]


class HandlerError(Exception):
    """A well-formed request the session cannot honour (bad index, region, ...).

    Answered with a REPLY_ACK failure when one is due, else the connection
    is closed (vhost-user has no other way to say no)."""


@dataclass
class VringInfo:
    """What the front-end told us about one vring.

    The session owns ``kick_fd``/``call_fd``/``err_fd`` (-1: none, or NOFD:
    poll instead); a device may use them until ``vring_stopped``/``quiesce``
    but must not close them.  ``addr`` holds QEMU virtual addresses, or IOVAs
    when VIRTIO_F_IOMMU_PLATFORM was negotiated (translate with the memory).
    """

    index: int
    num: int = 0
    base: int = 0  # last_avail_idx the ring starts from (SET_VRING_BASE)
    addr: VringAddr | None = None
    kick_fd: int = -1
    kick_set: bool = False  # SET_VRING_KICK seen (with an fd or NOFD)
    call_fd: int = -1
    err_fd: int = -1
    enabled: bool = False
    started: bool = False

    def close_fds(self) -> None:
        for name in ("kick_fd", "call_fd", "err_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, -1)


class GuestMemory(Protocol):
    """What the session needs of the memory a device hands it.

    Removing memory follows RCU order: the rows go first, then ``quiesce()``
    (lcores finished every lookup made with them), then the pages are
    revoked; the memory calls ``quiesce`` itself between the two.
    """

    iommu: bool

    def reset(self, iommu: bool, *, quiesce: Callable[[], None] | None = None) -> None:
        """Drop everything mapped and switch to ``iommu`` mode (SET_MEM_TABLE)."""

    def add_region(self, fd: int, gpa: int, size: int, mmap_offset: int, userspace_addr: int) -> object:
        """Register one memory-table region (``fd`` stays the caller's); ValueError/OSError if refused."""

    def remove_region(self, gpa: int, size: int, userspace_addr: int, *,
                      quiesce: Callable[[], None] | None = None) -> object:
        """Drop one region (REM_MEM_REG) in RCU order; ValueError if there is none such."""

    def unmap_all(self, *, quiesce: Callable[[], None] | None = None) -> None:
        """Drop every region and grant (memory is gone)."""

    def iotlb_update(self, iova: int, size: int, uaddr: int, perm: int, *,
                     quiesce: Callable[[], None] | None = None) -> int:
        """Grant ``[iova, iova+size)`` -> ``uaddr`` with ``perm``; ValueError if refused."""

    def iotlb_invalidate(self, iova: int, size: int, *, quiesce: Callable[[], None] | None = None) -> None:
        """Revoke ``[iova, iova+size)``: inaccessible when this returns."""


class BackendDevice:
    """A vhost-user device.  Override what the device needs; each default
    below says what the session does without an override."""

    # ---- negotiation ----------------------------------------------------
    def features(self) -> int:
        """Virtio feature bits offered (the session adds VHOST_USER_F_PROTOCOL_FEATURES).
        Default: none."""
        return 0

    def protocol_features(self) -> int:
        """``ProtocolFeature`` mask offered.  Default: none."""
        return 0

    def num_queues(self) -> int:
        """Number of vrings (GET_QUEUE_NUM; vring indices must be below it).  Default: 2."""
        return 2

    def set_features(self, features: int) -> None:
        """The negotiated virtio features (may include VHOST_F_LOG_ALL).  Default: ignored."""

    def status_changed(self, status: int) -> None:
        """SET_STATUS (virtio device status byte).  Default: ignored."""

    def set_mtu(self, mtu: int) -> None:
        """NET_SET_MTU.  Default: ignored (the session records it)."""

    def send_rarp(self, mac: bytes) -> None:
        """SEND_RARP: VM1 migrated, announce ``mac`` on its behalf.  Default: ignored."""

    def get_config(self, offset: int, size: int) -> bytes:
        """GET_CONFIG.  Default: no config space (the request is refused)."""
        raise HandlerError("the device has no config space")

    def set_config(self, offset: int, data: bytes, flags: int) -> None:
        """SET_CONFIG.  Default: no writable config space (refused)."""
        raise HandlerError("the device has no writable config space")

    # ---- memory ---------------------------------------------------------
    def memory(self, iommu: bool) -> GuestMemory:
        """The memory SET_MEM_TABLE maps VM1's regions into (and IOTLB
        messages grant pages of when ``iommu``).  The session ``reset``s it
        for each table and empties it when memory goes; the device owns and
        closes it.  Default: the device maps no guest memory (refused)."""
        raise HandlerError("the device maps no guest memory")

    def max_mem_slots(self) -> int:
        """Memory regions the device can hold (GET_MAX_MEM_SLOTS; with
        CONFIGURE_MEM_SLOTS offered, the front-end adds and removes them one
        at a time, ADD_MEM_REG / REM_MEM_REG).  Default: 0 (not supported:
        GET_MAX_MEM_SLOTS is refused)."""
        return 0

    def memory_changed(self, memory: GuestMemory | None) -> None:
        """``memory`` holds a new table, or a region was added to or removed
        from it (None: memory is gone).  Default: ignored."""

    def iotlb_updated(self, iova: int, size: int) -> None:
        """An IOTLB UPDATE was mapped (retry what waited for it).  Default: ignored."""

    def iotlb_invalidated(self, iova: int, size: int) -> None:
        """An IOTLB INVALIDATE was unmapped and quiesced.  Default: ignored."""

    def iotlb_fast(self, fd: int, reply: str, wait_fds: Sequence[int] = (), wait_s: float = 0.0) -> int:
        """Take the IOTLB messages at the head of the front-end's socket
        ``fd`` yourself (a compiled path; the session calls this when
        memory is set and IOMMU_PLATFORM negotiated).
        Consume only complete, well-formed UPDATE/INVALIDATE messages you
        handled exactly as the session's path would (mapping, quiescence,
        ``iotlb_updated`` effects), send their reply as ``reply`` says
        (``"always"``, ``"on_need"``: when the message has NEED_REPLY,
        ``"never"``), and leave anything else unread for the session.
        With ``wait_s`` > 0 the control thread has nothing else to do for
        that long: you may wait for more messages and take them too, but
        return as soon as one of ``wait_fds`` is readable or a message you
        do not take is at the head.  Returns how many were consumed.
        Default: 0 at once (the session reads all)."""
        return 0

    def log_changed(self, log: mmap.mmap | None) -> None:
        """A new dirty log (SET_LOG_BASE), or None: the old one is about to
        be unmapped, stop using it first.  Default: ignored."""

    def inflight_changed(self, fd: int, info: InflightInfo | None) -> None:
        """An inflight region is mapped (GET/SET_INFLIGHT_FD; ``fd`` stays
        the session's), or None: it is about to go.  Default: ignored."""

    def inflight_queue_area(self, queue_size: int, packed: bool) -> int:
        """Bytes of one vring's part of the inflight region GET_INFLIGHT_FD
        allocates.  Default: the spec's layout (vhost-user.rst "Inflight I/O
        tracking": a 16-byte header and 16-byte DescStateSplit per
        descriptor, or 32 and 32 for packed rings), each aligned to 64."""
        header, entry = (32, 32) if packed else (16, 16)
        return -(-(header + entry * queue_size) // 64) * 64

    # ---- rings ----------------------------------------------------------
    def vring_ready(self, index: int, vring: VringInfo) -> None:
        """Ring ``index`` started: addr, kick and enable are set.  May raise
        HandlerError (the ring stays stopped).  Default: ignored."""

    def vring_stopped(self, index: int) -> int | None:
        """Ring ``index`` stops; return its last_avail_idx, and not before
        the lcores stopped touching it.  Default: None (the session answers
        the base it was given)."""
        return None

    def vring_call_changed(self, index: int, fd: int) -> None:
        """A started ring got a new call eventfd (the old one is closed after
        a quiesce).  Default: ignored."""

    def link_changed(self, up: bool) -> None:
        """Up when a ring started or DRIVER_OK, down on stop/disconnect.  Default: ignored."""

    def quiesce(self) -> None:
        """Return once every lcore using the device passed a quiescent point;
        TimeoutError if not in time.  Default: nothing to wait for."""

    def quiesce_grants(self) -> None:
        """Return once nothing still uses an IOTLB translation looked up
        before this call (the finer wait of an invalidation); TimeoutError
        if not in time.  Default: ``quiesce()``."""
        self.quiesce()

    # ---- control-thread service -----------------------------------------
    def wake_fd(self) -> int:
        """An eventfd the device's kernels write when they need the control
        thread; the server then calls ``service``.  Default: -1 (none)."""
        return -1

    def service(self, session: BackendSession) -> None:
        """Work the kernels asked for (IOTLB misses to send, ...), run on the
        control thread when ``wake_fd`` fires and at least every
        ``BackendServer.POLL`` seconds while a session is live.  Default: nothing."""
