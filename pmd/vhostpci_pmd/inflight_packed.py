"""Inflight descriptor tracking for packed rings (vhost-user.rst "Inflight
I/O tracking", packed layout), and the commit records of both layouts.

Per vring (``queue_area(queue_size)`` bytes, as the back-end lays out the
region), the spec's header and entries, then ours:

    u64 features  u16 version  u16 desc_num  u16 free_head  u16 old_free_head
    u16 used_idx  u16 old_used_idx  u8 used_wrap  u8 old_used_wrap  (32 bytes)
    desc_num x DescStatePacked { u8 inflight; u8 pad; u16 next; u16 last;
        u16 num; u64 counter; u16 id; u16 flags; u32 len; u64 addr }
    desc_num x commit record { u8 rx vring; u8 pad; u16 rx position }   (ours)

The entries are a free list (``next``); a chain the kernel takes gets one
entry per ring descriptor, copied there, the head entry holding the chain's
``num``, ``last`` and ``counter`` (``take_chain``: the spec's receive
steps).  ``complete`` returns a batch: the chains go back on the free list,
used_idx/used_wrap move, the batch is published in the ring, the heads'
flags are cleared, then ``old_*`` catch up.  ``recover`` (a restarted
back-end) commits or rolls back an interrupted batch by the ring itself
(published: the old used position's flags no longer read "available"),
clears the flags of what is on the free list, and returns the chains still
in flight in counter order, with their descriptors.

The port completes in order, so the chains in flight always sit in the ring
slots from the used position on, in counter order.  The restarted back-end
resubmits them by writing their saved descriptors back into those slots
(the used elements its predecessor wrote there may have overwritten them)
and taking the ring from the used position again: the same kernel path as
any chain, with the entries kept (``VQ_RESUB_*`` lists their heads).

Receive rings are tracked too, though their buffers are only written: a
packed batch is published by its first used element's flags, written after
the others', so a back-end killed in between leaves slots that read "used"
behind a position VM1 never saw published.  A successor starting there
would take them for used and wait forever; it writes their descriptors
back instead, and fills them again.

Commit records (as ``inflight.py`` explains for split rings): a transmit
chain whose packet the port delivers into one of its own receive rings is
marked ``inflight = 2``, with that ring and the position of the used element
whose flags publish the packet (split: the used->idx it reaches), before
that publication.  Recovery rolls it forward (only returned) if the receive
ring shows that position published when it started, else back (sent again).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from numba import njit

from ..atomics import store_release
from ..virtio.packed import (
    AVAIL_USED_MASK, VRING_PACKED_DESC_F_AVAIL, VRING_PACKED_DESC_F_USED, WRAP_BIT, desc_addr, desc_flags, desc_id, desc_len,
)
from .inflight import IF_DELIVERED, IF_TAKEN, RESUB_DELIVERED, mark_delivered, source_fields
from .state import VQ_IF_BASE, VQ_NUM, VQ_PACKED

P_FEATURES, P_VERSION, P_DESC_NUM, P_FREE_HEAD, P_OLD_FREE_HEAD = 0, 8, 10, 12, 14
P_USED_IDX, P_OLD_USED_IDX, P_USED_WRAP, P_OLD_USED_WRAP = 16, 18, 20, 21
P_HEADER = 32
P_DESC_SIZE = 32
E_INFLIGHT, E_NEXT, E_LAST, E_NUM, E_COUNTER, E_ID, E_FLAGS, E_LEN, E_ADDR = 0, 2, 4, 6, 8, 16, 18, 20, 24
C_SIZE = 4  # commit record: u8 rx vring @0, u16 rx position @2
C_RX_VRING, C_RX_POS = 0, 2
P_ALIGN = 64
VERSION_1 = 1


def queue_area(queue_size: int) -> int:
    """Bytes of one packed vring's area (the spec's part, then the commit records)."""
    return -(-(P_HEADER + (P_DESC_SIZE + C_SIZE) * queue_size) // P_ALIGN) * P_ALIGN


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _e(base, i):
    return base + P_HEADER + P_DESC_SIZE * i


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _u16(im, off):
    return np.int64(im.u16[off >> 1])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def take_chain(im, base, num, m, desc, idx, slots, counter):
    """The chain of ``slots`` descriptors from ring slot ``idx`` leaves the
    ring: each descriptor copied into the next free entry, the head entry
    in flight.  Returns the head entry.  The free list is the port's own
    (recover checks it): an index out of range restarts at 0 rather than
    write outside the area."""
    head = _u16(im, base + P_FREE_HEAD)
    if head >= num:
        head = np.int64(0)
    e = _e(base, head)
    im.u16[(e + E_NUM) >> 1] = np.uint16(slots)
    im.u64[(e + E_COUNTER) >> 3] = np.uint64(counter)
    store_release(im.u8, e + E_INFLIGHT, np.uint8(IF_TAKEN))
    cur = head
    i = idx
    for j in range(slots):
        c = _e(base, cur)
        im.u64[(c + E_ADDR) >> 3] = np.uint64(desc_addr(m, desc, i))
        im.u32[(c + E_LEN) >> 2] = np.uint32(desc_len(m, desc, i))
        im.u16[(c + E_ID) >> 1] = np.uint16(desc_id(m, desc, i))
        im.u16[(c + E_FLAGS) >> 1] = np.uint16(desc_flags(m, desc, i))
        if j == slots - 1:
            im.u16[(e + E_LAST) >> 1] = np.uint16(cur)
        cur = _u16(im, c + E_NEXT)
        if cur >= num:
            cur = np.int64(0)
        i = i + 1 if i + 1 < num else 0
    im.u16[(base + P_FREE_HEAD) >> 1] = np.uint16(cur)
    store_release(im.u16, (base + P_OLD_FREE_HEAD) >> 1, np.uint16(cur))  # the chain is whole
    return head


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def chain_slots(im, base, head):
    return _u16(im, _e(base, head) + E_NUM)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def chain_id(im, base, head):
    """The chain's buffer id: its last descriptor's (the one the device echoes)."""
    return _u16(im, _e(base, _u16(im, _e(base, head) + E_LAST)) + E_ID)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def chain_counter(im, base, head):
    return np.int64(im.u64[(_e(base, head) + E_COUNTER) >> 3])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def release_chains(im, base, num, heads, n, new_pos):
    """Spec steps 1-6 of a batch (``heads[:n]``): back on the free list,
    then the used position; the caller publishes the batch next."""
    fh = _u16(im, base + P_FREE_HEAD)
    for c in range(n):
        h = np.int64(heads[c])
        last = _u16(im, _e(base, h) + E_LAST)
        if last < num:
            im.u16[(_e(base, last) + E_NEXT) >> 1] = np.uint16(fh)
            fh = h
    im.u16[(base + P_FREE_HEAD) >> 1] = np.uint16(fh)
    im.u8[base + P_USED_WRAP] = np.uint8(new_pos >> WRAP_BIT)
    store_release(im.u16, (base + P_USED_IDX) >> 1, np.uint16(new_pos & ((1 << WRAP_BIT) - 1)))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def settle_chains(im, base, heads, n):
    """After the batch's publication: its heads are no longer in flight,
    and ``old_*`` catch up (what a restart rolls back to)."""
    for c in range(n):
        store_release(im.u8, _e(base, np.int64(heads[c])) + E_INFLIGHT, np.uint8(0))
    im.u8[base + P_OLD_USED_WRAP] = im.u8[base + P_USED_WRAP]
    im.u16[(base + P_OLD_FREE_HEAD) >> 1] = im.u16[(base + P_FREE_HEAD) >> 1]
    store_release(im.u16, (base + P_OLD_USED_IDX) >> 1, im.u16[(base + P_USED_IDX) >> 1])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def mark_delivered_packed(im, base, num, head, counter, rx_vring, rx_pos):
    """Commit record of a packed transmit chain: delivered once receive
    vring ``rx_vring`` publishes position ``rx_pos``.  Must precede that
    publication; a stale source word (counter mismatch) is ignored."""
    e = _e(base, head)
    if im.u8[e + E_INFLIGHT] != IF_TAKEN or im.u64[(e + E_COUNTER) >> 3] & np.uint64(0xFFFFFFFF) != counter:
        return
    c = base + P_HEADER + P_DESC_SIZE * num + C_SIZE * head
    im.u8[c + C_RX_VRING] = np.uint8(rx_vring)
    im.u16[(c + C_RX_POS) >> 1] = np.uint16(rx_pos)
    store_release(im.u8, e + E_INFLIGHT, np.uint8(IF_DELIVERED))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def commit(st, v, i, where):
    """Mbuf ``i`` goes out with receive ring ``v``'s publication ``where``
    (split: the used->idx it reaches; packed: the position whose flags
    publish it): if this port took it from a tracked transmit ring, write
    that ring's commit record first."""
    if i >= len(st.src):
        return
    t, head, counter = source_fields(st.src[i])
    if t < 0 or t >= st.vq.shape[0]:
        return
    ibase = st.vq[t, VQ_IF_BASE]
    num = st.vq[t, VQ_NUM]
    if ibase < 0 or head >= num:
        return
    if st.vq[t, VQ_PACKED] != 0:
        mark_delivered_packed(st.inflight, ibase, num, head, counter, v, where)
    else:
        mark_delivered(st.inflight, ibase, head, counter, v, where)


def is_published(flags: int, pos: int) -> bool:
    """Whether a ring slot's ``flags`` show position ``pos`` (idx | wrap << 15)
    published: anything but "available for its wrap" (used, or made
    available again for the next lap)."""
    avail = VRING_PACKED_DESC_F_AVAIL if pos >> WRAP_BIT & 1 else VRING_PACKED_DESC_F_USED
    return flags & AVAIL_USED_MASK != avail


# ---------------------------------------------------------------- recovery
_ENTRY = np.dtype([("inflight", "u1"), ("pad", "u1"), ("next", "<u2"), ("last", "<u2"), ("num", "<u2"),
                   ("counter", "<u8"), ("id", "<u2"), ("flags", "<u2"), ("len", "<u4"), ("addr", "<u8")])
_COMMIT = np.dtype([("rx_vring", "u1"), ("pad", "u1"), ("rx_pos", "<u2")])


class Recovered:
    """What ``recover`` found: the chains to resubmit (head entries in
    counter order, ``| RESUB_DELIVERED`` for those only to return), the
    ring descriptors to write back from the used position on (rows of
    addr, len, id, flags), the position to start from, how many flags it
    cleared, the next counter."""

    def __init__(self, pos: int) -> None:
        self.heads: list[int] = []
        self.descs = np.zeros((0, 4), np.uint64)
        self.pos = pos
        self.repaired = 0
        self.next_counter = 0


def _hdr(area: np.ndarray, base: int, off: int, size: int = 2) -> int:
    return int.from_bytes(area[base + off: base + off + size].tobytes(), "little")


def _set_hdr(area: np.ndarray, base: int, off: int, value: int, size: int = 2) -> None:
    area[base + off: base + off + size] = np.frombuffer(value.to_bytes(size, "little"), np.uint8)


def _init(area: np.ndarray, base: int, num: int, pos: int, features: int) -> None:
    area[base: base + P_HEADER + (P_DESC_SIZE + C_SIZE) * num] = 0
    _set_hdr(area, base, P_FEATURES, features, 8)
    _set_hdr(area, base, P_VERSION, VERSION_1)
    _set_hdr(area, base, P_DESC_NUM, num)
    for off, size, value in ((P_USED_IDX, 2, pos & 0x7FFF), (P_OLD_USED_IDX, 2, pos & 0x7FFF),
                             (P_USED_WRAP, 1, pos >> WRAP_BIT & 1), (P_OLD_USED_WRAP, 1, pos >> WRAP_BIT & 1)):
        _set_hdr(area, base, off, value, size)
    d = area[base + P_HEADER: base + P_HEADER + P_DESC_SIZE * num].view(_ENTRY)
    d["next"] = np.arange(1, num + 1)  # one free list through every entry, ended by desc_num


def recover(area: np.ndarray, base: int, num: int, pos: int, features: int, transmit: bool,
            ring_flags: Callable[[int], int | None],
            published: Callable[[int, int], bool | None] = lambda v, p: None) -> Recovered:
    """Bring packed vring area ``base`` in line with the ring before it
    starts (spec "When reconnecting", then the resubmission list).

    ``pos`` is the front-end's base (idx | wrap << 15), used for a fresh
    area.  A receive ring's chains in flight are written back too, but
    not resubmitted: the area starts afresh and the kernel takes them again
    as any chain (their buffers are only written); ``ring_flags(idx)`` reads a ring slot's flags (None: not
    mapped), ``published(rx_vring, rx_pos)`` whether a receive ring showed
    a position published when it started (None: unknown, sent again).  A
    fresh area, one of another size or one whose lists do not add up is
    (re)initialised: nothing in it can be trusted to name a chain.
    Raises nothing; the caller logs what it returns."""
    out = Recovered(pos)
    if _hdr(area, base, P_VERSION) != VERSION_1 or _hdr(area, base, P_DESC_NUM) != num:
        _init(area, base, num, pos, features)
        return out
    used = (_hdr(area, base, P_USED_IDX), _hdr(area, base, P_USED_WRAP, 1))
    old = (_hdr(area, base, P_OLD_USED_IDX), _hdr(area, base, P_OLD_USED_WRAP, 1))
    if used != old and used[0] < num and old[0] < num:
        # a batch was being returned: published if the old used position no
        # longer reads "available" for its wrap (the ring is the record)
        flags = ring_flags(old[0])
        if flags is not None and is_published(flags, old[0] | old[1] << WRAP_BIT):
            for now, then, size in ((P_FREE_HEAD, P_OLD_FREE_HEAD, 2), (P_USED_IDX, P_OLD_USED_IDX, 2),
                                    (P_USED_WRAP, P_OLD_USED_WRAP, 1)):
                _set_hdr(area, base, then, _hdr(area, base, now, size), size)
    for now, then, size in ((P_FREE_HEAD, P_OLD_FREE_HEAD, 2), (P_USED_IDX, P_OLD_USED_IDX, 2),
                            (P_USED_WRAP, P_OLD_USED_WRAP, 1)):  # roll back what is in progress
        _set_hdr(area, base, now, _hdr(area, base, then, size), size)
    d = area[base + P_HEADER: base + P_HEADER + P_DESC_SIZE * num].view(_ENTRY)
    cr = area[base + P_HEADER + P_DESC_SIZE * num: base + P_HEADER + (P_DESC_SIZE + C_SIZE) * num].view(_COMMIT)
    free = np.zeros(num, bool)
    h = _hdr(area, base, P_FREE_HEAD)
    while h < num and not free[h]:
        free[h] = True
        h = int(d["next"][h])
    out.repaired = int(np.count_nonzero(d["inflight"][free]))
    d["inflight"][free] = 0
    heads = np.flatnonzero(d["inflight"] != 0)
    heads = heads[np.argsort(d["counter"][heads], kind="stable")]
    rows: list[int] = []
    for h in heads:
        chain = [int(h)]
        while len(chain) < int(d["num"][h]) and chain[-1] < num:
            chain.append(int(d["next"][chain[-1]]))
        if not d["num"][h] or chain[-1] != d["last"][h] or max(chain) >= num or free[chain].any():
            _init(area, base, num, pos, features)  # not a list this port wrote
            return Recovered(pos)
        rows += chain
        if not transmit:
            continue  # receive chains are only written: taken afresh below, and filled again
        entry = int(h)
        if d["inflight"][h] == IF_DELIVERED:
            if published(int(cr["rx_vring"][h]), int(cr["rx_pos"][h])):
                entry |= RESUB_DELIVERED
            else:
                d["inflight"][h] = IF_TAKEN  # not published: the packet goes again
        out.heads.append(entry)
    if len(rows) > num:
        _init(area, base, num, pos, features)
        return Recovered(pos)
    out.descs = np.stack([d["addr"][rows], d["len"][rows].astype(np.uint64), d["id"][rows].astype(np.uint64),
                          d["flags"][rows].astype(np.uint64)], axis=1) if rows else out.descs
    out.pos = _hdr(area, base, P_USED_IDX) | _hdr(area, base, P_USED_WRAP, 1) << WRAP_BIT
    out.next_counter = int(d["counter"].max()) + 1 if num else 0
    if not transmit:
        _init(area, base, num, out.pos, features)
    return out

