"""Shared memory that can be passed to a peer as an fd (memfd + MAP_SHARED)."""
from __future__ import annotations

import logging
import mmap
import os

log = logging.getLogger(__name__)


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


def release_shared(mm: mmap.mmap | None, fd: int, what: str) -> None:
    """Unmap ``mm`` and close ``fd`` (either may be absent: None / -1).  A
    mapping still exported to a numpy view cannot be closed now: it is left
    to the garbage collector, with a warning naming ``what``."""
    if mm is not None:
        try:
            mm.close()
        except BufferError:
            log.warning("%s still in use; unmapped by the GC", what)
    if fd >= 0:
        os.close(fd)
