"""Where and how control threads run (``pmd/placement.py``): off the
workers' CPUs (DPDK's rule), above the default priority, and with short
sleeps that end when asked (timer slack)."""
from __future__ import annotations

import ctypes
import os
import threading

import pytest

from pmd import placement


@pytest.fixture
def layout():
    yield
    placement.set_control_cpus(None)
    placement.set_poller_cpus(set())


def _timer_slack() -> int:
    """The calling thread's timer slack, ns (prctl PR_GET_TIMERSLACK)."""
    return ctypes.CDLL(None, use_errno=True).prctl(30, 0, 0, 0, 0)


def _run_in_thread(fn):
    out = {}

    def body() -> None:
        fn()
        out["cpus"] = os.sched_getaffinity(0)
        out["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        out["slack"] = _timer_slack()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return out


def test_a_control_thread_runs_off_the_workers_cpus_and_above_the_default_priority(layout):
    cpus = sorted(os.sched_getaffinity(0))
    workers = {cpus[-1]} if len(cpus) > 1 else set()
    placement.set_control_cpus(placement.control_cpus_for(workers, cpus[0]))
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    got = _run_in_thread(placement.pin_control_thread)
    assert got["cpus"] == (set(cpus) - workers or {cpus[0]})
    if os.geteuid() == 0:  # CAP_SYS_NICE
        assert got["nice"] == placement.CONTROL_NICE
    assert got["slack"] == placement.CONTROL_TIMER_SLACK_NS
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base, "the caller's priority changed"


def test_no_layout_leaves_the_thread_alone(layout):
    placement.set_control_cpus(None)
    got = _run_in_thread(placement.pin_control_thread)
    assert got["cpus"] == os.sched_getaffinity(0)
    assert got["nice"] == os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert got["slack"] == _timer_slack()


def test_control_threads_share_the_pollers_cpus_only_when_they_have_no_other(layout):
    assert not placement.control_shares_pollers(), "no layout, no pollers"
    placement.set_poller_cpus({1})
    placement.set_control_cpus({0})
    assert not placement.control_shares_pollers()
    placement.set_control_cpus({0, 1})
    assert not placement.control_shares_pollers(), "CPU 0 has no poller"
    placement.set_control_cpus({1})
    assert placement.control_shares_pollers()
    placement.set_poller_cpus({0, 1})
    placement.set_control_cpus({0, 1})
    assert placement.control_shares_pollers()
