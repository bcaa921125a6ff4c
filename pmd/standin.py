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

- S_IDLE: free; the control thread takes it (``hand_over``) with a CAS to
  S_ASKED, writes the stand-in's eventfd and sleeps on its own;
- S_ASKED: the stand-in, woken, posts it (S_GO) and spins;
- S_GO: the poller takes it between two bursts (``take_job``: S_TAKEN), does
  it and stores S_DONE_OK or S_DONE_FAILED (``finish_job``); the stand-in
  then writes the control thread's eventfd and sleeps again;
- S_BACK: nobody took it in time (the poller went to sleep, or the stand-in
  is gone): the control thread does the job itself.

The control thread stores S_IDLE once it has the outcome.  The stand-in
spins at most ``W_SPIN_NS`` for a poller to take the job; the control
thread waits at most ``W_WAIT_NS`` for the stand-in (then takes the job
back unless the poller has it: a job taken is always finished).  The
stand-in dies with its parent (``PR_SET_PDEATHSIG``).
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numba import njit

from .atomics import compare_exchange, cpu_pause, load_acquire, store_release
from .atomics_py import store_flag
from .syscalls import POLLIN, eventfd_drain, eventfd_signal, monotonic_ns, poll_fds, sleep_us, wait_first

log = logging.getLogger("vhostpci.standin")

# shared words (int64, one cache line)
W_STATE, W_ASK_FD, W_BACK_FD, W_READY, W_STOP, W_SPIN_NS, W_WAIT_NS = range(7)
N_WORDS = 8
S_IDLE, S_ASKED, S_GO, S_TAKEN, S_DONE_OK, S_DONE_FAILED, S_BACK = range(7)
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
    """What a kernel hands a job over with: the shared words and the
    control thread's ``struct pollfd`` (its eventfd, int32[1, 2])."""

    words: np.ndarray
    pfd: np.ndarray


# ------------------------------------------------------- the control thread
@njit(nogil=True, cache=True)
def hand_over(h):
    """Hand the job to a poller through the stand-in and sleep until it is
    done: S_DONE_OK or S_DONE_FAILED, or S_BACK: do it yourself (nobody took
    it: no stand-in running, another job in the way, or no poller came)."""
    w = h.words
    if load_acquire(w, W_READY) == 0 or not compare_exchange(w, W_STATE, S_IDLE, S_ASKED):
        return S_BACK
    back = w[W_BACK_FD]
    while eventfd_drain(back) > 0:
        pass  # a late wake-up of an earlier job
    eventfd_signal(w[W_ASK_FD])
    deadline = monotonic_ns() + w[W_WAIT_NS]
    while True:
        s = load_acquire(w, W_STATE)
        if s == S_DONE_OK or s == S_DONE_FAILED:
            break
        if s == S_TAKEN:
            sleep_us(2)  # the poller is at it (the stand-in stopped waiting): it always finishes
            continue
        if s == S_BACK:
            break
        if monotonic_ns() >= deadline:
            if compare_exchange(w, W_STATE, s, S_BACK):  # S_ASKED or S_GO: the stand-in is gone or late
                s = S_BACK
                break
            continue
        h.pfd[0, 0] = back
        wait_first(h.pfd, 1, deadline)
        eventfd_drain(back)
    store_release(w, W_STATE, S_IDLE)
    return s


# ----------------------------------------------------------------- the poller
@njit(nogil=True, cache=True, inline="always", _nrt=False)
def take_job(w):
    """A poller between bursts: True when it took a job (do it, then ``finish_job``)."""
    return w[W_STATE] == S_GO and compare_exchange(w, W_STATE, S_GO, S_TAKEN)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def finish_job(w, ok):
    store_release(w, W_STATE, S_DONE_OK if ok else S_DONE_FAILED)


# ---------------------------------------------------------------- the stand-in
@njit(nogil=True, cache=True)
def stand_in(w, pfd):
    """The stand-in's loop: sleep on the ask eventfd (``pfd``); post each
    job and spin until a poller finished it or W_SPIN_NS passed; wake the
    control thread.  Returns when W_STOP is set."""
    ask = w[W_ASK_FD]
    while load_acquire(w, W_STOP) == 0:
        pfd[0, 0] = ask
        pfd[0, 1] = POLLIN
        poll_fds(pfd, 1, 1000)
        if eventfd_drain(ask) <= 0 or not compare_exchange(w, W_STATE, S_ASKED, S_GO):
            continue
        deadline = monotonic_ns() + w[W_SPIN_NS]
        while True:
            s = load_acquire(w, W_STATE)
            if s == S_DONE_OK or s == S_DONE_FAILED:
                break
            if monotonic_ns() >= deadline:
                compare_exchange(w, W_STATE, S_GO, S_BACK)  # if not taken meanwhile
                break  # (taken: the control thread waits for the poller itself)
            cpu_pause()
        eventfd_signal(w[W_BACK_FD])


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
        words[W_ASK_FD] = words[W_BACK_FD] = -1
        words[W_SPIN_NS], words[W_WAIT_NS] = SPIN_NS, WAIT_NS
        self.hand = Hand(words, np.zeros((1, 2), np.int32))
        self._proc: subprocess.Popen | None = None
        self._started = 0.0
        self._ready_seen = False  # the running process said it is ready
        self._said = False  # the slow start was reported
        self._failed = False  # it could not start: not tried again

    @property
    def ready(self) -> bool:
        return int(self.hand.words[W_READY]) != 0

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
                [sys.executable, "-m", "pmd.standin", str(fd), str(os.getpid())],
                pass_fds=(fd, int(words[W_ASK_FD]), int(words[W_BACK_FD])), stdin=subprocess.DEVNULL, env=env)
        finally:
            os.close(fd)  # the page keeps the memory, the child its own fd

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


def _main(argv: list[str]) -> int:
    """The stand-in process: ``python -m pmd.standin MEMFD PARENT_PID``."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    fd, parent = int(argv[0]), int(argv[1])
    if os.getppid() != parent:
        return 1  # the parent died before the death signal was set up
    mm = mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    words = np.frombuffer(mm, np.int64, N_WORDS)
    pfd = np.zeros((1, 2), np.int32)
    words_probe = np.zeros(N_WORDS, np.int64)
    words_probe[W_STOP] = 1
    stand_in(words_probe, pfd)  # compiled (or loaded) before it says it is ready
    store_flag(words, W_READY, os.getpid())
    stand_in(words, pfd)
    store_flag(words, W_READY, 0)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
