"""The packed virtqueue as it lies in guest memory (virtio 1.2, 2.8).

One ring of 16-byte descriptors, written by the driver (available) and
overwritten in place by the device (used), plus two 4-byte event
suppression structures.  A position on the ring is an index in
``[0, num)`` and a wrap counter (starting at 1, flipped at every wrap);
kernels keep both in one int as ``idx | wrap << 15``, the form
GET/SET_VRING_BASE carry for packed rings.

- descriptor i at ``desc + 16*i``: addr u64 @0, len u32 @8, id u16 @12, flags u16 @14
- event suppression (driver area: the driver's wishes for calls; device
  area: the device's wishes for kicks): off_wrap u16 @0, flags u16 @2

A descriptor is available when its AVAIL flag equals the driver's wrap
counter and its USED flag does not; the device marks it used by setting both
to its own wrap counter.  The driver writes a chain's head flags last, the
device a batch's first used flags last: one release store publishes each.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..atomics import load_acquire, store_release

# Descriptor flags (2.8.1, 2.8.6, 2.8.19)
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_PACKED_DESC_F_AVAIL = 1 << 7
VRING_PACKED_DESC_F_USED = 1 << 15
AVAIL_USED_MASK = VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED

# Event suppression flags (2.8.10)
RING_EVENT_FLAGS_ENABLE = 0
RING_EVENT_FLAGS_DISABLE = 1
RING_EVENT_FLAGS_DESC = 2  # only with VIRTIO_F_EVENT_IDX: off_wrap says where

DESC_SIZE = 16
DESC_ALIGN, EVENT_ALIGN = 16, 4
EVENT_SIZE = 4
EVENT_OFF_WRAP, EVENT_FLAGS = 0, 2
WRAP_BIT = 15
POS_MASK = (1 << WRAP_BIT) - 1

# Descriptor field offsets (the dirty log needs the address of what is written)
D_ADDR, D_LEN, D_ID, D_FLAGS = 0, 8, 12, 14


@njit(nogil=True, cache=True, _nrt=False)
def ring_sizes(num):
    """Bytes of the descriptor ring, the driver area and the device area."""
    return DESC_SIZE * num, EVENT_SIZE, EVENT_SIZE


# ---- positions: idx | wrap << 15 ----------------------------------------
@njit(nogil=True, cache=True, inline="always", _nrt=False)
def pos_idx(pos):
    return pos & POS_MASK


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def pos_wrap(pos):
    return (pos >> WRAP_BIT) & 1


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def pos_advance(pos, n, num):
    """The position ``n`` slots (0 <= n <= num) after ``pos``."""
    idx = (pos & POS_MASK) + n
    wrap = (pos >> WRAP_BIT) & 1
    if idx >= num:
        idx -= num
        wrap ^= 1
    return idx | wrap << WRAP_BIT


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def pos_distance(a, b, num):
    """Slots from position ``a`` forward to ``b`` (0 <= result < 2*num)."""
    d = (b & POS_MASK) - (a & POS_MASK)
    if ((a ^ b) >> WRAP_BIT) & 1:
        d += num
    elif d < 0:
        d += 2 * num
    return d


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def avail_flag_bits(wrap):
    """AVAIL/USED bits of a descriptor the driver makes available with wrap counter ``wrap``."""
    return VRING_PACKED_DESC_F_AVAIL if wrap else VRING_PACKED_DESC_F_USED


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def used_flag_bits(wrap):
    """AVAIL/USED bits of a descriptor the device marks used with wrap counter ``wrap``."""
    return AVAIL_USED_MASK if wrap else 0


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def is_avail(flags, wrap):
    """Descriptor ``flags`` read at a slot whose expected wrap counter is ``wrap``: available?"""
    return (flags & AVAIL_USED_MASK) == avail_flag_bits(wrap)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def is_used(flags, wrap):
    return (flags & AVAIL_USED_MASK) == used_flag_bits(wrap)


# ---- descriptors ----------------------------------------------------------
@njit(nogil=True, cache=True, inline="always", _nrt=False)
def desc_flags_acquire(m, desc, i):
    """A descriptor's flags as an acquire load: the rest of it is read after."""
    return np.int64(load_acquire(m.u16, (desc + DESC_SIZE * i + D_FLAGS) >> 1))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def desc_flags(m, desc, i):
    return np.int64(m.u16[(desc + DESC_SIZE * i + D_FLAGS) >> 1])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def desc_addr(m, desc, i):
    return m.u64[(desc + DESC_SIZE * i) >> 3]


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def desc_len(m, desc, i):
    return np.int64(m.u32[(desc + DESC_SIZE * i + D_LEN) >> 2])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def desc_id(m, desc, i):
    return np.int64(m.u16[(desc + DESC_SIZE * i + D_ID) >> 1])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def set_desc_body(m, desc, i, addr, length, buf_id):
    """Everything but the flags (the driver publishes them last)."""
    base = desc + DESC_SIZE * i
    m.u64[base >> 3] = np.uint64(addr)
    m.u32[(base + D_LEN) >> 2] = np.uint32(length)
    m.u16[(base + D_ID) >> 1] = np.uint16(buf_id)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def set_desc_flags(m, desc, i, flags):
    m.u16[(desc + DESC_SIZE * i + D_FLAGS) >> 1] = np.uint16(flags)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def publish_desc_flags(m, desc, i, flags):
    """Flags as a release store: what was written before is visible first."""
    store_release(m.u16, (desc + DESC_SIZE * i + D_FLAGS) >> 1, np.uint16(flags))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def used_word(buf_id, length, flags):
    """A used element's len, id and flags as the one little-endian 8-byte
    word they fill (bytes 8..15 of a descriptor)."""
    return (np.uint64(length & 0xFFFFFFFF) | np.uint64(buf_id & 0xFFFF) << np.uint64(32)
            | np.uint64(flags & 0xFFFF) << np.uint64(48))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def set_used_word(m, desc, i, word, publish):
    """Write a ``used_word`` in one store; ``publish``: a release store
    (everything written before is visible first), else a plain one."""
    k = (desc + DESC_SIZE * i + D_LEN) >> 3
    if publish:
        store_release(m.u64, k, word)
    else:
        m.u64[k] = word


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def set_used_desc(m, desc, i, buf_id, length):
    """A used element's id and len (its flags go separately)."""
    base = desc + DESC_SIZE * i
    m.u32[(base + D_LEN) >> 2] = np.uint32(length)
    m.u16[(base + D_ID) >> 1] = np.uint16(buf_id)


# ---- event suppression ----------------------------------------------------
@njit(nogil=True, cache=True, inline="always", _nrt=False)
def event_flags(m, area):
    return np.int64(load_acquire(m.u16, (area + EVENT_FLAGS) >> 1))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def set_event_flags(m, area, flags):
    store_release(m.u16, (area + EVENT_FLAGS) >> 1, np.uint16(flags))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def event_off_wrap(m, area):
    return np.int64(load_acquire(m.u16, (area + EVENT_OFF_WRAP) >> 1))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def set_event_off_wrap(m, area, pos):
    store_release(m.u16, (area + EVENT_OFF_WRAP) >> 1, np.uint16(pos & 0xFFFF))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def need_event(off_wrap, new, old, num):
    """With RING_EVENT_FLAGS_DESC: notify when moving a position from ``old``
    to ``new`` (both ``idx | wrap << 15``, at most ``num`` apart) passed the
    event position ``off_wrap`` (2.8.10, the split ring's vring_need_event
    unrolled over the wrap counter)."""
    n = new & POS_MASK
    o = old & POS_MASK
    if n <= o:
        o -= num
    off = off_wrap & POS_MASK
    if ((off_wrap >> WRAP_BIT) & 1) != ((new >> WRAP_BIT) & 1):
        off -= num
    return ((n - off - 1) & 0xFFFF) < ((n - o) & 0xFFFF)
