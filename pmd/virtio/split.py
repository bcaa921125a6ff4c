"""The split virtqueue as it lies in guest memory (virtio 1.2, 2.7).

One place for the layout: kernels on both sides read and write rings through
these accessors over ``pmd.guestmem.views.Mem`` (typed views of a window),
indexed with byte offsets shifted by the element size.  Ring bases are aligned as the
spec requires (descriptor table 16, available ring 2, used ring 4), so the
shifted indices are exact; the control code checks the alignment before a
ring is used.

- descriptor i at ``desc + 16*i``: addr u64 @0, len u32 @8, flags u16 @12, next u16 @14
- available ring: flags u16 @0, idx u16 @2, ring[num] u16 @4, used_event u16 @4+2*num
- used ring: flags u16 @0, idx u16 @2, ring[num] {id u32, len u32} @4, avail_event u16 @4+8*num
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..atomics import load_acquire, store_release

# Descriptor flags (2.7.5)
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
# Ring flags: the device asks for no kicks; the driver asks for no calls.
VRING_USED_F_NO_NOTIFY = 1
VRING_AVAIL_F_NO_INTERRUPT = 1

DESC_SIZE = 16
DESC_ALIGN, AVAIL_ALIGN, USED_ALIGN = 16, 2, 4

DESC_SIZE = 16
DESC_ALIGN, AVAIL_ALIGN, USED_ALIGN = 16, 2, 4
USED_ELEM_SIZE = 8

# Byte offsets of the fields inside each ring part (used by kernels and by
# the dirty log, which needs the guest address of every field written).
AVAIL_FLAGS, AVAIL_IDX, AVAIL_RING = 0, 2, 4
USED_FLAGS, USED_IDX, USED_RING = 0, 2, 4


@njit(nogil=True, cache=True, _nrt=False)
def ring_sizes(num):
    """Bytes of the descriptor table, available ring and used ring for ``num`` entries
    (event-idx fields included)."""
    return DESC_SIZE * num, 6 + 2 * num, 6 + USED_ELEM_SIZE * num


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def used_event_at(num):
    """Offset of used_event in the available ring (after ring[num])."""
    return AVAIL_RING + 2 * num


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def avail_event_at(num):
    """Offset of avail_event in the used ring (after ring[num])."""
    return USED_RING + USED_ELEM_SIZE * num


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def used_elem_at(slot):
    """Offset of used ring element ``slot`` in the used ring."""
    return USED_RING + USED_ELEM_SIZE * slot


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def vring_need_event(event, new, old):
    """virtio 1.2, 2.7.10: with EVENT_IDX, notify when moving an index from
    ``old`` to ``new`` crossed ``event`` (all u16, wrapping)."""
    return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)


# ---- indices, flags and event fields: acquire loads / release stores ------
@njit(nogil=True, cache=True, inline="always", _nrt=False)
def avail_idx(m, avail):
    return np.int64(load_acquire(m.u16, (avail + AVAIL_IDX) >> 1))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def set_avail_idx(m, avail, idx):
    store_release(m.u16, (avail + AVAIL_IDX) >> 1, np.uint16(idx & 0xFFFF))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def avail_flags(m, avail):
    return np.int64(load_acquire(m.u16, (avail + AVAIL_FLAGS) >> 1))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def set_avail_flags(m, avail, flags):
    store_release(m.u16, (avail + AVAIL_FLAGS) >> 1, np.uint16(flags))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def used_event(m, avail, num):
    return np.int64(load_acquire(m.u16, (avail + used_event_at(num)) >> 1))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def set_used_event(m, avail, num, idx):
    store_release(m.u16, (avail + used_event_at(num)) >> 1, np.uint16(idx & 0xFFFF))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def used_idx(m, used):
    return np.int64(load_acquire(m.u16, (used + USED_IDX) >> 1))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def set_used_idx(m, used, idx):
    store_release(m.u16, (used + USED_IDX) >> 1, np.uint16(idx & 0xFFFF))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def used_flags(m, used):
    return np.int64(load_acquire(m.u16, (used + USED_FLAGS) >> 1))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def set_used_flags(m, used, flags):
    store_release(m.u16, (used + USED_FLAGS) >> 1, np.uint16(flags))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def avail_event(m, used, num):
    return np.int64(load_acquire(m.u16, (used + avail_event_at(num)) >> 1))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def set_avail_event(m, used, num, idx):
    store_release(m.u16, (used + avail_event_at(num)) >> 1, np.uint16(idx & 0xFFFF))


# ---- descriptors and ring entries: plain accesses ------------------------
@njit(nogil=True, cache=True, inline="always", _nrt=False)
def desc_addr(m, desc, i):
    return m.u64[(desc + DESC_SIZE * i) >> 3]


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def desc_len(m, desc, i):
    return np.int64(m.u32[(desc + DESC_SIZE * i + 8) >> 2])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def desc_flags(m, desc, i):
    return np.int64(m.u16[(desc + DESC_SIZE * i + 12) >> 1])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def desc_next(m, desc, i):
    return np.int64(m.u16[(desc + DESC_SIZE * i + 14) >> 1])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def set_desc(m, desc, i, addr, length, flags, nxt):
    base = desc + DESC_SIZE * i
    m.u64[base >> 3] = np.uint64(addr)
    m.u32[(base + 8) >> 2] = np.uint32(length)
    m.u16[(base + 12) >> 1] = np.uint16(flags)
    m.u16[(base + 14) >> 1] = np.uint16(nxt)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def avail_entry(m, avail, slot):
    """Head index in available-ring slot ``slot`` (already masked)."""
    return np.int64(m.u16[(avail + AVAIL_RING + 2 * slot) >> 1])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def set_avail_entry(m, avail, slot, head):
    m.u16[(avail + AVAIL_RING + 2 * slot) >> 1] = np.uint16(head)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def used_entry_id(m, used, slot):
    return np.int64(m.u32[(used + used_elem_at(slot)) >> 2])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def used_entry_len(m, used, slot):
    return np.int64(m.u32[(used + used_elem_at(slot) + 4) >> 2])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def set_used_entry(m, used, slot, head, length):
    m.u32[(used + used_elem_at(slot)) >> 2] = np.uint32(head)
    m.u32[(used + used_elem_at(slot) + 4) >> 2] = np.uint32(length)
