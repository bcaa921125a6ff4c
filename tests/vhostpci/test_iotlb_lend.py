"""VM1's socket lent to the polling lcore (``pmd/vhostpci_pmd/iotlb_lend.py``).

The ownership word first, driven by hand (one reader at a time: the control
thread takes the socket back before it returns, waits for a serving lcore,
never lends to a stale stamp); then a port whose lcore polls: it serves the
plain IOTLB messages with the control thread's isolation, hands back what
only the session's path handles, and when it stops the control thread
serves again."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from numba import njit

from pmd.vhost_user.frontend import FrontendError
from pmd.vhost_user.messages import IotlbPerm
from pmd.vhostpci_pmd import iotlb_serve
from pmd.vhostpci_pmd.iotlb_lend import (
    LEND_RETURNED, LEND_STALE, LEND_TIMEOUT, OWN_CONTROL, OWN_LENT, OWN_RETURNED, OWN_SERVING, LendPolicy, give_back,
    lend_wait, may_serve, served,
)
from pmd.vhostpci_pmd.state import N_PORT_CTL, PORT_IOTLB_BEAT, PORT_IOTLB_FD, PORT_IOTLB_OWNER, PORT_WAKE_FD
from tests.util import wait_until
from tests.vhost_user.test_vu_backend import readable
from tests.vhostpci.test_iotlb_fast import BUF, PAGE, mapped_soon, setup  # noqa: F401  (the fixture)
from tests.vhostpci.test_port_control import MEM_SIZE


@njit(cache=True)
def _may_serve(ctl, idle):
    return may_serve(ctl, idle)


@njit(cache=True)
def _served(ctl, needs_control):
    served(ctl, 1, needs_control)


# The stand-in lcore below is a Python thread: on a busy 2-CPU machine it
# may not run for longer than BEAT_STALE_NS, and the control thread would
# rightly take the socket back.  Its stamps are dated this far ahead, so
# these tests look at the lend and not at the scheduler; staleness is set
# by hand where it is the point (a stamp of 0).
STAMP_AHEAD_NS = 10_000_000_000


def _ctl(stamp: bool = True) -> np.ndarray:
    ctl = np.zeros(N_PORT_CTL, np.int64)
    ctl[PORT_WAKE_FD] = -1
    ctl[PORT_IOTLB_FD] = 99  # named: the lcore stamps
    ctl[PORT_IOTLB_BEAT] = time.monotonic_ns() + STAMP_AHEAD_NS if stamp else 0
    return ctl


def _pfds(*fds: int) -> np.ndarray:
    p = np.zeros((1 + len(fds), 2), np.int32)
    p[0, 0] = -1
    p[1:, 0] = fds
    return p


def test_no_lend_to_a_stale_stamp():
    ctl = _ctl(stamp=False)
    assert lend_wait(_pfds(), 1, 50_000_000, ctl) == LEND_STALE
    assert ctl[PORT_IOTLB_OWNER] == OWN_CONTROL
    assert not _may_serve(ctl, True), "took a socket never lent"


class Lcore(threading.Thread):
    """A stand-in lcore: stamps, and takes the socket when it is lent
    (``may_serve``), then runs ``work(ctl)`` once; until ``stop``."""

    def __init__(self, ctl: np.ndarray, work=None) -> None:
        super().__init__()
        self.ctl, self.work, self.done, self.saw_lent = ctl, work, threading.Event(), False

    def run(self) -> None:
        while not self.done.is_set():
            self.saw_lent |= self.ctl[PORT_IOTLB_OWNER] == OWN_LENT
            if self.work is not None and _may_serve(self.ctl, True):
                self.work(self.ctl)
                self.work = None
            stamp = (time.monotonic_ns() + STAMP_AHEAD_NS) * (self.work is None)
            self.ctl[PORT_IOTLB_BEAT] = max(self.ctl[PORT_IOTLB_BEAT], stamp)
            time.sleep(0.0002)

    def stop(self) -> None:
        self.done.set()
        self.join()


def test_lent_then_taken_back_at_the_deadline():
    ctl = _ctl()
    lc = Lcore(ctl)
    lc.start()
    try:
        assert lend_wait(_pfds(), 1, 500_000_000, ctl) == LEND_TIMEOUT
    finally:
        lc.stop()
    assert lc.saw_lent
    assert ctl[PORT_IOTLB_OWNER] == OWN_CONTROL


def test_an_lcore_gives_it_back_and_wakes_the_control_thread():
    ctl = _ctl()
    wake = os.eventfd(0, os.EFD_NONBLOCK)
    ctl[PORT_WAKE_FD] = wake
    states = []

    def work(ctl):
        states.append(int(ctl[PORT_IOTLB_OWNER]))
        _served(ctl, True)  # a message only the control thread handles
    lc = Lcore(ctl, work)
    lc.start()
    try:
        assert lend_wait(_pfds(wake), 2, 2_000_000_000, ctl) == LEND_RETURNED
    finally:
        lc.stop()
        os.close(wake)
    assert states == [OWN_SERVING]
    assert ctl[PORT_IOTLB_OWNER] == OWN_CONTROL


def test_take_back_waits_for_a_serving_lcore():
    ctl = _ctl()
    left_at = []

    def work(ctl):
        ctl[PORT_IOTLB_BEAT] = 0  # stale while it serves: the control thread waits for it all the same
        time.sleep(0.2)  # a long batch: the deadline passes meanwhile
        left_at.append(time.monotonic())
        _served(ctl, False)
    lc = Lcore(ctl, work)
    lc.start()
    try:
        while not left_at and lend_wait(_pfds(), 1, 1_000_000, ctl) != LEND_STALE:
            back_at = time.monotonic()
            if left_at:
                break
    finally:
        lc.stop()
    assert left_at and back_at >= left_at[0], "the control thread took the socket from a serving lcore"
    assert ctl[PORT_IOTLB_OWNER] == OWN_CONTROL


def test_a_sleeping_lcore_gives_it_back():
    ctl = _ctl()
    ctl[PORT_IOTLB_OWNER] = OWN_LENT
    give_back(ctl, OWN_LENT)  # what the port's arm kernel does before the lcore sleeps
    # cleared stamp: not lent again until the lcore polls
    assert ctl[PORT_IOTLB_OWNER] == OWN_RETURNED and ctl[PORT_IOTLB_BEAT] == 0
    give_back(ctl, OWN_LENT)  # not lent (any more): nothing changes
    assert ctl[PORT_IOTLB_OWNER] == OWN_RETURNED


def test_auto_lends_while_the_front_end_sends_runs(monkeypatch):
    """``iotlb_lcore=auto``: lend from LEND_RUN messages a run, stop under
    KEEP_RUN (no flapping in between); a look with fewer than MIN_RUNS runs
    changes nothing.  A control thread that shares every CPU it may use with
    polling lcores lends whatever the runs."""
    from pmd.vhostpci_pmd import iotlb_lend

    lend, keep, few = iotlb_lend.LEND_RUN, iotlb_lend.KEEP_RUN, iotlb_lend.MIN_RUNS
    between = (lend + keep) / 2
    per_run = [None, 1.0, between, lend, between, None, 1.0]  # None: a look with too few runs
    clock = [0.0]
    monkeypatch.setattr(iotlb_lend.time, "monotonic", lambda: clock[0])
    p = LendPolicy("auto", shares_pollers=lambda: False)
    messages = runs = 0
    seen = []
    for x in per_run:
        n = few if x is not None else few - 1
        runs += n
        messages += round(n * (x if x is not None else 5.0))
        seen.append(p.now(messages, runs))
        flip = 10 * few if not seen[-1] else few  # runs of 10, or one at a time: a look would change it
        assert p.now(messages + flip, runs + few) == seen[-1], "looked again before POLICY_S"
        clock[0] += iotlb_lend.POLICY_S
    # the first look has nothing to compare with; one at a time: the control thread
    # serves; in between: still; runs: lends; in between: still lends; too few
    # runs to tell: still; one at a time: stops
    assert seen == [False, False, False, True, True, True, False]
    shared = LendPolicy("auto", shares_pollers=lambda: True)
    assert shared.now(0, 0), "a control thread on the pollers' CPUs lends from the first look"
    clock[0] += iotlb_lend.POLICY_S
    assert shared.now(few, few), "and keeps lending, one message at a time or not"
    assert LendPolicy(True).now(0, 0), "iotlb_lcore=1 always lends"
    assert not LendPolicy(False).now(0, 0), "iotlb_lcore=0 never does"


# ------------------------------------------------------------ with a port
def keep_polling(fwd) -> None:
    """Restart the forwarding with lcores that never sleep (an idle one would
    sleep: it then serves nothing, and gives the socket back)."""
    fwd.stop()
    fwd.config.interrupts = False
    fwd.start()


def grant_and_revoke_until(fe, dev, guest, counter: str, more: int, perms=(IotlbPerm.RO,)) -> None:
    """UPDATE then INVALIDATE one of 8 pages (``perms`` in turn), each ack's
    isolation checked, until xstat ``counter`` grew by ``more``: what the
    lcore does while it polls (a preempted one looks stopped for a while:
    bounded rounds)."""
    win, xs = dev.window, dev.iotlb_xstats
    uaddr = guest.mem.gpa_to_uaddr(BUF)
    before = xs()[counter]
    rounds = 0
    while xs()[counter] < before + more and rounds < 5000:
        page = BUF + (rounds % 8) * PAGE
        fe.iotlb_update(page, PAGE, uaddr + (page - BUF), perms[rounds % len(perms)])
        assert mapped_soon(win, page), "acked UPDATE never mapped"
        fe.iotlb_invalidate(page, PAGE)
        assert not readable(win.base + page), "acked INVALIDATE still mapped"
        rounds += 1
    assert xs()[counter] >= before + more, (rounds, xs())


@pytest.mark.parametrize("setup", ["lcore"], indirect=True)
def test_the_polling_lcore_serves_with_the_same_isolation(setup, fwd):
    fe, port, guest = setup
    keep_polling(fwd)
    dev = port.driver.device
    win = dev.window
    uaddr = guest.mem.gpa_to_uaddr(BUF)
    xs = dev.iotlb_xstats
    grant_and_revoke_until(fe, dev, guest, "iotlb_served_by_lcore", 20)
    # what only the session's path handles is given back and answered there
    with pytest.raises(FrontendError, match="refused"):
        fe.iotlb_update(BUF + PAGE, PAGE, uaddr + 16 * MEM_SIZE, IotlbPerm.RO)
    # stopped, the lcore serves nothing: the control thread takes the socket back and serves
    fwd.stop()
    after = xs()["iotlb_served_by_lcore"]
    served_before = dev.iotlb_server.served
    for k in range(10):
        fe.iotlb_update(BUF, PAGE, uaddr, IotlbPerm.RW)
        assert mapped_soon(win, BUF)
        fe.iotlb_invalidate(BUF, PAGE)
        assert not readable(win.base + BUF)
    assert dev.iotlb_server.served == served_before + 20
    assert xs()["iotlb_served_by_lcore"] == after


@pytest.mark.parametrize("setup", ["lcore"], indirect=True)
def test_without_a_polling_lcore_the_control_thread_waits_compiled_and_lends_again(setup, fwd, monkeypatch):
    """No lcore stamps (the forwarding stopped; a sleeping one is the same):
    the control thread serves in its compiled wait, which looks at the stamp
    itself -- it does not come back to Python every TICK_NS -- and lends the
    socket again as soon as an lcore polls."""
    fe, port, guest = setup
    fwd.stop()
    dev = port.driver.device
    waits = []
    real = iotlb_serve.serve_wait

    def counted(*args):
        waits.append(1)
        return real(*args)

    monkeypatch.setattr(iotlb_serve, "serve_wait", counted)
    time.sleep(0.6)
    n = len(waits)
    # one per round of the control thread (0.1 s); back every 2 ms it would be ~300
    assert 1 <= n <= 30, n
    uaddr = guest.mem.gpa_to_uaddr(BUF)
    fe.iotlb_update(BUF, PAGE, uaddr, IotlbPerm.RW)
    fe.iotlb_invalidate(BUF, PAGE)
    xs = dev.iotlb_xstats
    before = xs()["iotlb_served_by_lcore"]
    fwd.config.interrupts = False  # the lcore keeps polling
    fwd.start()
    rounds = 0
    while xs()["iotlb_served_by_lcore"] < before + 10 and rounds < 5000:
        fe.iotlb_update(BUF, PAGE, uaddr, IotlbPerm.RW)
        fe.iotlb_invalidate(BUF, PAGE)
        rounds += 1
    assert xs()["iotlb_served_by_lcore"] >= before + 10, (rounds, xs())
