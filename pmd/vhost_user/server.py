"""The connection manager of a vhost-user back-end: sockets, reconnects, handover.

``BackendServer`` runs a control thread that accepts (server mode) or makes
(client mode) front-end connections and feeds their messages to
``BackendSession``s, plus the device's ``service`` when its wake-up fd fires.

Handover (server mode): while a front-end is live, the server keeps
accepting.  A second connection becomes a *standby* session: it negotiates
(features, protocol features, queue count, owner, back-end channel: answered
from the device, nothing of the device changed) while the first keeps
forwarding.  The first request of the standby that would change the device
(SET_FEATURES, SET_MEM_TABLE, a ring start, ...) makes it the live session:
the old one is closed first (rings stopped, window emptied, link down).  This
is what a live migration of VM1 on one host needs: the destination QEMU
connects and negotiates at start-up, blocking until it gets its replies,
long before the source stops its rings (GET_VRING_BASE) and the destination
starts them.  A third connection while a standby waits is refused.
"""
from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import stat
import threading
import time
from typing import Any, Callable

from .backend import BackendSession
from .device import BackendDevice
from .codec import Channel

__all__ = ["BackendServer"]

log = logging.getLogger(__name__)

# How long ``stop`` waits for the control thread: a bound, not a timing.  The
# kernels a session's close uses are compiled before (a port's grace-period
# kernel where its lcores are given to it), but with a cold Numba cache a
# first use elsewhere can still wait seconds for the compiler's lock
STOP_TIMEOUT_S = 30.0

# BackendDevice calls a standby session may make without taking the port over.
_READ_ONLY = frozenset({"features", "protocol_features", "num_queues", "get_config", "max_mem_slots"})


def _listening(path: str) -> bool:
    """True if a process accepts connections on the unix socket ``path``
    (connect succeeds; a stale socket file refuses with ECONNREFUSED)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:  # alive, too busy to accept within the second
        return True
    except OSError as e:  # EAGAIN: its backlog is full, so it is alive; anything else: not a listener
        return e.errno in (errno.EAGAIN, errno.ETIMEDOUT)
    finally:
        probe.close()
    return True


class _StandbyDevice:
    """The device as a standby session sees it: queries pass, the first
    change claims the port (``claim()``), and from then on everything passes."""

    def __init__(self, device: BackendDevice, claim: Callable[[], None]) -> None:
        self._device = device
        self._claim = claim
        self.live = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._device, name)  # every hook exists (BackendDevice defaults)
        if self.live or name in _READ_ONLY or not callable(attr):
            return attr
        if name == "quiesce":  # a standby never had lcores on its state: nothing to wait for
            return lambda: None

        def claiming(*args: Any, **kwargs: Any) -> Any:
            if not self.live:
                self._claim()
            return attr(*args, **kwargs)

        return claiming


class BackendServer:
    """Serves a device's front-end on ``path`` from a control thread.

    ``client=False``: listen on ``path`` (a stale socket file is unlinked;
    one a live process listens on is refused: ``FileExistsError``);
    one live session at a time plus at most one standby (see the module
    docstring).  ``client=True``: connect to ``path``, retrying with back-off
    (0.1 s doubling to 1 s), and reconnect the same way after a disconnect.
    ``stop()`` returns within about a second.

    If the device has a wake fd (``BackendDevice.wake_fd``), a write to the fd runs ``service`` with the live
    session promptly (and it runs at least every ``POLL`` seconds anyway);
    exceptions from it are logged.
    """

    POLL = 0.1  # seconds between checks of the stop flag

    def __init__(
        self,
        path: str | os.PathLike,
        device: BackendDevice,
        *,
        client: bool = False,
        name: str | None = None,
        thread_init: Callable[[], None] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.thread_init = thread_init  # run first on the control thread (e.g. its CPU placement)
        self.device = device
        self.client = client
        self.name = name or f"vhost-user {self.path}"
        self.session: BackendSession | None = None  # the live one
        self.standby: BackendSession | None = None  # connected, negotiating, not yet live
        self.last_session: BackendSession | None = None  # the live or most recent one
        self.connections = 0
        self.disconnections = 0
        self.handovers = 0  # standby sessions that took the port over from a live one
        self._listener: socket.socket | None = None
        self._sel: selectors.BaseSelector | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._watched: dict[BackendSession, int] = {}  # session -> socket fd registered
        self._wake_fd = -1
        self._service: Callable[[BackendSession], None] | None = None
        self._next_service = 0.0

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: already started")
        self._sel = selectors.DefaultSelector()
        try:
            if not self.client:
                self._listen()
            self._arm_wakeup()
        except BaseException:
            self._teardown()
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"vhost-user-ctl {self.path}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the control thread: it ends once what it is doing returns
        (a session's close, at most ``timeout`` seconds); else it is left
        running, logged, and ``stopped`` stays False."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("%s: control thread did not stop within %.1f s", self.name, timeout)
            else:
                self._thread = None
        if self._thread is None:
            self._teardown()

    @property
    def stopped(self) -> bool:
        """No control thread runs (never started, or stopped and torn down)."""
        return self._thread is None

    def __enter__(self) -> BackendServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, predicate: Callable[[BackendServer], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate(self)`` holds (re-checked on every connect/disconnect and poll)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, self.POLL))
            return True

    # ------------------------------------------------------------ sockets
    def _listen(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise FileExistsError(f"{self.path} exists and is not a socket")
            if _listening(self.path):  # never steal a live process's socket
                raise FileExistsError(errno.EADDRINUSE, f"another process is listening on {self.path} "
                                      "(a second back-end on one socket is refused; stop it or pick another path)")
            os.unlink(self.path)  # stale socket from an earlier run: nobody listens
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self.path)
            sock.listen(2)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        assert self._sel is not None
        self._sel.register(sock, selectors.EVENT_READ, "listen")

    def _arm_wakeup(self) -> None:
        """Wait on the device's wake fd with the sockets, if it has one
        (``BackendDevice.wake_fd`` >= 0); ``service`` runs on its wake-ups."""
        try:
            fd = int(self.device.wake_fd())
            if fd < 0:
                return
            os.set_blocking(fd, False)  # draining must never block the control thread
            assert self._sel is not None
            self._sel.register(fd, selectors.EVENT_READ, "wake")
        except Exception:
            log.exception("%s: device wake fd unusable; serving without it", self.name)
            return
        self._wake_fd, self._service = fd, self.device.service
        self._next_service = time.monotonic()

    def _teardown(self) -> None:
        for session in (self.standby, self.session):
            if session is not None:
                session.close("back-end stopped")
        if self.session is not None:
            self._session_gone()
        self.standby = None
        self._watched.clear()
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        self._wake_fd, self._service = -1, None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _unwatch(self, session: BackendSession) -> None:
        # By the fd number recorded at registration: the session may have
        # closed its socket already (fileno() -1), and a stale entry would
        # refuse the next socket that reuses the number.
        fd = self._watched.pop(session, None)
        if fd is None or self._sel is None:
            return
        try:
            self._sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def _watch(self, session: BackendSession, role: str) -> None:
        assert self._sel is not None
        fd = session.channel.fileno()
        self._sel.register(fd, selectors.EVENT_READ, role)
        self._watched[session] = fd

    # ------------------------------------------------------------ sessions
    def _session_gone(self) -> None:
        """The live session closed; a standby, if any, becomes live."""
        gone = self.session
        if gone is not None:
            self._unwatch(gone)
        self.session = None
        self.disconnections += 1
        if self.standby is not None:
            self._make_live(self.standby)
        self._notify()

    def _make_live(self, session: BackendSession) -> None:
        self._unwatch(session)
        self.standby = None
        if isinstance(session.device, _StandbyDevice):
            session.device.live = True
        self.session = self.last_session = session
        self._watch(session, "live")
        self._next_service = time.monotonic()

    def _claim(self, standby: BackendSession) -> None:
        """``standby`` changes the device: close the live session, then make it live."""
        old = self.session
        if old is not None:
            self.handovers += 1
            log.info("%s: %s takes the port over from %s", self.name, standby.name, old.name)
            old.close(f"superseded by {standby.name}")
            self._unwatch(old)
            self.session = None
            self.disconnections += 1
        self._make_live(standby)
        self._notify()

    def _new_session(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        ch = Channel(sock, "frontend", message_timeout=1.0, send_timeout=1.0)
        self.connections += 1
        name = f"{self.name} #{self.connections}"
        if self.session is None:
            session = BackendSession(ch, self.device, name=name)
            self._make_live(session)
            log.info("%s: front-end connected (#%d)", self.name, self.connections)
        elif self.standby is None:
            proxy = _StandbyDevice(self.device, lambda: self._claim(session))
            session = BackendSession(ch, proxy, name=name)  # type: ignore[arg-type]
            self.standby = session
            self._watch(session, "standby")
            log.info("%s: front-end #%d connected while #%d is live: standby until it configures the device",
                     self.name, self.connections, self.connections - 1)
        else:
            log.warning("%s: connection #%d refused: a front-end is live and another waits to take over",
                        self.name, self.connections)
            ch.close()
        self._notify()

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self._new_session(sock)

    def _connect(self, delay: float) -> float:
        """One connection attempt; returns the next back-off delay."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(1.0)
            sock.connect(self.path)
        except OSError:
            sock.close()
            self._stop.wait(delay)
            return min(delay * 2, 1.0)
        self._new_session(sock)
        return 0.1

    # ------------------------------------------------------------ the thread
    def _round(self) -> None:
        """One select over the listener, the sessions and the wake fd."""
        assert self._sel is not None
        timeout = self.POLL
        if self._service is not None and self.session is not None:
            timeout = max(0.0, min(timeout, self._next_service - time.monotonic()))
        live = self.session
        if live is not None and timeout > 0:
            # the device may serve VM1's IOTLB traffic while nothing else is due
            live_fd = self._watched.get(live, -1)
            t0 = time.monotonic()
            live.wait_iotlb([fd for fd in self._sel.get_map() if fd != live_fd], timeout)
            timeout = max(0.0, timeout - (time.monotonic() - t0))
        woke = False
        ready: list[tuple[str, BackendSession | None]] = []
        for key, _ in self._sel.select(timeout):
            if key.data == "wake":
                woke = True
                try:
                    os.read(self._wake_fd, 8)  # reset the eventfd counter
                except (BlockingIOError, InterruptedError):
                    pass  # drained already: a spurious or repeated wake-up
            elif key.data == "listen":
                ready.append(("listen", None))
            else:  # remember which session was readable: roles can change below
                ready.append((key.data, self.session if key.data == "live" else self.standby))
        live = self.session
        if live is not None and self._service is not None and (woke or time.monotonic() >= self._next_service):
            self._next_service = time.monotonic() + self.POLL
            try:
                self._service(live)
            except Exception:  # a device bug must not kill the control thread
                log.exception("%s: device service failed", self.name)
        for what, session in ready:
            if what == "listen":
                self._accept()
            elif session is None or session.closed:
                continue
            elif session.handle_one(0) == "closed":
                if session is self.session:
                    self._session_gone()
                elif session is self.standby:
                    self._unwatch(session)
                    self.standby = None
                    self._notify()
        for session in (self.session, self.standby):  # closed by a hook or service, not by a read
            if session is not None and session.closed:
                if session is self.session:
                    self._session_gone()
                else:
                    self._unwatch(session)
                    self.standby = None
        if not ready:
            self._notify()

    def _run(self) -> None:
        if self.thread_init is not None:
            try:
                self.thread_init()
            except Exception:
                log.exception("%s: control thread set-up failed; serving anyway", self.name)
        delay = 0.1
        while not self._stop.is_set():
            try:
                if self.client and self.session is None:
                    delay = self._connect(delay)
                    continue
                self._round()
                if self.session is None:
                    delay = 0.1
            except Exception:  # the control thread must survive anything
                log.exception("%s: control thread error", self.name)
                if self.session is not None:
                    self.session.close("control thread error")
                    self._session_gone()
                self._stop.wait(self.POLL)
