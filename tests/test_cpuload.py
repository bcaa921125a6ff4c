"""CPU busy time from /proc/stat (``pmd/cpuload.py``)."""
from __future__ import annotations

import os

from pmd.cpuload import read_cpu_ticks


def test_ticks_are_read_for_the_cpus_asked():
    cpus = frozenset(os.sched_getaffinity(0))
    busy, total = read_cpu_ticks(cpus)
    one_busy, one_total = read_cpu_ticks(frozenset([min(cpus)]))
    assert 0 <= busy <= total and 0 < one_total <= total
    assert read_cpu_ticks(frozenset([10_000])) == (0, 0), "a CPU that does not exist counts nothing"
