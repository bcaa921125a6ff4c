"""Virtual memory primitives for guest memory: reserve an area, map an fd
into it at a fixed address, revoke a range back to ``PROT_NONE``.

Thin ctypes wrappers over mmap(2)/munmap(2) (Python's ``mmap`` module cannot
map at a fixed address), raising ``OSError`` with what was being mapped.
"""
from __future__ import annotations

import ctypes
import os
import stat

from ..units import PAGE_SIZE


PROT_NONE = 0
PROT_READ = 1
PROT_WRITE = 2
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
_MAP_FAILED = ctypes.c_void_p(-1).value
RESERVE_FLAGS = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
U64_LIMIT = 1 << 64
U64_MASK = U64_LIMIT - 1

_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                  ctypes.c_int, ctypes.c_int64]
_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def sys_mmap(addr: int | None, length: int, prot: int, flags: int, fd: int, offset: int, what: str) -> int:
    """mmap(2); returns the address, raises OSError naming ``what``."""
    res = _mmap(addr, length, prot, flags, fd, offset)
    if res is None or res == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap {what} (addr=0x{addr or 0:x} len=0x{length:x} "
                           f"fd={fd} offset=0x{offset:x}): {os.strerror(err)}")
    if flags & MAP_FIXED and res != addr:  # cannot happen on Linux
        raise OSError(f"mmap {what}: MAP_FIXED returned 0x{res:x}, not 0x{addr:x}")
    return res



def aligned(x: int) -> bool:
    """True if ``x`` is a multiple of the page size."""
    return x % PAGE_SIZE == 0


def file_size(fd: int) -> int:
    """The size of the regular file (memfd, tmpfs, hugetlbfs) behind ``fd``,
    -1 for anything without one (a device node); OSError if ``fd`` is not open."""
    st = os.fstat(fd)
    return st.st_size if stat.S_ISREG(st.st_mode) else -1


def reserve(size: int) -> int:
    """Reserve ``size`` bytes of address space: no memory, no swap, every access faults."""
    return sys_mmap(None, size, PROT_NONE, RESERVE_FLAGS, -1, 0, "window reservation")


def map_fd(addr: int, length: int, fd: int, file_offset: int, prot: int, what: str) -> None:
    """Map ``length`` bytes of ``fd`` shared at exactly ``addr``."""
    sys_mmap(addr, length, prot, MAP_SHARED | MAP_FIXED, fd, file_offset, what)


def revoke(addr: int, length: int) -> None:
    """``PROT_NONE`` anonymous memory over ``[addr, addr+length)``: drops a
    file mapping, keeps the reservation."""
    if length > 0:
        sys_mmap(addr, length, PROT_NONE, RESERVE_FLAGS | MAP_FIXED, -1, 0, "revoke")


def release(addr: int, size: int) -> None:
    """Give a reservation back (munmap)."""
    if _munmap(addr, size) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"munmap 0x{addr:x}+0x{size:x}: {os.strerror(err)}")
