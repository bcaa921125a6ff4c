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
the control thread calls it from Python and from its own kernels (the IOTLB
path) alike.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .atomics import cpu_pause, fence, load_acquire
from .syscalls import monotonic_ns, sched_yield, sleep_us

LC_EPOCH = 8  # bumped by the loop once per pass: a quiescent point
LC_SLEEPING = 24  # 1 while the lcore sleeps in epoll: it then counts as quiescent
LC_RUNNING = 28  # 1 while the lcore's thread runs its loop

SPIN_NS = 50_000  # yield the CPU between looks for this long, then sleep between looks
SLEEP_US = 20


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
        if mask == 0:
            return 0
        waited = monotonic_ns() - t0
        if waited >= timeout_ns:
            return mask
        if waited < SPIN_NS:
            for _ in range(64):
                cpu_pause()
            sched_yield()  # an lcore sharing this CPU gets to finish its pass
        else:
            sleep_us(SLEEP_US)


class GraceSet:
    """The lcores that poll one port, as a grace period needs them: their
    control words (``ctl_table`` rows) and their ids (for errors)."""

    def __init__(self, ctl_table: np.ndarray, rows: np.ndarray, lcore_ids: list[int]) -> None:
        if len(rows) > 63:
            raise ValueError(f"a grace period covers at most 63 lcores, not {len(rows)}")
        self.ctl_table = ctl_table
        self.rows = rows
        self.lcore_ids = list(lcore_ids)

    def wait(self, timeout: float) -> None:
        """``wait_quiescent`` from Python; TimeoutError names the stuck lcores
        (bounded: a stuck lcore is an error, never a deadlock)."""
        pending = wait_quiescent(self.ctl_table, self.rows, int(timeout * 1e9))
        if pending:
            stuck = sorted(lid for k, lid in enumerate(self.lcore_ids) if pending >> k & 1)
            raise TimeoutError(f"lcores {stuck} passed no quiescent point within {timeout} s")
