"""One SET_MEM_TABLE memory region (vhost-user.rst "Memory region description")."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Region:
    """One SET_MEM_TABLE region (vhost-user.rst "Memory region description")."""

    gpa: int
    size: int
    uaddr: int
    mmap_offset: int
    fd: int = -1  # our dup, kept only in IOMMU mode

    def gpa_at(self, file_offset: int) -> int:
        """The guest-physical address at ``file_offset`` in this region's fd."""
        return self.gpa + (file_offset - self.mmap_offset)

