"""The stand-in process: a job handed over is done by the poller that
takes it, or handed back when none does, and the process goes with close."""
from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time

import numpy as np
import psutil
import pytest
from numba import njit

from pmd.standin import (
    S_ASKED, S_BACK, S_DONE_FAILED, S_DONE_OK, S_IDLE, S_SENT, S_UNSENT, W_GIVEN_GEN, W_READY, W_SENT, W_SOCK_GEN,
    W_STATE, StandIn, finish_job, hand_over, hand_over_settle, hand_over_start, take_job,
)
from pmd.syscalls import sleep_us


@njit(nogil=True, cache=True)
def _poll_jobs(w, stop, done, ok):
    """A poller: between 'bursts' (short sleeps) it takes jobs and records them."""
    while stop[0] == 0:
        if take_job(w):
            done[0] += 1
            finish_job(w, ok)
        sleep_us(5)


@njit(nogil=True, cache=True)
def _poll_jobs_slowly(w, stop, done, hold_us):
    """A poller that holds each job ``hold_us`` (longer than the stand-in spins)."""
    while stop[0] == 0:
        if take_job(w):
            sleep_us(hold_us)
            done[0] += 1
            finish_job(w, True)
        sleep_us(5)


def _jobs_with_a_poller(si: StandIn, n: int, ok: bool, job=hand_over) -> tuple[list, int]:
    """Hand ``n`` jobs over (``job(hand)``) while a poller thread does them
    (answering ``ok``); returns each job's outcome and how many the poller did."""
    stop, done = np.zeros(1, np.int64), np.zeros(1, np.int64)
    _poll_jobs(np.zeros(8, np.int64), np.ones(1, np.int64), done, ok)  # compiled before the jobs come
    t = threading.Thread(target=_poll_jobs, args=(si.hand.words, stop, done, ok))
    t.start()
    try:
        got = [job(si.hand) for _ in range(n)]
    finally:
        stop[0] = 1
        t.join()
    return got, int(done[0])


def _give(si: StandIn, fd: int, timeout: float = 10.0) -> None:
    """Give the stand-in socket ``fd`` and wait until it holds it."""
    si.give_socket(fd)
    deadline = time.monotonic() + timeout
    while si.hand.words[W_SOCK_GEN] != si.hand.words[W_GIVEN_GEN]:
        assert time.monotonic() < deadline, "the stand-in never took the socket"
        time.sleep(0.01)


REPLY = bytes(range(1, 13)) + bytes(8)  # a 12-byte header, then a u64 status (0: done)


def _replied_job(peer: socket.socket, wait: float = 2.0):
    """A job with REPLY: what reached ``peer`` (within ``wait`` s) before the
    control thread settled it (the stand-in's send), the outcome, the reply's
    bytes and how many of them the stand-in sent."""
    def job(h):
        h.reply[:len(REPLY)] = np.frombuffer(REPLY, np.uint8)
        assert hand_over_start(h, len(REPLY), 12) == S_ASKED
        peer.settimeout(wait)
        try:
            early = peer.recv(64)
        except (TimeoutError, BlockingIOError):
            early = b""  # (the poller came late: the job came back)
        s = hand_over_settle(h)
        return early, s, bytes(h.reply[:len(REPLY)]), int(h.words[W_SENT])
    return job


def _ready(si: StandIn, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    si.start(0)
    while not si.ready:
        assert time.monotonic() < deadline, "the stand-in never said it is ready"
        si.start(0)  # also reports an early exit
        time.sleep(0.05)


@pytest.fixture
def standin():
    si = StandIn("test")
    try:
        yield si
    finally:
        pid = si.pid
        si.close()
        if pid is not None:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("ok", [True, False])
def test_a_job_handed_over_is_done_by_the_poller_that_takes_it(standin, ok):
    _ready(standin)
    got, done = _jobs_with_a_poller(standin, 50, ok)
    want = S_DONE_OK if ok else S_DONE_FAILED
    # a poller that did not come within the stand-in's spin (a busy machine) hands the job back
    assert set(got) <= {want, S_BACK}
    assert got.count(want) == done > 0
    assert standin.hand.words[W_STATE] == S_IDLE


def test_a_job_nobody_takes_comes_back(standin):
    _ready(standin)
    t0 = time.monotonic()
    assert hand_over(standin.hand) == S_BACK
    assert time.monotonic() - t0 < 5.0
    assert standin.hand.words[W_STATE] == S_IDLE


def test_without_a_running_stand_in_the_job_comes_back_at_once(standin):
    assert not standin.ready
    assert hand_over(standin.hand) == S_BACK


def test_a_killed_stand_in_hands_jobs_back_and_is_started_again(standin, caplog):
    """It dies with the thread that started it (a port's control thread):
    the next start finds it gone and starts another."""
    caplog.set_level(logging.INFO, "vhostpci.standin")
    _ready(standin)
    old = standin.pid
    standin._proc.kill()
    standin._proc.wait()
    t0 = time.monotonic()
    assert hand_over(standin.hand) == S_BACK  # its words still say ready: the control thread's wait ends it
    assert time.monotonic() - t0 < 5.0
    _ready(standin)
    assert standin.pid != old and "started again" in caplog.text
    got, done = _jobs_with_a_poller(standin, 20, True)
    assert got.count(S_DONE_OK) == done > 0


def test_one_that_dies_before_it_is_ready_is_not_started_again(caplog, monkeypatch):
    si = StandIn("broken")
    monkeypatch.setattr(sys, "executable", "/bin/false")
    try:
        si.start(0)
        si._proc.wait()
        si.start(0)
        assert si.pid is None and not si.ready
        assert "before it was ready" in caplog.text
        si.start(0)
        assert si.pid is None
        assert hand_over(si.hand) == S_BACK
    finally:
        si.close()


def test_close_stops_the_process_and_leaves_no_fd(standin):
    before = set(os.listdir("/proc/self/fd"))
    _ready(standin)
    proc = standin._proc
    standin.close()
    assert proc.returncode == 0
    assert standin.hand.words[W_READY] == 0
    assert set(os.listdir("/proc/self/fd")) <= before
    with open("/proc/self/maps") as f:
        assert "vhostpci-standin-test" not in f.read(), "its memfd still mapped"
    assert hand_over(standin.hand) == S_BACK  # kernels that still hold the words hand nothing over
    standin.close()  # twice: nothing left to do


def test_before_start_it_holds_no_fd():
    before = set(os.listdir("/proc/self/fd"))
    si = StandIn("idle")
    assert set(os.listdir("/proc/self/fd")) == before
    si.close()


@pytest.mark.parametrize("ok", [True, False])
def test_the_stand_in_sends_the_reply_on_the_socket_it_holds(standin, ok):
    """The reply goes out from the stand-in once the job is done, before the
    control thread is told, exactly once, saying whether the job failed."""
    ours, peer = socket.socketpair()
    with ours, peer:
        _ready(standin)
        _give(standin, ours.fileno())
        got, done = _jobs_with_a_poller(standin, 30, ok, _replied_job(peer))
        want = REPLY if ok else REPLY[:12] + bytes([1]) + bytes(7)
        sent = [early for early, s, _, _ in got if s == S_SENT]
        assert len(sent) == done > 0 and set(sent) == {want}
        # a job that came back (a busy machine) was not replied to by the stand-in
        assert all(early == b"" for early, s, _, _ in got if s != S_SENT)
        peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            peer.recv(64)  # nothing twice
        assert standin.hand.words[W_STATE] == S_IDLE


def test_without_the_socket_the_control_thread_gets_the_reply_to_send(standin):
    ours, peer = socket.socketpair()
    with ours, peer:
        _ready(standin)  # never given the socket
        got, done = _jobs_with_a_poller(standin, 10, True, _replied_job(peer, 0.1))
        assert all(early == b"" for early, _, _, _ in got)
        # done, the reply left to us (none of it tried), or the job came back (a busy machine)
        assert [(s, n) for _, s, _, n in got if s != S_BACK] == [(S_UNSENT, -1)] * done and done > 0


def test_a_reply_that_cannot_go_out_is_left_to_the_control_thread(standin):
    """The stand-in's socket is gone (the peer closed it): the outcome
    comes back unsent, with the status byte the job left."""
    ours, peer = socket.socketpair()
    with ours:
        _ready(standin)
        _give(standin, ours.fileno())
        peer.close()
        with socket.socket(fileno=os.dup(ours.fileno())) as eof:  # reads nothing, at once
            got, done = _jobs_with_a_poller(standin, 5, False, _replied_job(eof))
        unsent = [(reply, n_sent) for early, s, reply, n_sent in got if s == S_UNSENT]
        assert len(unsent) == done > 0
        assert all(reply[12] == 1 and n_sent == 0 for reply, n_sent in unsent)


def test_a_job_the_poller_holds_past_the_spin_is_replied_to_by_the_control_thread_at_once(standin):
    """The stand-in stops waiting (SPIN_NS) for a job the poller took: it
    sends nothing for it, and the control thread, told so, takes the outcome
    as soon as the poller is done, not after its own wait for the stand-in
    (WAIT_NS, 5 ms)."""
    ours, peer = socket.socketpair()
    with ours, peer:
        _ready(standin)
        _give(standin, ours.fileno())
        stop, done = np.zeros(1, np.int64), np.zeros(1, np.int64)
        _poll_jobs_slowly(np.zeros(8, np.int64), np.ones(1, np.int64), done, 1)
        t = threading.Thread(target=_poll_jobs_slowly, args=(standin.hand.words, stop, done, 1000))
        t.start()
        took = []
        try:
            for _ in range(5):
                t0 = time.monotonic()
                early, s, reply, n_sent = _replied_job(peer, 0.0)(standin.hand)
                took.append((time.monotonic() - t0, s))
        finally:
            stop[0] = 1
            t.join()
        held = [dt for dt, s in took if s == S_DONE_OK]  # (S_BACK: the poller came late)
        assert held and min(held) < 0.0045, took
        peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            peer.recv(64)  # the stand-in sent nothing for them
