"""rx/tx burst kernels of the AF_XDP VF port: walk each queue's XSK rings.

The UMEM is an mbuf pool (``umem.py``): the app's pool when the port was
given it, so the bursts move mbufs, not bytes (one copy between VM1 and the
VF, the vhost-pci port's), else a private pool the bursts copy into and out
of.  ``is_umem(pool, st.upool)`` picks the path per burst: a caller with an
mbuf of another pool is served by copying.

rx: acquire the rx producer; each descriptor's frame becomes an mbuf (or is
copied into one and its chunk goes straight back to the fill ring); release
the consumer; top the fill ring up from the pool in batches, after a burst
that took frames only: an empty poll reads the rx producer and the fill
ring's flags, never the fill consumer the kernel writes on another CPU.
tx: take back completed frames (to the pool), post each mbuf's address (or
a pool frame it was copied into), publish the descriptors with one release
of the tx producer.  A kernel asks for a wakeup syscall only when the
ring's NEED_WAKEUP flag is set (XDP_USE_NEED_WAKEUP): at most one per burst.
Copy mode always asks, and each send() is a syscall that builds and sends
up to a budget of frames: full bursts gather ``tx_kick_at`` frames per
wakeup, with the budget raised to match (XDP_MAX_TX_SKB_BUDGET).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from ..atomics import load_acquire, memcpy, store_release
from ..burst import register_burst, register_tx_flush
from ..ethdev import (
    ST_IBYTES,
    ST_IERRORS,
    ST_IPACKETS,
    ST_OBYTES,
    ST_OPACKETS,
    ST_RX_NOMBUF,
)
from ..mbuf import HEADROOM, MbufPool, alloc_bulk, free_bulk, mbuf_offset
from ..netdev_port import unsendable
from ..syscalls import last_errno, socket_recv_empty, socket_send_empty
from .layout import (
    COMP,
    EAGAIN,
    EBUSY,
    ENOBUFS,
    ETH_HLEN,
    FILL,
    MSG_DONTWAIT,
    OFF_CONSUMER,
    OFF_DESC,
    OFF_FLAGS,
    OFF_PRODUCER,
    REFILL_MIN,
    RX,
    TX,
    TX_DEFER_MIN,
    X_FILL_SHORT,
    X_RX_BAD_DESC,
    X_RX_COPIED,
    X_RX_WAKEUPS,
    X_TX_COPIED,
    X_TX_NO_FRAME,
    X_TX_RING_FULL,
    X_TX_TOO_BIG,
    X_TX_WAKEUP_AGAIN,
    X_TX_WAKEUP_ERRORS,
    X_TX_WAKEUPS,
    XDP_RING_NEED_WAKEUP,
)
from .umem import chunk_addr, data_offset, frame_addr, frame_of, is_umem, take_frame

U32 = 0xFFFFFFFF


class XdpState(NamedTuple):
    stats: np.ndarray  # (nq, N_STATS) int64
    xstats: np.ndarray  # (nq, N_X) int64
    upool: MbufPool  # the UMEM: the app's mbuf pool (one copy) or the port's own
    own: np.ndarray  # uint8[upool.size]: q + 1 while queue q's kernel side holds the frame, else 0
    rx_scratch: np.ndarray  # (nq, >= ring_size) int32: frames an rx burst gives back or tops the fill ring up with
    tx_scratch: np.ndarray  # (nq, >= ring_size) int32: completed frames, frames a copying tx burst fills
    rx32: np.ndarray  # (nq, slot) u32 views of each queue's mapped rings ...
    rx64: np.ndarray  # ... and u64 views (descriptor / address entries)
    tx32: np.ndarray
    tx64: np.ndarray
    fill32: np.ndarray
    fill64: np.ndarray
    comp32: np.ndarray
    comp64: np.ndarray
    off: np.ndarray  # (4, 4) int64 byte offsets: [RX|TX|FILL|COMP, OFF_PRODUCER|OFF_CONSUMER|OFF_DESC|OFF_FLAGS]
    fds: np.ndarray  # (nq,) int64 XSK fds
    ring_size: int
    max_frame: int  # MTU + Ethernet header: longer frames are oerrors, never truncated
    port_id: int
    tx_kick_at: int  # frames full tx bursts gather in the ring before one wakeup (driver._tx_kick_at)
    fill_retry: np.ndarray  # (nq,) int64: 1 while a fill ring top-up found the pool short
    fill_size: int  # fill ring entries (FILL_RING_FACTOR rx rings' worth)


@njit(nogil=True, cache=True, inline="always")
def reap_completions(st, q):
    """The tx burst's first step: completed tx frames back to the pool."""
    c32, c64, off = st.comp32[q], st.comp64[q], st.off
    prod = np.int64(load_acquire(c32, off[COMP, OFF_PRODUCER] >> 2))
    cons = np.int64(c32[off[COMP, OFF_CONSUMER] >> 2])
    done = (prod - cons) & U32
    if done == 0:
        return
    mask = st.ring_size - 1
    base = off[COMP, OFF_DESC]
    up, own, back = st.upool, st.own, st.tx_scratch[q]
    bs, owner = np.int64(up.buf_size), q + 1
    n = 0
    for k in range(done):
        i = frame_of(bs, own, owner, c64[(base + ((cons + k) & mask) * 8) >> 3])
        if i >= 0:  # a frame we posted (else the kernel's bug: not ours to free)
            own[i] = 0
            back[n] = i
            n += 1
    store_release(c32, off[COMP, OFF_CONSUMER] >> 2, (cons + done) & U32)
    free_bulk(up, back, n)


@njit(nogil=True, cache=True, inline="always")
def _fill(st, q, back, nback):
    """Frames ``back[:nback]`` (this queue's, as the kernel gave them) back
    on the fill ring as far as it has room (the rest to the pool), then top
    the ring up from the pool when REFILL_MIN or more entries are free; a
    pool too short for that is retried at every burst (``fill_retry``)."""
    f32, f64, off, up, own = st.fill32[q], st.fill64[q], st.off, st.upool, st.own
    prod = np.int64(f32[off[FILL, OFF_PRODUCER] >> 2])
    room = st.fill_size - ((prod - np.int64(load_acquire(f32, off[FILL, OFF_CONSUMER] >> 2))) & U32)
    mask = st.fill_size - 1
    base = off[FILL, OFF_DESC]
    posted = min(nback, room)
    for k in range(posted):
        f64[(base + ((prod + k) & mask) * 8) >> 3] = chunk_addr(up, back[k])
    if posted < nback:
        for k in range(posted, nback):
            own[back[k]] = 0
        free_bulk(up, back[posted:], nback - posted)
    want = room - posted
    if want >= REFILL_MIN:
        if alloc_bulk(up, back, want):
            for k in range(want):
                i = back[k]
                own[i] = q + 1
                f64[(base + ((prod + posted + k) & mask) * 8) >> 3] = chunk_addr(up, i)
            posted += want
            st.fill_retry[q] = 0
        else:
            st.xstats[q, X_FILL_SHORT] += 1
            st.fill_retry[q] = 1
    if posted > 0:
        store_release(f32, off[FILL, OFF_PRODUCER] >> 2, (prod + posted) & U32)


@njit(nogil=True, cache=True, inline="always")
def _fill_wakeup(st, q):
    """The rx burst's last step: one recv() when the kernel asks for it (a
    zero-copy driver that ran out of fill entries sleeps until then)."""
    if load_acquire(st.fill32[q], st.off[FILL, OFF_FLAGS] >> 2) & XDP_RING_NEED_WAKEUP:
        st.xstats[q, X_RX_WAKEUPS] += 1
        socket_recv_empty(st.fds[q], MSG_DONTWAIT)


@njit(nogil=True, cache=True)
def xdp_rx(st, q, pool, bufs, nb):
    r32, r64, off, up, own = st.rx32[q], st.rx64[q], st.off, st.upool, st.own
    zc = is_umem(pool, up)
    prod = np.int64(load_acquire(r32, off[RX, OFF_PRODUCER] >> 2))
    cons = np.int64(r32[off[RX, OFF_CONSUMER] >> 2])
    n = min((prod - cons) & U32, nb)
    if n > 0 and not zc and not alloc_bulk(pool, bufs, n):
        st.stats[q, ST_RX_NOMBUF] += n
        n = 0
    mask = st.ring_size - 1
    room = pool.buf_size - HEADROOM
    back = st.rx_scratch[q]
    bs, owner = np.int64(up.buf_size), q + 1
    nback = 0
    got = 0
    nbytes = 0
    for k in range(n):
        d = off[RX, OFF_DESC] + ((cons + k) & mask) * 16
        addr = r64[d >> 3]
        i = frame_of(bs, own, owner, addr)
        data_off = data_offset(bs, i, addr)
        ln = np.int64(r32[(d + 8) >> 2])
        if i < 0 or ln < ETH_HLEN or data_off + ln > bs or (not zc and ln > room):
            st.xstats[q, X_RX_BAD_DESC] += 1
            st.stats[q, ST_IERRORS] += 1
            if i >= 0:
                back[nback] = i
                nback += 1
            continue
        if zc:  # the frame is the mbuf
            take_frame(up, own, i, data_off, ln, st.port_id)
            bufs[got] = i
        else:
            m = bufs[got]
            memcpy(pool.data, mbuf_offset(pool, m), up.data, chunk_addr(up, i) + data_off, ln)
            pool.data_len[m] = ln
            pool.port[m] = st.port_id
            back[nback] = i
            nback += 1
        nbytes += ln
        got += 1
    if n > 0:
        store_release(r32, off[RX, OFF_CONSUMER] >> 2, (cons + n) & U32)
        if not zc:
            st.xstats[q, X_RX_COPIED] += got
            if got < n:
                free_bulk(pool, bufs[got:], n - got)
    if n > 0 or st.fill_retry[q]:  # an empty poll leaves the fill ring alone: the kernel took nothing
        _fill(st, q, back, nback)
    _fill_wakeup(st, q)
    st.stats[q, ST_IPACKETS] += got
    st.stats[q, ST_IBYTES] += nbytes
    return got


@njit(nogil=True, cache=True, inline="always")
def tx_wakeup(st, q):
    """The tx burst's last step: one send() when the kernel asks for it (it
    transmits what the tx ring holds)."""
    if load_acquire(st.tx32[q], st.off[TX, OFF_FLAGS] >> 2) & XDP_RING_NEED_WAKEUP:
        st.xstats[q, X_TX_WAKEUPS] += 1
        if socket_send_empty(st.fds[q], MSG_DONTWAIT) < 0:
            err = last_errno()
            if err == EAGAIN or err == EBUSY or err == ENOBUFS:  # took its budget (copy mode) or the device
                st.xstats[q, X_TX_WAKEUP_AGAIN] += 1  # queue is busy: the rest goes at the next wakeup
            else:
                st.xstats[q, X_TX_WAKEUP_ERRORS] += 1


@njit(nogil=True, cache=True, inline="always")
def tx_post(st, q, pool, bufs, nb):
    """The tx burst's middle step: post ``bufs[:nb]`` on the tx ring (the
    mbufs themselves, or frames they are copied into), publish them with
    one release of the producer; returns (taken, posted)."""
    t32, t64, off, up, own = st.tx32[q], st.tx64[q], st.off, st.upool, st.own
    zc = is_umem(pool, up)
    prod = np.int64(t32[off[TX, OFF_PRODUCER] >> 2])
    cons = np.int64(load_acquire(t32, off[TX, OFF_CONSUMER] >> 2))
    space = st.ring_size - ((prod - cons) & U32)
    frames = st.tx_scratch[q]
    if not zc:  # frames of the UMEM to copy into
        space = min(space, nb)
        if space > 0 and not alloc_bulk(up, frames, space):
            st.xstats[q, X_TX_NO_FRAME] += 1
            space = 0
    mask = st.ring_size - 1
    n = 0
    queued = 0
    dropped = 0
    nbytes = 0
    while n < nb:
        i = bufs[n]
        ln = np.int64(pool.data_len[i])
        if unsendable(st, q, ln, X_TX_TOO_BIG):  # taken and dropped, never truncated
            if zc:  # compacted for one free_bulk: dropped <= n, only entries already walked are overwritten
                bufs[dropped] = i
            dropped += 1
            n += 1
            continue
        if queued == space:
            st.xstats[q, X_TX_RING_FULL] += 1
            break
        if zc:
            f = i
            addr = frame_addr(up, i)
        else:
            f = frames[queued]
            addr = mbuf_offset(up, f)
            memcpy(up.data, addr, pool.data, mbuf_offset(pool, i), ln)
        own[f] = q + 1
        d = off[TX, OFF_DESC] + ((prod + queued) & mask) * 16
        t64[d >> 3] = addr
        t32[(d + 8) >> 2] = ln
        t32[(d + 12) >> 2] = 0
        queued += 1
        nbytes += ln
        n += 1
    if queued > 0:
        store_release(t32, off[TX, OFF_PRODUCER] >> 2, (prod + queued) & U32)
    if zc:
        free_bulk(pool, bufs, dropped)
    else:
        st.xstats[q, X_TX_COPIED] += queued
        free_bulk(pool, bufs, n)
        if queued < space:
            free_bulk(up, frames[queued:], space - queued)
    st.stats[q, ST_OPACKETS] += queued
    st.stats[q, ST_OBYTES] += nbytes
    return n, queued


@njit(nogil=True, cache=True, inline="always")
def tx_pending(st, q):
    """Frames posted on the tx ring the kernel has not taken yet."""
    t32, off = st.tx32[q], st.off
    return (np.int64(t32[off[TX, OFF_PRODUCER] >> 2]) - np.int64(load_acquire(t32, off[TX, OFF_CONSUMER] >> 2))) & U32


@njit(nogil=True, cache=True)
def xdp_tx(st, q, pool, bufs, nb):
    """Reap completions, post, and wake the kernel when it asks for it:
    at once after a short burst or a full ring, after full bursts only once
    the ring holds ``tx_kick_at`` frames (fewer syscalls; the next empty
    pass's flush sends the rest)."""
    reap_completions(st, q)
    n, queued = tx_post(st, q, pool, bufs, nb)
    if n < nb or (queued > 0 and (nb < TX_DEFER_MIN or tx_pending(st, q) >= st.tx_kick_at)):
        tx_wakeup(st, q)
    return n


@njit(nogil=True, cache=True)
def xdp_tx_flush(st, q, pool):
    """Frames still in the tx ring (gathered by full bursts, or beyond one
    wakeup's budget): wake the kernel again; how many it has not taken yet."""
    reap_completions(st, q)
    pending = tx_pending(st, q)
    if pending > 0:
        tx_wakeup(st, q)
    return pending


register_burst(XdpState, xdp_rx, xdp_tx)
register_tx_flush(XdpState, xdp_tx_flush)
