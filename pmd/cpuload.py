"""How busy the calling thread's CPUs are with other threads' work.

A control thread decides where to serve VM1's IOTLB messages by how much
of its own CPUs' time other threads used (VM1's vCPUs and main loop, a
poller): ``/proc/stat``'s per-CPU busy time over the thread's allowed CPUs,
minus the time the calling thread itself ran (``CLOCK_THREAD_CPUTIME_ID``).
Cost: one read of ``/proc/stat`` per ``sample``; call it a few times a
second, never per message.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
# /proc/stat per-CPU fields: user nice system idle iowait irq softirq steal ...
_IDLE, _IOWAIT = 3, 4


def read_cpu_ticks(cpus: frozenset[int]) -> tuple[int, int]:
    """(busy, total) clock ticks since boot, summed over ``cpus``."""
    busy = total = 0
    with open("/proc/stat", "rb") as f:
        for line in f:
            if not line.startswith(b"cpu") or line[3:4] == b" ":
                continue
            name, *fields = line.split()
            if int(name[3:]) not in cpus:
                continue
            ticks = [int(x) for x in fields[:8]]
            all_ = sum(ticks)
            busy += all_ - ticks[_IDLE] - ticks[_IOWAIT]
            total += all_
    return busy, total


class OthersLoad:
    """Share of the calling thread's CPUs (0..1) other threads kept busy
    between two ``sample`` calls, all made from the same thread."""

    def __init__(self, cpus: Iterable[int] | None = None,
                 read_ticks: Callable[[frozenset[int]], tuple[int, int]] = read_cpu_ticks,
                 own_ns: Callable[[], int] = time.thread_time_ns) -> None:
        self.cpus = frozenset(cpus) if cpus is not None else frozenset(os.sched_getaffinity(0))
        self._read_ticks = read_ticks
        self._own_ns = own_ns
        self._last: tuple[int, int, int] | None = None

    def sample(self) -> float | None:
        """The share since the last call; None on the first one (or when no
        tick passed)."""
        busy, total = self._read_ticks(self.cpus)
        own = self._own_ns()
        last, self._last = self._last, (busy, total, own)
        if last is None or total <= last[1]:
            return None
        others = (busy - last[0]) * _TICK_NS - (own - last[2])
        return min(1.0, max(0.0, others / ((total - last[1]) * _TICK_NS)))
