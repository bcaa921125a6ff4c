"""Grace periods: the control thread's wait until every lcore using a port
has passed a quiescent point, so nothing still holds what it just removed.

The control thread changes what kernels may touch (drops IOTLB rows, empties
a memory table), then waits here, then unmaps.  Each lcore publishes, in its
control words (one int64 row per lcore of ``ctl_table``):

- ``LC_EPOCH``: bumped with a release store once per pass of its loop, after
  the pass's last access to port memory (a quiescent point);
- ``LC_SLEEPING``: 1 while it sleeps in epoll (fallback interrupts); set with
  a release store after its last access, cleared with a seq_cst fence before
  it touches tables again;
- ``LC_RUNNING``: 1 while its thread runs the loop (set before, cleared after).

An lcore is done with the old state once its epoch moved on since the wait
began, or it sleeps, or it does not run.  The wait is compiled (``nogil``):
the control thread calls it from Python and from its own kernels alike.

Read sections are the finer wait, for what only a port's burst kernels
use (VM1's IOTLB grants): each kernel entry that touches the port's memory
brackets that access with ``section_enter``/``section_leave`` on a word of
its own (one per vring: one lcore polls a vring), odd while inside.
``wait_sections`` then waits only for the words it found odd, until they
move: an lcore preempted anywhere else -- in another port's syscall, or
between passes -- holds nothing of this port, and the control thread does
not wait for the scheduler to run it again (DPDK's vhost library holds its
per-vring IOTLB read lock the same way, for the burst only).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .atomics import cpu_pause, fence, load_acquire, store_release
from .syscalls import monotonic_ns, sleep_us

LC_EPOCH = 8  # bumped by the loop once per pass: a quiescent point
LC_SLEEPING = 24  # 1 while the lcore sleeps in epoll: it then counts as quiescent
LC_RUNNING = 28  # 1 while the lcore's thread runs its loop

SPIN_NS = 2_000  # look without a break for this long (an lcore on another CPU leaves in a moment) ...
SLEEP_MIN_US = 2  # ... then sleep between looks, a quarter of the wait so far, within these bounds:
SLEEP_MAX_US = 20  # an lcore preempted on this CPU runs meanwhile, and the waiter's wakeup preempts it back


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _over(mask, t0, timeout_ns):
    """Whether a wait that began at ``t0`` is over (nothing pending in
    ``mask``, or out of time: the caller returns ``mask``); else it backs
    off first: spin, then sleep between looks.  Sleeping, never
    ``sched_yield``: a yield lets an lcore sharing this CPU run up to a
    whole time slice (milliseconds), while a short sleep gives it the CPU
    only until the timer fires."""
    if mask == 0:
        return True
    waited = monotonic_ns() - t0
    if waited >= timeout_ns:
        return True
    if waited < SPIN_NS:
        for _ in range(64):
            cpu_pause()
    else:
        sleep_us(min(SLEEP_MAX_US, max(SLEEP_MIN_US, waited // 4000)))
    return False


@njit(nogil=True, cache=True, _nrt=False)
def _pending(ctl_table, rows, start):
    mask = 0
    for k in range(len(rows)):
        row = ctl_table[rows[k]]
        if load_acquire(row, LC_RUNNING) != 0 and load_acquire(row, LC_SLEEPING) == 0 \
                and load_acquire(row, LC_EPOCH) == start[k]:
            mask |= 1 << k
    return mask


@njit(nogil=True, cache=True)
def wait_quiescent(ctl_table, rows, timeout_ns):
    """Wait until each lcore whose row is listed in ``rows`` (at most 63)
    passed a quiescent point after this call began; returns 0, or after
    ``timeout_ns`` the bitmask of the positions in ``rows`` still pending.

    The fence orders the caller's change before the reads of the lcores'
    words; it pairs with the fence an lcore issues on waking (an lcore whose
    flag we still read as sleeping sees the change once it wakes)."""
    fence()
    start = np.empty(len(rows), np.int64)
    for k in range(len(rows)):
        start[k] = load_acquire(ctl_table[rows[k]], LC_EPOCH)
    t0 = monotonic_ns()
    while True:
        mask = _pending(ctl_table, rows, start)
        if _over(mask, t0, timeout_ns):
            return mask


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def section_enter(words, col):
    """Enter a read section on ``words[col]`` (odd while inside).  The full
    fence orders the mark before the section's first read of the tables; it
    pairs with ``wait_sections``' fence: either the waiter sees the mark,
    or this section sees the waiter's change."""
    store_release(words, col, words[col] + 1)
    fence()


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def section_leave(words, col):
    """Leave the read section: after the section's last access (release)."""
    store_release(words, col, words[col] + 1)


@njit(nogil=True, cache=True)
def wait_sections(table, col, timeout_ns):
    """Wait until every row of ``table`` that was inside a read section
    (odd ``table[row, col]``) when this call began has left it; returns 0,
    or after ``timeout_ns`` the bitmask of the rows (the first 63) still
    inside.  Call it after the change the sections must not miss."""
    fence()
    n = table.shape[0]
    start = np.empty(n, np.int64)
    for k in range(n):
        start[k] = load_acquire(table[k], col)
    t0 = monotonic_ns()
    while True:
        mask = 0
        for k in range(n):
            if start[k] & 1 and load_acquire(table[k], col) == start[k]:
                mask |= 1 << min(k, 62)
        if _over(mask, t0, timeout_ns):
            return mask


class GraceSet:
    """The lcores that poll one port, as a grace period needs them: their
    control words (``ctl_table`` rows) and their ids (for errors)."""

    def __init__(self, ctl_table: np.ndarray, rows: np.ndarray, lcore_ids: list[int]) -> None:
        if len(rows) > 63:
            raise ValueError(f"a grace period covers at most 63 lcores, not {len(rows)}")
        self.ctl_table = ctl_table
        self.rows = rows
        self.lcore_ids = list(lcore_ids)
        # compiled (or loaded) here, where the lcores are given to a port, not on a control
        # thread's first grace period: a cold compile there takes seconds (and Numba's compiler
        # lock, which another thread compiling meanwhile holds for longer still)
        wait_quiescent(ctl_table, rows[:0], 0)

    def wait(self, timeout: float) -> None:
        """``wait_quiescent`` from Python; TimeoutError names the stuck lcores
        (bounded: a stuck lcore is an error, never a deadlock)."""
        pending = wait_quiescent(self.ctl_table, self.rows, int(timeout * 1e9))
        if pending:
            stuck = sorted(lid for k, lid in enumerate(self.lcore_ids) if pending >> k & 1)
            raise TimeoutError(f"lcores {stuck} passed no quiescent point within {timeout} s")
