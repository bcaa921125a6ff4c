"""Descriptor chains -> buffer vectors, device side (virtio 1.2, 2.7.5).

Walk once, copy after: ``fill_vec`` follows one chain (in the ring's own
descriptor table or an indirect one, ``resolve``), holds every check the
peer can fail -- index in range, no loop, the direction each descriptor
must have, no nested indirect, every buffer translated through the window
(an IOTLB miss parks, see ``iotlb.py``) -- and leaves rows ``[window offset,
length, guest address]`` in a small vector.  The copy loops in ``vq.py`` then
run over the vector and never look at a descriptor.

Results: a row count >= 0, or ``CHAIN_BAD`` (returned with len 0 and counted
by the caller), ``CHAIN_MISS`` (parked: nothing consumed) or
``CHAIN_TOO_BIG`` (more buffers than the vector holds).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..virtio.features import MAX_VRING_SIZE
from ..virtio.split import (
    DESC_SIZE, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, desc_addr, desc_flags, desc_len, desc_next,
)
from .iotlb import BUF_MISS, buffer_offset

VEC_MAX = 256  # buffers one chain may have (DPDK's vhost allows as many)
VEC_OFF, VEC_LEN, VEC_ADDR = range(3)

CHAIN_BAD, CHAIN_MISS, CHAIN_TOO_BIG = -1, BUF_MISS, -3


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def add_buffer(st, v, vec, cnt, addr, ln, write):
    """Translate one descriptor's buffer into row ``cnt`` of ``vec``; the
    new row count, or a ``CHAIN_*`` code (a miss parks, see ``iotlb.py``)."""
    if cnt == VEC_MAX:
        return np.int64(CHAIN_TOO_BIG)
    off = buffer_offset(st, v, addr, ln, write)
    if off < 0:
        return off
    vec[cnt, VEC_OFF] = off
    vec[cnt, VEC_LEN] = ln
    vec[cnt, VEC_ADDR] = np.int64(addr)
    return cnt + 1


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def take_buffer(st, v, vec, cnt, flags, addr, ln, write, left):
    """One descriptor (its ``flags``, ``addr``, ``len`` read by the caller:
    the split and packed layouts differ, their flag bits do not) into row
    ``cnt`` of ``vec``: it must have the direction ``write`` asks and not be
    INDIRECT; a device-writable one is cut to the ``left`` bytes still
    needed.  Returns ``(rows or CHAIN_*, bytes left)``."""
    if flags & VRING_DESC_F_INDIRECT or (flags & VRING_DESC_F_WRITE != 0) != write:
        return np.int64(CHAIN_BAD), left
    if write:
        ln = min(ln, left)
    if ln > 0:
        cnt = add_buffer(st, v, vec, cnt, addr, ln, write)
        if cnt >= 0:
            left -= ln
    return cnt, left


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def resolve(st, v, desc, num, head):
    """The descriptor table a chain lives in: ``(table_offset, size, first)``,
    the ring's own table or an indirect one (2.7.5.3); ``(CHAIN_*, 0, 0)`` if bad."""
    m = st.mem
    if head >= num:
        return np.int64(CHAIN_BAD), np.int64(0), np.int64(0)
    flags = desc_flags(m, desc, head)
    if not flags & VRING_DESC_F_INDIRECT:
        return desc, num, head
    ln = desc_len(m, desc, head)
    if flags & VRING_DESC_F_NEXT or ln == 0 or ln % DESC_SIZE or ln > DESC_SIZE * MAX_VRING_SIZE:
        return np.int64(CHAIN_BAD), np.int64(0), np.int64(0)
    off = buffer_offset(st, v, desc_addr(m, desc, head), ln, False)
    if off < 0 or off % DESC_SIZE:
        return np.int64(CHAIN_BAD if off >= 0 else off), np.int64(0), np.int64(0)
    return off, ln // DESC_SIZE, np.int64(0)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def fill_vec(st, v, tbl, n, first, write, budget, vec):
    """Walk the chain at ``first`` of table ``tbl`` (``n`` descriptors) into
    ``vec``, every descriptor device-writable if ``write`` else readable,
    until ``budget`` bytes are covered or the chain ends.  A device-writable
    chain is walked (and translated) only as far as the packet needs, its
    last row cut short; a readable buffer is checked whole, so one longer
    than VM1's memory is bad, not merely too big.  Returns the row count or
    a ``CHAIN_*`` code."""
    m = st.mem
    i = first
    cnt = np.int64(0)
    left = np.int64(budget)
    for _hop in range(n):  # a chain visits each descriptor once at most
        if i >= n:
            return CHAIN_BAD
        flags = desc_flags(m, tbl, i)
        cnt, left = take_buffer(st, v, vec, cnt, flags, desc_addr(m, tbl, i), desc_len(m, tbl, i), write, left)
        if cnt < 0:
            return cnt
        if not flags & VRING_DESC_F_NEXT or left <= 0:
            return cnt
        i = desc_next(m, tbl, i)
    return CHAIN_BAD  # longer than its table: a loop
