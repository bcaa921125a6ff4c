"""The vhost-user front-end session: QEMU's side of the protocol, no device logic.

Modelled on QEMU's ``hw/virtio/vhost-user.c``: one method per request, in
the order QEMU sends them (GET_FEATURES, SET_OWNER, GET/SET_PROTOCOL_FEATURES,
GET_QUEUE_NUM, SET_BACKEND_REQ_FD, SET_FEATURES, SET_MEM_TABLE, then per ring
SET_VRING_NUM/BASE/ADDR/KICK/CALL/ENABLE).  Once REPLY_ACK is negotiated every
request without its own reply carries NEED_REPLY and a non-zero ack raises
``FrontendError``; so does a bad reply, a timeout or a closed peer.

- ``FrontendSession.connect(path)``: client mode (the back-end listens).
- ``FrontendListener(path).accept()``: server mode (the back-end connects).

The back-end request channel (SET_BACKEND_REQ_FD) is read only when asked,
by ``poll_backend_requests``: IOTLB misses go to the caller's handler (the
emulated IOMMU).  No virtio-net, no Numba.
"""
from __future__ import annotations

import logging
import os
import socket
import stat
import time
from typing import Callable, Protocol

from .codec import Channel, Message
from .errors import Timeout, VhostUserError
from .messages import (
    BackendReq,
    FrontendReq,
    InflightInfo,
    IotlbMsg,
    IotlbType,
    LogRegion,
    MemoryRegion,
    MemTable,
    Payload,
    ProtocolFeature,
    SingleMemoryRegion,
    U64,
    VringAddr,
    VringFd,
    VringState,
    request_name,
)



class MemoryTableSource(Protocol):
    """Guest RAM a front-end can describe in SET_MEM_TABLE (e.g. the
    virtio-user port's memfd regions)."""

    def regions_for_mem_table(self) -> tuple[list[MemoryRegion], list[int]]:
        """The regions and one fd per region."""

__all__ = ["FrontendError", "FrontendSession", "FrontendListener"]

log = logging.getLogger(__name__)

F = FrontendReq


class FrontendError(Exception):
    """The back-end refused a request (nack), replied wrongly, timed out or closed."""


class FrontendSession:
    """One connection to a back-end, driven request by request (control thread only).

    ``features``/``protocol_features`` hold what was last set (negotiated).
    """

    def __init__(self, channel: Channel, *, timeout: float = 5.0) -> None:
        self.channel = channel
        self.timeout = timeout
        self.features = 0
        self.protocol_features = 0
        self.backend_channel: Channel | None = None
        self.closed = False

    @classmethod
    def connect(cls, path: str | os.PathLike, timeout: float = 5.0,
                request_timeout: float | None = None) -> FrontendSession:
        """Connect to a listening back-end, retrying until ``timeout`` (it may not be up yet).
        Requests then wait ``request_timeout`` (default: ``timeout``) for their replies."""
        path = os.fspath(path)
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.settimeout(max(deadline - time.monotonic(), 0.01))
                sock.connect(path)
                sock.settimeout(None)
                rt = timeout if request_timeout is None else request_timeout
                return cls(_channel(sock, rt), timeout=rt)
            except OSError as e:
                sock.close()
                if time.monotonic() >= deadline:
                    raise FrontendError(f"cannot connect to vhost-user back-end at {path}: {e}") from None
                time.sleep(0.02)

    # ------------------------------------------------------------ plumbing
    @property
    def reply_ack(self) -> bool:
        return bool(self.protocol_features & ProtocolFeature.REPLY_ACK.mask)

    def _live(self) -> Channel:
        if self.closed:
            raise FrontendError("front-end session is closed")
        return self.channel

    def _call(self, request: int, payload: bytes | Payload = b"", fds=(), *, need_reply: bool = False,
              expect_reply: bool | None = None) -> Message | None:
        ch = self._live()
        try:
            return ch.call(request, payload, fds, need_reply=need_reply, expect_reply=expect_reply,
                           timeout=self.timeout)
        except Timeout as e:
            raise FrontendError(f"{request_name(request, 'frontend')}: no reply within {self.timeout} s ({e})") from e
        except VhostUserError as e:
            raise FrontendError(f"{request_name(request, 'frontend')}: {e}") from e

    def _get(self, request: int, payload: bytes | Payload = b"") -> Message:
        """A request with an explicit reply (GET_*); the reply's fds are closed."""
        msg = self._call(request, payload)
        assert msg is not None
        msg.close_fds()
        return msg

    def _set(self, request: int, payload: bytes | Payload = b"", fds=()) -> None:
        """A request without a reply of its own: NEED_REPLY once REPLY_ACK is negotiated."""
        msg = self._call(request, payload, fds, need_reply=self.reply_ack)
        if msg is not None:
            with msg:
                self._check_ack(msg)

    @staticmethod
    def _check_ack(msg: Message) -> None:
        if len(msg.payload) != U64.FORMAT.size:
            raise FrontendError(f"{msg.name}: ack of {len(msg.payload)} bytes, expected a u64")
        if msg.u64 != 0:
            raise FrontendError(f"{msg.name}: the back-end refused it (ack {msg.u64:#x}, expected 0)")

    # ------------------------------------------------------------ features
    def get_features(self) -> int:
        return self._get(F.GET_FEATURES).u64

    def set_features(self, features: int) -> None:
        self._set(F.SET_FEATURES, U64(features))
        self.features = features

    def get_protocol_features(self) -> int:
        return self._get(F.GET_PROTOCOL_FEATURES).u64

    def set_protocol_features(self, features: int) -> None:
        # The ack rule applies from the next request on (QEMU sends this one without NEED_REPLY).
        self._set(F.SET_PROTOCOL_FEATURES, U64(features))
        self.protocol_features = features

    def get_queue_num(self) -> int:
        return self._get(F.GET_QUEUE_NUM).u64

    def set_owner(self) -> None:
        self._set(F.SET_OWNER)

    def set_status(self, status: int) -> None:
        self._set(F.SET_STATUS, U64(status))

    def get_status(self) -> int:
        return self._get(F.GET_STATUS).u64

    def send_rarp(self, mac: bytes) -> None:
        """SEND_RARP (protocol feature RARP): ask the back-end to announce ``mac``."""
        self._set(F.SEND_RARP, U64(int.from_bytes(mac[:6], "little")))

    # ------------------------------------------------------------ memory
    def set_mem_table(self, memory: MemoryTableSource) -> None:
        regions, fds = memory.regions_for_mem_table()
        self._set(F.SET_MEM_TABLE, MemTable(regions), fds)

    def send_memory(self, memory: MemoryTableSource) -> None:
        """All of ``memory`` to the back-end: one ADD_MEM_REG per region when
        CONFIGURE_MEM_SLOTS is negotiated (as QEMU does; more than
        SET_MEM_TABLE's 8 regions fit, up to GET_MAX_MEM_SLOTS), else
        SET_MEM_TABLE."""
        regions, fds = memory.regions_for_mem_table()
        if not self.protocol_features & ProtocolFeature.CONFIGURE_MEM_SLOTS.mask:
            self._set(F.SET_MEM_TABLE, MemTable(regions), fds)
            return
        slots = self.get_max_mem_slots()
        if len(regions) > slots:
            raise FrontendError(f"{len(regions)} memory regions, the back-end takes at most {slots}")
        for region, fd in zip(regions, fds):
            self.add_mem_reg(region, fd)

    def get_max_mem_slots(self) -> int:
        return self._get(F.GET_MAX_MEM_SLOTS).u64

    def add_mem_reg(self, region: MemoryRegion, fd: int) -> None:
        """Hot-add one region (CONFIGURE_MEM_SLOTS); ``fd`` stays ours."""
        self._set(F.ADD_MEM_REG, SingleMemoryRegion(region), [fd])

    def rem_mem_reg(self, region: MemoryRegion) -> None:
        """Hot-remove one region (named by gpa, size and uaddr), no fd."""
        self._set(F.REM_MEM_REG, SingleMemoryRegion(region))

    def set_log_base(self, fd: int, size: int, offset: int = 0) -> None:
        """Hand the back-end the dirty log (``size`` bytes of ``fd`` from
        ``offset``); with LOG_SHMFD the back-end replies once it has mapped it."""
        shm = bool(self.protocol_features & ProtocolFeature.LOG_SHMFD.mask)
        msg = self._call(F.SET_LOG_BASE, LogRegion(size, offset), [fd], expect_reply=shm)
        if msg is not None:
            with msg:
                self._check_ack(msg)

    def get_inflight_fd(self, num_queues: int, queue_size: int) -> tuple[int, InflightInfo]:
        """GET_INFLIGHT_FD (INFLIGHT_SHMFD): the back-end allocates the region
        in which it tracks descriptors in flight; we keep the returned fd
        (ours to close) for the lifetime of the device, across back-ends."""
        msg = self._call(F.GET_INFLIGHT_FD, InflightInfo(0, 0, num_queues, queue_size))
        assert msg is not None
        with msg:
            info = msg.decode()
            if not isinstance(info, InflightInfo) or not msg.fds:
                raise FrontendError(f"GET_INFLIGHT_FD: reply without a region ({len(msg.fds)} fds)")
            return msg.take_fd(), info

    def set_inflight_fd(self, fd: int, info: InflightInfo) -> None:
        """SET_INFLIGHT_FD: hand a (re)started back-end the region it or its
        predecessor filled (QEMU sends it before the rings, on every start)."""
        self._set(F.SET_INFLIGHT_FD, info, [fd])

    def set_backend_req_fd(self) -> None:
        """Give the back-end a socket for its requests; we keep the other end."""
        ours, theirs = Channel.pair("backend", message_timeout=self.timeout, send_timeout=self.timeout)
        try:
            self._set(F.SET_BACKEND_REQ_FD, fds=[theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        if self.backend_channel is not None:
            self.backend_channel.close()
        self.backend_channel = ours

    def iotlb_update(self, iova: int, size: int, uaddr: int, perm: int) -> None:
        """Grant ``[iova, iova + size)`` -> local ``uaddr`` with ``perm`` (IotlbPerm)."""
        self._iotlb(IotlbMsg(iova, size, uaddr, int(perm), IotlbType.UPDATE))

    def iotlb_invalidate(self, iova: int, size: int) -> None:
        self._iotlb(IotlbMsg(iova, size, 0, 0, IotlbType.INVALIDATE))

    def _iotlb(self, msg: IotlbMsg) -> None:
        # IOTLB_MSG is always answered with a u64 (0 = done); QEMU also sets NEED_REPLY.
        reply = self._call(F.IOTLB_MSG, msg, need_reply=self.reply_ack, expect_reply=True)
        assert reply is not None
        with reply:
            self._check_ack(reply)

    # ------------------------------------------------------------ vrings
    def set_vring_num(self, index: int, num: int) -> None:
        self._set(F.SET_VRING_NUM, VringState(index, num))

    def set_vring_base(self, index: int, base: int) -> None:
        self._set(F.SET_VRING_BASE, VringState(index, base))

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int, *, flags: int = 0,
                       log_guest_addr: int = 0) -> None:
        """Ring addresses: local addresses (uaddr), or IOVAs with VIRTIO_F_IOMMU_PLATFORM."""
        self._set(F.SET_VRING_ADDR, VringAddr(index, flags, desc, used, avail, log_guest_addr))

    def set_vring_kick(self, index: int, fd: int | None) -> None:
        """``fd`` None: NOFD (the back-end polls)."""
        self._set(F.SET_VRING_KICK, VringFd(index, fd is None), [] if fd is None else [fd])

    def set_vring_call(self, index: int, fd: int | None) -> None:
        self._set(F.SET_VRING_CALL, VringFd(index, fd is None), [] if fd is None else [fd])

    def set_vring_enable(self, index: int, on: bool) -> None:
        self._set(F.SET_VRING_ENABLE, VringState(index, 1 if on else 0))

    def get_vring_base(self, index: int) -> int:
        """Stop ring ``index``; returns its last_avail_idx."""
        state = self._get(F.GET_VRING_BASE, VringState(index, 0)).decode()
        assert isinstance(state, VringState)
        if state.index != index:
            raise FrontendError(f"GET_VRING_BASE: reply names vring {state.index}, asked for {index}")
        return state.num

    # ------------------------------------------------------------ back-end requests
    def poll_backend_requests(self, handler: Callable[[int, int], bool | None], timeout: float | None = 0.0) -> int:
        """Serve back-end requests: wait up to ``timeout`` for the first, then
        drain what is queued.  ``handler(iova, perm)`` answers an IOTLB MISS
        (typically with ``iotlb_update``); it may return False to nack.
        Returns how many requests were handled (0 if none came)."""
        ch = self.backend_channel
        if ch is None or ch.closed:
            raise FrontendError("no back-end request channel (call set_backend_req_fd first)")
        handled = 0
        wait = timeout
        while True:
            try:
                msg = ch.recv_message(wait)
            except Timeout as e:
                if e.in_sync:
                    return handled
                raise FrontendError(f"back-end request channel: {e}") from e
            except VhostUserError as e:
                raise FrontendError(f"back-end request channel: {e}") from e
            with msg:
                self._backend_request(ch, msg, handler)
            handled += 1
            wait = 0.0

    def _backend_request(self, ch: Channel, msg: Message, handler: Callable[[int, int], bool | None]) -> None:
        ok = False
        if msg.request == BackendReq.IOTLB_MSG:
            iotlb = msg.decode()
            assert isinstance(iotlb, IotlbMsg)
            if iotlb.type == IotlbType.MISS:
                ok = handler(iotlb.iova, iotlb.perm) is not False
            else:
                log.warning("back-end sent IOTLB message type %d, expected MISS (%d)", iotlb.type, IotlbType.MISS)
        else:
            log.warning("back-end request %s not handled by this front-end", msg.name)
        if msg.need_reply and self.reply_ack:
            try:
                ch.send_ack(msg, ok)
            except VhostUserError as e:
                raise FrontendError(f"cannot ack {msg.name}: {e}") from e

    # ------------------------------------------------------------ teardown
    def close(self) -> None:
        """Close both channels; idempotent."""
        self.closed = True
        if self.backend_channel is not None:
            self.backend_channel.close()
            self.backend_channel = None
        self.channel.close()

    def __enter__(self) -> FrontendSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _channel(sock: socket.socket, timeout: float) -> Channel:
    return Channel(sock, "frontend", message_timeout=timeout, send_timeout=timeout)


class FrontendListener:
    """Server mode: listen on ``path`` and accept back-ends (which connect as clients)."""

    def __init__(self, path: str | os.PathLike, *, timeout: float = 5.0,
                 request_timeout: float | None = None) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self.request_timeout = timeout if request_timeout is None else request_timeout
        try:
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise FileExistsError(f"{self.path} exists and is not a socket")
            os.unlink(self.path)  # stale socket from an earlier run
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self.path)
            sock.listen(1)
        except OSError:
            sock.close()
            raise
        self._sock: socket.socket | None = sock

    def accept(self, timeout: float | None = None) -> FrontendSession:
        """Wait (up to ``timeout``, default the listener's) for one back-end."""
        if self._sock is None:
            raise FrontendError(f"listener on {self.path} is closed")
        self._sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            sock, _ = self._sock.accept()
        except TimeoutError:
            raise FrontendError(f"no back-end connected to {self.path} in time") from None
        sock.setblocking(True)
        return FrontendSession(_channel(sock, self.request_timeout), timeout=self.request_timeout)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def __enter__(self) -> FrontendListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
