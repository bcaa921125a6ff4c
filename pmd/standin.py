"""A stand-in process: it keeps the control thread's CPU busy, outside our
address space, while a polling lcore does a job for the control thread.

Why a process: a change to our page tables made on one CPU must be flushed
from every other CPU that runs one of our threads at that moment.  When
the control thread revokes a page of VM1's memory, the polling lcore's CPU
is one of those, and the flush is an inter-processor interrupt the control
thread waits for (~20 us on a virtual machine, where each one exits to the
host).  Made by the lcore between two bursts, the revocation flushes only
the lcore's own TLB, provided no thread of ours runs on another CPU then:
the control thread must not spin meanwhile, and if it sleeps, its CPU may
halt and the wake-up that ends its wait is an interrupt again.  So the
control thread sleeps, and this process -- another address space, so
nothing to flush there -- spins on its CPU until the lcore is done, then
wakes it: a wake-up on the same CPU, no interrupt either way.  Measured
here: a one-page ``mprotect`` on one CPU takes ~2.4 us while another process
runs on the other CPU, ~20 us while a thread of the same process does.

One job at a time, by one shared word (``W_STATE``):

- S_IDLE: free; the control thread takes it (``hand_over_start``) with a
  CAS to S_ASKED and writes the stand-in's eventfd;
- S_ASKED: the stand-in, woken, posts it (S_GO) and spins;
- S_GO: the poller takes it between two bursts (``take_job``: S_TAKEN), does
  it and stores S_DONE_OK or S_DONE_FAILED (``finish_job``);
- the reply: the job may come with the reply the front-end waits for
  (``W_ACK_GEN``: the socket it goes on).  The stand-in claims the outcome
  (S_SENDING) and marks the reply failed if the job failed.  If it holds
  that socket (``give_socket``: a dup, passed over a socket pair), it sends
  the reply and stores S_SENT, without waking the control thread (unless
  it waits: ``W_WAITING``), so on one CPU the front-end's thread runs next.
  Otherwise, or if the send fell short, it stores S_UNSENT (``W_SENT``: the
  bytes that went, -1 for none tried) and wakes the control thread, which
  sends the rest.  A job without a reply ends in S_DONE_OK/S_DONE_FAILED;
- S_BACK: nobody took it in time (the poller went to sleep, or the stand-in
  is gone): the control thread does the job itself.

The control thread learns the outcome in ``hand_over_settle`` (before it
reads its next message) and stores S_IDLE.  The stand-in spins at most
``SPIN_NS`` for a poller to take the job; the control thread waits at most
``WAIT_NS`` for the stand-in (then takes the job back unless the poller has
it: a job taken is always finished, and claims an outcome the stand-in left
unsent).  The stand-in dies with its parent (``PR_SET_PDEATHSIG``).
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numba import njit

from .atomics import compare_exchange, cpu_pause, fence, load_acquire, store_release
from .atomics_py import store_flag
from .syscalls import (
    MSG_DONTWAIT, MSG_NOSIGNAL, POLLIN, eventfd_drain, eventfd_signal, monotonic_ns, poll_fds, sleep_us,
    socket_send_from, wait_first,
)

log = logging.getLogger("vhostpci.standin")

# shared words (int64): W_SOCK, W_SOCK_GEN: the socket the stand-in holds (its own fd number) and its
# generation; W_GIVEN_GEN: the generation of the control thread's current socket (0: none);
# W_ACK_GEN: the job's reply goes on that generation's socket (0: no reply); W_REPLY_LEN, W_REPLY_STATUS:
# the reply's bytes (``Hand.reply``) and the byte set to 1 when the job failed; W_SENT: its bytes sent
# (the control thread sends the rest); W_SENT_NS: when; W_WAITING: the control thread sleeps in
# ``hand_over_settle`` (the stand-in wakes it); W_LEFT: the stand-in stopped waiting for a job the
# poller took: it sends nothing for it (the control thread claims the outcome); W_BACK_SIG: the stand-in
# wrote the back eventfd since the control thread last drained it (a drain, a syscall, only then)
W_STATE, W_ASK_FD, W_BACK_FD, W_READY, W_STOP, W_SOCK, W_SOCK_GEN, W_GIVEN_GEN, W_ACK_GEN, W_REPLY_LEN, \
    W_REPLY_STATUS, W_SENT, W_SENT_NS, W_WAITING, W_LEFT, W_BACK_SIG = range(16)
N_WORDS = 16
REPLY_AT, REPLY_MAX = N_WORDS * 8, 64  # the reply's bytes, after the words in the same page
S_IDLE, S_ASKED, S_GO, S_TAKEN, S_DONE_OK, S_DONE_FAILED, S_BACK, S_SENDING, S_SENT, S_UNSENT = range(10)
SPIN_NS = 200_000  # the stand-in spins this long for a poller to take a job ...
WAIT_NS = 5_000_000  # ... and the control thread waits this long for the stand-in (gone: at most once)
START_TIMEOUT_S = 60.0  # a cold start compiles the loop (seconds); it is not waited for
PR_SET_PDEATHSIG = 1
PAGE = mmap.PAGESIZE
_MAP_FIXED = 0x10
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]


class Hand(NamedTuple):
    """What a kernel hands a job over with: the shared words, the reply's
    bytes and the control thread's ``struct pollfd`` (its eventfd, int32[1, 2])."""

    words: np.ndarray
    reply: np.ndarray
    pfd: np.ndarray


# ------------------------------------------------------- the control thread
@njit(nogil=True, cache=True)
def hand_over_start(h, reply_len, status_at):
    """Hand the job to a poller through the stand-in: S_ASKED (it is on its
    way: ``hand_over_settle`` before the next one), or S_BACK: do it yourself
    (no stand-in running, another job in the way).  ``reply_len`` > 0: the
    job's reply is in ``h.reply`` (byte ``status_at`` set to 1 if it fails)
    and the stand-in sends it if it holds the current socket."""
    w = h.words
    if load_acquire(w, W_READY) == 0 or not compare_exchange(w, W_STATE, S_IDLE, S_ASKED):
        return S_BACK
    if w[W_BACK_SIG] != 0:
        drain_back(w)  # a late wake-up of an earlier job
    w[W_REPLY_LEN] = reply_len
    w[W_REPLY_STATUS] = status_at
    w[W_SENT] = 0
    w[W_ACK_GEN] = w[W_GIVEN_GEN] if reply_len > 0 else 0
    w[W_WAITING] = 0
    w[W_LEFT] = 0
    eventfd_signal(w[W_ASK_FD])  # (a syscall: the stores above are visible to the stand-in)
    return S_ASKED


@njit(nogil=True, cache=True, _nrt=False)
def drain_back(w):
    """Take the stand-in's wake-ups off the back eventfd (it may write it
    again meanwhile: the next poll on it then returns at once, and the
    waiter looks at the state again)."""
    store_release(w, W_BACK_SIG, 0)
    while eventfd_drain(w[W_BACK_FD]) > 0:
        pass


@njit(nogil=True, cache=True)
def hand_over_settle(h):
    """The outcome of the job ``hand_over_start`` handed over, once there is
    one: S_SENT (done, reply sent), S_UNSENT (done, the status byte of the
    reply says how; ``W_SENT`` of its bytes went out, -1: the stand-in did
    not hold the socket: send the rest), S_DONE_OK or S_DONE_FAILED (a job
    without a reply, or the stand-in never came to it: send the reply
    yourself), or S_BACK (do the job yourself).  Sleeps meanwhile."""
    w = h.words
    back = w[W_BACK_FD]
    deadline = monotonic_ns() + WAIT_NS
    while True:
        s = load_acquire(w, W_STATE)
        if s == S_SENT or s == S_UNSENT or s == S_BACK:
            break
        if (s == S_DONE_OK or s == S_DONE_FAILED) and (
                w[W_REPLY_LEN] <= 0 or load_acquire(w, W_LEFT) != 0 or monotonic_ns() >= deadline):
            if compare_exchange(w, W_STATE, s, S_IDLE):  # no send of the stand-in's to wait for
                break
            continue
        if s == S_TAKEN or s == S_SENDING:
            sleep_us(2)  # the poller is at it (the stand-in stopped waiting), or the send: both end
            continue
        if monotonic_ns() >= deadline:
            if s != S_DONE_OK and s != S_DONE_FAILED and compare_exchange(w, W_STATE, s, S_BACK):
                s = S_BACK  # S_ASKED or S_GO: the stand-in is gone or late
                break
            continue
        store_release(w, W_WAITING, 1)
        fence()  # pairs with the stand-in's: either it sees W_WAITING or we see its outcome
        s2 = load_acquire(w, W_STATE)
        if s2 == s:
            h.pfd[0, 0] = back
            wait_first(h.pfd, 1, deadline)
        store_release(w, W_WAITING, 0)
        drain_back(w)
    store_release(w, W_STATE, S_IDLE)
    return s


@njit(nogil=True, cache=True)
def hand_over(h):
    """``hand_over_start`` without a reply, then ``hand_over_settle``: the
    job done (S_DONE_OK, S_DONE_FAILED) or S_BACK."""
    s = hand_over_start(h, 0, 0)
    return s if s == S_BACK else hand_over_settle(h)


# ----------------------------------------------------------------- the poller
@njit(nogil=True, cache=True, inline="always", _nrt=False)
def take_job(w):
    """A poller between bursts: True when it took a job (do it, then ``finish_job``)."""
    return w[W_STATE] == S_GO and compare_exchange(w, W_STATE, S_GO, S_TAKEN)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def finish_job(w, ok):
    store_release(w, W_STATE, S_DONE_OK if ok else S_DONE_FAILED)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def mark_failed(w, reply):
    """The job failed: its reply, if it has one, says so (status byte 1)."""
    if w[W_REPLY_LEN] > 0:
        reply[w[W_REPLY_STATUS]] = 1


# ---------------------------------------------------------------- the stand-in
@njit(nogil=True, cache=True)
def _send_reply(w, reply, s):
    """The job ended (``s``) and has a reply: claim the outcome (unless the
    control thread did), mark the reply failed if the job failed, send it if
    it goes on the socket the stand-in holds.  True: sent (S_SENT)."""
    n = w[W_REPLY_LEN]
    if n <= 0 or not compare_exchange(w, W_STATE, s, S_SENDING):
        return False
    if s == S_DONE_FAILED:
        mark_failed(w, reply)
    sent = -1  # not tried: not our socket
    if w[W_ACK_GEN] != 0 and w[W_ACK_GEN] == w[W_SOCK_GEN] and w[W_SOCK] >= 0:
        sent = max(socket_send_from(w[W_SOCK], reply, n, MSG_DONTWAIT | MSG_NOSIGNAL), 0)
        w[W_SENT_NS] = monotonic_ns()
    w[W_SENT] = sent
    store_release(w, W_STATE, S_SENT if sent == n else S_UNSENT)
    return sent == n


@njit(nogil=True, cache=True)
def stand_in(w, reply, pfd):
    """The stand-in's loop: sleep on the ask eventfd (``pfd`` row 0); post
    each job, spin until a poller finished it or SPIN_NS passed, send its
    reply or wake the control thread.  Returns 0 when W_STOP is set, 1 when
    its socket pair (``pfd`` row 1) has a socket for it."""
    ask = w[W_ASK_FD]
    while load_acquire(w, W_STOP) == 0:
        pfd[0, 0] = ask
        pfd[0, 1] = POLLIN
        pfd[1, 1] = POLLIN
        poll_fds(pfd, 2, 1000)
        if pfd[1, 1] >> 16 != 0:
            return 1
        if eventfd_drain(ask) <= 0 or not compare_exchange(w, W_STATE, S_ASKED, S_GO):
            continue
        deadline = monotonic_ns() + SPIN_NS
        while True:
            s = load_acquire(w, W_STATE)
            if s == S_DONE_OK or s == S_DONE_FAILED:
                break
            if monotonic_ns() >= deadline:
                if not compare_exchange(w, W_STATE, S_GO, S_BACK):  # taken meanwhile: the control
                    store_release(w, W_LEFT, 1)  # thread waits for the poller and replies itself
                break
            cpu_pause()
        if (s == S_DONE_OK or s == S_DONE_FAILED) and _send_reply(w, reply, s):
            fence()  # pairs with hand_over_settle's
            if load_acquire(w, W_WAITING) == 0:
                continue  # the front-end's thread runs next, not the control thread
        store_release(w, W_BACK_SIG, 1)
        eventfd_signal(w[W_BACK_FD])
    return 0


# ------------------------------------------------------------------- control
class StandIn:
    """One stand-in process and the words it shares (``hand``).  Created
    idle, holding nothing but a page; ``start`` spawns the process (ready
    some time later: until then ``hand_over`` answers S_BACK); ``close``
    stops it.  Control thread only."""

    def __init__(self, name: str) -> None:
        self.name = name
        # the words live in a page of their own; ``start`` maps a memfd there, so the kernels'
        # views (taken now) see what the process sees
        self._page = mmap.mmap(-1, PAGE)
        words = np.frombuffer(self._page, np.int64, N_WORDS)
        words[W_ASK_FD] = words[W_BACK_FD] = words[W_SOCK] = -1
        self.hand = Hand(words, np.frombuffer(self._page, np.uint8, REPLY_MAX, REPLY_AT), np.zeros((1, 2), np.int32))
        self._pair: socket.socket | None = None  # our end of the socket pair the stand-in gets sockets by
        self._given = (-1, 0)  # the socket fd given, and its generation
        self._gen = 0
        self._proc: subprocess.Popen | None = None
        self._started = 0.0
        self._ready_seen = False  # the running process said it is ready
        self._said = False  # the slow start was reported
        self._failed = False  # it could not start: not tried again

    @property
    def ready(self) -> bool:
        return int(self.hand.words[W_READY]) != 0

    @property
    def fds(self) -> set[int]:
        """The fds this object holds in our process (none before ``start``)."""
        w = self.hand.words
        fds = {int(w[k]) for k in (W_ASK_FD, W_BACK_FD) if w[k] >= 0}
        return fds | ({self._pair.fileno()} if self._pair is not None else set())

    def give_socket(self, fd: int) -> None:
        """Let the stand-in send jobs' replies on socket ``fd`` (the control
        thread's current session; a dup goes over the socket pair, once per
        fd, again after ``forget_socket``).  A no-op until it is ready: the
        control thread sends the replies meanwhile.  The owner calls
        ``forget_socket`` when the session ends, since a later one may get
        the same fd number (should it not, the old socket was shut down:
        the stand-in's sends on it fail and fall back to the control thread)."""
        if fd == self._given[0] or not self.ready or self._pair is None:
            return
        self._gen += 1
        try:
            socket.send_fds(self._pair, [self._gen.to_bytes(8, "little")], [fd], socket.MSG_DONTWAIT)
        except OSError as e:
            log.warning("%s: cannot pass the socket to the stand-in (%s): the control thread replies", self.name, e)
            return
        self._given = (fd, self._gen)
        self.hand.words[W_GIVEN_GEN] = self._gen

    def forget_socket(self) -> None:
        """The socket given is gone (or a reply on it fell short): no job's
        reply goes to the stand-in until ``give_socket`` again."""
        self._given = (-1, 0)
        self.hand.words[W_GIVEN_GEN] = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, nice: int) -> None:
        """Spawn the stand-in on the calling thread's CPUs (the control
        thread's) at ``nice`` if it is not running; returns at once.  One that exited after it
        was ready is started again: it dies with the thread that started it
        (a control thread ends when its port stops)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._ready_seen = self._ready_seen or self.ready
                if not self._ready_seen and not self._said and time.monotonic() - self._started > START_TIMEOUT_S:
                    self._said = True
                    log.warning("%s: the stand-in process is not ready after %.0f s", self.name, START_TIMEOUT_S)
                return
            was_ready = self._ready_seen or self.ready  # (a killed one leaves its pid there)
            store_flag(self.hand.words, W_READY, 0)
            self.forget_socket()
            self._close_fds()
            code, self._proc = self._proc.returncode, None
            if not was_ready:
                self._failed = True
                log.warning("%s: the stand-in process exited (%s) before it was ready: the control thread "
                            "revokes pages itself", self.name, code)
            else:
                log.info("%s: the stand-in process exited (%s): started again", self.name, code)
        if self._failed:
            return
        self._ready_seen = False
        try:
            self._spawn()
        except (OSError, subprocess.SubprocessError) as e:
            self._failed = True
            self._close_fds()
            log.warning("%s: cannot start the stand-in process (%s): the control thread revokes pages itself",
                        self.name, e)
            return
        self._started = time.monotonic()
        cpus = os.sched_getaffinity(0)
        try:
            os.sched_setaffinity(self._proc.pid, cpus)
        except OSError as e:
            log.warning("%s: stand-in: cannot run on CPUs %s: %s", self.name, sorted(cpus), e)
        try:
            os.setpriority(os.PRIO_PROCESS, self._proc.pid, nice)
        except OSError:
            pass  # the control thread said so already (placement)

    def _spawn(self) -> None:
        words = self.hand.words
        words[W_ASK_FD] = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        words[W_BACK_FD] = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # the child gets the same numbers
        words[W_SOCK], words[W_SOCK_GEN] = -1, 0  # (a process before it may have held one)
        self._pair, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._pair.setblocking(False)
        fd = os.memfd_create(f"vhostpci-standin-{self.name}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, PAGE)
            os.pwrite(fd, self._page[:PAGE], 0)
            addr = words.ctypes.data
            if _libc.mmap(addr, PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | _MAP_FIXED, fd, 0) != addr:
                raise OSError(ctypes.get_errno(), f"{self.name}: stand-in: mmap failed")
            root = str(Path(__file__).resolve().parent.parent)
            env = dict(os.environ,
                       PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "pmd.standin", str(fd), str(os.getpid()), str(theirs.fileno())],
                pass_fds=(fd, int(words[W_ASK_FD]), int(words[W_BACK_FD]), theirs.fileno()),
                stdin=subprocess.DEVNULL, env=env)
        finally:
            os.close(fd)  # the page keeps the memory, the child its own fd
            theirs.close()

    def close(self) -> None:
        """Stop the process (it finishes a job it holds first) and close its eventfds."""
        words = self.hand.words
        proc, self._proc = self._proc, None
        if proc is None:
            return
        store_flag(words, W_STOP, 1)  # the child reads it once woken
        os.eventfd_write(int(words[W_ASK_FD]), 1)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.warning("%s: the stand-in process did not stop; killed", self.name)
            proc.kill()
            proc.wait()
        store_flag(words, W_READY, 0)  # kernels still holding the words hand nothing over
        self.forget_socket()
        self._close_fds()
        # the memfd goes too: zeroed anonymous memory in its place (W_READY 0)
        addr = words.ctypes.data
        _libc.mmap(addr, PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS | _MAP_FIXED, -1, 0)

    def _close_fds(self) -> None:
        words = self.hand.words
        for k in (W_ASK_FD, W_BACK_FD):
            if words[k] >= 0:
                os.close(int(words[k]))
                words[k] = -1
        if self._pair is not None:
            self._pair.close()
            self._pair = None


def _main(argv: list[str]) -> int:
    """The stand-in process: ``python -m pmd.standin MEMFD PARENT_PID PAIR_FD``."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    fd, parent, pair_fd = int(argv[0]), int(argv[1]), int(argv[2])
    if os.getppid() != parent:
        return 1  # the parent died before the death signal was set up
    pair = socket.socket(fileno=pair_fd)
    mm = mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    words = np.frombuffer(mm, np.int64, N_WORDS)
    reply = np.frombuffer(mm, np.uint8, REPLY_MAX, REPLY_AT)
    pfd = np.zeros((2, 2), np.int32)
    pfd[1, 0] = pair_fd
    words_probe = np.zeros(N_WORDS, np.int64)
    words_probe[W_STOP] = 1
    stand_in(words_probe, reply, pfd)  # compiled (or loaded) before it says it is ready
    store_flag(words, W_READY, os.getpid())
    while stand_in(words, reply, pfd) == 1:
        try:
            msg, fds, _, _ = socket.recv_fds(pair, 8, 1)
        except OSError:
            break
        if not msg:
            break  # the parent closed its end
        old = int(words[W_SOCK])
        if fds:
            words[W_SOCK] = fds[0]
            store_flag(words, W_SOCK_GEN, int.from_bytes(msg, "little"))
        if old >= 0:
            os.close(old)
    store_flag(words, W_READY, 0)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
