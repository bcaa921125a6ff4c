"""Device-side packed-ring kernels of the vhost-pci port (virtio 1.2, 2.8).

The packed ring's ``dequeue`` and ``enqueue`` (``vq.py`` picks them per
burst from the ring's ``VQ_PACKED`` word, set when the ring starts: the
split kernels never look at a packed ring).  A burst:

- reads each head's flags with an acquire load and stops at the first one
  not available for the ring's wrap counter; walks its chain
  (``chain_packed.fill_vec_packed``: ring chains, indirect tables, every
  check the split walker makes, IOTLB misses park);
- writes one used element per chain at the used position (buffer id and
  written length) and moves on by the slots the chain covers.  The port
  completes in order, so the used position always equals the available one
  and one ``VQ_LAST_AVAIL`` / ``VQ_LAST_USED`` pair (``idx | wrap << 15``)
  holds both;
- publishes used elements with one release store per batch: every used
  element's flags but the batch's first are written as the burst goes, the
  first one's last, so VM1's driver (which reads in ring order) sees the
  whole batch at once.  Dequeue publishes the burst as one batch; enqueue
  one batch per cache line of descriptors (``LINE_DESCS``, whole packets),
  as DPDK's vhost does: VM1 consumes and refills the first lines while the
  burst fills the next ones, where a batch per burst had both sides take
  turns (bursts of all or nothing, each side idle half the time).
  Four plain packets meeting a line of four one-buffer receive chains
  (what virtio-net drivers post without offloads) take a path of their own
  (``_enqueue_line``, DPDK's vhost batches likewise): all four checked and
  translated, then copied, then each used element written as one 8-byte
  word (len, id, flags), the line's first last.  The line's stores then
  come together: VM1's driver polls that line's first flags, and every
  store into it while VM1 reads it costs a transfer of the line (and
  x86 commits stores in order, so the copies behind it wait too).
  Dequeue has a line path too (``_dequeue_line``): four one-descriptor
  transmit chains with a 12-byte header, what virtio-net drivers send,
  all checked and translated (the burst's last row remembered), then
  copied.  Both directions ask for the buffers ``PREFETCH_AHEAD`` chains
  before their copy and for the descriptor lines twice as far: buffers and
  descriptors were written last by VM1's CPU, and one miss after another,
  each waited for in turn, held dequeue at half DPDK's rate at 64 B.
  With VIRTIO_F_IN_ORDER a transmit burst writes a single used element,
  the last chain's id at the batch's first position (2.8.9: the driver
  knows the rest); receive bursts keep one per chain (each has a length);
- calls VM1 if its driver area asks for it (ENABLE; or DESC with
  EVENT_IDX: ``packed.need_event``), and keeps the device area at DISABLE
  while polling (no kicks wanted; ``notify.py`` arms it to sleep).

Every write into VM1 memory is logged (dirty log).  A receive packet whose
chains are not all there yet (ring empty, or a miss) is rolled back whole:
its used elements (``st.pk``) are written only once the packet is done, so
a chain it began is read again, unchanged, next time.

Inflight tracking (``inflight_packed.py``) works as for split rings
(``vq.py``): a tracked transmit burst's chains are recorded as taken, their
used elements written, and the batch's first flags published only by the
next burst.
"""
from __future__ import annotations

import numpy as np
from numba import literally, njit

from ..atomics import fence, load_acquire, prefetch_read, prefetch_write
from ..ethdev import ST_IBYTES, ST_IERRORS, ST_IPACKETS, ST_OBYTES, ST_OERRORS, ST_OPACKETS, ST_RX_NOMBUF
from ..mbuf import HEADROOM, alloc_bulk, free_bulk
from ..guestmem.translate import translate, translate_remembered
from ..syscalls import eventfd_signal
from ..virtio.features import NET_HDR_LEN
from ..virtio.packed import (
    DESC_SIZE, EVENT_FLAGS, RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_ENABLE,
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, desc_addr, desc_flags, desc_flags_acquire, desc_id,
    desc_len, event_flags, event_off_wrap, is_avail, need_event, pos_advance, pos_distance, pos_idx, pos_wrap,
    publish_desc_flags, ring_sizes, set_desc_body, set_desc_flags, set_event_flags, set_used_desc, set_used_word, used_flag_bits,
    used_word,
)
from .bufcopy import copy_in, copy_out, log, packet_in, prefetch_buffer
from .chain import CHAIN_MISS, CHAIN_TOO_BIG, VEC_ADDR, VEC_LEN, VEC_MAX, VEC_OFF
from .chain_packed import fill_vec_packed
from .inflight import RESUB_DELIVERED, source
from .inflight_packed import (
    chain_counter, chain_id, chain_slots, commit, release_chains, settle_chains, take_chain,
)
from .ringmap import ring_parts
from .state import (
    PEND_CAP, VQ_AVAIL_LEFT, VQ_CALL_FD, VQ_DESC, VQ_EVENT_IDX, VQ_HDR_LEN, VQ_IF_BASE, VQ_IF_COUNTER,
    VQ_IN_ORDER, VQ_LAST_AVAIL, VQ_LAST_USED, VQ_MRG, VQ_NUM, VQ_PARKED, VQ_PEND_FLAGS, VQ_PENDING, VQ_READY,
    VQ_RESUB_N, VQ_RESUB_POS, VQ_USED, XS_BAD_DESC, XS_CALLS, XS_MERGED, XS_ROLLED_FORWARD, XS_TOO_BIG,
)

PK_SLOT, PK_ID, PK_LEN = range(3)  # st.pk rows: one used element of the packet being written
LINE_DESCS = 4  # descriptors in a 64-byte cache line: enqueue publishes used elements a line at a time
LINE_MASK = LINE_DESCS - 1
# of these, a plain receive chain has WRITE only, a plain transmit chain none
PLAIN_MASK = VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT | VRING_DESC_F_WRITE
# both directions ask for a buffer's lines this many chains before copying
# (enqueue into it, write intent; dequeue out of it), and for the descriptor
# line twice as far ahead (enqueue with write intent: the used elements go
# there): with one line of chains ahead the enqueue copies still waited for
# the buffers' lines (store buffer full on the header)
PREFETCH_AHEAD = 2 * LINE_DESCS
COUNT_AHEAD = 512  # avail_left_packed counts no further (DPDK's largest burst)
CHAIN_DELIVERED = -100  # a resubmitted chain whose packet was delivered: returned, not read


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def ring_offsets_packed(st, v, num):
    """Window offsets of the descriptor ring (written too: used elements),
    the driver area and the device area, or (-1, ...) after counting the
    problem."""
    desc_size, drv_size, dev_size = ring_sizes(num)
    return ring_parts(st, v, desc_size, drv_size, dev_size, True)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _begin(st, v):
    """``(num, desc, drv)``, or num = 0 (not ready / not mapped); sets the
    device area to DISABLE while polling (we need no kicks)."""
    if load_acquire(st.vq[v], VQ_READY) == 0:
        return 0, 0, 0
    num = st.vq[v, VQ_NUM]
    desc, drv, dev = ring_offsets_packed(st, v, num)
    if desc < 0:
        return 0, 0, 0
    m = st.mem
    if event_flags(m, dev) != RING_EVENT_FLAGS_DISABLE:
        set_event_flags(m, dev, RING_EVENT_FLAGS_DISABLE)
        log(st, v, st.vq[v, VQ_USED] + EVENT_FLAGS, 2)
    return num, desc, drv


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _used(st, v, desc, pos, buf_id, length, first_flags):
    """Write a used element at ``pos``; its flags now unless it is the
    burst's first (``first_flags`` >= 0: published by ``_publish``).
    Returns the flags to publish for it."""
    m = st.mem
    i = pos_idx(pos)
    set_used_desc(m, desc, i, buf_id, length)
    flags = used_flag_bits(pos_wrap(pos)) | (VRING_DESC_F_WRITE if length > 0 else 0)
    if first_flags >= 0:
        set_desc_flags(m, desc, i, flags)
    log(st, v, st.vq[v, VQ_DESC] + DESC_SIZE * i, DESC_SIZE)
    return flags


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _took(st, v, desc, pos, buf_id, in_order, start, first_flags, last_id):
    """A transmit chain taken at ``pos``: with IN_ORDER only remembered
    (one used element for the burst, written at its end), else its used
    element written now (``_used``).  Returns ``(first_flags, last_id)``."""
    if in_order:
        return np.int64(used_flag_bits(pos_wrap(start))), np.int64(buf_id)
    f = _used(st, v, desc, pos, buf_id, 0, first_flags)
    return (np.int64(f) if first_flags < 0 else first_flags), last_id


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _publish(st, v, desc, drv, first_pos, first_flags, new_pos, num):
    """Make the burst visible (the first used element's flags, a release
    store, unless ``first_flags`` < 0: published already), then call VM1's
    driver if its driver area asks for it."""
    m = st.mem
    if first_flags >= 0:
        publish_desc_flags(m, desc, pos_idx(first_pos), first_flags)
    old = st.vq[v, VQ_LAST_USED]
    st.vq[v, VQ_LAST_USED] = new_pos
    st.vq[v, VQ_LAST_AVAIL] = new_pos
    fd = st.vq[v, VQ_CALL_FD]
    if fd < 0:
        return
    fence()  # the driver re-checks the ring after arming (lost wake-ups, see pmd/atomics.py)
    flags = event_flags(m, drv)
    if flags == RING_EVENT_FLAGS_DESC and st.vq[v, VQ_EVENT_IDX] != 0:
        want = need_event(event_off_wrap(m, drv), new_pos, old, num)
    else:
        want = flags == RING_EVENT_FLAGS_ENABLE
    if want:
        eventfd_signal(fd)
        st.xstats[v, XS_CALLS] += 1


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _track_rx(st, v, ibase, num, desc, slot_pos, slots, npend):
    """Record a receive chain in a tracked ring's region (before its used
    element overwrites it): ``st.pend[v, npend]``; returns npend + 1."""
    c = st.vq[v, VQ_IF_COUNTER]
    st.pend[v, npend] = take_chain(st.inflight, ibase, num, st.mem, desc, pos_idx(slot_pos), slots, c)
    st.vq[v, VQ_IF_COUNTER] = c + 1
    return npend + 1


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _publish_line(st, v, desc, first_pos, first_flags, new_pos, ibase, num, npend):
    """Publish a receive batch (its first flags); tracked, its ``npend``
    chains are returned around it (``inflight_packed``'s order)."""
    if npend:
        release_chains(st.inflight, ibase, num, st.pend[v], npend, new_pos)
    publish_desc_flags(st.mem, desc, pos_idx(first_pos), first_flags)
    if npend:
        settle_chains(st.inflight, ibase, st.pend[v], npend)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _complete(st, v, num, desc, drv, ibase):
    """Return the chains the last tracked burst took (their used elements
    are written): on the free list, the used position, the publication,
    then the heads' flags (``inflight_packed``'s order)."""
    p = st.vq[v, VQ_PENDING]
    if p == 0:
        return
    im = st.inflight
    heads = st.pend[v]
    new_pos = st.vq[v, VQ_LAST_AVAIL]
    release_chains(im, ibase, num, heads, p, new_pos)
    _publish(st, v, desc, drv, st.vq[v, VQ_LAST_USED], st.vq[v, VQ_PEND_FLAGS], new_pos, num)
    settle_chains(im, ibase, heads, p)
    st.vq[v, VQ_PENDING] = 0


@njit(nogil=True, cache=True, _nrt=False)
def flush_inflight_packed(st, v):
    """Control thread, ring ``v`` stopped and its lcores quiescent: return
    what the last burst took.  Chains left to resubmit stay in the ring
    (their slots were written back), so nothing goes back: returns 0."""
    ibase = st.vq[v, VQ_IF_BASE]
    if ibase < 0:
        return 0
    num = st.vq[v, VQ_NUM]
    desc, drv, dev = ring_offsets_packed(st, v, num)
    if desc >= 0:
        _complete(st, v, num, desc, drv, ibase)
    st.vq[v, VQ_RESUB_N] = 0
    st.vq[v, VQ_RESUB_POS] = 0
    return 0


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _prefetch_ahead(st, desc, num, pos, k, nb, lines, write):
    """At chain ``k`` of a burst of ``nb`` (at ``pos``): ask for the buffer
    ``PREFETCH_AHEAD`` chains on (a line's four at a line's start when the
    burst takes the line path) and, at a line's start, for the descriptor
    line twice as far (to be written if ``write``: enqueue's used
    elements).  One chain a slot, as a rule: a guess, never trusted.
    Returns whether ``pos`` starts a line."""
    at_line = pos_idx(pos) & LINE_MASK == 0
    if k + PREFETCH_AHEAD < nb:
        for j in range(LINE_DESCS if lines and at_line else 1):
            _prefetch_buffer(st, desc, pos_advance(pos, PREFETCH_AHEAD + j, num), write)
        if at_line:
            d = desc + DESC_SIZE * pos_idx(pos_advance(pos, 2 * PREFETCH_AHEAD, num))
            if write:
                prefetch_write(st.mem.u8, d)
            else:
                prefetch_read(st.mem.u8, d)
    return at_line


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _dequeue_line(st, pool, bufs, got, desc, pos, room, memo, line):
    """The descriptor line at ``pos`` (a multiple of 4, inside the ring)
    into mbufs ``bufs[got:got + 4]``, if it holds four available chains of
    one device-readable descriptor each, a 12-byte header and a packet that
    fits an mbuf, all translated: checks and translations first, then the
    four copies (DPDK's vhost batches likewise).  Returns the bytes
    received, or -1 having copied nothing (a chain, a bad or missing
    buffer: the one-chain path takes it, counts it, parks on it).  ``line``
    holds the checked rows, ``memo`` the burst's last translation row."""
    m = st.mem
    i = pos_idx(pos)
    wrap = pos_wrap(pos)
    for j in range(LINE_DESCS):
        flags = desc_flags_acquire(m, desc, i + j)
        if not is_avail(flags, wrap) or flags & PLAIN_MASK != 0:
            return np.int64(-1)
    for j in range(LINE_DESCS):
        ln = np.int64(desc_len(m, desc, i + j))  # read once: VM1 may change it
        if ln <= NET_HDR_LEN or ln - NET_HDR_LEN > room:
            return np.int64(-1)
        off = translate_remembered(st.table, st.tcount, desc_addr(m, desc, i + j), ln, False, memo)
        if off < 0:
            return np.int64(-1)
        line[j, VEC_OFF] = off
        line[j, VEC_LEN] = ln
    nbytes = np.int64(0)
    for j in range(LINE_DESCS):
        b = bufs[got + j]
        n = copy_out(st, line[j:], 1, NET_HDR_LEN, pool, b, room)
        pool.data_len[b] = n
        pool.port[b] = st.port_id
        nbytes += n
    return nbytes


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def dequeue_packed(st, v, q, pool, bufs, nb):
    """VM1 transmit ring ``v`` (packed) -> up to ``nb`` mbufs in ``bufs``.
    Tracked (``VQ_IF_BASE`` >= 0, see ``vq.py``): the chains are recorded
    as they are taken and returned by the next burst; the first ones may be
    a predecessor's, resubmitted (``VQ_RESUB_*``: their entries are kept,
    and one whose packet was delivered is only returned).  As for
    ``enqueue_packed``, tracked rings have a kernel of their own; this
    choice is inlined (one call a burst)."""
    if st.vq[v, VQ_IF_BASE] >= 0:
        return _dequeue(st, v, q, pool, bufs, nb, True)
    return _dequeue(st, v, q, pool, bufs, nb, False)


@njit(nogil=True, cache=True, _nrt=False)
def _dequeue(st, v, q, pool, bufs, nb, tracked):
    """``dequeue_packed``'s body, compiled once per value of ``tracked``
    (a literal).  Not inlined: Numba's IR inlining of a body this size
    costs minutes of compile time, and the call is one a burst anyway."""
    literally(tracked)
    num, desc, drv = _begin(st, v)
    if num == 0:
        return 0
    # read once: the control thread clears it only with the ring quiescent
    ibase = st.vq[v, VQ_IF_BASE] if tracked else -1
    r = 0
    if ibase >= 0:
        _complete(st, v, num, desc, drv, ibase)
        r = st.vq[v, VQ_RESUB_N] - st.vq[v, VQ_RESUB_POS]
        nb = min(nb, PEND_CAP)
    m = st.mem
    im = st.inflight
    pos = st.vq[v, VQ_LAST_AVAIL]
    if not is_avail(desc_flags_acquire(m, desc, pos_idx(pos)), pos_wrap(pos)):
        return 0
    if not alloc_bulk(pool, bufs, nb):
        st.stats[q, ST_RX_NOMBUF] += nb
        return 0
    start = pos
    first_flags = np.int64(-1)
    in_order = st.vq[v, VQ_IN_ORDER] != 0
    last_id = np.int64(-1)
    rpos = st.vq[v, VQ_RESUB_POS]
    counter = st.vq[v, VQ_IF_COUNTER]
    room = pool.buf_size - HEADROOM
    hdr = st.vq[v, VQ_HDR_LEN]
    vec = st.vec[v]
    # the line path: not for a tracked ring (chains recorded one by one) nor
    # a header other than the 12-byte one (copy_out's plain case)
    lines = ibase < 0 and hdr == NET_HDR_LEN
    memo = st.memo[v]
    memo[3] = 0  # no row remembered from an earlier burst
    for k in range(min(nb, PREFETCH_AHEAD)):
        _prefetch_buffer(st, desc, pos_advance(pos, k, num), False)
    got = 0
    taken = 0
    nbytes = 0
    while taken < nb:
        at_line = _prefetch_ahead(st, desc, num, pos, taken, nb, lines, False)
        if lines and at_line and taken + LINE_DESCS <= nb and pos_idx(pos) + LINE_DESCS <= num:
            got_bytes = _dequeue_line(st, pool, bufs, got, desc, pos, room, memo, vec)
            if got_bytes >= 0:
                for j in range(LINE_DESCS):
                    first_flags, last_id = _took(st, v, desc, pos_advance(pos, j, num), desc_id(m, desc, pos_idx(pos) + j),
                                                 in_order, start, first_flags, last_id)
                pos = pos_advance(pos, LINE_DESCS, num)
                got += LINE_DESCS
                taken += LINE_DESCS
                nbytes += got_bytes
                continue
        flags = desc_flags_acquire(m, desc, pos_idx(pos))
        if not is_avail(flags, pos_wrap(pos)):
            break
        i = bufs[got]
        e = np.int64(-1)
        if taken < r:
            e = np.int64(st.resub[v, rpos + taken])
        if e >= 0 and e & RESUB_DELIVERED:  # delivered before the kill (commit record): only return it
            e &= ~RESUB_DELIVERED
            res, buf_id, slots = np.int64(CHAIN_DELIVERED), chain_id(im, ibase, e), chain_slots(im, ibase, e)
            st.xstats[v, XS_ROLLED_FORWARD] += 1
        else:
            res, buf_id, slots = fill_vec_packed(st, v, desc, num, pos_idx(pos), flags, False, hdr + room + 1, vec)
            if res >= 0:
                res = copy_out(st, vec, res, hdr, pool, i, room)
            if res == CHAIN_MISS:
                break  # parked: retried once the grant arrives
        if ibase >= 0:
            if e < 0:
                e = take_chain(im, ibase, num, m, desc, pos_idx(pos), slots, counter)
                c = counter
                counter += 1
            else:  # a resubmitted chain keeps its entries
                c = chain_counter(im, ibase, e)
            st.pend[v, taken] = e
            if res >= 0 and i < len(st.src):
                st.src[i] = source(v, e, c)
        taken += 1
        first_flags, last_id = _took(st, v, desc, pos, buf_id, in_order, start, first_flags, last_id)
        pos = pos_advance(pos, slots, num)
        if res < 0:
            if res != CHAIN_DELIVERED:
                st.xstats[v, XS_TOO_BIG if res == CHAIN_TOO_BIG else XS_BAD_DESC] += 1
                st.stats[q, ST_IERRORS] += 1
            continue
        pool.data_len[i] = res
        pool.port[i] = st.port_id
        nbytes += res
        got += 1
    if got < nb:
        free_bulk(pool, bufs[got:], nb - got)
    if last_id >= 0:  # IN_ORDER (2.8.9): the last chain's id at the batch's first position
        _used(st, v, desc, start, last_id, 0, np.int64(-1))
    if first_flags >= 0:
        if ibase >= 0:  # returned by the next burst, once these packets are forwarded (vq.py)
            st.vq[v, VQ_LAST_AVAIL] = pos
            st.vq[v, VQ_PEND_FLAGS] = first_flags
            st.vq[v, VQ_PENDING] = taken
            st.vq[v, VQ_RESUB_POS] = rpos + min(taken, r)
            st.vq[v, VQ_IF_COUNTER] = counter
        else:
            _publish(st, v, desc, drv, start, first_flags, pos, num)
    st.stats[q, ST_IPACKETS] += got
    st.stats[q, ST_IBYTES] += nbytes
    return got


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _prefetch_buffer(st, desc, pos, write):
    """``prefetch_buffer`` for the chain whose head is at ``pos``, if VM1
    made it available."""
    m = st.mem
    i = pos_idx(pos)
    if is_avail(desc_flags_acquire(m, desc, i), pos_wrap(pos)):
        prefetch_buffer(m, desc_addr(m, desc, i), write)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _enqueue_line(st, v, pool, bufs, k, desc, pos, line, memo, ibase):
    """Packets ``bufs[k:k + 4]`` into the four chains of the descriptor
    line at ``pos`` (a multiple of 4, the line inside the ring), if each is
    one device-writable descriptor big enough for a plain packet and its
    header, translated whole: checks first, then the copies, then one
    8-byte store per used element, the first one last (the line's
    publication).  Returns the bytes sent, or -1 having touched nothing (a
    packet with offloads, a chain, a miss, a bad descriptor: the
    one-packet path takes it).  ``line`` holds the checked rows, ``memo``
    the burst's last translation row; ``ibase`` >= 0: a tracked ring's
    area (commit records and chains recorded, as the one-packet path)."""
    m = st.mem
    i = pos_idx(pos)
    wrap = pos_wrap(pos)
    for j in range(LINE_DESCS):
        flags = desc_flags_acquire(m, desc, i + j)
        if not is_avail(flags, wrap) or flags & PLAIN_MASK != VRING_DESC_F_WRITE:
            return np.int64(-1)
    for j in range(LINE_DESCS):
        b = bufs[k + j]
        need = NET_HDR_LEN + np.int64(pool.data_len[b])
        if pool.ol_flags[b] != 0 or desc_len(m, desc, i + j) < need:
            return np.int64(-1)
        addr = desc_addr(m, desc, i + j)
        off = translate_remembered(st.table, st.tcount, addr, need, True, memo)
        if off < 0:
            return np.int64(-1)
        line[j, VEC_OFF] = off
        line[j, VEC_LEN] = need
        line[j, VEC_ADDR] = np.int64(addr)
    sent = np.int64(0)
    for j in range(LINE_DESCS):  # copy_in's plain case: the header, the packet, the dirty log
        ln, src, ol, need = packet_in(pool, bufs[k + j], NET_HDR_LEN)
        copy_in(st, v, line[j:], 1, NET_HDR_LEN, pool, src, ol, np.int64(0), np.int64(-1), np.int64(-1))
        sent += ln
    num = st.vq[v, VQ_NUM]
    npend = 0
    if ibase >= 0:
        for j in range(LINE_DESCS):
            commit(st, v, bufs[k + j], pos)
        for j in range(LINE_DESCS):
            npend = _track_rx(st, v, ibase, num, desc, pos_advance(pos, j, num), 1, npend)
    flags = used_flag_bits(wrap) | VRING_DESC_F_WRITE
    for j in range(LINE_DESCS - 1, -1, -1):  # the first one last: VM1 reads the line from it
        word = used_word(desc_id(m, desc, i + j), line[j, VEC_LEN], flags)
        if j == 0 and npend:
            release_chains(st.inflight, ibase, num, st.pend[v], npend, pos_advance(pos, LINE_DESCS, num))
        set_used_word(m, desc, i + j, word, j == 0)
    if npend:
        settle_chains(st.inflight, ibase, st.pend[v], npend)
    log(st, v, st.vq[v, VQ_DESC] + DESC_SIZE * i, LINE_DESCS * DESC_SIZE)
    return sent


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def enqueue_packed(st, v, q, pool, bufs, nb):
    """``bufs[:nb]`` -> VM1 receive ring ``v`` (packed); as ``vq.enqueue``:
    returns how many mbufs were taken (sent, or dropped and counted).  A
    tracked ring (inflight) has a kernel of its own: the plain one carries
    none of the bookkeeping (the hot loop is sensitive to every store and
    spill, see ``_enqueue_line``)."""
    if st.vq[v, VQ_IF_BASE] >= 0:
        return _enqueue(st, v, q, pool, bufs, nb, True)
    return _enqueue(st, v, q, pool, bufs, nb, False)


@njit(nogil=True, cache=True, _nrt=False)
def _enqueue(st, v, q, pool, bufs, nb, tracked):
    """``enqueue_packed``'s body, compiled once per value of ``tracked``
    (a literal, as ``_dequeue``)."""
    literally(tracked)
    num, desc, drv = _begin(st, v)
    if num == 0:  # not ready, or parked on a miss on the ring (ringmap.py)
        st.vq[v, VQ_AVAIL_LEFT] = 0
        return 0
    st.vq[v, VQ_PARKED] = 0
    m = st.mem
    mrg = st.vq[v, VQ_MRG] != 0
    hdr = st.vq[v, VQ_HDR_LEN]
    pos = st.vq[v, VQ_LAST_AVAIL]
    start = pos  # the first used element not published yet
    first_flags = np.int64(-1)
    vec = st.vec[v]
    pk = st.pk[v]
    ibase = st.vq[v, VQ_IF_BASE] if tracked else -1  # every chain recorded before its used element
    npend = 0  # chains recorded since the last publication
    parked = False
    empty = False
    chains = 0  # chains this burst used
    res = np.int64(0)
    taken = 0
    sent = 0
    nbytes = 0
    for k in range(min(nb, PREFETCH_AHEAD)):
        _prefetch_buffer(st, desc, pos_advance(pos, k, num), True)
    lines = hdr == NET_HDR_LEN  # the line path writes the 12-byte header (VERSION_1 or MRG_RXBUF)
    memo = st.memo[v]
    memo[3] = 0  # no row remembered from an earlier burst
    k = 0
    while k < nb:
        at_line = _prefetch_ahead(st, desc, num, pos, k, nb, lines, True)
        if lines and at_line and first_flags < 0 and k + LINE_DESCS <= nb and pos_idx(pos) + LINE_DESCS <= num:
            # nothing of the line written yet: the one-packet path publishes a line once complete
            got = _enqueue_line(st, v, pool, bufs, k, desc, pos, vec, memo, ibase)
            if got >= 0:
                k += LINE_DESCS
                taken += LINE_DESCS
                chains += LINE_DESCS
                sent += LINE_DESCS
                nbytes += got
                pos = start = pos_advance(pos, LINE_DESCS, num)
                continue
        ln, src, ol, need = packet_in(pool, bufs[k], hdr)
        k += 1
        done = np.int64(0)
        nbufs = 0
        off_lo = np.int64(-1)
        off_hi = np.int64(-1)
        p = pos
        wait = False
        dropped = False
        while done < need:
            flags = desc_flags_acquire(m, desc, pos_idx(p))
            if not is_avail(flags, pos_wrap(p)):
                wait = empty = True
                break
            if nbufs == VEC_MAX:
                dropped = True  # more chains than one packet may take
                st.xstats[v, XS_TOO_BIG] += 1
                break
            res, buf_id, slots = fill_vec_packed(st, v, desc, num, pos_idx(p), flags, True, need - done, vec)
            if res >= 0:
                res, off_lo, off_hi = copy_in(st, v, vec, res, hdr, pool, src, ol, done, off_lo, off_hi)
            if res == CHAIN_MISS:
                wait = parked = True
                break
            pk[nbufs, PK_SLOT] = p
            pk[nbufs, PK_ID] = buf_id
            pk[nbufs, PK_LEN] = 0 if res < 0 else res - done
            nbufs += 1
            p = pos_advance(p, slots, num)
            if res < 0:
                st.xstats[v, XS_TOO_BIG if res == CHAIN_TOO_BIG else XS_BAD_DESC] += 1
                dropped = True
                break
            done = res
            if done < need and not mrg:
                st.xstats[v, XS_TOO_BIG] += 1
                dropped = True
                break
        if wait:
            break  # the chains it began stay available, unchanged
        taken += 1
        chains += nbufs
        for c in range(nbufs):  # its used elements: all empty if it was dropped
            if ibase >= 0:
                nxt = pk[c + 1, PK_SLOT] if c + 1 < nbufs else p
                npend = _track_rx(st, v, ibase, num, desc, pk[c, PK_SLOT], pos_distance(pk[c, PK_SLOT], nxt, num),
                                  npend)
            f = _used(st, v, desc, pk[c, PK_SLOT], pk[c, PK_ID], 0 if dropped else pk[c, PK_LEN], first_flags)
            if first_flags < 0:
                first_flags = f
        if ibase >= 0:
            commit(st, v, bufs[k - 1], start)  # published with the flags at ``start``
        if first_flags >= 0 and (pos_idx(start) & LINE_MASK) + pos_distance(start, p, num) >= LINE_DESCS:
            # a cache line of used elements is complete: publish it now, so
            # VM1 consumes it while this burst goes on (as DPDK's vhost)
            _publish_line(st, v, desc, start, first_flags, p, ibase, num, npend)
            npend = 0
            first_flags = np.int64(-1)
            start = p
        pos = p
        if dropped:
            st.stats[q, ST_OERRORS] += 1
            continue
        if nbufs > 1:
            st.xstats[v, XS_MERGED] += nbufs - 1
            m.u8[off_lo] = np.uint8(nbufs & 0xFF)  # num_buffers (u16 LE), only where
            m.u8[off_hi] = np.uint8(nbufs >> 8)  # copy_in wrote (and logged) it
        sent += 1
        nbytes += ln
    st.vq[v, VQ_PARKED] = 1 if parked else 0
    # still a lower bound (VM1 only adds); at 0, avail_left_packed walks the ring again
    st.vq[v, VQ_AVAIL_LEFT] = 0 if empty else max(st.vq[v, VQ_AVAIL_LEFT] - chains, 0)
    if taken:
        if npend:
            release_chains(st.inflight, ibase, num, st.pend[v], npend, pos)
        _publish(st, v, desc, drv, start, first_flags, pos, num)
        if npend:
            settle_chains(st.inflight, ibase, st.pend[v], npend)
        free_bulk(pool, bufs, taken)
    st.stats[q, ST_OPACKETS] += sent
    st.stats[q, ST_OBYTES] += nbytes
    return taken


@njit(nogil=True, cache=True, _nrt=False)
def avail_left_packed(st, v):
    """Chains VM1 made available on packed receive ring ``v`` that the port
    has not used, counted by walking the heads: a lower bound (VM1 only
    adds), at most ``COUNT_AHEAD`` (the most a burst takes: the forwarding
    engine's ``tx_room``)."""
    num, desc, drv = _begin(st, v)
    if num == 0:
        st.vq[v, VQ_AVAIL_LEFT] = 0
        return 0
    m = st.mem
    pos = st.vq[v, VQ_LAST_AVAIL]
    n = 0
    walked = 0
    while walked < num and n < COUNT_AHEAD:
        flags = desc_flags_acquire(m, desc, pos_idx(pos))
        if not is_avail(flags, pos_wrap(pos)):
            break
        # skip the chain: its slots while NEXT is set
        slots = 1
        i = pos_idx(pos)
        while flags & VRING_DESC_F_NEXT and slots < num:
            i = i + 1 if i + 1 < num else 0
            flags = desc_flags(m, desc, i)
            slots += 1
        pos = pos_advance(pos, slots, num)
        walked += slots
        n += 1
    st.vq[v, VQ_AVAIL_LEFT] = n
    return n


@njit(nogil=True, cache=True, _nrt=False)
def arm_packed(st, v):
    """Ask VM1 to kick packed ring ``v`` (device area ENABLE, or DESC at
    the next position with EVENT_IDX), fence, then look again: returns 1 if
    a chain is available already (do not sleep), 0, or -1 if not mapped."""
    if load_acquire(st.vq[v], VQ_READY) == 0:
        return np.int64(0)
    num = st.vq[v, VQ_NUM]
    desc, drv, dev = ring_offsets_packed(st, v, num)
    if desc < 0:
        return np.int64(-1)
    m = st.mem
    ring = st.vq[v, VQ_USED]
    pos = st.vq[v, VQ_LAST_AVAIL]
    if st.vq[v, VQ_EVENT_IDX] != 0:
        m.u16[dev >> 1] = np.uint16(pos)  # off_wrap: the next position
        set_event_flags(m, dev, RING_EVENT_FLAGS_DESC)
    else:
        set_event_flags(m, dev, RING_EVENT_FLAGS_ENABLE)
    log(st, v, ring, 4)
    fence()  # pairs with VM1's fence between publishing a head and reading our device area
    return np.int64(1 if is_avail(desc_flags_acquire(m, desc, pos_idx(pos)), pos_wrap(pos)) else 0)


@njit(nogil=True, cache=True, _nrt=False)
def disarm_packed(st, v):
    """Back to polling: no kicks wanted."""
    if load_acquire(st.vq[v], VQ_READY) == 0:
        return
    num = st.vq[v, VQ_NUM]
    desc, drv, dev = ring_offsets_packed(st, v, num)
    if desc < 0:
        return
    set_event_flags(st.mem, dev, RING_EVENT_FLAGS_DISABLE)
    log(st, v, st.vq[v, VQ_USED] + EVENT_FLAGS, 2)


@njit(nogil=True, cache=True, _nrt=False)
def write_back_packed(st, v, descs):
    """Control thread, before ring ``v`` starts: write the chains a killed
    predecessor left in flight (``descs``: rows addr, len, id, flags, in
    counter order) back into the ring slots from ``VQ_LAST_AVAIL`` on, as
    VM1's driver made them available (the used elements written over them
    were never published).  Returns False if the ring is not mapped."""
    if descs.shape[0] == 0:
        return True
    num = st.vq[v, VQ_NUM]
    desc, drv, dev = ring_offsets_packed(st, v, num)
    if desc < 0:
        return False
    m = st.mem
    i = pos_idx(st.vq[v, VQ_LAST_AVAIL])
    for j in range(descs.shape[0]):
        set_desc_body(m, desc, i, descs[j, 0], descs[j, 1], descs[j, 2])
        set_desc_flags(m, desc, i, descs[j, 3])
        log(st, v, st.vq[v, VQ_DESC] + DESC_SIZE * i, DESC_SIZE)
        i = i + 1 if i + 1 < num else 0
    return True
