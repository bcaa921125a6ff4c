"""The vhost-pci port's transmit side (VM2 -> VM1 receive ring) with a hold
queue: packets the port accepted but cannot place yet.

Behind a strict vIOMMU VM1 maps each receive buffer just before posting it,
so the first packet into almost every buffer finds no grant: the kernel
raises a MISS and stops.  Returning those packets to the caller would drop
them (testpmd's io engine frees what tx_burst refused; DPDK's vhost
back-end delivered ~43 % of frames that way behind a strict intel-iommu in
our real-VM1 bench).  Instead ``tx`` takes what a miss stopped into a
per-queue hold queue (order kept, bounded: ``HOLD_CAP``), and every later
``tx`` or ``flush`` (the forwarding loop's idle passes, see
``pmd.burst.tx_flush``) sends the held ones first.  A full ring still
refuses (back-pressure, as every DPDK port), except a burst that came
while packets were held or the ring was parked: ``room`` promised it the
hold's space, so what the ring cannot take of it is held as well.

``room`` (``pmd.burst.tx_room``) tells the forwarding engines how many
packets ``tx`` would take now: the hold queue's free space while packets
wait for a grant, else the chains VM1 has available.  The engines receive
no more than that, so nothing the port refuses was received for nothing:
the back-pressure reaches the source ring (VM1's own transmit ring, the
VF's receive ring), which drops only when it is full, counted there as a
NIC's imissed.

A ring that stops (VM1 gone, reset, migration handover) drops what is
held, counted in oerrors.

With inflight tracking a held packet's source descriptor (when it came from
this port's own transmit ring) may be completed before the packet is
delivered: a SIGKILL in that window loses it (loop-back through a strict
vIOMMU only).
"""
from __future__ import annotations

from numba import njit

from ..atomics import load_acquire
from ..burst import NO_LIMIT, register_tx_flush, register_tx_room
from ..ethdev import ST_OERRORS
from ..grace import section_enter, section_leave
from ..mbuf import free_bulk
from ..syscalls import sched_yield
from .state import VQ_HELD, VQ_PARKED, VQ_READER, VQ_READY, XS_HELD, VhostPciState
from .vq import avail_left, enqueue

HOLD_CAP = 512  # packets per transmit queue (a couple of bursts per miss round trip)


@njit(nogil=True, cache=True, _nrt=False)
def _drop(st, q, pool):
    """Free queue ``q``'s held packets, counted in oerrors; returns how many."""
    held = st.vq[2 * q, VQ_HELD]
    if held > 0:
        free_bulk(pool, st.hold[q], held)
        st.stats[q, ST_OERRORS] += held
        st.vq[2 * q, VQ_HELD] = 0
    return held


@njit(nogil=True, cache=True, _nrt=False)
def _flush(st, v, q, pool):
    """Send the held packets in order; returns how many are still held."""
    held = st.vq[v, VQ_HELD]
    if held == 0:
        return 0
    hold = st.hold[q]
    if load_acquire(st.vq[v], VQ_READY) == 0:  # the ring stopped: nobody will take them
        _drop(st, q, pool)
        return 0
    sent = enqueue(st, v, q, pool, hold, held)
    if sent > 0:
        left = held - sent
        for k in range(left):
            hold[k] = hold[sent + k]
        st.vq[v, VQ_HELD] = left
        return left
    return held


@njit(nogil=True, cache=True, _nrt=False)
def _hold(st, v, q, bufs, start, nb):
    """Take ``bufs[start:nb]`` into the hold queue as room allows; returns how many."""
    held = st.vq[v, VQ_HELD]
    k = min(nb - start, st.hold.shape[1] - held)
    hold = st.hold[q]
    for j in range(k):
        hold[held + j] = bufs[start + j]
    st.vq[v, VQ_HELD] = held + k
    st.xstats[v, XS_HELD] += k
    return k


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _holds_first(st, v):
    """Whether ``room`` offers the hold's space rather than the ring's:
    packets are held, or the ring is parked on a miss."""
    return st.vq[v, VQ_HELD] > 0 or st.vq[v, VQ_PARKED] != 0


@njit(nogil=True, cache=True, _nrt=False)
def tx(st, q, pool, bufs, nb):
    """tx_burst of the vhost-pci port: ``bufs[:nb]`` into VM1's receive ring
    ``2q``; returns how many the port took (sent, dropped as bad, or held)."""
    v = 2 * q
    row = st.vq[v]
    section_enter(row, VQ_READER)
    parked = False
    # ``room`` promised this burst the hold's space, not the ring's: what the
    # ring cannot take of it, even when merely full, is held, or the caller drops it
    promised = _holds_first(st, v)
    # the held count first: ``_flush`` is a call, and nothing is held as a rule
    if st.vq[v, VQ_HELD] > 0 and _flush(st, v, q, pool) > 0:  # still waiting for a grant: queue behind
        taken = _hold(st, v, q, bufs, 0, nb)
    else:
        taken = enqueue(st, v, q, pool, bufs, nb)
        if taken < nb:
            parked = st.vq[v, VQ_PARKED] != 0
            if parked or promised:
                taken += _hold(st, v, q, bufs, taken, nb)
    section_leave(row, VQ_READER)
    if parked:
        sched_yield()  # the control thread may share this CPU: let it send the MISS
    return taken


@njit(nogil=True, cache=True, _nrt=False)
def room(st, q):
    """tx_room of the vhost-pci port (module docstring); a stopped ring
    has no limit: its link is down and what it refuses is dropped."""
    v = 2 * q
    if load_acquire(st.vq[v], VQ_READY) == 0:
        return NO_LIMIT
    space = st.hold.shape[1] - st.vq[v, VQ_HELD]
    if _holds_first(st, v):
        return space
    return min(avail_left(st, v), space)


@njit(nogil=True, cache=True, _nrt=False)
def flush(st, q, pool):
    """tx_flush of the vhost-pci port: retry the held packets; how many remain."""
    v = 2 * q
    if st.vq[v, VQ_HELD] == 0:
        return 0
    row = st.vq[v]
    section_enter(row, VQ_READER)
    left = _flush(st, v, q, pool)
    section_leave(row, VQ_READER)
    return left


@njit(nogil=True, cache=True, _nrt=False)
def drop_held(st, pool):
    """Free every held packet (the port stopped, no lcore polls it), counted
    in oerrors; returns how many."""
    total = 0
    for q in range(st.hold.shape[0]):
        total += _drop(st, q, pool)
    return total


# The port's rx/tx bursts are registered in announce.py (its rx wraps vq's).
register_tx_flush(VhostPciState, flush)
register_tx_room(VhostPciState, room)
