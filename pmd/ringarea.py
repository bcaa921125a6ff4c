"""One address range holding every queue's kernel-shared ring, so kernels
see all queues as one 2-D array: a PROT_NONE reservation into which each
queue's mapping (an AF_PACKET ring, an AF_XDP ring) is placed MAP_FIXED."""
from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np

PAGE_SIZE = mmap.PAGESIZE

_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_FIXED = 0x10
_PROT_NONE = 0
_MAP_NORESERVE = 0x4000


def _sys_mmap(addr, length, prot, flags, fd, offset, what):
    res = _mmap(addr, length, prot, flags, fd, offset)
    if res == _MAP_FAILED or res is None:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap {what}: {os.strerror(err)}")
    return res


def page_round(n: int) -> int:
    return -(-n // PAGE_SIZE) * PAGE_SIZE


class RingArea:
    """``n`` equal slots of ``slot_bytes``: each queue's ring is mapped into
    its slot (MAP_SHARED|MAP_FIXED).  ``array`` is the (n, slot_bytes) uint8
    view kernels take.  ``close`` unmaps everything: no kernel may run on
    the views afterwards."""

    def __init__(self, n: int, slot_bytes: int) -> None:
        assert slot_bytes % PAGE_SIZE == 0
        self.n, self.slot_bytes = n, slot_bytes
        self.size = n * slot_bytes
        self.base = _sys_mmap(None, self.size, _PROT_NONE,
                              mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0, "ring reservation")
        buf = (ctypes.c_uint8 * self.size).from_address(self.base)
        self.array = np.frombuffer(buf, np.uint8).reshape(n, slot_bytes)

    def map(self, q: int, fd: int, offset: int = 0, length: int | None = None) -> None:
        """Map ``length`` bytes (the slot by default) of ``fd`` at ``offset`` into slot ``q``."""
        _sys_mmap(self.base + q * self.slot_bytes, length or self.slot_bytes, mmap.PROT_READ | mmap.PROT_WRITE,
                  mmap.MAP_SHARED | _MAP_FIXED, fd, offset, f"ring of queue {q}")

    def close(self) -> None:
        if self.base:
            _munmap(self.base, self.size)
            self.base = 0
