"""vhost-user wire codec: framed messages + SCM_RIGHTS fds over a unix socket.

A ``Channel`` wraps one connected AF_UNIX SOCK_STREAM socket.  The same class
serves both sides and both sockets: the back-end reads front-end requests on
the main socket and writes replies; the front-end writes requests and reads
replies; on the SET_BACKEND_REQ_FD socket the roles swap and the codes are
``BackendReq``.  Every message read is checked against the rules in
``messages`` (payload size, fd count) before it is returned, and every fd that
arrived with a message that is then refused is closed, so a hostile or buggy
peer can neither crash the caller with a struct/index error nor leak fds.

No call blocks forever by accident: the wait for a message to *start* is
bounded by ``timeout`` (None: until one arrives), and once its first byte is
in, the rest must arrive within ``message_timeout``.  Sends are bounded by
``send_timeout``.  Exceeding either raises ``Timeout``.
"""
from __future__ import annotations

import array
import math
import os
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Iterable

from .errors import (
    BadFdCount,
    BadFlags,
    BadPayload,
    BadReply,
    BadSize,
    BadVersion,
    PeerClosed,
    ShortHeader,
    ShortPayload,
    Timeout,
    UnknownRequest,
    VhostUserError,
)
from .messages import (
    ACK_RULE,
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    HEADER,
    HEADER_SIZE,
    KNOWN_FLAGS,
    MAX_FDS,
    MAX_PAYLOAD_SIZE,
    SPECS,
    U64,
    VERSION,
    VERSION_MASK,
    Direction,
    FdRule,
    Payload,
    Rule,
    request_code,
    request_name,
)

__all__ = [
    "Channel",
    "Message",
    "validate",
    # errors, re-exported so callers need one import
    "VhostUserError",
    "PeerClosed",
    "ShortHeader",
    "ShortPayload",
    "Timeout",
    "BadVersion",
    "BadFlags",
    "BadSize",
    "BadFdCount",
    "BadPayload",
    "UnknownRequest",
    "BadReply",
]

_FD_ITEMSIZE = array.array("i").itemsize
_ANC_BUFSIZE = socket.CMSG_SPACE(MAX_FDS * _FD_ITEMSIZE)
# Received fds are close-on-exec, so they never leak into a spawned QEMU/DPDK.
_RECV_FLAGS = socket.MSG_DONTWAIT | getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL  # EPIPE, not SIGPIPE


def _close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def _is_reply(flags: int) -> bool:
    return bool(flags & FLAG_REPLY)


def _version_text(name: str, flags: int) -> str:
    return f"{name}: flags {flags:#x} carry version {flags & VERSION_MASK}, expected {VERSION}"


def _fd_text(n: int) -> str:
    return f"{n} fd" if n == 1 else f"{n} fds"


@dataclass
class Message:
    """One vhost-user message.

    ``request`` is a FrontendReq/BackendReq member when the code is known.
    The message owns ``fds``: take the ones you keep with ``take_fd()`` and
    call ``close_fds()`` (or use ``with msg:``) for the rest.
    """

    request: int
    flags: int = VERSION
    payload: bytes = b""
    fds: list[int] = field(default_factory=list)
    direction: Direction = "frontend"

    @property
    def is_reply(self) -> bool:
        return _is_reply(self.flags)

    @property
    def need_reply(self) -> bool:
        """The sender set NEED_REPLY (meaningful once REPLY_ACK is negotiated)."""
        return bool(self.flags & FLAG_NEED_REPLY)

    @property
    def name(self) -> str:
        return request_name(self.request, self.direction)

    def rule(self) -> Rule:
        """The table rule this message was validated against (request or reply body)."""
        spec = SPECS[self.direction].get(self.request)
        if spec is None:
            raise UnknownRequest(f"{self.name} has no rule", request=self.request, flags=self.flags)
        if not self.is_reply:
            return spec.request
        if spec.reply is not None and spec.reply.layout_for(len(self.payload)) is not None:
            return spec.reply
        return ACK_RULE

    def decode(self) -> Payload:
        """The payload parsed into its layout (e.g. VringAddr, MemTable, U64)."""
        layout = self.rule().layout_for(len(self.payload))
        if layout is None:
            raise BadSize(f"{self.name}: payload size {len(self.payload)}, expected {self.rule().expected_size()}")
        return layout.unpack(self.payload)

    @property
    def u64(self) -> int:
        """The payload as a single u64 (features, status, ack value, ...)."""
        return U64.unpack(self.payload).value

    def take_fd(self, i: int = 0) -> int:
        """Hand fd ``i`` to the caller, who now must close it."""
        if not 0 <= i < len(self.fds) or self.fds[i] < 0:
            raise IndexError(f"{self.name}: no fd #{i} to take (carries {len(self.fds)})")
        fd, self.fds[i] = self.fds[i], -1
        return fd

    def close_fds(self) -> None:
        """Close every fd not taken."""
        _close_fds(self.fds)
        self.fds = [-1] * len(self.fds)

    def __enter__(self) -> Message:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_fds()


def validate(request: int, flags: int, payload: bytes, nfds: int, direction: Direction = "frontend") -> Rule:
    """Check one complete message against the protocol rules; return the rule used.

    Raises BadVersion, BadFlags, UnknownRequest, BadSize, BadFdCount or
    BadPayload (all with ``in_sync=True``: the message was fully read).
    """
    size = len(payload)
    hdr = {"request": request, "flags": flags, "size": size, "in_sync": True}
    name = request_name(request, direction)
    if flags & VERSION_MASK != VERSION:
        raise BadVersion(_version_text(name, flags), **hdr)
    if flags & ~KNOWN_FLAGS:
        raise BadFlags(
            f"{name}: flags {flags:#x} set reserved bits {flags & ~KNOWN_FLAGS:#x} (known: {KNOWN_FLAGS:#x})", **hdr
        )
    spec = SPECS[direction].get(request)
    if spec is None:
        raise UnknownRequest(f"{name} (flags {flags:#x}, size {size}, {_fd_text(nfds)})", **hdr)
    what = f"reply to {name}" if _is_reply(flags) else name
    rules = [r for r in (spec.reply, ACK_RULE) if r is not None] if _is_reply(flags) else [spec.request]
    rule = next((r for r in rules if r.layout_for(size) is not None), None)
    if rule is None:
        expected = " or ".join(dict.fromkeys(r.expected_size() for r in rules))
        raise BadSize(f"{what}: payload size {size}, expected {expected}", **hdr)
    lo, hi = rule.fds.expected(payload)
    if not lo <= nfds <= hi:
        count = str(lo) if lo == hi else f"{lo}..{hi}"
        detail = rule.fds.value
        if rule.fds is FdRule.PER_REGION:
            detail += f", nregions={lo}"
        raise BadFdCount(f"{what}: received {_fd_text(nfds)}, expected {count} ({detail})", **hdr)
    layout = rule.layout_for(size)
    assert layout is not None
    try:
        layout.unpack(payload)  # field-level consistency (MemTable nregions, Config size)
    except VhostUserError as e:
        raise BadPayload(f"{what}: {e}", **hdr) from None
    return rule


class Channel:
    """A connected AF_UNIX SOCK_STREAM socket speaking vhost-user framing.

    The channel owns the socket (``close()`` closes it).  ``direction`` names
    the request namespace it carries (see ``messages.Direction``).  Not
    thread-safe: one thread (the control thread) reads and writes it.
    """

    def __init__(
        self,
        sock: socket.socket,
        direction: Direction = "frontend",
        *,
        message_timeout: float = 5.0,
        send_timeout: float = 5.0,
    ) -> None:
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError(f"vhost-user needs an AF_UNIX SOCK_STREAM socket, got {sock.family!r}/{sock.type!r}")
        if direction not in SPECS:
            raise ValueError(f"direction must be 'frontend' or 'backend', got {direction!r}")
        self._sock: socket.socket | None = sock
        self.direction: Direction = direction
        self.message_timeout = message_timeout
        self.send_timeout = send_timeout
        self._pollin = select.poll()
        self._pollin.register(sock.fileno(), select.POLLIN)
        self._pollout = select.poll()
        self._pollout.register(sock.fileno(), select.POLLOUT)

    @classmethod
    def pair(cls, direction: Direction = "frontend", **kw: float) -> tuple[Channel, Channel]:
        """Two connected channels (a socketpair), e.g. for the back-end request channel."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(a, direction, **kw), cls(b, direction, **kw)

    @classmethod
    def from_fd(cls, fd: int, direction: Direction = "backend", **kw: float) -> Channel:
        """Wrap a received socket fd (SET_BACKEND_REQ_FD); takes ownership, closes it on failure."""
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            os.close(fd)
            raise ValueError(f"fd {fd} is not a socket: {e.strerror}") from None
        try:
            return cls(sock, direction, **kw)
        except ValueError:
            sock.close()
            raise

    # -- lifecycle -----------------------------------------------------------

    def fileno(self) -> int:
        """The socket fd, for epoll/select; -1 once closed."""
        return self._sock.fileno() if self._sock is not None else -1

    @property
    def closed(self) -> bool:
        return self._sock is None

    def peer_closed(self) -> bool:
        """True if the peer hung up (EOF or an error is pending); consumes nothing."""
        if self._sock is None:
            return True
        try:
            return self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def close(self, shutdown: bool = False) -> None:
        """Close the socket; safe to call more than once and after any error.
        With ``shutdown`` the connection ends for the peer even if a dup of
        the socket lives on elsewhere (a helper process's); without, a socket
        passed to another process (SCM_RIGHTS) stays theirs."""
        sock, self._sock = self._sock, None
        if sock is not None:
            if shutdown:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # not connected (any more)
            sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live(self) -> socket.socket:
        if self._sock is None:
            raise VhostUserError("channel is closed")
        return self._sock

    # -- receiving -----------------------------------------------------------

    def recv_message(self, timeout: float | None = None, direction: Direction | None = None) -> Message:
        """Read and validate one message; its fds belong to the caller.

        ``timeout`` bounds the wait for the first byte (None: wait until one
        comes); the rest must follow within ``message_timeout``.  Raises a
        VhostUserError subclass naming what arrived and what was expected;
        any fds received with a refused message are closed first.
        """
        direction = direction or self.direction
        fds: list[int] = []
        try:
            return self._recv(timeout, direction, fds)
        except BaseException:
            _close_fds(fds)
            raise

    def _recv(self, timeout: float | None, direction: Direction, fds: list[int]) -> Message:
        sock = self._live()
        deadline = None if timeout is None else time.monotonic() + timeout
        buf = bytearray()
        truncated = False

        def read(want: int, what: str, eof_error: type[PeerClosed], base: int = 0) -> None:
            # Fill buf up to `want` bytes, collecting fds from every chunk.
            nonlocal deadline, truncated
            while len(buf) < want:
                if not self._wait(self._pollin, deadline):
                    got = f"{len(buf) - base} of {want - base} bytes"
                    raise Timeout(f"timed out waiting for {what} (got {got})", in_sync=not buf)
                try:
                    data, anc, msg_flags, _ = sock.recvmsg(want - len(buf), _ANC_BUFSIZE, _RECV_FLAGS)
                except (BlockingIOError, InterruptedError):
                    continue
                except (ConnectionResetError, BrokenPipeError) as e:
                    raise PeerClosed(f"connection reset while reading {what}: {e.strerror}") from None
                for level, kind, cdata in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        got_fds = array.array("i")
                        got_fds.frombytes(cdata[: len(cdata) - len(cdata) % _FD_ITEMSIZE])
                        fds.extend(got_fds)
                truncated |= bool(msg_flags & socket.MSG_CTRUNC)
                if not data:
                    if not buf:
                        raise PeerClosed("peer closed the connection")
                    raise eof_error(f"peer closed after {len(buf) - base} of {want - base} bytes of {what}")
                if not buf:
                    # The message has started: the rest must not take forever.
                    deadline = time.monotonic() + self.message_timeout
                buf.extend(data)

        read(HEADER_SIZE, "the header", ShortHeader)
        request, flags, size = HEADER.unpack(buf)
        hdr = {"request": request, "flags": flags, "size": size}
        name = request_name(request, direction)
        # A wrong version or an absurd size means we cannot trust the framing:
        # refuse before reading the payload (the stream is then out of sync).
        if flags & VERSION_MASK != VERSION:
            raise BadVersion(_version_text(name, flags), **hdr)
        if size > MAX_PAYLOAD_SIZE:
            raise BadSize(f"{name}: payload size {size} exceeds the maximum {MAX_PAYLOAD_SIZE}", **hdr)
        read(HEADER_SIZE + size, f"the {size}-byte payload of {name}", ShortPayload, HEADER_SIZE)
        payload = bytes(buf[HEADER_SIZE:])
        if truncated:
            raise BadFdCount(
                f"{name}: more than {MAX_FDS} fds (control data truncated after {len(fds)})", in_sync=True, **hdr
            )
        validate(request, flags, payload, len(fds), direction)
        return Message(request_code(request, direction), flags, payload, fds, direction)

    def recv_reply(self, request: int, timeout: float | None = 5.0) -> Message:
        """Read the reply to ``request``; BadReply if something else arrives."""
        msg = self.recv_message(timeout)
        if not msg.is_reply or msg.request != request:
            msg.close_fds()
            raise BadReply(
                f"expected the reply to {request_name(request, self.direction)}, got {msg.name} "
                f"with flags {msg.flags:#x}",
                request=msg.request,
                flags=msg.flags,
                size=len(msg.payload),
                in_sync=True,
            )
        return msg

    def _wait(self, poller: select.poll, deadline: float | None) -> bool:
        """Wait until ready (or hung up/errored: the syscall then reports it); False on timeout."""
        while True:
            if deadline is None:
                ms = None
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return bool(poller.poll(0))
                ms = math.ceil(remaining * 1000)
            if poller.poll(ms):
                return True

    # -- sending -------------------------------------------------------------

    def send_message(
        self,
        request: int,
        payload: bytes | Payload = b"",
        fds: Iterable[int] = (),
        *,
        flags: int = VERSION,
        reply: bool = False,
        need_reply: bool = False,
        timeout: float | None = None,
        direction: Direction | None = None,
        check: bool = True,
    ) -> None:
        """Send one message; ``fds`` are duplicated into the peer (the caller keeps its own).

        With ``check`` (the default) a message that breaks the rules raises
        ValueError instead of being sent; ``check=False`` is for fault
        injection in tests.  ``timeout`` defaults to ``send_timeout``.
        """
        sock = self._live()
        direction = direction or self.direction
        data = payload.pack() if isinstance(payload, Payload) else bytes(payload)
        fd_list = [int(fd) for fd in fds]
        flags |= (FLAG_REPLY if reply else 0) | (FLAG_NEED_REPLY if need_reply else 0)
        name = request_name(request, direction)
        if len(fd_list) > MAX_FDS:
            raise ValueError(f"{name}: {len(fd_list)} fds, at most {MAX_FDS} per message")
        if check:
            try:
                validate(request, flags, data, len(fd_list), direction)
            except VhostUserError as e:
                raise ValueError(f"refusing to send a malformed message: {e}") from None
        wire = memoryview(HEADER.pack(int(request), flags, len(data)) + data)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fd_list).tobytes())] if fd_list else []
        deadline = time.monotonic() + (self.send_timeout if timeout is None else timeout)
        sent = 0
        while sent < len(wire):
            if not self._wait(self._pollout, deadline):
                raise Timeout(f"{name}: sent {sent} of {len(wire)} bytes before timing out", in_sync=sent == 0)
            try:
                # fds ride on the first chunk only.
                sent += sock.sendmsg([wire[sent:]], anc if sent == 0 else [], _SEND_FLAGS)
            except (BlockingIOError, InterruptedError):
                continue
            except (BrokenPipeError, ConnectionResetError) as e:
                raise PeerClosed(f"{name}: peer closed while sending ({e.strerror})") from None

    def send_reply(self, msg: Message, payload: bytes | Payload = b"", fds: Iterable[int] = ()) -> None:
        """Reply to ``msg`` (same request code, REPLY flag)."""
        self.send_message(msg.request, payload, fds, reply=True, direction=msg.direction)

    def send_ack(self, msg: Message, ok: bool) -> None:
        """REPLY_ACK for ``msg``: u64 0 on success, 1 on failure.  Sent unconditionally;
        callers check ``msg.need_reply`` / ``messages.expects_reply`` first."""
        self.send_reply(msg, U64(0 if ok else 1))

    def call(
        self,
        request: int,
        payload: bytes | Payload = b"",
        fds: Iterable[int] = (),
        *,
        need_reply: bool = False,
        expect_reply: bool | None = None,
        timeout: float | None = 5.0,
    ) -> Message | None:
        """Send a request and, if a reply is due, wait for and return it.

        A reply is due when ``expect_reply`` says so, or (if None) when the
        table says the request always has one or ``need_reply`` is set.
        """
        self.send_message(request, payload, fds, need_reply=need_reply)
        if expect_reply is None:
            spec = SPECS[self.direction].get(request)
            expect_reply = need_reply or (spec is not None and spec.always_reply)
        return self.recv_reply(request, timeout) if expect_reply else None
