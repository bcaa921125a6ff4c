"""Driver-side packed-ring kernels of the virtio-user port (virtio 1.2, 2.8).

The packed ring's ``xmit`` and ``recv`` for VM1's driver (``packed_vq=1``;
``burst.py`` picks them per burst from ``DRV_PACKED``).  The buffers go
round the same pipeline as on a split ring (free FIFO, stage FIFO, device,
done FIFO: ``vq.py``), so every IOMMU mode works the same; what differs is
the ring:

- posting writes each staged buffer as one descriptor at the next ring
  position (buffer id = the buffer's index, its length from ``blen``), all
  flags but the first one's as it goes and the first one's last with a
  release store (the device sees the batch at once), then kicks if the
  device area asks for it (ENABLE, or DESC with EVENT_IDX: ``need_event``);
- reaping reads flags at the driver's used position with an acquire load
  and takes every descriptor the device marked used for that wrap counter.

``DRV_AVAIL_IDX`` and ``DRV_LAST_USED`` hold positions ``idx | wrap << 15``.
Each buffer is one descriptor, so at most ``num`` are outstanding and a slot
is always reaped before it is posted again.  The driver area stays DISABLE
while polling (``notify.py`` arms it).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..atomics import fence, load_acquire
from ..ethdev import ST_IBYTES, ST_IPACKETS, ST_RX_NOMBUF
from ..mbuf import HEADROOM, alloc_bulk, free_bulk
from ..syscalls import eventfd_signal
from ..virtio.packed import (
    RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_ENABLE, VRING_DESC_F_WRITE, avail_flag_bits, desc_flags_acquire, desc_id,
    desc_len, event_flags, event_off_wrap, is_used, need_event, pos_advance, pos_idx, pos_wrap, publish_desc_flags,
    set_desc_body, set_desc_flags,
)
from .vq import (
    DRV_AVAIL_IDX, DRV_DESC, DRV_EVENT_IDX, DRV_IOVA_DELTA, DRV_KICK_FD,
    DRV_LAST_USED, DRV_MAP_DONE, DRV_NUM, DRV_POSTED, DRV_READY, DRV_STAGE_TAIL, DRV_STRIDE, DRV_TRANSIENT, DRV_USED,
    DRV_XS_KICKS, _buf_gpa, _handed_back, _push_done, _recycle, _stage, fill_tx, free_left, pop_free, rx_done, rx_first,
    rx_more,
)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def post_packed(st, v):
    """Make staged (and, if transient, mapped) buffers available; kick once."""
    row = st.vq[v]
    num = row[DRV_NUM]
    upto = _handed_back(st, row, DRV_STAGE_TAIL, DRV_MAP_DONE)
    p = row[DRV_POSTED]
    if p == upto:
        return
    m = st.mem
    desc = row[DRV_DESC]
    write = VRING_DESC_F_WRITE if v % 2 == 0 else 0  # even vrings receive
    old = row[DRV_AVAIL_IDX]
    pos = old
    first_flags = np.int64(-1)
    while p < upto:
        i = np.int64(st.stage[v, p & (num - 1)])
        idx = pos_idx(pos)
        set_desc_body(m, desc, idx, _buf_gpa(row, i) + row[DRV_IOVA_DELTA], st.blen[v, i], i)
        f = avail_flag_bits(pos_wrap(pos)) | write
        if first_flags < 0:
            first_flags = f
        else:
            set_desc_flags(m, desc, idx, f)
        pos = pos_advance(pos, 1, num)
        p += 1
    publish_desc_flags(m, desc, pos_idx(old), first_flags)
    row[DRV_POSTED] = p
    row[DRV_AVAIL_IDX] = pos
    fd = row[DRV_KICK_FD]
    if fd >= 0:
        fence()  # pairs with the device's fence after arming notifications
        dev = row[DRV_USED]
        flags = event_flags(m, dev)
        if flags == RING_EVENT_FLAGS_DESC and row[DRV_EVENT_IDX] != 0:
            want = need_event(event_off_wrap(m, dev), pos, old, num)
        else:
            want = flags == RING_EVENT_FLAGS_ENABLE
        if want:
            eventfd_signal(fd)
            st.xstats[v, DRV_XS_KICKS] += 1


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _next_used(st, row, last):
    """``(buffer id, len, next position)`` of the used descriptor at
    ``last``, or id -1 if the device has not used it yet."""
    m = st.mem
    desc = row[DRV_DESC]
    idx = pos_idx(last)
    if not is_used(desc_flags_acquire(m, desc, idx), pos_wrap(last)):
        return np.int64(-1), np.int64(0), last
    return desc_id(m, desc, idx), desc_len(m, desc, idx), pos_advance(last, 1, row[DRV_NUM])


@njit(nogil=True, cache=True, _nrt=False)
def xmit_packed(st, v, q, pool, bufs, nb):
    """``bufs[:nb]`` -> packed transmit ring ``v``; returns how many were taken."""
    row = st.vq[v]
    if load_acquire(row, DRV_READY) == 0:
        return 0
    last = row[DRV_LAST_USED]
    for _k in range(row[DRV_NUM]):  # reap what the device sent
        i, _ln, nxt = _next_used(st, row, last)
        if i < 0:
            break
        _push_done(st, v, i)
        last = nxt
    row[DRV_LAST_USED] = last
    _recycle(st, v)
    taken = fill_tx(st, v, q, pool, bufs, nb, True)
    post_packed(st, v)
    return taken


@njit(nogil=True, cache=True, _nrt=False)
def recv_packed(st, v, q, pool, bufs, nb):
    """Packed receive ring ``v`` -> up to ``nb`` mbufs; refills the ring."""
    row = st.vq[v]
    if load_acquire(row, DRV_READY) == 0:
        return 0
    last = row[DRV_LAST_USED]
    got = 0
    nbytes = 0
    i, ln, nxt = _next_used(st, row, last)
    if i >= 0:
        if not alloc_bulk(pool, bufs, nb):
            st.stats[q, ST_RX_NOMBUF] += nb
            nb = 0
        room = pool.buf_size - HEADROOM
        while got < nb:
            i, ln, nxt = _next_used(st, row, last)
            if i < 0:
                break
            last = nxt
            k = bufs[got]
            total, nbuf = rx_first(st, v, q, pool, k, i, ln, room)
            if total < 0:
                continue
            ok = True
            for _more in range(1, nbuf):  # MRG_RXBUF: the rest of the packet follows
                i2, ln2, nxt = _next_used(st, row, last)
                if i2 < 0:
                    ok = False  # the device published a partial packet
                    break
                last = nxt
                total, ok = rx_more(st, v, pool, k, total, ok, i2, ln2, room)
            if rx_done(st, v, q, pool, k, total, ok) >= 0:
                nbytes += total
                got += 1
        if got < nb:
            free_bulk(pool, bufs[got:], nb - got)
        row[DRV_LAST_USED] = last
    _recycle(st, v)
    stride = row[DRV_STRIDE]
    for _ in range(free_left(row)):  # refill: every free buffer goes back to the device
        i = pop_free(st, v, row)
        st.blen[v, i] = stride
        _stage(st, v, i)
    post_packed(st, v)
    if st.vq[v + 1, DRV_TRANSIENT] != 0:
        post_packed(st, v + 1)  # tx buffers granted since the last transmit: rx is polled even when tx is idle
    st.stats[q, ST_IPACKETS] += got
    st.stats[q, ST_IBYTES] += nbytes
    return got
