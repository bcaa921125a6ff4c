"""Packed-ring chains -> buffer vectors, device side (virtio 1.2, 2.8.6, 2.8.19).

The packed ring's counterpart of ``chain.py``: ``fill_vec_packed`` walks the
chain whose head sits at a ring slot -- descriptors in consecutive slots
while NEXT is set, wrapping at ``num``, or one INDIRECT descriptor whose
table is walked in order -- with the same checks the peer can fail
(direction of every descriptor, no nested indirect, INDIRECT never with
NEXT, a table of whole descriptors, a chain no longer than the ring, every
buffer translated through the window: an IOTLB miss parks) and leaves rows
``[window offset, length, guest address]`` in the same vector.

Unlike the split ring, the device must know how many ring slots a chain
covers (the used element is written at the head and the ring moves on by
that count), so a device-writable chain is walked to its end even when the
packet needs only its first buffers (the rest are not translated).

Returns ``(rows or CHAIN_*, buffer id, slots)``; ``slots`` >= 1 is what the
chain covers (for a bad chain: what was walked, so the ring moves past it).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..virtio.features import MAX_VRING_SIZE
from ..virtio.packed import (
    DESC_SIZE, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, desc_addr, desc_flags, desc_id, desc_len,
)
from .chain import CHAIN_BAD, CHAIN_TOO_BIG, take_buffer
from .iotlb import buffer_offset


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _indirect(st, v, addr, ln, write, budget, vec):
    """Walk an indirect table (2.8.19): ``ln // 16`` descriptors in order;
    only WRITE means anything in them (NEXT and the id are ignored, a nested
    INDIRECT is bad)."""
    if ln == 0 or ln % DESC_SIZE or ln > DESC_SIZE * MAX_VRING_SIZE:
        return np.int64(CHAIN_BAD)
    tbl = buffer_offset(st, v, addr, ln, False)
    if tbl < 0 or tbl % DESC_SIZE:
        return np.int64(CHAIN_BAD if tbl >= 0 else tbl)
    m = st.mem
    cnt = np.int64(0)
    left = np.int64(budget)
    for i in range(ln // DESC_SIZE):
        cnt, left = take_buffer(st, v, vec, cnt, desc_flags(m, tbl, i), desc_addr(m, tbl, i), desc_len(m, tbl, i),
                                write, left)
        if cnt < 0 or left <= 0:
            break
    return cnt


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def fill_vec_packed(st, v, desc, num, idx, head_flags, write, budget, vec):
    """Walk the chain whose head is ring slot ``idx`` (its flags already
    read, with acquire, as ``head_flags``) into ``vec``: every descriptor
    device-writable if ``write`` else readable, until ``budget`` bytes are
    covered.  Returns ``(rows or CHAIN_*, buffer id, slots)``."""
    m = st.mem
    if head_flags & VRING_DESC_F_INDIRECT:
        res = np.int64(CHAIN_BAD)
        if not head_flags & VRING_DESC_F_NEXT:
            res = _indirect(st, v, desc_addr(m, desc, idx), desc_len(m, desc, idx), write, budget, vec)
        return res, desc_id(m, desc, idx), np.int64(1)
    i = idx
    flags = head_flags
    cnt = np.int64(0)
    res = np.int64(0)
    left = np.int64(budget)
    for slots in range(1, num + 1):  # a chain covers each slot once at most
        if res >= 0:
            res, left = take_buffer(st, v, vec, cnt, flags, desc_addr(m, desc, i), desc_len(m, desc, i), write, left)
            if res >= 0:
                cnt = res
                if left <= 0 and not write:
                    res = np.int64(CHAIN_TOO_BIG)  # a transmit chain longer than an mbuf
        if not flags & VRING_DESC_F_NEXT:
            if res >= 0:
                res = cnt
            return res, desc_id(m, desc, i), np.int64(slots)
        if res < 0 and res != CHAIN_BAD and res != CHAIN_TOO_BIG:
            return res, np.int64(0), np.int64(slots)  # a miss: parked, nothing consumed
        i += 1
        if i == num:
            i = 0
        flags = desc_flags(m, desc, i)
    return np.int64(CHAIN_BAD), desc_id(m, desc, i), np.int64(num)  # NEXT all around the ring
