"""Shared memory that can be passed to a peer as an fd (memfd + MAP_SHARED)."""
from __future__ import annotations

import mmap
import os


def create_shared(name: str, size: int) -> tuple[int, mmap.mmap]:
    """A ``size``-byte memfd and a read-write shared mapping of it.

    The caller owns both (close the mapping, then the fd); on failure
    nothing is left open.
    """
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        return fd, mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise
