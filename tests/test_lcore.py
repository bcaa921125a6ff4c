import os
import time

import numpy as np
import pytest
from numba import njit

from pmd.atomics import cpu_pause, load_acquire, store_release
from pmd.lcore.control import LC_EPOCH, LC_STOP
from pmd.lcore import LcoreBusy, LcoreError, LcoreManager

from .conftest import CPUS, WORKER_CPU


@njit(nogil=True, cache=True)
def spin_until_stop(ctl):
    n = 0
    while load_acquire(ctl, LC_STOP) == 0:
        cpu_pause()
        n += 1
    return n


def test_worker_is_pinned_to_requested_cpu():
    lm = LcoreManager({0: CPUS[0], 5: WORKER_CPU}, 0)
    lm.remote_launch(5, spin_until_stop, lm.ctl(5))
    try:
        assert lm.affinity(5) == {WORKER_CPU}
        assert lm.is_running(5)
    finally:
        lm.stop(5)
        lm.wait(5, 1.0)


def test_pinning_only_affects_the_worker_thread():
    before = os.sched_getaffinity(0)
    lm = LcoreManager({0: CPUS[0], 1: WORKER_CPU}, 0)
    lm.remote_launch(1, spin_until_stop, lm.ctl(1))
    lm.stop(1)
    lm.wait(1, 1.0)
    assert os.sched_getaffinity(0) == before


def test_stop_is_seen_within_one_second():
    lm = LcoreManager({0: CPUS[0], 1: WORKER_CPU}, 0)
    lm.remote_launch(1, spin_until_stop, lm.ctl(1))
    time.sleep(0.2)
    t0 = time.monotonic()
    lm.stop(1)
    lm.wait(1, 1.0)
    assert time.monotonic() - t0 < 1.0


def test_launch_errors():
    lm = LcoreManager({0: CPUS[0], 1: WORKER_CPU}, 0)
    with pytest.raises(LcoreError, match="lcore 0 is not a worker"):
        lm.remote_launch(0, spin_until_stop, lm.ctl(1))
    lm.remote_launch(1, spin_until_stop, lm.ctl(1))
    try:
        with pytest.raises(LcoreBusy):
            lm.remote_launch(1, spin_until_stop, lm.ctl(1))
    finally:
        lm.stop(1)
        lm.wait(1, 1.0)


def test_function_error_is_reported_by_wait():
    def boom():
        raise RuntimeError("kaput")

    lm = LcoreManager({0: CPUS[0], 1: WORKER_CPU}, 0)
    lm.remote_launch(1, boom)
    with pytest.raises(LcoreError, match="kaput"):
        lm.wait(1, 1.0)


def test_wait_times_out_on_a_running_lcore():
    lm = LcoreManager({0: CPUS[0], 1: WORKER_CPU}, 0)
    ctl = lm.ctl(1)
    lm.remote_launch(1, spin_until_stop, ctl)
    try:
        with pytest.raises(TimeoutError):
            lm.wait(1, 0.2)
    finally:
        lm.stop(1)
        lm.wait(1, 1.0)
    assert np.all(ctl[LC_STOP] == 1)


@njit(nogil=True, cache=True)
def epoch_loop(ctl, stall):
    """Bumps the epoch each pass; while stall[0] is set it spins without one."""
    while load_acquire(ctl, LC_STOP) == 0:
        while load_acquire(stall, 0) != 0 and load_acquire(ctl, LC_STOP) == 0:
            cpu_pause()
        store_release(ctl, LC_EPOCH, ctl[LC_EPOCH] + 1)
    return 0


def test_wait_quiescent_sees_an_epoch_and_times_out_on_a_stuck_lcore():
    lm = LcoreManager({0: CPUS[0], 1: WORKER_CPU}, 0)
    stall = np.zeros(1, np.int64)
    lm.remote_launch(1, epoch_loop, lm.ctl(1), stall)
    try:
        lm.wait_quiescent([1], timeout=5.0)  # passes as soon as the loop runs
        stall[0] = 1
        time.sleep(0.05)
        with pytest.raises(TimeoutError, match=r"lcores \[1\]"):
            lm.wait_quiescent([1], timeout=0.1)
        stall[0] = 0
        lm.wait_quiescent([1], timeout=1.0)
    finally:
        lm.stop(1)
        lm.wait(1, 1.0)
    lm.wait_quiescent([1], timeout=0.1)  # a stopped lcore holds nothing
