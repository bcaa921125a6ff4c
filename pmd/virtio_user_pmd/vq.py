"""Driver-side split-ring kernels of the virtio-user port (VM1's virtio-net).

Descriptor ``id`` always owns buffer ``id`` (``buf + id * stride`` in guest
memory), one descriptor per packet: header and data together.  A buffer
goes round a pipeline of three single-producer FIFOs of ids, so that the
emulated IOMMU's control thread can grant a buffer before the device sees
it and revoke it after the device returned it (iommu=transient):

    free FIFO --kernel stages--> stage FIFO --control maps--> (MAP_DONE)
      --kernel posts to avail ring--> device --used ring, kernel reaps-->
    done FIFO --control unmaps--> (UNMAP_DONE) --kernel frees--> free FIFO

The free list is a FIFO too, not a stack: with a device that returns
buffers in order, ids then go round in the same cyclic order for good, so
what the control thread grants or revokes at once is one or two contiguous
runs of buffers (an IOTLB message each); a stack scatters them into runs
of a few buffers within seconds.

Without transient mappings the kernel moves MAP_DONE and UNMAP_DONE itself,
so the same code serves every mode.  Counters are free-running int64;
``vq`` rows hold them (and the ring addresses, all guest-physical: this
side reads its own RAM through a window mapped at GPA offsets).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from ..atomics import fence, load_acquire, memcpy, store_release
from ..ethdev import (
    ST_IBYTES, ST_IERRORS, ST_IPACKETS, ST_OBYTES, ST_OERRORS, ST_OPACKETS, ST_RX_NOMBUF,
)
from ..mbuf import HEADROOM, alloc_bulk, free_bulk, mbuf_offset
from ..syscalls import eventfd_signal
from ..guestmem.views import Mem
from ..virtio.features import NET_HDR_NUM_BUFFERS
from ..virtio.split import VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY, avail_event, set_avail_entry, set_avail_idx, set_desc, set_used_event, used_entry_id, used_entry_len, used_flags, used_idx, vring_need_event

# vq control columns
(DRV_READY, DRV_NUM, DRV_DESC, DRV_AVAIL, DRV_USED, DRV_BUF, DRV_STRIDE, DRV_IOVA_DELTA, DRV_HDR_LEN, DRV_KICK_FD,
 DRV_TRANSIENT, DRV_AVAIL_IDX, DRV_LAST_USED, DRV_FREE_TAIL, DRV_EVENT_IDX, DRV_MRG) = range(16)
# FIFO counters, each on its own cache line (kernel vs control thread)
DRV_STAGE_TAIL, DRV_MAP_DONE, DRV_POSTED = 16, 24, 17
DRV_DONE_TAIL, DRV_UNMAP_DONE, DRV_FREED = 32, 40, 33
# 1 for a packed ring (packed_vq=1, vq_packed.py): DRV_DESC is the descriptor
# ring, DRV_AVAIL the driver area, DRV_USED the device area, and DRV_AVAIL_IDX /
# DRV_LAST_USED are positions ``idx | wrap << 15``
DRV_PACKED = 18
DRV_FREE_HEAD = 19  # the free FIFO: ids at [FREE_HEAD, FREE_TAIL) of ``free`` (mod num)
N_DRV = 48

DRV_XS_BAD_USED, DRV_XS_TOO_BIG, DRV_XS_KICKS = range(3)
N_DRV_XSTATS = 4
DRV_XSTAT_NAMES = ("bad_used_entries", "too_big", "kicks")

DRVCTL_WAKE_FD = 0


class VirtioUserState(NamedTuple):
    mem: Mem  # guest RAM by GPA
    vq: np.ndarray  # (nb_vrings, N_DRV) int64
    free: np.ndarray  # (nb_vrings, num) int32 FIFO of descriptor ids
    stage: np.ndarray  # (nb_vrings, num) int32 FIFO
    done: np.ndarray  # (nb_vrings, num) int32 FIFO
    owned: np.ndarray  # (nb_vrings, num) uint8: 1 while the device holds the id
    blen: np.ndarray  # (nb_vrings, num) int64: packed rings: the length each staged buffer is posted with
    xstats: np.ndarray  # (nb_vrings, N_DRV_XSTATS) int64
    stats: np.ndarray  # (nb_queue_pairs, N_STATS) int64
    ctl: np.ndarray  # int64[8]
    port_id: int


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _wake(st):
    """Wake the control thread (transient grants/revokes to send)."""
    fd = st.ctl[DRVCTL_WAKE_FD]
    if fd >= 0:
        eventfd_signal(fd)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _push_done(st, v, i):
    """The device returned id ``i``; False if it was not the device's to
    return (out of range or returned twice): counted, ignored."""
    row = st.vq[v]
    if i >= row[DRV_NUM] or st.owned[v, i] == 0:
        st.xstats[v, DRV_XS_BAD_USED] += 1
        return False
    st.owned[v, i] = 0
    num = row[DRV_NUM]
    t = row[DRV_DONE_TAIL]
    st.done[v, t & (num - 1)] = i
    row[DRV_DONE_TAIL] = t + 1
    return True


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _handed_back(st, row, tail, done):
    """How far the control thread has processed a FIFO (``row[done]``, it
    owns that counter in transient mode; wake it if it lags); without
    transient grants there is nothing to do and the kernel moves it itself."""
    if row[DRV_TRANSIENT] == 0:
        row[done] = row[tail]
    elif row[tail] != load_acquire(row, done):
        _wake(st)
    return load_acquire(row, done)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _recycle(st, v):
    """Done ids the control thread has unmapped go back on the free FIFO."""
    row = st.vq[v]
    mask = row[DRV_NUM] - 1
    upto = _handed_back(st, row, DRV_DONE_TAIL, DRV_UNMAP_DONE)  # returned buffers revoked
    f = row[DRV_FREED]
    tail = row[DRV_FREE_TAIL]
    while f < upto:
        st.free[v, tail & mask] = st.done[v, f & mask]
        tail += 1
        f += 1
    row[DRV_FREED] = f
    row[DRV_FREE_TAIL] = tail


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def free_left(row):
    """How many ids the free FIFO holds."""
    return row[DRV_FREE_TAIL] - row[DRV_FREE_HEAD]


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def pop_free(st, v, row):
    """The oldest free id (the caller checked ``free_left``)."""
    h = row[DRV_FREE_HEAD]
    row[DRV_FREE_HEAD] = h + 1
    return np.int64(st.free[v, h & (row[DRV_NUM] - 1)])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _stage(st, v, i):
    row = st.vq[v]
    t = row[DRV_STAGE_TAIL]
    st.owned[v, i] = 1
    st.stage[v, t & (row[DRV_NUM] - 1)] = i
    store_release(row, DRV_STAGE_TAIL, t + 1)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _post(st, v):
    """Make staged (and, if transient, mapped) ids available; kick once."""
    row = st.vq[v]
    num = row[DRV_NUM]
    upto = _handed_back(st, row, DRV_STAGE_TAIL, DRV_MAP_DONE)  # staged buffers granted
    p = row[DRV_POSTED]
    if p == upto:
        return
    m = st.mem
    idx = row[DRV_AVAIL_IDX]
    avail = row[DRV_AVAIL]
    p0 = p
    while p < upto:
        set_avail_entry(m, avail, idx & (num - 1), st.stage[v, p & (num - 1)])
        idx += 1
        p += 1
    row[DRV_POSTED] = p
    row[DRV_AVAIL_IDX] = idx
    set_avail_idx(m, avail, idx)
    fd = row[DRV_KICK_FD]
    if fd >= 0:
        fence()  # pairs with the device's fence after arming notifications
        if row[DRV_EVENT_IDX] != 0:  # kick only if avail_event was crossed (2.7.10)
            want = vring_need_event(avail_event(m, row[DRV_USED], num), idx, idx - (upto - p0))
        else:
            want = not used_flags(m, row[DRV_USED]) & VRING_USED_F_NO_NOTIFY
        if want:
            eventfd_signal(fd)
            st.xstats[v, DRV_XS_KICKS] += 1


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _no_calls(st, v, last_used):
    """We poll: with EVENT_IDX keep used_event half a ring-index space
    ahead, so the device never finds it crossed (the NO_INTERRUPT flag
    does the same without EVENT_IDX)."""
    row = st.vq[v]
    if row[DRV_EVENT_IDX] != 0:
        set_used_event(st.mem, row[DRV_AVAIL], row[DRV_NUM], last_used + 0x8000)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _buf_gpa(row, i):
    return row[DRV_BUF] + i * row[DRV_STRIDE]


@njit(nogil=True, cache=True, _nrt=False)
def xmit(st, v, q, pool, bufs, nb):
    """``bufs[:nb]`` -> transmit ring ``v``; returns how many were taken."""
    row = st.vq[v]
    if load_acquire(row, DRV_READY) == 0:
        return 0
    m = st.mem
    num = row[DRV_NUM]
    used_now = used_idx(m, row[DRV_USED])
    last = row[DRV_LAST_USED]
    while last != used_now:  # reap what the device sent
        _push_done(st, v, used_entry_id(m, row[DRV_USED], last & (num - 1)))
        last = (last + 1) & 0xFFFF
    row[DRV_LAST_USED] = last
    _no_calls(st, v, last)
    _recycle(st, v)
    taken = fill_tx(st, v, q, pool, bufs, nb, False)
    _post(st, v)
    return taken


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def fill_tx(st, v, q, pool, bufs, nb, packed):
    """Copy up to ``nb`` mbufs into free transmit buffers (header zeroed)
    and stage them; a split ring gets its descriptor now, a packed one
    (``packed``: a literal, so the test folds away) at posting time, from
    ``blen``.  Frees the mbufs taken; returns how many."""
    row = st.vq[v]
    m = st.mem
    hdr = row[DRV_HDR_LEN]
    room = row[DRV_STRIDE] - hdr
    left = free_left(row)
    taken = 0
    sent = 0
    nbytes = 0
    while taken < nb and left > 0:
        k = bufs[taken]
        taken += 1
        ln = np.int64(pool.data_len[k])
        if ln > room:
            st.xstats[v, DRV_XS_TOO_BIG] += 1
            st.stats[q, ST_OERRORS] += 1
            continue
        left -= 1
        i = pop_free(st, v, row)
        gpa = _buf_gpa(row, i)
        m.u8[gpa:gpa + hdr] = 0
        memcpy(m.u8, gpa + hdr, pool.data, mbuf_offset(pool, k), ln)
        if packed:
            st.blen[v, i] = hdr + ln
        else:
            set_desc(m, row[DRV_DESC], i, gpa + row[DRV_IOVA_DELTA], hdr + ln, 0, 0)
        _stage(st, v, i)
        sent += 1
        nbytes += ln
    free_bulk(pool, bufs, taken)
    st.stats[q, ST_OPACKETS] += sent
    st.stats[q, ST_OBYTES] += nbytes
    return taken


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def rx_first(st, v, q, pool, k, i, ln, room):
    """The first buffer of a received packet (id ``i``, ``ln`` bytes the
    device wrote, header included) into mbuf ``k``, for both ring layouts:
    ``(bytes copied, buffers the packet spans)``, or ``(-1, 0)`` for a bad
    used element (counted; the id is taken back if it was the device's)."""
    row = st.vq[v]
    if not _push_done(st, v, i):
        st.stats[q, ST_IERRORS] += 1
        return np.int64(-1), np.int64(0)
    hdr = row[DRV_HDR_LEN]
    ln -= hdr
    if ln < 0 or ln > row[DRV_STRIDE] - hdr or ln > room:
        st.xstats[v, DRV_XS_BAD_USED] += 1
        st.stats[q, ST_IERRORS] += 1
        return np.int64(-1), np.int64(0)
    m = st.mem
    memcpy(pool.data, mbuf_offset(pool, k), m.u8, _buf_gpa(row, i) + hdr, ln)
    nbuf = np.int64(m.u16[(_buf_gpa(row, i) + NET_HDR_NUM_BUFFERS) >> 1]) if row[DRV_MRG] != 0 else np.int64(1)
    return np.int64(ln), nbuf


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def rx_more(st, v, pool, k, total, ok, i, ln, room):
    """A further buffer (id ``i``, ``ln`` bytes) of a merged packet
    (MRG_RXBUF) appended to mbuf ``k`` after ``total`` bytes: ``(total,
    ok)`` after it (a bad one makes the packet bad; its id is still taken
    back if it was the device's)."""
    row = st.vq[v]
    if not _push_done(st, v, i) or ln > row[DRV_STRIDE] or total + ln > room:
        return total, False
    memcpy(pool.data, mbuf_offset(pool, k) + total, st.mem.u8, _buf_gpa(row, i), ln)
    return total + ln, ok


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def rx_done(st, v, q, pool, k, total, ok):
    """Close a received packet: mbuf ``k`` holds ``total`` bytes, or the
    packet was bad (``ok`` False: counted).  Returns the bytes delivered, or
    -1 for a bad one (the caller reuses the mbuf)."""
    if not ok:
        st.xstats[v, DRV_XS_BAD_USED] += 1
        st.stats[q, ST_IERRORS] += 1
        return np.int64(-1)
    pool.data_len[k] = total
    pool.port[k] = st.port_id
    return np.int64(total)


@njit(nogil=True, cache=True, _nrt=False)
def recv(st, v, q, pool, bufs, nb):
    """Receive ring ``v`` -> up to ``nb`` mbufs; refills the ring."""
    row = st.vq[v]
    if load_acquire(row, DRV_READY) == 0:
        return 0
    m = st.mem
    num = row[DRV_NUM]
    used = row[DRV_USED]
    last = row[DRV_LAST_USED]
    n = (used_idx(m, used) - last) & 0xFFFF
    n = min(n, nb)
    got = 0
    nbytes = 0
    if n > 0:
        if not alloc_bulk(pool, bufs, n):
            st.stats[q, ST_RX_NOMBUF] += n
            n = 0
        room = pool.buf_size - HEADROOM
        avail_used = (used_idx(m, used) - last) & 0xFFFF
        e = 0  # used entries consumed
        while got < n and e < avail_used:
            slot = last & (num - 1)
            i = used_entry_id(m, used, slot)
            ln = used_entry_len(m, used, slot)
            last = (last + 1) & 0xFFFF
            e += 1
            k = bufs[got]
            total, nbuf = rx_first(st, v, q, pool, k, i, ln, room)
            if total < 0:
                continue
            ok = True
            for _more in range(1, nbuf):  # MRG_RXBUF: the rest of the packet follows
                if e >= avail_used:
                    ok = False  # the device published a partial packet
                    break
                slot = last & (num - 1)
                total, ok = rx_more(st, v, pool, k, total, ok, used_entry_id(m, used, slot),
                                    used_entry_len(m, used, slot), room)
                last = (last + 1) & 0xFFFF
                e += 1
            if rx_done(st, v, q, pool, k, total, ok) >= 0:
                nbytes += total
                got += 1
        if got < n:
            free_bulk(pool, bufs[got:], n - got)
        row[DRV_LAST_USED] = last
        _no_calls(st, v, last)
    _recycle(st, v)
    stride = row[DRV_STRIDE]
    for _ in range(free_left(row)):  # refill: every free buffer goes back to the device
        i = pop_free(st, v, row)
        set_desc(m, row[DRV_DESC], i, _buf_gpa(row, i) + row[DRV_IOVA_DELTA], stride, VRING_DESC_F_WRITE, 0)
        _stage(st, v, i)
    _post(st, v)
    if st.vq[v + 1, DRV_TRANSIENT] != 0:
        _post(st, v + 1)  # tx buffers granted since the last transmit: rx is polled even when tx is idle
    st.stats[q, ST_IPACKETS] += got
    st.stats[q, ST_IBYTES] += nbytes
    return got
