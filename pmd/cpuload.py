"""CPU busy time from ``/proc/stat``, summed over a set of CPUs (how busy
a workload keeps the CPUs it runs on).  Cost: one read of ``/proc/stat``
per call; never per packet.
"""
from __future__ import annotations

import os

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
