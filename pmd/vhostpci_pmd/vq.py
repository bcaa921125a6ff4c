"""Device-side split-ring kernels of the vhost-pci port (virtio 1.2, 2.7).

``dequeue`` takes what VM1's driver made available on a transmit queue and
copies it into mbufs; ``enqueue`` copies mbufs into the buffers VM1 made
available on a receive queue.  Every guest address goes through the window's
checked ``translate``: rings once per burst, buffers per descriptor.

What the peer can get wrong is counted, never trusted:
- an address the table does not map: with an IOMMU this is an IOTLB miss,
  the descriptor stays parked (last_avail_idx does not move) and the control
  thread is woken to send MISS; without one it is a bad descriptor;
- a head or next index >= num, a chain longer than num (loop), a descriptor
  with the wrong direction, a packet larger than its buffers: the descriptor
  is returned with len 0 (bad descriptor counted), the queue goes on.

Per-queue control words (``vq`` rows, one cache line-pair each) are written
by the control thread before it publishes ``VQ_READY`` with a release store;
the kernel owns ``VQ_LAST_AVAIL``/``VQ_LAST_USED`` while the queue is ready.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from ..atomics import fence, load_acquire, memcpy, store_release
from ..burst import register_burst
from ..ethdev import (
    ST_IBYTES, ST_IERRORS, ST_IPACKETS, ST_OBYTES, ST_OERRORS, ST_OPACKETS, ST_RX_NOMBUF,
)
from ..mbuf import HEADROOM, alloc_bulk, free_bulk, mbuf_offset
from ..syscalls import eventfd_signal
from ..virtio.split import (
    NET_HDR_NUM_BUFFERS, VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY, Mem, avail_entry, desc_addr, desc_flags, desc_len,
    desc_next, set_used_entry,
)
from .translate import translate

# vq control columns
VQ_READY, VQ_NUM, VQ_DESC, VQ_AVAIL, VQ_USED, VQ_LAST_AVAIL, VQ_LAST_USED, VQ_CALL_FD = range(8)
VQ_HDR_LEN, VQ_IOMMU, VQ_MISS_PENDING, VQ_MISS_IOVA, VQ_MISS_WRITE = range(8, 13)
N_VQ = 16

# extended per-vring counters
XS_IOTLB_MISS, XS_BAD_DESC, XS_TOO_BIG, XS_BAD_RING, XS_CALLS, XS_KICKS_SEEN = range(6)
N_XSTATS = 8
XSTAT_NAMES = ("iotlb_misses", "bad_descriptors", "too_big", "bad_ring", "calls", "kicks")

# wake-up control (state.ctl)
CTL_WAKE_FD = 0

# results of a chain copy (>= 0: bytes)
R_BAD, R_MISS, R_TOO_BIG = -1, -2, -3


class VhostPciState(NamedTuple):
    mem: Mem  # the window
    table: np.ndarray  # window translation table
    tcount: np.ndarray
    vq: np.ndarray  # (nb_vrings, N_VQ) int64
    xstats: np.ndarray  # (nb_vrings, N_XSTATS) int64
    stats: np.ndarray  # (nb_queue_pairs, N_STATS) int64
    ctl: np.ndarray  # int64[8]
    port_id: int


@njit(nogil=True, cache=True)
def _miss(st, v, iova, write):
    """Park on an unmapped address: ask the control thread for a MISS (once
    until it is answered)."""
    st.xstats[v, XS_IOTLB_MISS] += 1
    if load_acquire(st.vq[v], VQ_MISS_PENDING) == 0:
        st.vq[v, VQ_MISS_IOVA] = np.int64(iova)
        st.vq[v, VQ_MISS_WRITE] = 1 if write else 0
        store_release(st.vq[v], VQ_MISS_PENDING, 1)
        fd = st.ctl[CTL_WAKE_FD]
        if fd >= 0:
            eventfd_signal(fd)


@njit(nogil=True, cache=True)
def _ring_offsets(st, v, num):
    """Window offsets of the three ring parts, or (-1, ...) after counting
    the problem (a miss with an IOMMU, a bad ring without)."""
    row = st.vq[v]
    desc = translate(st.table, st.tcount, row[VQ_DESC], 16 * num, False)
    avail = translate(st.table, st.tcount, row[VQ_AVAIL], 6 + 2 * num, False)
    used = translate(st.table, st.tcount, row[VQ_USED], 6 + 8 * num, True)
    if desc >= 0 and avail >= 0 and used >= 0:
        return desc, avail, used
    if row[VQ_IOMMU] != 0:
        if desc < 0:
            _miss(st, v, row[VQ_DESC], False)
        elif avail < 0:
            _miss(st, v, row[VQ_AVAIL], False)
        else:
            _miss(st, v, row[VQ_USED], True)
    else:
        st.xstats[v, XS_BAD_RING] += 1
    return np.int64(-1), np.int64(-1), np.int64(-1)


@njit(nogil=True, cache=True)
def _buffer(st, v, addr, length, write):
    """Window offset of one descriptor's buffer; on failure raise the miss
    (IOMMU) and return -2, or return -1 (bad)."""
    off = translate(st.table, st.tcount, addr, length, write)
    if off >= 0:
        return off
    if st.vq[v, VQ_IOMMU] != 0:
        _miss(st, v, addr, write)
        return np.int64(R_MISS)
    return np.int64(R_BAD)


@njit(nogil=True, cache=True)
def _copy_chain_out(st, v, desc, num, head, pool, dst, room):
    """Copy the chain at ``head`` (device-readable) past the net header into
    ``pool.data[dst:]``; returns the packet length or an R_* code."""
    m = st.mem
    skip = st.vq[v, VQ_HDR_LEN]
    i = head
    total = np.int64(0)
    for _hop in range(num):
        if i >= num:
            return R_BAD
        flags = desc_flags(m, desc, i)
        if flags & (VRING_DESC_F_WRITE | VRING_DESC_F_INDIRECT):
            return R_BAD
        addr = desc_addr(m, desc, i)
        ln = desc_len(m, desc, i)
        s = min(skip, ln)
        skip -= s
        ln -= s
        if ln > 0:
            off = _buffer(st, v, addr + np.uint64(s), ln, False)
            if off < 0:
                return off
            if total + ln > room:
                return R_TOO_BIG
            memcpy(pool.data, dst + total, m.u8, off, ln)
            total += ln
        if not flags & VRING_DESC_F_NEXT:
            return total
        i = desc_next(m, desc, i)
    return R_BAD  # longer than the ring: a loop


@njit(nogil=True, cache=True)
def _copy_chain_in(st, v, desc, num, head, pool, src, length):
    """Write the net header and ``pool.data[src:src+length]`` into the chain
    at ``head`` (device-writable); returns bytes written or an R_* code."""
    m = st.mem
    hdr = st.vq[v, VQ_HDR_LEN]
    need = hdr + length
    i = head
    done = np.int64(0)  # bytes of header + packet written
    for _hop in range(num):
        if i >= num:
            return R_BAD
        flags = desc_flags(m, desc, i)
        if flags & VRING_DESC_F_INDIRECT or not flags & VRING_DESC_F_WRITE:
            return R_BAD
        ln = min(desc_len(m, desc, i), need - done)
        if ln > 0:
            off = _buffer(st, v, desc_addr(m, desc, i), ln, True)
            if off < 0:
                return off
            k = np.int64(0)
            while done < hdr and k < ln:  # header bytes: zero, num_buffers = 1
                m.u8[off + k] = 1 if (done == NET_HDR_NUM_BUFFERS and hdr > NET_HDR_NUM_BUFFERS) else 0
                k += 1
                done += 1
            if k < ln:
                memcpy(m.u8, off + k, pool.data, src + (done - hdr), ln - k)
                done += ln - k
        if done == need:
            return done
        if not flags & VRING_DESC_F_NEXT:
            return R_TOO_BIG
        i = desc_next(m, desc, i)
    return R_BAD


@njit(nogil=True, cache=True)
def _publish(st, v, used, used_idx, avail):
    """Publish the used index, then call the driver unless it said not to."""
    m = st.mem
    store_release(m.u16, (used + 2) >> 1, np.uint16(used_idx & 0xFFFF))
    st.vq[v, VQ_LAST_USED] = used_idx & 0xFFFF
    fd = st.vq[v, VQ_CALL_FD]
    if fd >= 0:
        fence()  # the driver re-checks used idx after arming; see FACTS.md (lost wake-ups)
        if not load_acquire(m.u16, (avail >> 1)) & VRING_AVAIL_F_NO_INTERRUPT:
            eventfd_signal(fd)
            st.xstats[v, XS_CALLS] += 1


@njit(nogil=True, cache=True)
def _begin(st, v):
    """Ring offsets and the number of new available entries, or num = 0."""
    if load_acquire(st.vq[v], VQ_READY) == 0:
        return 0, 0, 0, 0, 0
    num = st.vq[v, VQ_NUM]
    desc, avail, used = _ring_offsets(st, v, num)
    if desc < 0:
        return 0, 0, 0, 0, 0
    m = st.mem
    if m.u16[used >> 1] != VRING_USED_F_NO_NOTIFY:
        m.u16[used >> 1] = VRING_USED_F_NO_NOTIFY  # we poll: no kicks needed
    avail_idx = np.int64(load_acquire(m.u16, (avail + 2) >> 1))
    n = (avail_idx - st.vq[v, VQ_LAST_AVAIL]) & 0xFFFF
    if n > num:  # the driver claims more than the ring holds
        st.xstats[v, XS_BAD_RING] += 1
        return 0, 0, 0, 0, 0
    return num, desc, avail, used, n


@njit(nogil=True, cache=True)
def dequeue(st, v, q, pool, bufs, nb):
    """VM1 transmit ring ``v`` -> up to ``nb`` mbufs in ``bufs``."""
    num, desc, avail, used, n = _begin(st, v)
    n = min(n, nb)
    if n == 0:
        return 0
    if not alloc_bulk(pool, bufs, n):
        st.stats[q, ST_RX_NOMBUF] += n
        return 0
    m = st.mem
    mask = num - 1
    last = st.vq[v, VQ_LAST_AVAIL]
    used_idx = st.vq[v, VQ_LAST_USED]
    room = pool.buf_size - HEADROOM
    got = 0
    taken = 0
    nbytes = 0
    for k in range(n):
        head = avail_entry(m, avail, (last + k) & mask)
        i = bufs[got]
        res = _copy_chain_out(st, v, desc, num, head, pool, mbuf_offset(pool, i), room)
        if res == R_MISS:
            break  # parked: retried once the grant arrives
        set_used_entry(m, used, used_idx & mask, head, 0)
        used_idx += 1
        taken += 1
        if res < 0:
            st.xstats[v, XS_TOO_BIG if res == R_TOO_BIG else XS_BAD_DESC] += 1
            st.stats[q, ST_IERRORS] += 1
            continue
        pool.data_len[i] = res
        pool.port[i] = st.port_id
        nbytes += res
        bufs[got] = i
        got += 1
    if got < n:
        free_bulk(pool, bufs[got:], n - got)
    if taken:
        st.vq[v, VQ_LAST_AVAIL] = (last + taken) & 0xFFFF
        _publish(st, v, used, used_idx, avail)
    st.stats[q, ST_IPACKETS] += got
    st.stats[q, ST_IBYTES] += nbytes
    return got


@njit(nogil=True, cache=True)
def enqueue(st, v, q, pool, bufs, nb):
    """``bufs[:nb]`` -> VM1 receive ring ``v``.  Returns how many mbufs were
    taken (sent, or dropped on a bad descriptor and counted); the caller
    keeps the rest (ring full, not ready, or parked on a miss)."""
    num, desc, avail, used, n = _begin(st, v)
    n = min(n, nb)
    if n == 0:
        return 0
    m = st.mem
    mask = num - 1
    last = st.vq[v, VQ_LAST_AVAIL]
    used_idx = st.vq[v, VQ_LAST_USED]
    taken = 0
    sent = 0
    nbytes = 0
    for k in range(n):
        i = bufs[k]
        head = avail_entry(m, avail, (last + k) & mask)
        ln = np.int64(pool.data_len[i])
        res = _copy_chain_in(st, v, desc, num, head, pool, mbuf_offset(pool, i), ln)
        if res == R_MISS:
            break
        taken += 1
        if res < 0:
            st.xstats[v, XS_TOO_BIG if res == R_TOO_BIG else XS_BAD_DESC] += 1
            st.stats[q, ST_OERRORS] += 1
            set_used_entry(m, used, used_idx & mask, head, 0)
        else:
            set_used_entry(m, used, used_idx & mask, head, res)
            sent += 1
            nbytes += ln
        used_idx += 1
    if taken:
        st.vq[v, VQ_LAST_AVAIL] = (last + taken) & 0xFFFF
        _publish(st, v, used, used_idx, avail)
        free_bulk(pool, bufs, taken)
    st.stats[q, ST_OPACKETS] += sent
    st.stats[q, ST_OBYTES] += nbytes
    return taken


@njit(nogil=True, cache=True)
def vhost_pci_rx(st, q, pool, bufs, nb):
    return dequeue(st, 2 * q + 1, q, pool, bufs, nb)


@njit(nogil=True, cache=True)
def vhost_pci_tx(st, q, pool, bufs, nb):
    return enqueue(st, 2 * q, q, pool, bufs, nb)


register_burst(VhostPciState, vhost_pci_rx, vhost_pci_tx)
