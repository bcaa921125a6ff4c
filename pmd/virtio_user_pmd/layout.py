"""Where the virtio-user port puts its rings and buffers in guest memory.

The ``mem=`` devarg gives the GPA layout (``SIZE@GPA`` items separated by
``/``, e.g. ``32M@0/32M@0x100000000``: two regions with a hole between).
Rings go low, packet buffers high, so a default port exercises both sides
of the hole; every ring part and buffer area is page-aligned so the
emulated IOMMU can grant each with its own permission.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..units import SIZE_PATTERN, size_bytes
from ..virtio.packed import ring_sizes as packed_ring_sizes
from ..virtio.split import ring_sizes
from .guest_memory import PAGE_SIZE

DEFAULT_MEM = "32M@0/32M@0x100000000"


def parse_mem(text: str) -> list[tuple[int, int]]:
    """``SIZE@GPA[/SIZE@GPA...]`` -> [(gpa, size), ...]; ValueError names the bad item."""
    out = []
    for item in text.split("/"):
        m = re.fullmatch(rf"\s*{SIZE_PATTERN}@(0x[0-9a-fA-F]+|\d+)\s*", item)
        if not m:
            raise ValueError(f"memory region {item!r}: expected SIZE@GPA, e.g. 32M@0x100000000")
        size = size_bytes(m.group(1), m.group(2))
        gpa = int(m.group(3), 0)
        if size <= 0 or size % PAGE_SIZE or gpa % PAGE_SIZE:
            raise ValueError(f"memory region {item!r}: size and gpa must be page multiples")
        out.append((gpa, size))
    return out


def _page_up(n: int) -> int:
    return -(-n // PAGE_SIZE) * PAGE_SIZE


@dataclass
class RingPlace:
    """GPAs of one vring's parts and its buffers.  Split: desc table, avail
    ring, used ring; packed: ``desc`` the descriptor ring, ``avail`` the
    driver area, ``used`` the device area.  ``[start, ro_end)`` is what the
    device only reads, ``[rw_start, used_end)`` what it writes."""

    desc: int
    avail: int
    used: int
    ro_end: int
    used_end: int
    buf: int
    stride: int
    num: int
    start: int = -1  # first byte of the ring's pages (-1: desc)
    rw_start: int = -1  # (-1: used)

    def __post_init__(self) -> None:
        if self.start < 0:
            self.start = self.desc
        if self.rw_start < 0:
            self.rw_start = self.used

    @property
    def buf_end(self) -> int:
        return self.buf + self.stride * self.num


class Placer:
    """Bump allocator over the regions: ``low`` from the first, ``high`` from the last."""

    def __init__(self, layout: list[tuple[int, int]]) -> None:
        self.free = [[gpa, gpa + size] for gpa, size in sorted(layout)]

    def take(self, size: int, high: bool) -> int:
        size = _page_up(size)
        for r in (reversed(self.free) if high else self.free):
            if r[1] - r[0] >= size:
                if high:
                    r[1] -= size
                    return r[1]
                r[0] += size
                return r[0] - size
        raise ValueError(f"guest memory too small: no room for {size:#x} more bytes (enlarge mem=)")

    def ring(self, num: int, stride: int, packed: bool = False) -> RingPlace:
        if packed:  # the driver area (read-only to the device) first, then what the device writes
            desc_size, drv_size, dev_size = packed_ring_sizes(num)
            drv = self.take(PAGE_SIZE + _page_up(desc_size) + _page_up(dev_size), high=False)
            desc = drv + PAGE_SIZE
            dev = desc + _page_up(desc_size)
            buf = self.take(stride * num, high=True)
            return RingPlace(desc, drv, dev, drv + PAGE_SIZE, dev + _page_up(dev_size), buf, stride, num,
                             start=drv, rw_start=desc)
        desc_size, avail_size, used_size = ring_sizes(num)
        desc = self.take(_page_up(desc_size) + _page_up(avail_size) + _page_up(used_size), high=False)
        avail = desc + _page_up(desc_size)
        used = avail + _page_up(avail_size)
        buf = self.take(stride * num, high=True)
        return RingPlace(desc, avail, used, used, used + _page_up(used_size), buf, stride, num)
