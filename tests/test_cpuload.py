"""The other threads' load on a control thread's CPUs (``pmd/cpuload.py``)."""
from __future__ import annotations

import os

import pytest

from pmd.cpuload import _TICK_NS, OthersLoad, read_cpu_ticks


def test_ticks_are_read_for_the_cpus_asked():
    cpus = frozenset(os.sched_getaffinity(0))
    busy, total = read_cpu_ticks(cpus)
    one_busy, one_total = read_cpu_ticks(frozenset([min(cpus)]))
    assert 0 <= busy <= total and 0 < one_total <= total
    assert read_cpu_ticks(frozenset([10_000])) == (0, 0), "a CPU that does not exist counts nothing"


def test_the_share_leaves_out_the_callers_own_time():
    ticks = iter([(0, 0), (60, 100), (60, 200), (160, 300)])
    own = iter([0, 20 * _TICK_NS, 20 * _TICK_NS, 120 * _TICK_NS])
    load = OthersLoad({0}, read_ticks=lambda cpus: next(ticks), own_ns=lambda: next(own))
    assert load.sample() is None, "nothing to compare with yet"
    assert load.sample() == pytest.approx(0.4)  # 60 busy ticks of 100, 20 of them the caller's
    assert load.sample() == 0.0  # idle
    assert load.sample() == 0.0  # busy, but all of it the caller's own

