"""The window ("BAR"): VM1 memory as seen by VM2, only where VM1 granted it.

One large reserved virtual area per VM1 connection (``PROT_NONE``,
``MAP_NORESERVE``: no memory, no swap reservation).  Kernels index
``window.array`` (uint8 over the whole area) with offsets from
``translate.translate``; any page VM1 did not grant is ``PROT_NONE`` and a
stray access faults instead of reading memory it should not see.

- Without an IOMMU, ``map_region`` maps each SET_MEM_TABLE region from its fd
  at window offset = guest-physical address.
- With VIRTIO_F_IOMMU_PLATFORM, ``add_region`` only registers the fd; each
  ``iotlb_update`` maps exactly the granted pages at offset = IOVA (or at a
  compact offset in the upper part of the window when the IOVA is beyond it)
  and each ``iotlb_invalidate`` maps ``PROT_NONE`` back over them.

Tables (``table``/``table_count``, ``regions``/``region_count``) are numpy
arrays the kernels hold; this class rewrites them in place under a seqlock
(counts are ``[rows, seq]``, see ``translate.py``), so a kernel translating
concurrently sees the old table or the new one, never a mix.

Removing memory is RCU-ordered: (a) drop the rows (no new translation returns
them), (b) ``quiesce()`` -- the caller's wait until every lcore of the port
passed a quiescent point, so lookups made with the old rows are finished --
(c) only then revoke the pages (``PROT_NONE``).  ``iotlb_invalidate``,
``iotlb_update`` (which replaces overlapping grants), ``unmap_all`` and
``reset`` take that ``quiesce`` callable; without one the caller must already
know no lcore uses the removed ranges.  Single writer: only the control
thread calls the mutating methods (no lock here).

A port keeps one ``Window`` for its life (kernels hold ``array``): ``reset``
empties it and switches mode for the next front-end.
"""
from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from numba import njit

from ..atomics_py import store_flag
from .translate import PERM_RO, PERM_RW, PERM_WO

PAGE_SIZE = mmap.PAGESIZE

PROT_NONE = 0
PROT_READ = 1
PROT_WRITE = 2
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
_MAP_FAILED = ctypes.c_void_p(-1).value
_RESERVE_FLAGS = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE

_U64_LIMIT = 1 << 64

_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                  ctypes.c_int, ctypes.c_int64]
_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def _sys_mmap(addr, length, prot, flags, fd, offset, what):
    res = _mmap(addr, length, prot, flags, fd, offset)
    if res is None or res == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap {what} (addr=0x{addr or 0:x} len=0x{length:x} "
                           f"fd={fd} offset=0x{offset:x}): {os.strerror(err)}")
    if flags & MAP_FIXED and res != addr:  # cannot happen on Linux
        raise OSError(f"mmap {what}: MAP_FIXED returned 0x{res:x}, not 0x{addr:x}")
    return res


def _aligned(x: int) -> bool:
    return x % PAGE_SIZE == 0


@contextmanager
def _seq_write(count: np.ndarray) -> Iterator[None]:
    """Seqlock write section on ``count = [rows, seq]``: seq odd inside, even
    after (also after an exception, or readers would spin forever).

    Python-side stores are plain aligned 8-byte ``mov``s issued in program
    order (each numpy store is a separate call the C compiler cannot reorder
    across), and x86 (TSO) never reorders stores with stores, so kernels see
    seq odd before any row changes and the rows before seq even again.
    """
    seq = int(count[1])
    store_flag(count, 1, seq + 1)
    try:
        yield
    finally:
        store_flag(count, 1, seq + 2)


# Grant rows (``Window._grants``): one per granted range, sorted by IOVA, as
# uint64 columns; ``last`` is inclusive (a range may end at 2**64).
G_IOVA, G_LAST, G_OFF, G_PERM, G_GPA = range(5)
_ONE = np.uint64(1)


@njit(nogil=True, cache=True, inline="always")
def _append_merged(table, n, s, last, x, perm):
    """Append the row ``(s, last, x, perm)`` to ``table[:n]``, or extend the
    last row when both ranges are contiguous (iova and x) with the same
    perm; returns the new row count."""
    if n > 0 and table[n - 1, 1] + _ONE == s and table[n - 1, 2] + (s - table[n - 1, 0]) == x \
            and table[n - 1, 3] == perm:
        table[n - 1, 1] = last
        return n
    table[n, 0] = s
    table[n, 1] = last
    table[n, 2] = x
    table[n, 3] = perm
    return n + 1


@njit(nogil=True, cache=True)
def _merge_grants(grants, n, table, gpa_table):
    """Build both translation tables from the first ``n`` sorted grant rows
    into ``table``/``gpa_table`` (scratch arrays); returns their row counts.

    ``table`` (iova -> window offset) merges neighbours contiguous in the
    window with the same perm, so a buffer may span grants of scattered
    pages; ``gpa_table`` (iova -> gpa, for the dirty log) merges neighbours
    whose gpas are contiguous too.  Compiled: with hundreds of live grants
    (a strict vIOMMU maps every rx buffer) a Python loop per IOTLB message
    cost ~100 us."""
    nt = 0
    ng = 0
    rw = np.uint64(PERM_RW)
    for i in range(n):
        s = grants[i, G_IOVA]
        last = grants[i, G_LAST]
        nt = _append_merged(table, nt, s, last, grants[i, G_OFF], grants[i, G_PERM])
        ng = _append_merged(gpa_table, ng, s, last, grants[i, G_GPA], rw)
    return nt, ng


_NO_GRANTS = np.zeros((0, 5), dtype=np.uint64)  # never written in place: grant arrays are replaced whole


def _grant_array(rows: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    """Grant rows from ``(iova, iova_end, offset, perm, gpa)`` tuples (``iova_end`` exclusive)."""
    return np.array([(s, e - 1, off, perm, gpa) for s, e, off, perm, gpa in rows],
                    dtype=np.uint64).reshape(len(rows), 5)


def _sorted_grants(*parts: np.ndarray) -> np.ndarray:
    """Grant rows joined in IOVA order (they never overlap)."""
    rows = np.concatenate(parts)
    return rows[np.argsort(rows[:, G_IOVA], kind="stable")]


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


class _RangeAllocator:
    """First-fit allocator of window space for compact offsets (free list of
    ``[start, end)``, coalesced on free)."""

    def __init__(self, start: int, end: int):
        self.start, self.end = start, end
        self.free_list = [[start, end]] if end > start else []

    def alloc(self, size: int) -> int:
        for r in self.free_list:
            if r[1] - r[0] >= size:
                off = r[0]
                r[0] += size
                if r[0] == r[1]:
                    self.free_list.remove(r)
                return off
        return -1

    def alloc_at(self, off: int, size: int) -> bool:
        for i, r in enumerate(self.free_list):
            if r[0] <= off and off + size <= r[1]:
                parts = [p for p in ([r[0], off], [off + size, r[1]]) if p[1] > p[0]]
                self.free_list[i:i + 1] = parts
                return True
        return False

    def free(self, off: int, size: int) -> None:
        if off < self.start or off + size > self.end or size <= 0:
            return
        fl = self.free_list
        fl.append([off, off + size])
        fl.sort()
        merged = [fl[0]]
        for s, e in fl[1:]:
            if s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        self.free_list = merged


class Window:
    """A reserved area of ``size`` bytes onto VM1's memory.

    ``iommu`` selects the mode (VIRTIO_F_IOMMU_PLATFORM negotiated).  In IOMMU
    mode the top ``compact_size`` bytes (default a quarter) hold grants whose
    IOVA does not fit below them; ``table_capacity`` bounds the translation
    table (coalesced entries).
    """

    def __init__(self, size: int = 1 << 40, *, iommu: bool = False,
                 compact_size: int | None = None, table_capacity: int = 16384,
                 max_regions: int = 512):
        if size <= 0 or not _aligned(size):
            raise ValueError(f"window size 0x{size:x} is not a positive multiple of "
                             f"the page size 0x{PAGE_SIZE:x}")
        if compact_size is None:
            compact_size = (size // 4) // PAGE_SIZE * PAGE_SIZE
        if not 0 <= compact_size <= size or not _aligned(compact_size):
            raise ValueError(f"compact_size 0x{compact_size:x} must be page-aligned "
                             f"and at most the window size 0x{size:x}")
        self.size = size
        self.compact_size = compact_size
        self._set_mode(iommu)
        self.regions_list: list[Region] = []
        self.table = np.zeros((table_capacity, 4), dtype=np.uint64)
        self.gpa_table = np.zeros((table_capacity, 4), dtype=np.uint64)  # [iova, iova_last, gpa, RW]
        self.gpa_table_count = np.zeros(2, dtype=np.int64)
        self._grants = _NO_GRANTS  # what both tables were built from (G_*)
        self._scratch = (np.zeros_like(self.table), np.zeros_like(self.gpa_table))
        self.table_count = np.zeros(2, dtype=np.int64)  # [rows, seq] (seqlock)
        self.regions = np.zeros((max_regions, 2), dtype=np.uint64)
        self.region_count = np.zeros(2, dtype=np.int64)  # [rows, seq] (seqlock)
        self.base = _sys_mmap(None, size, PROT_NONE, _RESERVE_FLAGS, -1, 0,
                              "window reservation")
        self._closed = False
        self.array = np.frombuffer((ctypes.c_uint8 * size).from_address(self.base),
                                   dtype=np.uint8)
        self._set_grants(self._grants)  # compiles (or loads) the merge kernel now, not mid-request

    # ---------------------------------------------------------------- helpers
    def _set_mode(self, iommu: bool) -> None:
        self.iommu = iommu
        self.identity_limit = self.size - self.compact_size if iommu else self.size
        self._compact = _RangeAllocator(self.identity_limit, self.size)

    def _map_fd(self, offset: int, length: int, fd: int, file_offset: int,
                prot: int, what: str) -> None:
        _sys_mmap(self.base + offset, length, prot, MAP_SHARED | MAP_FIXED, fd,
                  file_offset, what)

    def _revoke(self, offset: int, length: int) -> None:
        """``PROT_NONE`` anonymous memory over ``[offset, offset+length)``:
        drops the file mapping, keeps the reservation."""
        if length > 0:
            _sys_mmap(self.base + offset, length, PROT_NONE,
                      _RESERVE_FLAGS | MAP_FIXED, -1, 0, "revoke")

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("window is closed")

    def _rows(self) -> np.ndarray:
        return self.table[: int(self.table_count[0])]

    def _set_grants(self, grants: np.ndarray) -> None:
        """Replace the grant rows (``G_*`` columns, sorted by IOVA, each in
        one region) and rewrite both translation tables from them under
        their seqlocks (``_merge_grants`` says how they merge)."""
        n = len(grants)
        if n > len(self.table):
            raise RuntimeError(f"translation table full ({len(self.table)} entries); "
                               "create the Window with a larger table_capacity")
        by_offset, by_gpa = self._scratch
        counts = _merge_grants(grants, n, by_offset, by_gpa)
        for table, count, merged, m in ((self.table, self.table_count, by_offset, counts[0]),
                                        (self.gpa_table, self.gpa_table_count, by_gpa, counts[1])):
            old = int(count[0])
            with _seq_write(count):
                table[:m] = merged[:m]
                table[m:old] = 0
                count[0] = m
        self._grants = grants

    def _add_grants(self, rows: list[tuple[int, int, int, int, int]]) -> None:
        """Add grant rows ``(iova, iova_end, offset, perm, gpa)`` (``iova_end``
        exclusive) to the existing ones."""
        self._set_grants(_sorted_grants(self._grants, _grant_array(rows)))

    def entries(self) -> list[tuple[int, int, int, int]]:
        """The translation table as Python ints ``(iova, iova_end, offset, perm)``
        (``iova_end`` exclusive; the numpy table holds ``iova_last``)."""
        return [(int(s), int(last) + 1, int(off), int(perm)) for s, last, off, perm in self._rows()]

    # ------------------------------------------------------- memory regions
    def add_region(self, fd: int, gpa: int, size: int, mmap_offset: int,
                   userspace_addr: int) -> Region:
        """Register a SET_MEM_TABLE region; without an IOMMU also map it at
        window offset ``gpa``.  ``fd`` stays the caller's (we keep a dup in
        IOMMU mode)."""
        self._check_open()
        name = (f"memory region gpa=0x{gpa:x} size=0x{size:x} "
                f"uaddr=0x{userspace_addr:x} mmap_offset=0x{mmap_offset:x}")
        for v, field in ((gpa, "gpa"), (size, "size"), (mmap_offset, "mmap_offset"),
                         (userspace_addr, "uaddr")):
            if v < 0 or not _aligned(v):
                raise ValueError(f"{name}: {field} is not page-aligned")
        if size == 0:
            raise ValueError(f"{name}: empty region")
        if userspace_addr + size > _U64_LIMIT:
            raise ValueError(f"{name}: uaddr + size overflows 64 bits")
        if not self.iommu and gpa + size > self.size:
            raise ValueError(f"{name} ends beyond the window (0x{self.size:x} bytes)")
        for r in self.regions_list:
            if gpa < r.gpa + r.size and r.gpa < gpa + size:
                raise ValueError(f"{name} overlaps region gpa=0x{r.gpa:x} size=0x{r.size:x}")
            if userspace_addr < r.uaddr + r.size and r.uaddr < userspace_addr + size:
                raise ValueError(f"{name} overlaps region uaddr=0x{r.uaddr:x} "
                                 f"size=0x{r.size:x}")
        n = int(self.region_count[0])
        if n >= len(self.regions):
            raise ValueError(f"{name}: more than {len(self.regions)} regions")
        region = Region(gpa, size, userspace_addr, mmap_offset)
        if self.iommu:
            region.fd = os.dup(fd)
        else:
            self._map_fd(gpa, size, fd, mmap_offset, PROT_READ | PROT_WRITE, name)
        self.regions_list.append(region)
        self.regions_list.sort(key=lambda r: r.gpa)
        rows = np.array([[r.gpa, r.gpa + r.size] for r in self.regions_list], dtype=np.uint64)
        with _seq_write(self.region_count):
            self.regions[: n + 1] = rows
            self.region_count[0] = n + 1
        if not self.iommu:
            self._add_grants([(gpa, gpa + size, gpa, PERM_RW, gpa)])
        return region

    map_region = add_region

    def uaddr_to_gpa(self, uaddr: int, length: int = 1) -> int:
        """QEMU virtual address (vring addresses without an IOMMU) -> GPA,
        or -1 if ``[uaddr, uaddr+length)`` is not inside one region."""
        for r in self.regions_list:
            if r.uaddr <= uaddr and uaddr + max(length, 1) <= r.uaddr + r.size:
                return r.gpa + (uaddr - r.uaddr)
        return -1

    def _clear_tables(self) -> bool:
        """Empty both tables (seqlock writes); True if anything was in them."""
        had = int(self.table_count[0]) > 0 or int(self.region_count[0]) > 0
        self._set_grants(_NO_GRANTS)
        with _seq_write(self.region_count):
            self.region_count[0] = 0
            self.regions[:] = 0
        return had

    def unmap_all(self, *, quiesce: Callable[[], None] | None = None) -> None:
        """Drop every region and grant (new SET_MEM_TABLE, RESET): tables
        empty, then ``quiesce()`` (only if something was removed), then the
        whole window is ``PROT_NONE`` again and region fds are closed."""
        self._check_open()
        if self._clear_tables() and quiesce is not None:
            quiesce()  # lcores finish lookups made with the old tables
        self._revoke(0, self.size)
        self._compact = _RangeAllocator(self.identity_limit, self.size)
        self._close_region_fds()
        self.regions_list = []

    def reset(self, iommu: bool, *, quiesce: Callable[[], None] | None = None) -> None:
        """Empty the window (``unmap_all(quiesce=quiesce)``) and switch it to
        ``iommu`` mode, keeping the reservation, the tables and ``array``, so
        kernels holding them serve the next front-end unchanged."""
        self.unmap_all(quiesce=quiesce)
        self._set_mode(iommu)

    def _close_region_fds(self) -> None:
        for r in self.regions_list:
            if r.fd >= 0:
                os.close(r.fd)
                r.fd = -1

    # ---------------------------------------------------------------- IOTLB
    def _uaddr_pieces(self, uaddr: int, size: int) -> list[tuple[Region, int, int]]:
        """Split ``[uaddr, uaddr+size)`` into (region, file_offset, length)."""
        pieces = []
        u, left = uaddr, size
        while left:
            for r in self.regions_list:
                if r.uaddr <= u < r.uaddr + r.size:
                    n = min(left, r.uaddr + r.size - u)
                    pieces.append((r, r.mmap_offset + (u - r.uaddr), n))
                    u += n
                    left -= n
                    break
            else:
                raise ValueError(f"IOTLB update: uaddr 0x{u:x} (grant uaddr=0x{uaddr:x} "
                                 f"size=0x{size:x}) is in no memory region")
        return pieces

    def iotlb_update(self, iova: int, size: int, uaddr: int, perm: int, *,
                     quiesce: Callable[[], None] | None = None) -> int:
        """Map a VHOST_IOTLB_UPDATE grant; returns its window offset.

        A grant overlapping earlier ones replaces them: that part is an
        ``iotlb_invalidate(quiesce=quiesce)`` first."""
        self._check_open()
        what = (f"IOTLB update iova=0x{iova:x} size=0x{size:x} uaddr=0x{uaddr:x} "
                f"perm={perm}")
        if not self.iommu:
            raise ValueError(f"{what}: window is not in IOMMU mode")
        if perm not in (PERM_RO, PERM_WO, PERM_RW):
            raise ValueError(f"{what}: perm must be 1 (RO), 2 (WO) or 3 (RW)")
        if size <= 0 or iova < 0 or uaddr < 0:
            raise ValueError(f"{what}: empty or negative")
        if not (_aligned(iova) and _aligned(size) and _aligned(uaddr)):
            raise ValueError(f"{what}: not page-aligned (page 0x{PAGE_SIZE:x})")
        if iova + size > _U64_LIMIT or uaddr + size > _U64_LIMIT:
            raise ValueError(f"{what}: range overflows 64 bits")
        if size > self.size - self.identity_limit and iova + size > self.identity_limit:
            raise ValueError(f"{what}: larger than the window's compact area "
                             f"(0x{self.size - self.identity_limit:x} bytes)")
        pieces = self._uaddr_pieces(uaddr, size)  # validates before any change
        same = self._same_grant(iova, size, perm, pieces)
        if same >= 0:  # asked twice (ahead and on demand): already mapped as granted
            return same
        # a re-grant replaces whatever overlapped it
        self.iotlb_invalidate(iova, size, quiesce=quiesce)
        if iova + size <= self.identity_limit:
            offset = iova
        else:
            offset = -1
            t = self._rows()  # try to extend the grant that ends where this one starts
            hit = np.flatnonzero(t[:, 1] == np.uint64(iova - 1)) if iova else ()
            if len(hit):
                s0, off0 = int(t[hit[0], 0]), int(t[hit[0], 2])
                if off0 >= self.identity_limit and self._compact.alloc_at(off0 + (iova - s0), size):
                    offset = off0 + (iova - s0)
            if offset < 0:
                offset = self._compact.alloc(size)
            if offset < 0:
                raise ValueError(f"{what}: compact area of the window is full")
        prot = PROT_READ if perm == PERM_RO else PROT_READ | PROT_WRITE
        done = 0
        try:
            for r, file_offset, n in pieces:
                self._map_fd(offset + done, n, r.fd, file_offset, prot, what)
                done += n
            rows, done = [], 0
            for r, file_offset, n in pieces:  # one row per region: each row has one gpa base
                rows.append((iova + done, iova + done + n, offset + done, perm, r.gpa_at(file_offset)))
                done += n
            self._add_grants(rows)
        except BaseException:
            self._revoke(offset, size)
            if offset >= self.identity_limit:
                self._compact.free(offset, size)
            raise
        return offset

    def _same_grant(self, iova: int, size: int, perm: int, pieces: list[tuple[Region, int, int]]) -> int:
        """The window offset of a live grant exactly like this one (same
        IOVA range, VM1 pages and perm, one region), else -1."""
        if len(pieces) != 1:
            return -1
        r, file_offset, _ = pieces[0]
        g = self._grants
        hit = np.flatnonzero((g[:, G_IOVA] == np.uint64(iova)) & (g[:, G_LAST] == np.uint64(iova + size - 1)))
        if len(hit) and int(g[hit[0], G_PERM]) == perm and int(g[hit[0], G_GPA]) == r.gpa_at(file_offset):
            return int(g[hit[0], G_OFF])
        return -1

    def iotlb_invalidate(self, iova: int, size: int, *,
                         quiesce: Callable[[], None] | None = None) -> None:
        """VHOST_IOTLB_INVALIDATE over ``[iova, iova+size)`` (rounded out to
        pages; ``size`` may run to 2**64): drop or split the table entries,
        then ``quiesce()`` (once, only if an entry was removed), then
        ``PROT_NONE`` over the pages those entries mapped."""
        self._check_open()
        if size <= 0:
            return
        start = max(iova, 0) // PAGE_SIZE * PAGE_SIZE
        end = min(-(-(iova + size) // PAGE_SIZE) * PAGE_SIZE, _U64_LIMIT)
        if end <= start:
            return
        g = self._grants
        hit = np.flatnonzero((g[:, G_LAST] >= np.uint64(start)) & (g[:, G_IOVA] <= np.uint64(end - 1)))
        if not len(hit):
            return
        pieces = []  # what is left of the hit grants (iova_end exclusive)
        gone: list[tuple[int, int]] = []  # (window offset, length) to revoke
        for i in hit:
            s, last, off, perm, gpa = (int(x) for x in g[i])
            e = last + 1
            cs, ce = max(s, start), min(e, end)
            if s < cs:
                pieces.append((s, cs, off, perm, gpa))
            if ce < e:
                pieces.append((ce, e, off + (ce - s), perm, gpa + (ce - s)))
            gone.append((off + (cs - s), ce - cs))
        # (a) no new translation returns these pages
        self._set_grants(_sorted_grants(np.delete(g, hit, axis=0), _grant_array(pieces)))
        if quiesce is not None:
            quiesce()  # (b) lookups made with the old rows are finished
        for woff, n in gone:  # (c) now nobody can be using them
            self._revoke(woff, n)
            if woff >= self.identity_limit:
                self._compact.free(woff, n)

    # ------------------------------------------------------------- teardown
    def close(self) -> None:
        """Unmap the whole reservation and close the region fds (idempotent).
        Kernels must have stopped: ``array`` points at unmapped memory after."""
        if self._closed:
            return
        self._closed = True
        self._clear_tables()
        self.array = None
        if _munmap(self.base, self.size) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"munmap window 0x{self.base:x}+0x{self.size:x}: "
                               f"{os.strerror(err)}")
        self._close_region_fds()
        self.regions_list = []

    def __enter__(self) -> "Window":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
