"""VM1's "RAM": memfd regions placed at guest-physical addresses.

Each region is a memfd (``os.memfd_create`` + ``ftruncate``) mapped shared
here; ``userspace_addr`` is that local mapping's address, the way QEMU sends
its own virtual address (HVA) in SET_MEM_TABLE.  Holes between regions are
allowed (like QEMU's PCI hole below 4 GiB).  A back-end that maps the same
fds sees every byte written here, and we see what it writes.
"""
from __future__ import annotations

import ctypes
import mmap
from dataclasses import dataclass

import numpy as np

from ..shm import create_shared, release_shared
from ..vhost_user.messages import MemoryRegion
from ..units import PAGE_SIZE

__all__ = ["GuestMemory", "GuestRegion", "MAX_REGIONS", "PAGE_SIZE"]

# Regions of one guest: SET_MEM_TABLE carries 8, CONFIGURE_MEM_SLOTS (a region
# per ADD_MEM_REG) as many as the back-end's GET_MAX_MEM_SLOTS (QEMU: 509).
MAX_REGIONS = 509




@dataclass
class GuestRegion:
    """One memfd of guest RAM: ``[gpa, gpa + size)`` <-> ``mm[0:size]``."""

    gpa: int
    size: int
    fd: int
    mm: mmap.mmap
    userspace_addr: int  # address of ``mm`` in this process (QEMU's HVA)

    def contains(self, gpa: int, length: int) -> bool:
        return self.gpa <= gpa and gpa + length <= self.gpa + self.size


def _check_layout(layout: list[tuple[int, int]]) -> None:
    if not layout:
        raise ValueError("guest memory needs at least one region")
    if len(layout) > MAX_REGIONS:
        raise ValueError(f"{len(layout)} regions, at most {MAX_REGIONS}")
    for gpa, size in layout:
        if gpa < 0 or gpa % PAGE_SIZE:
            raise ValueError(f"region gpa={gpa:#x}: not a page-aligned ({PAGE_SIZE:#x}) address")
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"region gpa={gpa:#x} size={size:#x}: not a positive multiple of {PAGE_SIZE:#x}")
        if gpa + size > 1 << 64:
            raise ValueError(f"region gpa={gpa:#x} size={size:#x}: ends beyond 2^64")
    ordered = sorted(layout)
    for (a, an), (b, bn) in zip(ordered, ordered[1:]):
        if b < a + an:
            raise ValueError(f"region gpa={b:#x} size={bn:#x} overlaps region gpa={a:#x} size={an:#x}")


class GuestMemory:
    """Guest RAM from ``layout`` = [(gpa, size), ...] (page aligned, disjoint).

    ``close()`` (or leaving a ``with`` block) unmaps and closes every memfd;
    drop ``view()`` arrays first, else the mapping is left for the GC.
    """

    def __init__(self, layout: list[tuple[int, int]], *, name: str = "vm1-ram") -> None:
        layout = [(int(g), int(s)) for g, s in layout]
        _check_layout(layout)
        self.regions: list[GuestRegion] = []
        self.closed = False
        try:
            for gpa, size in sorted(layout):
                self.regions.append(self._make_region(name, gpa, size))
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _make_region(name: str, gpa: int, size: int) -> GuestRegion:
        fd, mm = create_shared(f"{name}@{gpa:#x}", size)
        anchor = ctypes.c_char.from_buffer(mm)
        uaddr = ctypes.addressof(anchor)
        del anchor  # release the buffer export so mm.close() works later
        return GuestRegion(gpa, size, fd, mm, uaddr)

    def add_region(self, gpa: int, size: int, *, name: str = "vm1-ram") -> GuestRegion:
        """Hot-add ``[gpa, gpa + size)`` (a new memfd, zeroed); ValueError if
        it overlaps a region or is misaligned."""
        self._live()
        _check_layout([(r.gpa, r.size) for r in self.regions] + [(gpa, size)])
        region = self._make_region(name, gpa, size)
        self.regions.append(region)
        self.regions.sort(key=lambda r: r.gpa)
        return region

    def remove_region(self, gpa: int) -> None:
        """Unmap and close the region starting at ``gpa`` (hot-remove)."""
        self._live()
        for r in self.regions:
            if r.gpa == gpa:
                self.regions.remove(r)
                release_shared(r.mm, r.fd, f"guest memory gpa={r.gpa:#x}")
                r.fd = -1
                return
        raise ValueError(f"no region starts at gpa {gpa:#x}")

    # ------------------------------------------------------------ lookups
    def _live(self) -> None:
        if self.closed:
            raise ValueError("guest memory is closed")

    def gpa_to_local(self, gpa: int, length: int = 1) -> tuple[GuestRegion, int]:
        """The region holding ``[gpa, gpa + length)`` and the offset in it;
        ValueError if the range is in a hole or crosses a region's end."""
        self._live()
        if length < 0:
            raise ValueError(f"negative length {length}")
        for r in self.regions:
            if r.contains(gpa, max(length, 1)):
                return r, gpa - r.gpa
        raise ValueError(f"gpa range [{gpa:#x}, {gpa + length:#x}) is not inside one region "
                         f"(regions: {', '.join(f'[{r.gpa:#x}, {r.gpa + r.size:#x})' for r in self.regions)})")

    def gpa_to_uaddr(self, gpa: int, length: int = 1) -> int:
        """The local address of ``gpa`` (what vring addresses carry without an IOMMU)."""
        r, off = self.gpa_to_local(gpa, length)
        return r.userspace_addr + off

    def view(self, gpa: int, length: int) -> np.ndarray:
        """A writable uint8 array over ``[gpa, gpa + length)`` (shares memory)."""
        r, off = self.gpa_to_local(gpa, length)
        return np.frombuffer(r.mm, dtype=np.uint8, count=length, offset=off)

    def write(self, gpa: int, data: bytes) -> None:
        r, off = self.gpa_to_local(gpa, len(data))
        r.mm[off:off + len(data)] = data

    def read(self, gpa: int, length: int) -> bytes:
        r, off = self.gpa_to_local(gpa, length)
        return r.mm[off:off + length]

    def regions_for_mem_table(self) -> tuple[list[MemoryRegion], list[int]]:
        """SET_MEM_TABLE's regions and their fds (one per region, same order);
        the fds stay ours (the codec dups them into the peer)."""
        self._live()
        return ([MemoryRegion(r.gpa, r.size, r.userspace_addr, 0) for r in self.regions],
                [r.fd for r in self.regions])

    # ------------------------------------------------------------ teardown
    def close(self) -> None:
        """Unmap and close every region; idempotent."""
        self.closed = True
        regions, self.regions = self.regions, []
        for r in regions:
            release_shared(r.mm, r.fd, f"guest memory gpa={r.gpa:#x}")
            r.fd = -1

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
