"""The split virtqueue as it lies in guest memory (virtio 1.2, 2.7).

One place for the layout: kernels on both sides read and write rings through
``Mem``, four typed views of the same byte area (a window), indexed with
byte offsets shifted by the element size.  Ring bases are aligned as the
spec requires (descriptor table 16, available ring 2, used ring 4), so the
shifted indices are exact; the control code checks the alignment before a
ring is used.

- descriptor i at ``desc + 16*i``: addr u64 @0, len u32 @8, flags u16 @12, next u16 @14
- available ring: flags u16 @0, idx u16 @2, ring[num] u16 @4, used_event u16 @4+2*num
- used ring: flags u16 @0, idx u16 @2, ring[num] {id u32, len u32} @4, avail_event u16 @4+8*num
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

# Descriptor flags (2.7.5)
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
# Ring flags: the device asks for no kicks; the driver asks for no calls.
VRING_USED_F_NO_NOTIFY = 1
VRING_AVAIL_F_NO_INTERRUPT = 1

DESC_SIZE = 16
DESC_ALIGN, AVAIL_ALIGN, USED_ALIGN = 16, 2, 4

# Feature bits (virtio 1.2, 5.1.3 and 6)
VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_F_CTRL_VQ = 17
VIRTIO_NET_F_MQ = 22
VIRTIO_F_ANY_LAYOUT = 27
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32
VIRTIO_F_IOMMU_PLATFORM = 33

# struct virtio_net_hdr: 10 bytes, 12 with num_buffers (VERSION_1 or MRG_RXBUF)
NET_HDR_LEN_LEGACY = 10
NET_HDR_LEN = 12
NET_HDR_NUM_BUFFERS = 10  # offset of the u16 num_buffers


def net_hdr_len(features: int) -> int:
    """Length of the virtio-net header the negotiated ``features`` imply."""
    if features & ((1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF)):
        return NET_HDR_LEN
    return NET_HDR_LEN_LEGACY


def ring_sizes(num: int) -> tuple[int, int, int]:
    """Bytes of the descriptor table, available ring and used ring for ``num`` entries
    (event-idx fields included)."""
    return DESC_SIZE * num, 6 + 2 * num, 6 + 8 * num


class Mem(NamedTuple):
    """Typed views of one byte area; offsets are byte offsets into ``u8``."""

    u8: np.ndarray
    u16: np.ndarray
    u32: np.ndarray
    u64: np.ndarray


def mem_views(area: np.ndarray) -> Mem:
    """Four views of ``area`` (uint8, length a multiple of 8)."""
    return Mem(area, area.view(np.uint16), area.view(np.uint32), area.view(np.uint64))


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
    return np.int64(m.u16[(avail + 4 + 2 * slot) >> 1])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def set_avail_entry(m, avail, slot, head):
    m.u16[(avail + 4 + 2 * slot) >> 1] = np.uint16(head)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def used_entry_id(m, used, slot):
    return np.int64(m.u32[(used + 4 + 8 * slot) >> 2])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def used_entry_len(m, used, slot):
    return np.int64(m.u32[(used + 8 + 8 * slot) >> 2])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def set_used_entry(m, used, slot, head, length):
    m.u32[(used + 4 + 8 * slot) >> 2] = np.uint32(head)
    m.u32[(used + 8 + 8 * slot) >> 2] = np.uint32(length)
