"""rx/tx burst kernels of the AF_XDP VF port: walk each queue's XSK rings.

Every queue owns one UMEM (a slice of one shared-memory area) of
``2 * ring_size`` frames: the first half cycles through the fill and rx
rings, the second through a free stack and the tx and completion rings.
With as many rx frames as fill entries the fill ring always has room for
the frames an rx burst gives back, and the completion ring for the tx
frames.

rx: acquire the rx producer, copy each descriptor's frame into an mbuf,
hand the frame's chunk back on the fill ring, release both indices.
tx: take back completed frames, copy each mbuf into a free frame,
publish the descriptors with one release of the tx producer.  A kernel
asks for a wakeup syscall only when the ring's NEED_WAKEUP flag is set
(XDP_USE_NEED_WAKEUP): at most one per burst.
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
from ..mbuf import HEADROOM, alloc_bulk, free_bulk, mbuf_offset
from ..netdev_port import unsendable
from ..syscalls import last_errno, socket_recv_empty, socket_send_empty
from .layout import (
    C_TX_FREE,
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
    RX,
    TX,
    X_RX_BAD_DESC,
    X_RX_WAKEUPS,
    X_TX_RING_FULL,
    X_TX_TOO_BIG,
    X_TX_WAKEUP_AGAIN,
    X_TX_WAKEUP_ERRORS,
    X_TX_WAKEUPS,
    XDP_RING_NEED_WAKEUP,
)

U32 = 0xFFFFFFFF


class XdpState(NamedTuple):
    stats: np.ndarray  # (nq, N_STATS) int64
    xstats: np.ndarray  # (nq, N_X) int64
    umem: np.ndarray  # (nq, 2 * ring_size * frame_size) uint8: each queue's UMEM
    rx32: np.ndarray  # (nq, slot) u32 views of each queue's mapped rings ...
    rx64: np.ndarray  # ... and u64 views (descriptor / address entries)
    tx32: np.ndarray
    tx64: np.ndarray
    fill32: np.ndarray
    fill64: np.ndarray
    comp32: np.ndarray
    comp64: np.ndarray
    off: np.ndarray  # (4, 4) int64 byte offsets: [RX|TX|FILL|COMP, OFF_PRODUCER|OFF_CONSUMER|OFF_DESC|OFF_FLAGS]
    tx_free: np.ndarray  # (nq, ring_size) int64: free tx frame addresses, [0:cur[q, C_TX_FREE]) valid
    cur: np.ndarray  # (nq, N_CUR) int64
    fds: np.ndarray  # (nq,) int64 XSK fds
    ring_size: int
    frame_size: int
    max_frame: int  # MTU + Ethernet header: longer frames are oerrors, never truncated
    port_id: int


@njit(nogil=True, cache=True, inline="always")
def _reap_completions(st, q):
    """Completed tx frames back onto the free stack."""
    c32, c64, off = st.comp32[q], st.comp64[q], st.off
    prod = np.int64(load_acquire(c32, off[COMP, OFF_PRODUCER] >> 2))
    cons = np.int64(c32[off[COMP, OFF_CONSUMER] >> 2])
    done = (prod - cons) & U32
    if done == 0:
        return
    mask = st.ring_size - 1
    free = st.cur[q, C_TX_FREE]
    base = off[COMP, OFF_DESC]
    for k in range(done):
        st.tx_free[q, free + k] = np.int64(c64[(base + ((cons + k) & mask) * 8) >> 3])
    st.cur[q, C_TX_FREE] = free + done
    store_release(c32, off[COMP, OFF_CONSUMER] >> 2, (cons + done) & U32)


@njit(nogil=True, cache=True)
def xdp_rx(st, q, pool, bufs, nb):
    r32, r64, f32, f64, off = st.rx32[q], st.rx64[q], st.fill32[q], st.fill64[q], st.off
    umem = st.umem[q]
    prod = np.int64(load_acquire(r32, off[RX, OFF_PRODUCER] >> 2))
    cons = np.int64(r32[off[RX, OFF_CONSUMER] >> 2])
    n = min((prod - cons) & U32, nb)
    if n > 0 and not alloc_bulk(pool, bufs, n):
        st.stats[q, ST_RX_NOMBUF] += n
        n = 0
    mask = st.ring_size - 1
    fprod = np.int64(f32[off[FILL, OFF_PRODUCER] >> 2])
    room = pool.buf_size - HEADROOM
    got = 0
    nbytes = 0
    for k in range(n):
        d = off[RX, OFF_DESC] + ((cons + k) & mask) * 16
        addr = np.int64(r64[d >> 3])
        ln = np.int64(r32[(d + 8) >> 2])
        chunk = addr & ~np.int64(st.frame_size - 1)
        if ln < ETH_HLEN or ln > room or addr + ln > chunk + st.frame_size or chunk + st.frame_size > umem.size:
            st.xstats[q, X_RX_BAD_DESC] += 1
            st.stats[q, ST_IERRORS] += 1
        else:
            i = bufs[got]
            memcpy(pool.data, mbuf_offset(pool, i), umem, addr, ln)
            pool.data_len[i] = ln
            pool.port[i] = st.port_id
            nbytes += ln
            got += 1
        f64[(off[FILL, OFF_DESC] + ((fprod + k) & mask) * 8) >> 3] = chunk
    if n > 0:
        store_release(f32, off[FILL, OFF_PRODUCER] >> 2, (fprod + n) & U32)
        store_release(r32, off[RX, OFF_CONSUMER] >> 2, (cons + n) & U32)
        if got < n:
            free_bulk(pool, bufs[got:], n - got)
    if load_acquire(f32, off[FILL, OFF_FLAGS] >> 2) & XDP_RING_NEED_WAKEUP:
        st.xstats[q, X_RX_WAKEUPS] += 1
        socket_recv_empty(st.fds[q], MSG_DONTWAIT)
    st.stats[q, ST_IPACKETS] += got
    st.stats[q, ST_IBYTES] += nbytes
    return got


@njit(nogil=True, cache=True, inline="always")
def _tx_wakeup(st, q):
    """One send() when the kernel asks for it: it transmits what the tx ring holds."""
    if load_acquire(st.tx32[q], st.off[TX, OFF_FLAGS] >> 2) & XDP_RING_NEED_WAKEUP:
        st.xstats[q, X_TX_WAKEUPS] += 1
        if socket_send_empty(st.fds[q], MSG_DONTWAIT) < 0:
            err = last_errno()
            if err == EAGAIN or err == EBUSY or err == ENOBUFS:  # took a batch (copy mode: 32) or the device
                st.xstats[q, X_TX_WAKEUP_AGAIN] += 1  # queue is busy: the rest goes at the next wakeup
            else:
                st.xstats[q, X_TX_WAKEUP_ERRORS] += 1


@njit(nogil=True, cache=True)
def xdp_tx(st, q, pool, bufs, nb):
    t32, t64, off = st.tx32[q], st.tx64[q], st.off
    umem = st.umem[q]
    _reap_completions(st, q)
    prod = np.int64(t32[off[TX, OFF_PRODUCER] >> 2])
    cons = np.int64(load_acquire(t32, off[TX, OFF_CONSUMER] >> 2))
    space = st.ring_size - ((prod - cons) & U32)
    free = st.cur[q, C_TX_FREE]
    mask = st.ring_size - 1
    n = 0
    queued = 0
    nbytes = 0
    while n < nb:
        i = bufs[n]
        ln = np.int64(pool.data_len[i])
        if unsendable(st, q, ln, X_TX_TOO_BIG):  # taken and dropped, never truncated
            n += 1
            continue
        if queued == space or free == 0:
            st.xstats[q, X_TX_RING_FULL] += 1
            break
        free -= 1
        addr = st.tx_free[q, free]
        memcpy(umem, addr, pool.data, mbuf_offset(pool, i), ln)
        d = off[TX, OFF_DESC] + ((prod + queued) & mask) * 16
        t64[d >> 3] = addr
        t32[(d + 8) >> 2] = ln
        t32[(d + 12) >> 2] = 0
        queued += 1
        nbytes += ln
        n += 1
    st.cur[q, C_TX_FREE] = free
    if queued > 0:
        store_release(t32, off[TX, OFF_PRODUCER] >> 2, (prod + queued) & U32)
    if queued > 0 or n < nb:  # n < nb: the ring is full, make sure the kernel drains it
        _tx_wakeup(st, q)
    free_bulk(pool, bufs, n)
    st.stats[q, ST_OPACKETS] += queued
    st.stats[q, ST_OBYTES] += nbytes
    return n


@njit(nogil=True, cache=True)
def xdp_tx_flush(st, q, pool):
    """Frames still in the tx ring (copy mode sends a bounded batch per
    wakeup): wake the kernel again; how many it has not taken yet."""
    t32, off = st.tx32[q], st.off
    _reap_completions(st, q)
    pending = (np.int64(t32[off[TX, OFF_PRODUCER] >> 2]) - np.int64(load_acquire(t32, off[TX, OFF_CONSUMER] >> 2))) \
        & U32
    if pending > 0:
        _tx_wakeup(st, q)
    return pending


register_burst(XdpState, xdp_rx, xdp_tx)
register_tx_flush(XdpState, xdp_tx_flush)
