"""The vhost-pci port's transmit side (VM2 -> VM1 receive ring) with a hold
queue for packets parked on an IOTLB miss.

Behind a strict vIOMMU VM1 maps each receive buffer just before posting it,
so the first packet into almost every buffer finds no grant: the kernel
raises a MISS and stops.  Returning those packets to the caller would drop
them (testpmd's io engine frees what tx_burst refused: DPDK's vhost
back-end delivered ~43 % of frames that way in our real-VM1 bench).  Instead ``tx`` takes them
into a per-queue hold queue (order kept, bounded: ``HOLD_CAP``), and every
later ``tx`` or ``flush`` (the forwarding loop's idle passes, see
``pmd.burst.tx_flush``) sends the held ones first, once VM1's UPDATE mapped
the buffer.  A ring that stops (VM1 gone, reset, migration handover) drops
what is held, counted in oerrors.  Only a miss holds packets: a full ring
still refuses them (back-pressure, as every DPDK port).

With inflight tracking a held packet's source descriptor (when it came from
this port's own transmit ring) may be completed before the packet is
delivered: a SIGKILL in that window loses it (loop-back through a strict
vIOMMU only).
"""
from __future__ import annotations

from numba import njit

from ..atomics import load_acquire
from ..burst import register_burst, register_tx_flush
from ..ethdev import ST_OERRORS
from ..mbuf import free_bulk
from .state import VQ_HELD, VQ_READY, XS_HELD, XS_IOTLB_MISS, VhostPciState
from .vq import enqueue, vhost_pci_rx

HOLD_CAP = 512  # packets per transmit queue (a couple of bursts per miss round trip)


@njit(nogil=True, cache=True, _nrt=False)
def _flush(st, v, q, pool):
    """Send the held packets in order; returns how many are still held."""
    held = st.vq[v, VQ_HELD]
    if held == 0:
        return 0
    hold = st.hold[q]
    if load_acquire(st.vq[v], VQ_READY) == 0:  # the ring stopped: nobody will take them
        free_bulk(pool, hold, held)
        st.stats[q, ST_OERRORS] += held
        st.vq[v, VQ_HELD] = 0
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


@njit(nogil=True, cache=True, _nrt=False)
def tx(st, q, pool, bufs, nb):
    """tx_burst of the vhost-pci port: ``bufs[:nb]`` into VM1's receive ring
    ``2q``; returns how many the port took (sent, dropped as bad, or held)."""
    v = 2 * q
    if _flush(st, v, q, pool) > 0:  # still waiting for a grant: queue behind
        return _hold(st, v, q, bufs, 0, nb)
    misses = st.xstats[v, XS_IOTLB_MISS]  # only this lcore writes it: a race-free "did it miss?"
    taken = enqueue(st, v, q, pool, bufs, nb)
    if taken < nb and st.xstats[v, XS_IOTLB_MISS] != misses:
        return taken + _hold(st, v, q, bufs, taken, nb)
    return taken


@njit(nogil=True, cache=True, _nrt=False)
def flush(st, q, pool):
    """tx_flush of the vhost-pci port: retry the held packets; how many remain."""
    return _flush(st, 2 * q, q, pool)


register_burst(VhostPciState, vhost_pci_rx, tx)
register_tx_flush(VhostPciState, flush)
