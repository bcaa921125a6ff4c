"""The vhost-user back-end session: protocol state machine, no device logic.

Modelled on rust-vmm's vhost-user-backend: this module speaks the protocol
(QEMU ``docs/interop/vhost-user.rst``, back-end side) and a device plugs in
through the ``BackendDevice`` contract (``device.py``: every hook has a
default, so the session calls each one unconditionally).  No virtio-net, no
Numba here.

- ``BackendSession``: one connected front-end.  ``handle_one(timeout)`` reads
  one message, dispatches it and replies.  ``window`` is the device's memory
  (``device.memory(iommu)``) while a memory table is set; the session drives
  it and never closes it.  It owns every fd the front-end sent (kick/call/err,
  log, inflight, the back-end request channel) and closes all of it on
  disconnect.
- ``BackendServer`` (``server.py``): the connection manager that runs
  sessions in a control thread.

Unmap safety: memory goes away in RCU
order -- the window drops the translation rows, then the session calls
``device.quiesce()`` (returns once every lcore using the port has passed a
quiescent point: lookups made with the old rows are finished), then the window
revokes the pages.  The window calls the quiesce itself between the two
(``quiesce=`` on ``iotlb_invalidate``/``iotlb_update``/``unmap_all``/
``reset``).  GET_VRING_BASE, RESET_OWNER/RESET_DEVICE, stopping a ring and the
teardown of a connection quiesce after stopping the rings.  If quiesce raises
``TimeoutError`` the session logs it and carries on: a stuck lcore must not
hang the control thread (nor the front-end waiting for the reply).
"""
from __future__ import annotations

import logging
import mmap
import os
import threading
from collections import deque
from typing import Callable, Sequence

from ..shm import create_shared, release_shared
from ..virtio.features import MAX_VRING_SIZE, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_F_IOMMU_PLATFORM, VIRTIO_F_RING_PACKED
from .codec import Channel, Message
from .device import BackendDevice, GuestMemory, HandlerError, VringInfo
from .errors import PeerClosed, Timeout, VhostUserError
from .messages import (
    FLAG_NEED_REPLY,
    VHOST_F_LOG_ALL,
    VHOST_USER_F_PROTOCOL_FEATURES,
    BackendReq,
    Config,
    Empty,
    FrontendReq,
    InflightInfo,
    IotlbMsg,
    IotlbPerm,
    IotlbType,
    LogRegion,
    MemTable,
    Payload,
    ProtocolFeature,
    SingleMemoryRegion,
    U64,
    VringAddr,
    VringFd,
    VringState,
    expects_reply,
)

__all__ = ["BackendSession"]

log = logging.getLogger(__name__)

F = FrontendReq


def _map_shared_fd(fd: int, size: int, offset: int, what: str) -> mmap.mmap:
    """Map ``size`` bytes of a front-end's fd read-write shared; on failure
    close the fd and raise HandlerError naming ``what``."""
    try:
        held = os.fstat(fd).st_size
        # checked here, not left to mmap: a 64-bit size or offset past
        # ssize_t would surface as an OverflowError, not as a refusal
        if size <= 0 or offset % mmap.ALLOCATIONGRANULARITY or offset + size > held:
            raise HandlerError(f"{what} size {size} offset {offset:#x} unusable (the fd holds {held} bytes)")
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
    except BaseException as e:
        os.close(fd)
        if isinstance(e, OSError):
            raise HandlerError(f"{what}: cannot map {size} bytes at {offset:#x}: {e}") from e
        raise


class BackendSession:
    """One front-end connection: reads requests, keeps the state, replies.

    ``handle_one`` never raises for anything the peer does: a malformed
    message closes the connection (``closed`` becomes True, ``close_reason``
    says what arrived); a request that cannot be honoured gets a REPLY_ACK
    failure when one is due, else closes the connection too.
    """

    def __init__(
        self,
        channel: Channel,
        device: BackendDevice,
        *,
        name: str = "vhost-user",
        history: int = 4096,
    ) -> None:
        self.channel = channel
        self.device = device
        self.name = name
        self.window: GuestMemory | None = None  # the device's memory while a table is set
        self.backend_channel: Channel | None = None
        self._backend_lock = threading.Lock()
        self.features = 0  # negotiated (SET_FEATURES)
        self.features_set = False
        self.protocol_features = 0  # negotiated (SET_PROTOCOL_FEATURES)
        self.owner = False
        self.status = 0
        self.mtu = 0
        self.rarp_mac: bytes | None = None
        self.vrings: dict[int, VringInfo] = {}
        self.link_up = False
        self.log: mmap.mmap | None = None  # dirty log (SET_LOG_BASE)
        self.log_fd = -1  # SET_LOG_FD (log eventfd)
        self.inflight: mmap.mmap | None = None
        self.inflight_fd = -1
        self.inflight_info: InflightInfo | None = None
        self.closed = False
        self.close_reason = ""
        self.history: deque[int] = deque(maxlen=history)  # request codes handled, in order
        self._handlers: dict[int, Callable[[Message], Payload | tuple[Payload, list[int]] | None]] = {
            F.GET_FEATURES: self._get_features,
            F.SET_FEATURES: self._set_features,
            F.SET_OWNER: self._set_owner,
            F.RESET_OWNER: self._reset,
            F.RESET_DEVICE: self._reset,
            F.SET_MEM_TABLE: self._set_mem_table,
            F.SET_LOG_BASE: self._set_log_base,
            F.SET_LOG_FD: self._set_log_fd,
            F.SET_VRING_NUM: self._set_vring_num,
            F.SET_VRING_ADDR: self._set_vring_addr,
            F.SET_VRING_BASE: self._set_vring_base,
            F.GET_VRING_BASE: self._get_vring_base,
            F.SET_VRING_KICK: self._set_vring_kick,
            F.SET_VRING_CALL: self._set_vring_call,
            F.SET_VRING_ERR: self._set_vring_err,
            F.GET_PROTOCOL_FEATURES: self._get_protocol_features,
            F.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            F.GET_QUEUE_NUM: self._get_queue_num,
            F.SET_VRING_ENABLE: self._set_vring_enable,
            F.SEND_RARP: self._send_rarp,
            F.NET_SET_MTU: self._net_set_mtu,
            F.SET_BACKEND_REQ_FD: self._set_backend_req_fd,
            F.IOTLB_MSG: self._iotlb_msg,
            F.GET_CONFIG: self._get_config,
            F.SET_CONFIG: self._set_config,
            F.GET_INFLIGHT_FD: self._get_inflight_fd,
            F.SET_INFLIGHT_FD: self._set_inflight_fd,
            F.GET_MAX_MEM_SLOTS: self._get_max_mem_slots,
            F.ADD_MEM_REG: self._add_mem_reg,
            F.REM_MEM_REG: self._rem_mem_reg,
            F.SET_STATUS: self._set_status,
            F.GET_STATUS: self._get_status,
        }

    # ------------------------------------------------------------ main loop
    def handle_one(self, timeout: float | None = None) -> str:
        """Read and handle one message.  Returns ``"idle"`` (nothing arrived
        within ``timeout``), ``"ok"`` or ``"closed"`` (the connection is gone
        and everything it held is released)."""
        if self.closed:
            return "closed"
        if self.window is not None and self.iommu and self._iotlb_fast() and not timeout:
            # the device took what was readable; reading again now would hand a message
            # that arrives meanwhile to the slow path: the next select finds it
            return "ok"
        try:
            msg = self.channel.recv_message(timeout)
        except Timeout as e:
            if e.in_sync:
                return "idle"
            self.close(f"peer stalled mid-message: {e}")
            return "closed"
        except PeerClosed as e:
            self.close(f"peer closed: {e}")
            return "closed"
        except VhostUserError as e:
            self.close(f"malformed message from the front-end: {e}", logging.WARNING)
            return "closed"
        except OSError as e:
            self.close(f"socket error: {e}")
            return "closed"
        with msg:
            self.history.append(int(msg.request))
            self._dispatch(msg)
        return "closed" if self.closed else "ok"

    def wait_iotlb(self, wait_fds: Sequence[int], timeout: float) -> None:
        """The control thread has nothing to do for ``timeout`` s but wait on
        this socket and ``wait_fds``: the device may serve VM1's IOTLB
        messages meanwhile (``BackendDevice.iotlb_fast``); returns early when
        something needs this session's path or one of ``wait_fds``."""
        if not self.closed and self.window is not None and self.iommu:
            self._iotlb_fast(wait_fds, timeout)

    def _iotlb_fast(self, wait_fds: Sequence[int] = (), wait_s: float = 0.0) -> int:
        """Let the device take the IOTLB messages at the head of the socket
        (``BackendDevice.iotlb_fast``); they count as handled here."""
        pf = self.protocol_features
        reply = ("always" if expects_reply(F.IOTLB_MSG, 0, pf) else
                 "on_need" if expects_reply(F.IOTLB_MSG, FLAG_NEED_REPLY, pf) else "never")
        try:
            n = self.device.iotlb_fast(self.channel.fileno(), reply, wait_fds, wait_s)
        except Exception as e:  # a device bug: the session's own path takes the messages
            log.error("%s: device iotlb_fast failed: %s: %s", self.name, type(e).__name__, e)
            return 0
        self.history.extend([int(F.IOTLB_MSG)] * n)
        return n

    def _dispatch(self, msg: Message) -> None:
        log.debug("%s: read message VHOST_USER_%s", self.name, msg.name)
        handler = self._handlers.get(msg.request)
        try:
            if handler is None:
                raise HandlerError(f"{msg.name} is not supported by this back-end")
            result = handler(msg)
        except (HandlerError, ValueError, OSError, RuntimeError, VhostUserError) as e:
            self._fail(msg, f"{msg.name}: {e}")
            return
        except Exception as e:  # a device bug: never a traceback out of the control thread
            log.exception("%s: %s: unexpected error", self.name, msg.name)
            self._fail(msg, f"{msg.name}: unexpected {type(e).__name__}: {e}")
            return
        if self.closed:
            return
        if not expects_reply(msg.request, msg.flags, self.protocol_features):
            return
        payload, fds = (result if isinstance(result, tuple) else (result, []))
        try:
            if payload is None:
                self.channel.send_ack(msg, True)
            else:
                self.channel.send_reply(msg, payload, fds)
        except (VhostUserError, OSError, ValueError) as e:
            self.close(f"cannot reply to {msg.name}: {e}")

    def _fail(self, msg: Message, why: str) -> None:
        """A request could not be honoured: nack it if an ack is due, else close."""
        reply_acked = msg.need_reply and self.protocol_features & ProtocolFeature.REPLY_ACK.mask
        try:
            if msg.request == F.IOTLB_MSG or reply_acked:
                log.warning("%s: %s (nack)", self.name, why)
                self.channel.send_ack(msg, False)
                return
            if msg.request == F.GET_CONFIG:
                log.warning("%s: %s (empty reply)", self.name, why)
                self.channel.send_reply(msg, Empty())
                return
        except (VhostUserError, OSError, ValueError) as e:
            why = f"{why}; and the failure reply could not be sent: {e}"
        self.close(why, logging.WARNING)

    # ------------------------------------------------------------ teardown
    def close(self, reason: str = "closed by the back-end", level: int = logging.INFO) -> None:
        """Release everything the connection holds; idempotent, never raises."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        log.log(level, "%s: connection closed: %s", self.name, reason)
        self._stop_all_rings()
        self._set_link(False)
        self._quiesce("disconnect")
        self._drop_memory("disconnect")
        for ring in self.vrings.values():
            ring.close_fds()
        self.vrings.clear()
        self._drop_log()
        self._set_log_fd_value(-1)
        self._drop_inflight()
        with self._backend_lock:
            if self.backend_channel is not None:
                self.backend_channel.close()
                self.backend_channel = None
        self.channel.close(shutdown=True)  # (a device may have handed a dup to a helper: the stand-in)

    def _safe(self, what: str, fn: Callable, *args):
        try:
            return fn(*args)
        except Exception as e:
            log.error("%s: device %s failed: %s: %s", self.name, what, type(e).__name__, e)
            return None

    def _quiesce(self, why: str, grants: bool = False) -> None:
        try:
            (self.device.quiesce_grants if grants else self.device.quiesce)()
        except TimeoutError as e:
            log.error("%s: quiesce before %s timed out (%s); continuing", self.name, why, e)
        except Exception as e:
            log.error("%s: quiesce before %s failed: %s: %s", self.name, why, type(e).__name__, e)

    def _stop_all_rings(self) -> None:
        for index, ring in self.vrings.items():
            if ring.started:
                ring.started = False
                self._safe("vring_stopped", self.device.vring_stopped, index)

    def _quiescer(self, why: str, grants: bool = False) -> Callable[[], None]:
        """The ``quiesce`` a Window calls between dropping rows and revoking
        pages (``grants``: only IOTLB grants changed, the device's finer wait)."""
        return lambda: self._quiesce(why, grants)

    def _drop_memory(self, why: str) -> None:
        """Memory is gone: tell the device, empty its memory (rows, quiesce,
        revoke); the device keeps it for the next front-end."""
        win = self.window
        if win is None:
            return
        self._safe("memory_changed", self.device.memory_changed, None)
        self.window = None
        try:
            win.unmap_all(quiesce=self._quiescer(why))
        except (OSError, ValueError) as e:
            log.error("%s: emptying the window: %s", self.name, e)

    def _drop_log(self) -> None:
        if self.log is not None:
            old, self.log = self.log, None
            self._safe("log_changed", self.device.log_changed, None)
            release_shared(old, -1, f"{self.name}: dirty log")

    def _set_log_fd_value(self, fd: int) -> None:
        if self.log_fd >= 0:
            os.close(self.log_fd)
        self.log_fd = fd

    def _drop_inflight(self) -> None:
        if self.inflight is not None:
            self._inflight_hook(-1, None)  # the device stops using it before it is unmapped
        release_shared(self.inflight, self.inflight_fd, f"{self.name}: inflight area")
        self.inflight, self.inflight_fd, self.inflight_info = None, -1, None

    # ------------------------------------------------------------ link / rings
    @property
    def iommu(self) -> bool:
        return bool(self.features & (1 << VIRTIO_F_IOMMU_PLATFORM))

    def _set_link(self, up: bool) -> None:
        if up != self.link_up:
            self.link_up = up
            self._safe("link_changed", self.device.link_changed, up)

    def _update_link(self) -> None:
        # With the STATUS protocol feature the driver says when it is done
        # (DRIVER_OK: DPDK's virtio-user posts its buffers before); without
        # it a started ring is all we get.
        if self.protocol_features & ProtocolFeature.STATUS.mask and self.status:
            up = bool(self.status & VIRTIO_CONFIG_S_DRIVER_OK)
        else:
            up = any(r.started for r in self.vrings.values()) or bool(self.status & VIRTIO_CONFIG_S_DRIVER_OK)
        self._set_link(up)

    def _ring(self, index: int) -> VringInfo:
        n = self.device.num_queues()
        if not 0 <= index < n:
            raise HandlerError(f"vring index {index} out of range (the device has {n} vrings)")
        ring = self.vrings.get(index)
        if ring is None:
            ring = self.vrings[index] = VringInfo(index)
        return ring

    def _ring_enabled(self, ring: VringInfo) -> bool:
        # Without VHOST_USER_F_PROTOCOL_FEATURES rings are enabled on start.
        return ring.enabled or not self.features & (1 << VHOST_USER_F_PROTOCOL_FEATURES)

    def _maybe_start(self, ring: VringInfo) -> None:
        if ring.started or not ring.kick_set or ring.addr is None or not self._ring_enabled(ring):
            return
        self.device.vring_ready(ring.index, ring)  # may refuse (HandlerError): the ring stays stopped
        ring.started = True
        self._update_link()

    def _stop(self, ring: VringInfo) -> int:
        if not ring.started:
            return ring.base
        ring.started = False
        last = self.device.vring_stopped(ring.index)
        self._update_link()
        return ring.base if last is None else int(last)

    # ------------------------------------------------------------ features
    def offered_features(self) -> int:
        return self.device.features() | (1 << VHOST_USER_F_PROTOCOL_FEATURES)

    def _get_features(self, msg: Message) -> Payload:
        return U64(self.offered_features())

    def _set_features(self, msg: Message) -> None:
        value = msg.u64
        extra = value & ~(self.offered_features() | (1 << VHOST_F_LOG_ALL))
        if extra:
            raise HandlerError(f"features {value:#x} include bits {extra:#x} this back-end did not offer")
        if self.window is not None and self.window.iommu != bool(value & (1 << VIRTIO_F_IOMMU_PLATFORM)):
            log.info("%s: IOMMU_PLATFORM changed with memory mapped; memory dropped", self.name)
            self._stop_all_rings()
            self._update_link()
            self._quiesce("SET_FEATURES")
            self._drop_memory("SET_FEATURES")
        self.features = value
        self.features_set = True
        self.device.set_features(value)

    @property
    def log_all(self) -> bool:
        return bool(self.features & (1 << VHOST_F_LOG_ALL))

    def _get_protocol_features(self, msg: Message) -> Payload:
        return U64(self.device.protocol_features())

    def _set_protocol_features(self, msg: Message) -> None:
        value = msg.u64
        extra = value & ~self.device.protocol_features()
        if extra:
            raise HandlerError(f"protocol features {value:#x} include bits {extra:#x} not offered")
        self.protocol_features = value

    def _set_owner(self, msg: Message) -> None:
        self.owner = True

    def _reset(self, msg: Message) -> None:
        self._stop_all_rings()
        self._update_link()
        self._quiesce(msg.name)
        self._drop_memory(msg.name)
        for ring in self.vrings.values():
            ring.close_fds()
        self.vrings.clear()
        self._drop_log()
        self._drop_inflight()
        self.features = 0
        self.features_set = False
        self.status = 0
        self._update_link()

    def _get_queue_num(self, msg: Message) -> Payload:
        return U64(self.device.num_queues())

    # ------------------------------------------------------------ memory
    def _set_mem_table(self, msg: Message) -> None:
        table = msg.decode()
        assert isinstance(table, MemTable)
        iommu = self.iommu
        quiesce = self._quiescer("SET_MEM_TABLE")
        new = self.device.memory(iommu)
        win = self.window
        if win is not None and (win is not new or win.iommu != iommu):
            self._drop_memory("SET_MEM_TABLE")
        new.reset(iommu, quiesce=quiesce)
        self.window = new
        try:
            for region, fd in zip(table.regions, msg.fds):
                self.window.add_region(fd, region.guest_phys_addr, region.memory_size, region.mmap_offset,
                                       region.userspace_addr)
        except (ValueError, OSError) as e:
            self.window.unmap_all(quiesce=quiesce)  # regions added so far may be in use
            self.device.memory_changed(self.window)
            raise HandlerError(f"memory table refused, no memory mapped: {e}") from None
        self.device.memory_changed(self.window)

    # CONFIGURE_MEM_SLOTS: regions one at a time, removal in RCU order as for a table
    def _get_max_mem_slots(self, msg: Message) -> Payload:
        n = self.device.max_mem_slots()
        if n <= 0:
            raise HandlerError("the device does not support CONFIGURE_MEM_SLOTS")
        return U64(n)

    def _add_mem_reg(self, msg: Message) -> None:
        reg = msg.decode()
        assert isinstance(reg, SingleMemoryRegion)
        r = reg.region
        iommu = self.iommu
        if self.window is None or self.window.iommu != iommu:
            if self.window is not None:
                self._drop_memory("ADD_MEM_REG")
            new = self.device.memory(iommu)
            new.reset(iommu, quiesce=self._quiescer("ADD_MEM_REG"))
            self.window = new
        try:
            self.window.add_region(msg.fds[0], r.guest_phys_addr, r.memory_size, r.mmap_offset, r.userspace_addr)
        except (ValueError, OSError) as e:
            raise HandlerError(f"memory region refused, nothing mapped: {e}") from None
        self.device.memory_changed(self.window)

    def _rem_mem_reg(self, msg: Message) -> None:
        reg = msg.decode()  # a stray fd (allowed by the spec) is closed with the message
        assert isinstance(reg, SingleMemoryRegion)
        r = reg.region
        if self.window is None:
            raise HandlerError("REM_MEM_REG with no memory mapped")
        try:
            self.window.remove_region(r.guest_phys_addr, r.memory_size, r.userspace_addr,
                                      quiesce=self._quiescer("REM_MEM_REG"))
        except ValueError as e:
            raise HandlerError(str(e)) from None
        self.device.memory_changed(self.window)

    def _iotlb_msg(self, msg: Message) -> Payload:
        iotlb = msg.decode()
        assert isinstance(iotlb, IotlbMsg)
        if self.window is None:
            raise HandlerError(f"IOTLB message type {iotlb.type} before SET_MEM_TABLE")
        if iotlb.type == IotlbType.UPDATE:
            self.window.iotlb_update(iotlb.iova, iotlb.size, iotlb.uaddr, iotlb.perm,
                                     quiesce=self._quiescer("IOTLB update (replacing a grant)", grants=True))
            self.device.iotlb_updated(iotlb.iova, iotlb.size)
        elif iotlb.type == IotlbType.INVALIDATE:
            # QEMU leaves uaddr/perm uninitialised on invalidate: not checked.
            # The window quiesces between dropping the rows and the unmap.
            self.window.iotlb_invalidate(iotlb.iova, iotlb.size, quiesce=self._quiescer("IOTLB invalidate", grants=True))
            self.device.iotlb_invalidated(iotlb.iova, iotlb.size)
        else:
            raise HandlerError(f"IOTLB message type {iotlb.type} is not one a front-end sends")
        return U64(0)

    def send_iotlb_miss(self, iova: int, perm: int = IotlbPerm.RW) -> bool:
        """Ask the front-end for a grant covering ``iova`` (BACKEND IOTLB_MSG MISS).

        Thread-safe.  Returns False (and logs) when there is no back-end
        channel or sending fails; the caller keeps its descriptor parked."""
        with self._backend_lock:
            ch = self.backend_channel
            if ch is None or ch.closed:
                log.warning("%s: IOTLB miss at %#x but no back-end request channel", self.name, iova)
                return False
            try:
                # Never wait for room: QEMU may itself be blocked waiting for
                # our ack of an IOTLB update on the main channel, and stops
                # reading this one meanwhile; a blocking send would deadlock
                # both (seen: QEMU's vCPU frozen for a minute).  A miss that
                # does not fit now is re-sent by the device later.
                ch.send_message(BackendReq.IOTLB_MSG, IotlbMsg(iova, 0, 0, int(perm), IotlbType.MISS), timeout=0)
                return True
            except Timeout as e:
                if not e.in_sync:  # part of a message went out: the stream is broken
                    log.warning("%s: back-end channel broken mid-message (%s); closed", self.name, e)
                    ch.close()
                return False
            except (VhostUserError, OSError, ValueError) as e:
                log.warning("%s: sending IOTLB miss at %#x failed: %s", self.name, iova, e)
                return False

    def backend_channel_fd(self) -> int:
        """The back-end channel's socket (-1: none), for a device that sends
        small requests on it from its own threads: each one whole in one
        non-blocking ``send`` (a unix stream socket appends it whole or not at
        all), never waiting for a reply.  The device must keep its own ``dup``
        of it: this fd is closed with the channel."""
        with self._backend_lock:
            ch = self.backend_channel
            return -1 if ch is None or ch.closed else ch.fileno()

    def _set_backend_req_fd(self, msg: Message) -> None:
        ch = Channel.from_fd(msg.take_fd(), "backend", message_timeout=1.0, send_timeout=1.0)
        with self._backend_lock:
            if self.backend_channel is not None:
                self.backend_channel.close()
            self.backend_channel = ch

    def _set_log_base(self, msg: Message) -> Payload | None:
        region = msg.decode()
        assert isinstance(region, LogRegion)
        fd = msg.take_fd()
        new = _map_shared_fd(fd, region.mmap_size, region.mmap_offset, "dirty log")
        os.close(fd)  # the mapping keeps the log alive
        self._drop_log()
        self.log = new
        self.device.log_changed(new)
        return U64(0) if self.protocol_features & ProtocolFeature.LOG_SHMFD.mask else None

    def _set_log_fd(self, msg: Message) -> None:
        self._set_log_fd_value(msg.take_fd())

    def _get_inflight_fd(self, msg: Message) -> tuple[Payload, list[int]]:
        req = msg.decode()
        assert isinstance(req, InflightInfo)
        if not 0 < req.num_queues <= self.device.num_queues() or not 0 < req.queue_size <= MAX_VRING_SIZE:
            raise HandlerError(f"inflight area for {req.num_queues} queues of {req.queue_size} refused")
        packed = bool(self.features >> VIRTIO_F_RING_PACKED & 1)
        size = self.device.inflight_queue_area(req.queue_size, packed) * req.num_queues
        fd, area = create_shared("vhost-user-inflight", size)
        self._drop_inflight()
        self.inflight, self.inflight_fd = area, fd
        self.inflight_info = InflightInfo(size, 0, req.num_queues, req.queue_size)
        self._inflight_hook(fd, self.inflight_info)
        return self.inflight_info, [fd]

    def _set_inflight_fd(self, msg: Message) -> None:
        info = msg.decode()
        assert isinstance(info, InflightInfo)
        fd = msg.take_fd()
        area = _map_shared_fd(fd, info.mmap_size, info.mmap_offset, "inflight area")
        self._drop_inflight()
        self.inflight, self.inflight_fd, self.inflight_info = area, fd, info
        self._inflight_hook(fd, info)

    def _inflight_hook(self, fd: int, info: InflightInfo | None) -> None:
        """``device.inflight_changed``: a region is mapped (the fd stays the
        session's), or None: it is about to go (errors logged, not raised)."""
        if info is None:
            self._safe("inflight_changed", self.device.inflight_changed, fd, None)
        else:
            self.device.inflight_changed(fd, info)

    # ------------------------------------------------------------ vrings
    def _set_vring_num(self, msg: Message) -> None:
        state = msg.decode()
        ring = self._ring(state.index)
        if not 0 < state.num <= MAX_VRING_SIZE or state.num & (state.num - 1):
            raise HandlerError(f"vring {state.index} size {state.num} is not a power of 2 up to {MAX_VRING_SIZE}")
        ring.num = state.num

    def _set_vring_addr(self, msg: Message) -> None:
        addr = msg.decode()
        assert isinstance(addr, VringAddr)
        ring = self._ring(addr.index)
        ring.addr = addr
        self._maybe_start(ring)

    def _set_vring_base(self, msg: Message) -> None:
        state = msg.decode()
        ring = self._ring(state.index)
        ring.base = state.num

    def _get_vring_base(self, msg: Message) -> Payload:
        state = msg.decode()
        ring = self._ring(state.index)
        last = self._stop(ring)
        self._quiesce("GET_VRING_BASE")
        ring.base = last & 0xFFFF_FFFF
        # The ring is stopped: it restarts on the next SET_VRING_KICK.
        if ring.kick_fd >= 0:
            os.close(ring.kick_fd)
            ring.kick_fd = -1
        ring.kick_set = False
        return VringState(ring.index, ring.base)

    def _vring_fd(self, msg: Message) -> tuple[VringInfo, int]:
        v = msg.decode()
        assert isinstance(v, VringFd)
        ring = self._ring(v.index)
        return ring, (-1 if v.nofd else msg.take_fd())

    def _set_vring_kick(self, msg: Message) -> None:
        ring, fd = self._vring_fd(msg)
        if ring.started:  # a new kick fd for a running ring: restart it with the new fd
            self._stop(ring)
            self._quiesce("SET_VRING_KICK")
        if ring.kick_fd >= 0:
            os.close(ring.kick_fd)
        ring.kick_fd, ring.kick_set = fd, True
        self._maybe_start(ring)

    def _set_vring_call(self, msg: Message) -> None:
        ring, fd = self._vring_fd(msg)
        old, ring.call_fd = ring.call_fd, fd
        if ring.started:  # kernels switch to the new fd first...
            self._safe("vring_call_changed", self.device.vring_call_changed, ring.index, fd)
        if old >= 0:  # ...and none may still hold the old number when it is closed
            self._quiesce("SET_VRING_CALL")
            os.close(old)

    def _set_vring_err(self, msg: Message) -> None:
        ring, fd = self._vring_fd(msg)
        if ring.err_fd >= 0:
            os.close(ring.err_fd)
        ring.err_fd = fd

    def _set_vring_enable(self, msg: Message) -> None:
        state = msg.decode()
        ring = self._ring(state.index)
        if state.num not in (0, 1):
            raise HandlerError(f"SET_VRING_ENABLE {state.index} with num {state.num}, expected 0 or 1")
        ring.enabled = bool(state.num)
        if ring.enabled:
            self._maybe_start(ring)
        elif ring.started:
            ring.base = self._stop(ring) & 0xFFFF_FFFF
            self._quiesce("SET_VRING_ENABLE 0")

    # ------------------------------------------------------------ misc
    def _set_status(self, msg: Message) -> None:
        self.status = msg.u64 & 0xFF
        self.device.status_changed(self.status)
        self._update_link()

    def _get_status(self, msg: Message) -> Payload:
        return U64(self.status)

    def _net_set_mtu(self, msg: Message) -> None:
        self.mtu = msg.u64
        self.device.set_mtu(self.mtu)

    def _send_rarp(self, msg: Message) -> None:
        self.rarp_mac = bytes(msg.payload[:6])
        self.device.send_rarp(self.rarp_mac)

    def _get_config(self, msg: Message) -> Payload:
        cfg = msg.decode()
        assert isinstance(cfg, Config)
        data = bytes(self.device.get_config(cfg.offset, cfg.size))
        if len(data) != cfg.size:
            raise HandlerError(f"device returned {len(data)} config bytes, {cfg.size} asked")
        return Config(cfg.offset, cfg.size, cfg.flags, data)

    def _set_config(self, msg: Message) -> None:
        cfg = msg.decode()
        assert isinstance(cfg, Config)
        self.device.set_config(cfg.offset, cfg.payload, cfg.flags)


# ----------------------------------------------------------------------------
# Connection manager
