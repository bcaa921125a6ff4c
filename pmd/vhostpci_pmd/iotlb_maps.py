"""UPDATEs the polling lcore maps: the control thread checks and acks
them, the lcore of queue 0 makes the mmap between two bursts.

Behind a strict vIOMMU each packet costs one UPDATE, and the control
thread that reads it runs on the CPU VM1's own threads need (QEMU's main
thread waits for the ack meanwhile): there an UPDATE's mmap was ~5 us a
packet.  While that lcore polls on a CPU of its own (the stand-in's
condition, ``iotlb_serve.py``), the control thread does only what the
ack's answer depends on -- the plain-case checks and the grant row
(``iotlb_ops.plain_grant``, ``insert_grant``) -- queues the rest and
acks; the lcore maps the pages and publishes them (``map_grant``,
``publish_grant``), then un-parks the vrings waiting for them and forgets
their asks, in that order: a kernel that finds the page unpublished still
finds its ask noted and waits instead of asking twice.  So a page becomes
readable a moment *after* the ack, never before the UPDATE: isolation
only ever gains.

Writers, one at a time:

- the grant rows: the control thread (it pushes after ``insert_grant``);
- the translation tables: whoever runs the queue -- the lcore
  (``lcore_maps``) or the control thread (``drain_maps``), by one CAS on
  ``W_OWNER`` -- and the control thread's own ``publish``, which it makes
  only after ``drain_maps`` (its INVALIDATEs, the Python path's requests,
  a session's end): the queue is then empty, and only the control thread
  fills it.

Liveness: the control thread queues only while the lcore stamps
(``iotlb_lend.beat_stale``).  An lcore about to sleep clears its stamp,
fences and runs the queue (``notify.vhost_pci_arm``); the control thread
fences after each push and runs the queue itself if the stamp is gone:
either sees the other.  A stopped lcore's leftovers wait for the control
thread's next message or return to Python (``IotlbServer._drain``).

A job whose mmap fails on the lcore stays at the head for the control
thread, whose ``drain_maps`` tries again and else drops the grant row
(counted: VM1 asks again on its next MISS).  One ring of MAP_SLOTS jobs:
a full one is drained by the control thread before it pushes.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..atomics import compare_exchange, cpu_pause, load_acquire, store_release
from ..guestmem.grants import drop_range
from ..guestmem.iotlb_ops import grant_gpa, map_grant, publish_grant
from ..syscalls import monotonic_ns, sleep_us
from .iotlb_answer import forget_asked, unpark_covered
from .state import MapQueue

MAP_SLOTS = 64  # (a power of two)
# a job: the UPDATE's fields and its region (``plain_grant``); region -1: the grant was there
# already (only its vrings un-park and its asks are forgotten, in order with the others)
J_IOVA, J_SIZE, J_UADDR, J_PERM, J_REGION = range(5)
N_J = 5
# words: jobs pushed and done; who runs them; the vrings the runs un-parked since the last
# ``drain_maps`` (bitmask); totals, written by whoever runs the queue: asks answered and the ns
# they waited, ns mapping, jobs the lcore ran, grants dropped because their mmap failed twice
W_HEAD, W_TAIL, W_OWNER, W_UNPARKED, W_ASKS, W_ASK_WAIT_NS, W_MAP_NS, W_BY_LCORE, W_FAILED = range(9)
N_W = 16
FREE, BY_LCORE, BY_DRAIN = 0, 1, 2
SPIN_NS = 2_000  # the control thread spins this long for the lcore's run, then sleeps between looks


def map_queue() -> MapQueue:
    """An empty queue (``state.MapQueue``)."""
    return MapQueue(np.zeros((MAP_SLOTS, N_J), np.int64), np.zeros(N_W, np.int64))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def maps_pending(mq):
    return mq.words[W_HEAD] != load_acquire(mq.words, W_TAIL)


@njit(nogil=True, cache=True, _nrt=False)
def push_map(mq, iova, size, uaddr, perm, region):
    """The control thread queues an UPDATE it checked (and recorded, if
    ``region`` >= 0); False when the ring is full (``drain_maps`` first)."""
    w = mq.words
    tail = w[W_TAIL]
    if tail - load_acquire(w, W_HEAD) >= MAP_SLOTS:
        return False
    j = mq.jobs[tail & (MAP_SLOTS - 1)]
    j[J_IOVA] = np.int64(iova)
    j[J_SIZE] = np.int64(size)
    j[J_UADDR] = np.int64(uaddr)
    j[J_PERM] = perm
    j[J_REGION] = region
    store_release(w, W_TAIL, tail + 1)
    return True


@njit(nogil=True, cache=True, _nrt=False)
def _run(ws, vq, asked, mq, who):
    """Run the queued jobs in order (the caller owns the queue); the lcore
    stops at a job whose mmap failed."""
    w = mq.words
    head = w[W_HEAD]
    tail = load_acquire(w, W_TAIL)
    while head < tail:
        j = mq.jobs[head & (MAP_SLOTS - 1)]
        iova = np.uint64(j[J_IOVA])
        end = iova + np.uint64(j[J_SIZE])
        uaddr = np.uint64(j[J_UADDR])
        r = j[J_REGION]
        if r >= 0:
            t0 = monotonic_ns()
            size = np.uint64(j[J_SIZE])
            # the control thread tries a failed mmap once more (the lcore leaves it to it)
            if map_grant(ws, r, iova, size, uaddr, j[J_PERM]) or (
                    who == BY_DRAIN and map_grant(ws, r, iova, size, uaddr, j[J_PERM])):
                publish_grant(ws, iova, end - np.uint64(1), grant_gpa(ws, r, uaddr), j[J_PERM])
            elif who == BY_LCORE:
                break
            else:
                drop_range(ws.grants, ws.gcount, iova, end - np.uint64(1), ws.gone)  # never published
                w[W_FAILED] += 1
            w[W_MAP_NS] += monotonic_ns() - t0
            if who == BY_LCORE:
                w[W_BY_LCORE] += 1
        w[W_UNPARKED] |= unpark_covered(vq, iova, end)  # after the tables: see the module docstring
        n, waited = forget_asked(asked, np.int64(iova), np.int64(end))
        w[W_ASKS] += n
        w[W_ASK_WAIT_NS] += waited
        head += 1
        store_release(w, W_HEAD, head)


@njit(nogil=True, cache=True, _nrt=False)
def lcore_maps(ws, vq, asked, mq):
    """The lcore of queue 0 between two bursts: map what is queued, unless
    the control thread is at it."""
    w = mq.words
    if w[W_HEAD] == load_acquire(w, W_TAIL) or not compare_exchange(w, W_OWNER, FREE, BY_LCORE):
        return
    _run(ws, vq, asked, mq, BY_LCORE)
    store_release(w, W_OWNER, FREE)


@njit(nogil=True, cache=True, _nrt=False)
def drain_maps(ws, vq, asked, mq):
    """The control thread (or an lcore about to serve the socket itself):
    every queued job is done when this returns, by the lcore or here.
    Returns the bitmask of the vrings the runs un-parked since the last call."""
    w = mq.words
    t0 = monotonic_ns()
    while not compare_exchange(w, W_OWNER, FREE, BY_DRAIN):
        if monotonic_ns() - t0 < SPIN_NS:
            cpu_pause()  # the lcore is at it: a job is a few us
        else:
            sleep_us(2)  # (it may be preempted)
    _run(ws, vq, asked, mq, BY_DRAIN)
    unparked = w[W_UNPARKED]
    w[W_UNPARKED] = 0
    store_release(w, W_OWNER, FREE)
    return unparked
