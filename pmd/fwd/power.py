"""Fallback interrupts per lcore (DPDK's l3fwd-power): poll while there is
work, sleep in epoll when there is none.

``power_fwd_loop`` is the Python-level body of a forwarding lcore whose rx
queues can all wake it (every rx driver registered ``intr_arm``/
``intr_disarm`` kernels, ``pmd/burst.py``, and has ``intr_fds(queue)``).  It
runs ``fwd_loop`` (cfg[CFG_IDLE_POLLS] > 0); when that returns EXIT_IDLE:

1. fetch each rx queue's wake-up eventfds and ``dup`` them (the owner may
   close its number while we sleep: a reconnecting VM1 replaces its kick
   fd); a queue with none, or one that cannot be armed, means: keep polling
   (and so does an lcore with any rx queue whose driver has no interrupt
   kernels: it runs plain ``fwd_loop``, see ``can_sleep``);
2. arm every rx queue (njit: re-enable notifications, seq_cst fence, re-read
   the ring); any pending work, or fds that changed meanwhile: disarm all
   and poll again;
3. ``set_sleeping(ctl, 1)``: release store + seq_cst fence (below);
4. ``epoll.poll`` on the dups plus the lcore's stop eventfd, GIL released,
   at most SLEEP_TIMEOUT_S (a timeout re-arms and re-checks, so a missed
   or replaced fd costs at most that much latency, never a hang);
5. ``wake_up``: LC_SLEEPING = 0 (store + fence), drain the ready eventfds;
   on a timeout go back to 1 (re-arm and re-check, nothing polled);
   otherwise disarm and return to ``fwd_loop``.  The kernels on this path
   keep the GIL (no nogil): no GIL hand-off between waking and polling.
Stop: ``LcoreManager.stop`` sets LC_STOP, then writes the stop eventfd, so
a sleeper returns at once (and one about to sleep finds the fd readable).

Quiescence (``LcoreManager.wait_quiescent``) counts a sleeping lcore as
quiescent: asleep it holds no address into port memory.  The order:

- going to sleep, every access to port memory (the last pass, the arm
  kernels) comes before the release store of LC_SLEEPING = 1, so a control
  thread that reads 1 knows they are done;
- waking, the lcore stores LC_SLEEPING = 0, then a seq_cst fence, and only
  then touches translation tables or port memory (disarm, fwd_loop);
- the control thread changes the tables first, then (``wait_quiescent``) a
  seq_cst fence, then reads LC_SLEEPING.  Store-buffering with fences on
  both sides: if it still read 1, the lcore's later table reads see the
  change; without the fences x86 may let both sides read stale values.
"""
from __future__ import annotations

import os
import select
from typing import Any

import numpy as np
from numba import njit, typeof
from numba.core import types

from ..atomics import fence, full_fence, store_release
from ..burst import has_intr, intr_arm, intr_disarm
from ..syscalls import eventfd_drain
from ..lcore.control import LC_SLEEPING, LC_SLEEPS, LC_STOP, LC_WAKEUPS
from .common import CFG_TX_FIRST, EXIT_STOPPED
from .loop import fwd_loop

SLEEP_TIMEOUT_S = 0.1

# outcomes of one sleep attempt
_POLL, _TIMEOUT, _STOPPED = range(3)


# The kernels Python calls on the sleep/wake path are short: they keep the
# GIL (no nogil), so waking costs no extra GIL hand-offs before fwd_loop.
@njit(cache=True)
def arm_queue(state, queue):
    """``intr_arm`` from Python: > 0 pending, 0 armed, < 0 cannot arm."""
    return intr_arm(state, queue)


@njit(cache=True)
def disarm_queue(state, queue):
    intr_disarm(state, queue)


@njit(cache=True)
def set_sleeping(ctl, value):
    """LC_SLEEPING = value, a release store followed by a seq_cst fence."""
    store_release(ctl, LC_SLEEPING, value)
    fence()


@njit(cache=True)
def wake_up(ctl, ready, n):
    """Awake: LC_SLEEPING = 0 and a seq_cst fence (before any table or port
    memory access), then drain the ``n`` eventfds epoll reported in ``ready``."""
    store_release(ctl, LC_SLEEPING, 0)
    fence()
    for k in range(n):
        eventfd_drain(ready[k])


class RxQueue:
    """One rx queue an lcore polls: its driver (``intr_fds``) and kernel state."""

    __slots__ = ("driver", "queue", "state")

    def __init__(self, driver: Any, queue: int, state: Any) -> None:
        self.driver, self.queue, self.state = driver, queue, state


def can_sleep(queues: list[RxQueue]) -> bool:
    """True if every rx queue's driver can wake a sleeping lcore (it
    registered interrupt kernels; ``PortDriver.intr_fds`` gives the fds)."""
    return bool(queues) and all(has_intr(q.state) for q in queues)


def precompile(queues: list[RxQueue], ctl: np.ndarray) -> None:
    """Compile (or load) the sleep/wake kernels in the calling (control)
    thread, so a sleeping lcore never stops to compile."""
    full_fence()
    set_sleeping.compile((typeof(ctl), types.int64))
    wake_up.compile((typeof(ctl), typeof(np.zeros(1, np.int64)), types.int64))
    for q in queues:
        sig = (typeof(q.state), types.int64)
        arm_queue.compile(sig)
        disarm_queue.compile(sig)


def _fds(queues: list[RxQueue]) -> list[int] | None:
    out: list[int] = []
    for q in queues:
        fds = q.driver.intr_fds(q.queue)
        if not fds:
            return None
        out.extend(fds)
    return out


class Sleeper:
    """One lcore's sleep attempts (steps 1-5 of the module doc).  The dups
    and the epoll of a sleep are closed at the next attempt (or ``close``),
    off the wake-up path."""

    def __init__(self, ctl: np.ndarray, queues: list[RxQueue], stop_fd: int, timeout: float) -> None:
        self.ctl, self.queues, self.stop_fd, self.timeout = ctl, queues, stop_fd, timeout
        self.ready = np.zeros(64, np.int64)
        self._dups: list[int] = []
        self._ep: select.epoll | None = None

    def close(self) -> None:
        if self._ep is not None:
            self._ep.close()
            self._ep = None
        for fd in self._dups:
            os.close(fd)
        self._dups = []

    def _disarm(self) -> None:
        for q in self.queues:
            disarm_queue(q.state, q.queue)

    def sleep_once(self) -> int:
        """Returns _POLL (go back to polling), _TIMEOUT (nothing came: try
        again) or _STOPPED."""
        self.close()
        ctl, queues = self.ctl, self.queues
        if ctl[LC_STOP]:
            return _STOPPED
        fds = _fds(queues)
        if fds is None:
            return _POLL
        try:
            for fd in fds:
                self._dups.append(os.dup(fd))
                # wake_up drains it with the GIL held: it must never block
                # (shared with the owner, who made it non-blocking already)
                os.set_blocking(self._dups[-1], False)
        except OSError:  # closed under us: reconnecting
            return _POLL
        pending = 0
        for q in queues:
            pending = arm_queue(q.state, q.queue)
            if pending != 0:
                break
        if pending != 0 or _fds(queues) != fds:
            self._disarm()
            return _POLL
        ep = self._ep = select.epoll(len(self._dups) + 1)
        for fd in self._dups:
            ep.register(fd, select.EPOLLIN)
        if self.stop_fd >= 0:
            ep.register(self.stop_fd, select.EPOLLIN)
        set_sleeping(ctl, 1)
        ctl[LC_SLEEPS] += 1
        events = ep.poll(self.timeout) if not ctl[LC_STOP] else []
        n = min(len(events), len(self.ready))
        woken = False
        for k in range(n):
            fd = events[k][0]
            self.ready[k] = fd
            woken = woken or fd != self.stop_fd
        wake_up(ctl, self.ready, n)  # sleeping = 0 + fence, before touching port memory
        if ctl[LC_STOP]:
            self._disarm()
            return _STOPPED
        if not woken:
            return _TIMEOUT  # still armed: re-armed and re-checked next round
        self._disarm()
        ctl[LC_WAKEUPS] += 1
        return _POLL


def power_fwd_loop(streams: tuple, ctx: Any, ctl: np.ndarray, queues: list[RxQueue], stop_fd: int,
                   timeout: float = SLEEP_TIMEOUT_S) -> int:
    """The lcore body: ``fwd_loop`` until idle, then sleep until woken (see
    the module doc); returns EXIT_STOPPED once ctl[LC_STOP] is set."""
    again = ctx._replace(cfg=ctx.cfg.copy())
    again.cfg[CFG_TX_FIRST] = 0  # tx_first only on the first entry
    cur = ctx
    sleeper = Sleeper(ctl, queues, stop_fd, timeout)
    try:
        while True:
            if fwd_loop(streams, cur, ctl) == EXIT_STOPPED:
                return EXIT_STOPPED
            cur = again
            while True:
                r = sleeper.sleep_once()
                if r == _STOPPED:
                    return EXIT_STOPPED
                if r == _POLL:
                    break
    finally:
        sleeper.close()
