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
  is returned with len 0 (bad descriptor counted; a transmit chain that
  outgrows the mbuf, loop or not, counts as too_big), the queue goes on.

Per-queue control words (``vq`` rows, one cache line-pair each) are written
by the control thread before it publishes ``VQ_READY`` with a release store;
the kernel owns ``VQ_LAST_AVAIL``/``VQ_LAST_USED`` while the queue is ready.

Inflight tracking (``inflight.py``, packed rings ``inflight_packed.py``; on
when ``VQ_IF_BASE`` >= 0: INFLIGHT_SHMFD negotiated and a region set) changes when a transmit descriptor counts as
done.  A head ``dequeue`` takes is recorded in flight and its used entry
written, but used->idx is published only when the lcore comes back for the
next burst on that ring (or the ring stops): by then the previous burst's
mbufs have been handed to their tx port (the forwarding loop runs rx, tx,
rx, ... on one lcore), so a back-end killed at any moment leaves every
packet it had not yet forwarded in flight, and the restarted one resubmits
it (``VQ_RESUB_*``, before new available entries).  The receive ring needs
no record: its buffers are only written, and a restarted back-end starts
from VM1's used->idx (SET_VRING_BASE), so a batch whose used entries were
written but not published is simply filled again; one u16 store publishes
a batch, so VM1 never sees part of one.  A packed ring works the same way
(its batch's first flags are published by the next burst; a receive batch
is published by its first flags, and a restarted back-end starts from the
front-end's base).
"""
from __future__ import annotations


import numpy as np
from numba import njit

from ..atomics import fence, load_acquire
from ..ethdev import (
    ST_IBYTES, ST_IERRORS, ST_IPACKETS, ST_OBYTES, ST_OERRORS, ST_OPACKETS, ST_RX_NOMBUF,
)
from ..grace import section_enter, section_leave
from ..mbuf import HEADROOM, alloc_bulk, free_bulk
from ..syscalls import eventfd_signal
from ..virtio.split import USED_ELEM_SIZE, USED_FLAGS, USED_IDX, VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY, avail_entry, avail_flags, avail_idx, desc_addr, ring_sizes, set_used_entry, set_used_flags, set_used_idx, used_elem_at, used_entry_id, used_event, used_flags, vring_need_event
from .bufcopy import copy_in as _copy_in, copy_out as _copy_out, log as _log, packet_in, prefetch_buffer
from .chain import CHAIN_MISS, CHAIN_TOO_BIG, fill_vec, resolve
from .ringmap import ring_parts
from .vq_packed import PREFETCH_AHEAD, avail_left_packed, dequeue_packed, enqueue_packed, flush_inflight_packed
from .inflight import (
    RESUB_DELIVERED, close_batch, entry_counter, last_batch_head, link, set_inflight_used_idx, source, take, unlink,
)
from .inflight_packed import commit
from .state import (
    PORT_INFLIGHT, VQ_AVAIL_LEFT, VQ_CALL_FD, VQ_EVENT_IDX, VQ_HDR_LEN, VQ_IF_BASE, VQ_IF_COUNTER,
    VQ_LAST_AVAIL, VQ_LAST_USED, VQ_MRG, VQ_NUM, VQ_PACKED, VQ_PARKED, VQ_PENDING, VQ_READER, VQ_READY, VQ_RESUB_N, VQ_RESUB_POS, VQ_USED, XS_BAD_DESC,
    XS_BAD_RING, XS_CALLS, XS_MERGED, XS_ROLLED_FORWARD, XS_TOO_BIG,
)

# What became of one packet in enqueue
PKT_SENT, PKT_WAIT, PKT_DROPPED = 0, 1, 2

@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _ring_offsets(st, v, num):
    """Window offsets of the split ring's three parts, or (-1, ...) after
    counting the problem (a miss with an IOMMU, a bad ring without)."""
    desc_size, avail_size, used_size = ring_sizes(num)
    return ring_parts(st, v, desc_size, avail_size, used_size, False)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _publish(st, v, used, old_used, used_idx, avail, num):
    """Publish the used index, then call the driver if it asked to be
    called (EVENT_IDX's used_event, else the NO_INTERRUPT flag)."""
    m = st.mem
    ring = st.vq[v, VQ_USED]  # guest address of the used ring, for the log
    first = old_used & (num - 1)
    count = (used_idx - old_used) & 0xFFFF
    if first + count <= num:
        _log(st, v, ring + used_elem_at(first), USED_ELEM_SIZE * count)
    else:
        _log(st, v, ring + used_elem_at(first), USED_ELEM_SIZE * (num - first))
        _log(st, v, ring + used_elem_at(0), USED_ELEM_SIZE * (first + count - num))
    set_used_idx(m, used, used_idx)
    _log(st, v, ring + USED_IDX, 2)
    st.vq[v, VQ_LAST_USED] = used_idx & 0xFFFF
    fd = st.vq[v, VQ_CALL_FD]
    if fd < 0:
        return
    fence()  # the driver re-checks used idx after arming; see pmd/atomics.py (lost wake-ups)
    if st.vq[v, VQ_EVENT_IDX] != 0:
        want = vring_need_event(used_event(m, avail, num), used_idx, old_used)
    else:
        want = not avail_flags(m, avail) & VRING_AVAIL_F_NO_INTERRUPT
    if want:
        eventfd_signal(fd)
        st.xstats[v, XS_CALLS] += 1


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _begin(st, v):
    """Ring offsets and the number of new available entries, or num = 0."""
    if load_acquire(st.vq[v], VQ_READY) == 0:
        return 0, 0, 0, 0, 0
    num = st.vq[v, VQ_NUM]
    desc, avail, used = _ring_offsets(st, v, num)
    if desc < 0:
        return 0, 0, 0, 0, 0
    m = st.mem
    if used_flags(m, used) != VRING_USED_F_NO_NOTIFY:
        set_used_flags(m, used, VRING_USED_F_NO_NOTIFY)  # we poll: no kicks needed
        _log(st, v, st.vq[v, VQ_USED] + USED_FLAGS, 2)
    n = (avail_idx(m, avail) - st.vq[v, VQ_LAST_AVAIL]) & 0xFFFF
    if n > num:  # the driver claims more than the ring holds
        st.xstats[v, XS_BAD_RING] += 1
        return 0, 0, 0, 0, 0
    return num, desc, avail, used, n


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _complete_pending(st, v, num, avail, used, ibase):
    """Publish the heads the previous burst took (used entries written at
    take time), with the inflight batch protocol around used->idx."""
    p = st.vq[v, VQ_PENDING]
    if p == 0:
        return
    m = st.mem
    im = st.inflight
    mask = num - 1
    old_used = st.vq[v, VQ_LAST_USED]
    last = last_batch_head(im, ibase)
    for s in range(p):
        head = np.int64(used_entry_id(m, used, (old_used + s) & mask))
        if head < num:  # only heads take() recorded (VM1 may scribble on its used ring)
            last = link(im, ibase, head, last)
    close_batch(im, ibase, last)
    _publish(st, v, used, old_used, old_used + p, avail, num)
    for s in range(p):  # the same entries, still in cache: independent loads, not a walk of next
        head = np.int64(used_entry_id(m, used, (old_used + s) & mask))
        if head < num:
            unlink(im, ibase, head)
    set_inflight_used_idx(im, ibase, old_used + p)
    st.vq[v, VQ_PENDING] = 0


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def dequeue(st, v, q, pool, bufs, nb):
    """VM1 transmit ring ``v`` -> up to ``nb`` mbufs in ``bufs`` (the ring's
    layout picks the kernel: one test per burst, none per packet)."""
    if st.vq[v, VQ_PACKED] != 0:
        return dequeue_packed(st, v, q, pool, bufs, nb)
    return dequeue_split(st, v, q, pool, bufs, nb)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _prefetch_head(st, desc, avail, num, slot):
    """``prefetch_buffer`` for the chain whose head is in available slot
    ``slot`` (one known to be available): its first descriptor's buffer."""
    m = st.mem
    head = avail_entry(m, avail, slot)
    if head < num:
        prefetch_buffer(m, desc_addr(m, desc, head), False)


@njit(nogil=True, cache=True, _nrt=False)
def dequeue_split(st, v, q, pool, bufs, nb):
    """VM1 transmit ring ``v`` (split) -> up to ``nb`` mbufs in ``bufs``."""
    num, desc, avail, used, n = _begin(st, v)
    if num == 0:
        return 0
    ibase = st.vq[v, VQ_IF_BASE]  # read once: the control thread clears it only with the ring quiescent
    r = 0  # heads to resubmit, taken before new available entries
    if ibase >= 0:
        _complete_pending(st, v, num, avail, used, ibase)
        r = st.vq[v, VQ_RESUB_N] - st.vq[v, VQ_RESUB_POS]
    n = min(n + r, nb)
    if n == 0:
        return 0
    if not alloc_bulk(pool, bufs, n):
        st.stats[q, ST_RX_NOMBUF] += n
        return 0
    m = st.mem
    mask = num - 1
    last = st.vq[v, VQ_LAST_AVAIL]
    rpos = st.vq[v, VQ_RESUB_POS]
    counter = st.vq[v, VQ_IF_COUNTER]
    old_used = st.vq[v, VQ_LAST_USED]
    used_idx = old_used
    room = pool.buf_size - HEADROOM
    hdr = st.vq[v, VQ_HDR_LEN]
    vec = st.vec[v]
    for k in range(r, min(n, r + PREFETCH_AHEAD)):
        _prefetch_head(st, desc, avail, num, (last + k - r) & mask)
    got = 0
    taken = 0
    nbytes = 0
    for k in range(n):
        if r <= k + PREFETCH_AHEAD < n:
            _prefetch_head(st, desc, avail, num, (last + k + PREFETCH_AHEAD - r) & mask)
        if k < r:
            head = np.int64(st.resub[v, rpos + k])
            if head & RESUB_DELIVERED:  # delivered before the kill (commit record): only return it
                set_used_entry(m, used, used_idx & mask, head & ~RESUB_DELIVERED, 0)
                used_idx += 1
                taken += 1
                st.xstats[v, XS_ROLLED_FORWARD] += 1
                continue
        else:
            head = avail_entry(m, avail, (last + k - r) & mask)
        i = bufs[got]
        tbl, tn, first = resolve(st, v, desc, num, head)
        res = tbl if tbl < 0 else fill_vec(st, v, tbl, tn, first, False, hdr + room + 1, vec)
        if res >= 0:
            res = _copy_out(st, vec, res, hdr, pool, i, room)
        if res == CHAIN_MISS:
            break  # parked: retried once the grant arrives
        set_used_entry(m, used, used_idx & mask, head, 0)
        if ibase >= 0 and head < num:
            if k >= r:
                c = counter
                take(st.inflight, ibase, head, c)
                counter += 1
            else:  # a resubmitted head keeps its record
                c = entry_counter(st.inflight, ibase, head)
            if res >= 0 and i < len(st.src):
                st.src[i] = source(v, head, c)
        used_idx += 1
        taken += 1
        if res < 0:
            st.xstats[v, XS_TOO_BIG if res == CHAIN_TOO_BIG else XS_BAD_DESC] += 1
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
        again = min(taken, r)
        st.vq[v, VQ_LAST_AVAIL] = (last + taken - again) & 0xFFFF
        if ibase >= 0:
            st.vq[v, VQ_RESUB_POS] = rpos + again
            st.vq[v, VQ_IF_COUNTER] = counter
            st.vq[v, VQ_PENDING] = taken  # published by the next burst (module docstring)
        else:
            _publish(st, v, used, old_used, used_idx, avail, num)
    st.stats[q, ST_IPACKETS] += got
    st.stats[q, ST_IBYTES] += nbytes
    return got


@njit(nogil=True, cache=True, _nrt=False)
def flush_inflight(st, v):
    """Control thread, ring ``v`` stopped and its lcores quiescent (their
    last burst forwarded): publish what the last burst took and drop the
    resubmissions not yet taken.  Returns how many were dropped: they go
    back to the available ring (last_avail_idx moves back by as many)."""
    if st.vq[v, VQ_IF_BASE] < 0:
        return 0
    if st.vq[v, VQ_PACKED] != 0:
        return flush_inflight_packed(st, v)
    num = st.vq[v, VQ_NUM]
    desc, avail, used = _ring_offsets(st, v, num)
    if desc >= 0:
        _complete_pending(st, v, num, avail, used, st.vq[v, VQ_IF_BASE])
    left = st.vq[v, VQ_RESUB_N] - st.vq[v, VQ_RESUB_POS]
    st.vq[v, VQ_RESUB_N] = 0
    st.vq[v, VQ_RESUB_POS] = 0
    return left


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def enqueue(st, v, q, pool, bufs, nb):
    """``bufs[:nb]`` -> VM1 receive ring ``v``, split or packed (one test
    per burst; inlined, as ``dequeue``)."""
    if st.vq[v, VQ_PACKED] != 0:
        return enqueue_packed(st, v, q, pool, bufs, nb)
    return enqueue_split(st, v, q, pool, bufs, nb)


@njit(nogil=True, cache=True, _nrt=False)
def enqueue_split(st, v, q, pool, bufs, nb):
    """``bufs[:nb]`` -> VM1 receive ring ``v`` (split).  With MRG_RXBUF a packet may
    fill several available chains (num_buffers in its header).  Returns how
    many mbufs were taken (sent, or dropped on a bad descriptor and
    counted); the caller keeps the rest (ring full, not ready, or parked on
    a miss)."""
    num, desc, avail, used, n_avail = _begin(st, v)
    if n_avail == 0:
        st.vq[v, VQ_AVAIL_LEFT] = 0
        if num != 0:  # an empty ring (num 0: not ready, or parked on a miss on the ring: ringmap.py)
            st.vq[v, VQ_PARKED] = 0
        return 0
    m = st.mem
    mask = num - 1
    mrg = st.vq[v, VQ_MRG] != 0
    hdr = st.vq[v, VQ_HDR_LEN]
    last = st.vq[v, VQ_LAST_AVAIL]
    old_used = st.vq[v, VQ_LAST_USED]
    used_idx = old_used
    vec = st.vec[v]
    parked = False
    res = np.int64(0)
    consumed = 0
    taken = 0
    sent = 0
    nbytes = 0
    for k in range(nb):
        ln, src, ol, need = packet_in(pool, bufs[k], hdr)
        done = np.int64(0)
        nbufs = 0
        off_lo = np.int64(-1)
        off_hi = np.int64(-1)
        start_consumed = consumed
        start_used = used_idx
        status = PKT_SENT
        while done < need:
            if consumed >= n_avail:
                status = PKT_WAIT
                break
            head = avail_entry(m, avail, (last + consumed) & mask)
            tbl, tn, first = resolve(st, v, desc, num, head)
            res = tbl if tbl < 0 else fill_vec(st, v, tbl, tn, first, True, need - done, vec)
            if res >= 0:
                res, off_lo, off_hi = _copy_in(st, v, vec, res, hdr, pool, src, ol, done, off_lo, off_hi)
            if res == CHAIN_MISS:
                status = PKT_WAIT
                break
            consumed += 1
            if res < 0:
                set_used_entry(m, used, used_idx & mask, head, 0)
                used_idx += 1
                st.xstats[v, XS_TOO_BIG if res == CHAIN_TOO_BIG else XS_BAD_DESC] += 1
                status = PKT_DROPPED
                break
            set_used_entry(m, used, used_idx & mask, head, res - done)
            used_idx += 1
            nbufs += 1
            done = res
            if done < need and not mrg:
                st.xstats[v, XS_TOO_BIG] += 1
                status = PKT_DROPPED
                break
        if status == PKT_WAIT:
            consumed = start_consumed  # the chains it began stay available
            used_idx = start_used
            parked = res == CHAIN_MISS
            break
        taken += 1
        if status == PKT_DROPPED:  # every chain this packet touched goes back empty
            for s in range(start_used, used_idx):
                set_used_entry(m, used, s & mask, used_entry_id(m, used, s & mask), 0)
            st.stats[q, ST_OERRORS] += 1
            continue
        if nbufs > 1:
            st.xstats[v, XS_MERGED] += nbufs - 1
            m.u8[off_lo] = np.uint8(nbufs & 0xFF)  # num_buffers (u16 LE), only where
            m.u8[off_hi] = np.uint8(nbufs >> 8)  # _copy_in wrote (and logged) it
        sent += 1
        nbytes += ln
    st.vq[v, VQ_PARKED] = 1 if parked else 0
    st.vq[v, VQ_AVAIL_LEFT] = n_avail - consumed
    if consumed:
        if st.ctl[PORT_INFLIGHT] != 0:
            for k in range(taken):
                commit(st, v, bufs[k], used_idx)
        st.vq[v, VQ_LAST_AVAIL] = (last + consumed) & 0xFFFF
        _publish(st, v, used, old_used, used_idx, avail, num)
    if taken:
        free_bulk(pool, bufs, taken)
    st.stats[q, ST_OPACKETS] += sent
    st.stats[q, ST_OBYTES] += nbytes
    return taken


@njit(nogil=True, cache=True, _nrt=False)
def avail_left(st, v):
    """Receive ring ``v``'s chains VM1 made available and the port has not
    used: the last enqueue's count while it is non-zero (VM1 only adds), else
    a fresh look at the ring (0 if it is not ready or not mapped), inside
    the vring's read section (``pmd/grace.py``): the caller is outside one."""
    left = st.vq[v, VQ_AVAIL_LEFT]
    if left > 0:
        return left
    row = st.vq[v]
    section_enter(row, VQ_READER)
    if st.vq[v, VQ_PACKED] != 0:
        n = avail_left_packed(st, v)
    else:
        n = _begin(st, v)[4]
        st.vq[v, VQ_AVAIL_LEFT] = n
    section_leave(row, VQ_READER)
    return n


@njit(nogil=True, cache=True, _nrt=False)
def vhost_pci_rx(st, q, pool, bufs, nb):
    """VM1's transmit ring of queue pair ``q``."""
    return dequeue(st, 2 * q + 1, q, pool, bufs, nb)


# tx_burst (with its hold queue) is registered in txhold.py
