"""Packet buffers: one pool of fixed-size buffers in numpy arrays.

A burst is an int32 array of buffer indices.  Buffer ``i`` lives at
``data[i * buf_size + data_off[i] :][:data_len[i]]``.  The free list is a
stack guarded by a spinlock so lcores can allocate and free in bulk, once per
burst, with no Python involved.
"""
from __future__ import annotations

import mmap
import os
import tempfile
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from .atomics import compare_exchange, cpu_pause, store_release

HEADROOM = 128
DEFAULT_BUF_SIZE = 2048 + HEADROOM
# ctl slots, each on its own cache line
POOL_LOCK = 0
POOL_FREE = 8


class MbufPool(NamedTuple):
    """Kernel-visible pool state (all fields are shared numpy arrays)."""

    data: np.ndarray  # uint8[n * buf_size]
    data_off: np.ndarray  # uint16[n]: packet start within its buffer
    data_len: np.ndarray  # uint32[n]
    port: np.ndarray  # uint16[n]: input port
    ol_flags: np.ndarray  # uint64[n]: offload flags (virtio-net header metadata)
    free_stack: np.ndarray  # int32[n]: free buffer indices, [0:free) valid
    ctl: np.ndarray  # int64[16]: spinlock and free count
    buf_size: int

    @property
    def size(self) -> int:
        return len(self.data_len)

    def available(self) -> int:
        """Number of free buffers (a snapshot)."""
        return int(self.ctl[POOL_FREE])

    @property
    def data_room(self) -> int:
        return self.buf_size - HEADROOM


_HUGE = 2 << 20


@dataclass
class MemoryConfig:
    """Where pool memory comes from (the EAL's ``--no-huge``, ``--huge-dir``, ``-m``)."""

    no_huge: bool = False  # plain pages, no transparent huge pages
    huge_dir: str | None = None  # a hugetlbfs mount: the pool is a file there
    limit_mb: int | None = None  # an upper bound on a pool's size


_memory = MemoryConfig()


def configure_memory(no_huge: bool = False, huge_dir: str | None = None, limit_mb: int | None = None) -> None:
    """Set how later pools get their memory (process-wide, as DPDK's EAL)."""
    global _memory
    _memory = MemoryConfig(no_huge, huge_dir, limit_mb)


def _hugetlbfs_mounts() -> set[str]:
    try:
        with open("/proc/mounts") as f:
            return {line.split()[1] for line in f if line.split()[2:3] == ["hugetlbfs"]}
    except OSError:
        return set()


def _hugetlbfs_zeros(size: int, directory: str) -> np.ndarray:
    """Zeroed bytes in a hugetlbfs file under ``directory`` (unlinked at once:
    the mapping keeps the pages)."""
    if os.path.realpath(directory) not in {os.path.realpath(m) for m in _hugetlbfs_mounts()}:
        raise ValueError(f"--huge-dir {directory!r} is not a hugetlbfs mount")
    page = os.statvfs(directory).f_bsize
    length = -(-size // page) * page
    fd, path = tempfile.mkstemp(prefix="vhostpci_mbuf_", dir=directory)
    try:
        os.unlink(path)
        os.ftruncate(fd, length)
        mm = mmap.mmap(fd, length, mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
    except OSError as e:
        raise ValueError(f"--huge-dir {directory!r}: cannot map {length >> 20} MB of {page >> 10} kB hugepages"
                         f" ({e.strerror}; see HugePages_Free in /proc/meminfo)") from None
    finally:
        os.close(fd)
    return np.frombuffer(mm, np.uint8)[:size]


def _pool_bytes(size: int) -> np.ndarray:
    if _memory.limit_mb is not None and size > _memory.limit_mb << 20:
        raise ValueError(f"the mbuf pool needs {-(-size >> 20)} MB but -m allows {_memory.limit_mb} MB"
                         " (fewer mbufs: --total-num-mbufs)")
    if _memory.huge_dir is not None:
        return _hugetlbfs_zeros(size, _memory.huge_dir)
    return _mapped_zeros(size, huge=not _memory.no_huge)


def _mapped_zeros(size: int, huge: bool) -> np.ndarray:
    """Zeroed, page-aligned bytes of their own mapping (a port may register
    the pool with the kernel, as an AF_XDP UMEM: that takes whole pages);
    with ``huge``, backed by transparent huge pages where the kernel allows
    (THP "madvise" mode): one TLB entry per 2 MiB of packet buffers instead
    of per 4 KiB, which a burst touching 32 buffers notices."""
    if not huge or size < _HUGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.frombuffer(mmap.mmap(-1, size), np.uint8)
    mm = mmap.mmap(-1, size + _HUGE)  # anonymous, zero-filled; padded to align
    try:
        mm.madvise(mmap.MADV_HUGEPAGE)
    except OSError:
        pass  # THP off: plain pages, same semantics
    base = np.frombuffer(mm, np.uint8)
    skip = (-base.ctypes.data) % _HUGE
    return base[skip:skip + size]


def create_pool(n: int, buf_size: int = DEFAULT_BUF_SIZE) -> MbufPool:
    """Create a pool of ``n`` buffers of ``buf_size`` bytes (headroom included)."""
    if n <= 0:
        raise ValueError(f"mbuf pool size must be positive, got {n}")
    if buf_size <= HEADROOM:
        raise ValueError(f"buf_size {buf_size} leaves no data room after {HEADROOM} B headroom")
    ctl = np.zeros(16, np.int64)
    ctl[POOL_FREE] = n
    return MbufPool(
        data=_pool_bytes(n * buf_size),
        data_off=np.full(n, HEADROOM, np.uint16),
        data_len=np.zeros(n, np.uint32),
        port=np.zeros(n, np.uint16),
        ol_flags=np.zeros(n, np.uint64),
        free_stack=np.arange(n, dtype=np.int32)[::-1].copy(),
        ctl=ctl,
        buf_size=buf_size,
    )


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _lock(pool):
    while not compare_exchange(pool.ctl, POOL_LOCK, 0, 1):
        cpu_pause()


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _unlock(pool):
    store_release(pool.ctl, POOL_LOCK, 0)


@njit(nogil=True, cache=True, _nrt=False)
def alloc_bulk(pool, out, n):
    """Take ``n`` buffers into ``out[:n]``, all or none (rte_pktmbuf_alloc_bulk).

    Buffers come back reset: data_off = headroom, data_len = 0, no flags.
    Returns True on success.
    """
    _lock(pool)
    free = pool.ctl[POOL_FREE]
    if free < n:
        _unlock(pool)
        return False
    for k in range(n):
        out[k] = pool.free_stack[free - 1 - k]
    pool.ctl[POOL_FREE] = free - n
    _unlock(pool)
    for k in range(n):
        i = out[k]
        pool.data_off[i] = HEADROOM
        pool.data_len[i] = 0
        pool.ol_flags[i] = 0
    return True


@njit(nogil=True, cache=True, _nrt=False)
def free_bulk(pool, bufs, n):
    """Return ``bufs[:n]`` to the pool."""
    if n <= 0:
        return
    _lock(pool)
    free = pool.ctl[POOL_FREE]
    for k in range(n):
        pool.free_stack[free + k] = bufs[k]
    pool.ctl[POOL_FREE] = free + n
    _unlock(pool)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def mbuf_offset(pool, i):
    """Byte offset of buffer ``i``'s packet data in ``pool.data``."""
    return np.int64(i) * pool.buf_size + pool.data_off[i]
