"""The machine's floor under ``vhostpci-bench iotlb``'s figures: one message
there and back between two threads that sleep in ``recv`` until it comes,
each pinned to a CPU.

Every IOTLB figure is at least one such exchange: a front-end thread
wakes the port's control thread (or lcore) and sleeps until the reply
wakes it again; a MISS round trip is two (the lcore wakes VM1's control
thread, whose UPDATE wakes VM2's).  On two CPUs each message wakes a
thread on a CPU that may have halted, and what that costs is the
hypervisor's (a virtual CPU's wake-up is an interrupt the host delivers);
on one CPU it is a switch between the two threads.  Both loops are
compiled, so the figure is the kernel's and the machine's, not Python's.
"""
from __future__ import annotations

import os
import socket
import threading

import numpy as np
from numba import njit

from pmd.syscalls import MSG_NOSIGNAL, monotonic_ns, socket_recv_into, socket_send_from

MSG = 44  # bytes: an IOTLB message's size


@njit(nogil=True, cache=True)
def _recv_whole(fd, buf):
    """Read one MSG-byte message into ``buf`` (blocking); False if the stream ended or failed."""
    got = 0
    while got < MSG:
        r = socket_recv_into(fd, buf[got:], MSG - got, 0)
        if r <= 0:
            return False
        got += r
    return True


@njit(nogil=True, cache=True)
def _echo(fd, n, buf):
    """Answer ``n`` messages, or stop at a failure."""
    for _ in range(n):
        if not _recv_whole(fd, buf) or socket_send_from(fd, buf, MSG, MSG_NOSIGNAL) != MSG:
            return


@njit(nogil=True, cache=True)
def _ping(fd, n, buf, out):
    """Send ``n`` messages, each after the last one's answer; ns per exchange in
    ``out``; returns how many completed."""
    for k in range(n):
        t0 = monotonic_ns()
        if socket_send_from(fd, buf, MSG, MSG_NOSIGNAL) != MSG or not _recv_whole(fd, buf):
            return k
        out[k] = monotonic_ns() - t0
    return n


def round_trips(cpu_a: int, cpu_b: int, samples: int) -> list[float]:
    """``samples`` exchanges (seconds each) between a thread on ``cpu_a``
    (this one, its affinity restored after) and one on ``cpu_b``."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    warm = 20
    out = np.zeros(samples + warm, np.int64)

    def echo() -> None:
        os.sched_setaffinity(0, {cpu_b})  # this thread only
        _echo(b.fileno(), samples + warm, np.zeros(MSG, np.uint8))

    mine = os.sched_getaffinity(0)
    t = threading.Thread(target=echo, name="wake-echo", daemon=True)
    try:
        os.sched_setaffinity(0, {cpu_a})
        t.start()
        done = _ping(a.fileno(), samples + warm, np.zeros(MSG, np.uint8), out)
    finally:
        os.sched_setaffinity(0, mine)
        a.close()  # an echo still waiting sees the end of the stream
        t.join(5.0)
        b.close()
    if done < samples + warm:
        raise RuntimeError(f"the wake-up exchange stopped after {done} messages")
    return [x / 1e9 for x in out[warm:]]
