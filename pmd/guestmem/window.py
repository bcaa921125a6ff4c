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
``iotlb_update`` (which replaces overlapping grants), ``remove_region``
(REM_MEM_REG), ``unmap_all`` and ``reset`` take that ``quiesce`` callable; without one the caller must already
know no lcore uses the removed ranges.  Single writer: only the control
thread calls the mutating methods (no lock here).

Memory that vanishes: a front-end may shrink a region's fd after the table
was accepted (``add_region`` checks the size with ``fstat`` first).  The
reservation is guarded (``sigbus.py``): a SIGBUS in it maps a zero page over
the faulting page instead of killing the process, counts it (``faults``)
and signals ``set_fault_fd``'s eventfd, so the owner drops that memory.

A port keeps one ``Window`` for its life (kernels hold ``array``): ``reset``
empties it and switches mode for the next front-end.
"""
from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

import numpy as np

from .grants import G_GPA, G_IOVA, G_LAST, G_OFF, NO_GRANTS, RangeAllocator, find_grant, insert_grant, seq_write
from .iotlb_ops import (
    P_BASE, P_IDENTITY_LIMIT, P_IOMMU, R_FD, R_GPA, R_MMAP_OFFSET, R_SIZE, R_UADDR, WinState, iotlb_drop, iotlb_map,
    publish_state, revoke_ranges,
)
from .region import Region
from .sigbus import guard
from .translate import PERM_RO, PERM_RW, PERM_WO, granted_perm
from .vmem import PAGE_SIZE, PROT_READ, PROT_WRITE, U64_LIMIT, U64_MASK, aligned, file_size, map_fd, release, reserve, revoke


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
        if size <= 0 or not aligned(size):
            raise ValueError(f"window size 0x{size:x} is not a positive multiple of "
                             f"the page size 0x{PAGE_SIZE:x}")
        if compact_size is None:
            compact_size = (size // 4) // PAGE_SIZE * PAGE_SIZE
        if not 0 <= compact_size <= size or not aligned(compact_size):
            raise ValueError(f"compact_size 0x{compact_size:x} must be page-aligned "
                             f"and at most the window size 0x{size:x}")
        self.size = size
        self.compact_size = compact_size
        self.params = np.zeros(3, np.int64)  # iotlb_ops.P_*: what kernels know of the mode
        self._set_mode(iommu)
        self.regions_list: list[Region] = []
        self.table = np.zeros((table_capacity, 4), dtype=np.uint64)
        self.gpa_table = np.zeros((table_capacity, 4), dtype=np.uint64)  # [iova, iova_last, gpa, RW]
        self.gpa_table_count = np.zeros(2, dtype=np.int64)
        # what both tables are built from: grants.G_* rows, sorted, grants[:grant_count[0]]
        self.grants = np.zeros((table_capacity, 5), dtype=np.uint64)
        self.grant_count = np.zeros(1, dtype=np.int64)
        scratch = (np.zeros_like(self.table), np.zeros_like(self.gpa_table))
        self.table_count = np.zeros(2, dtype=np.int64)  # [rows, seq] (seqlock)
        self.regions = np.zeros((max_regions, 2), dtype=np.uint64)
        self.region_count = np.zeros(2, dtype=np.int64)  # [rows, seq] (seqlock)
        self.rmap = np.full((max_regions, 5), -1, dtype=np.int64)  # iotlb_ops.R_* per region
        self.base = reserve(size)
        self.params[P_BASE] = self.base
        self.kstate = WinState(self.params, self.grants, self.grant_count, self.table, self.table_count,
                               self.gpa_table, self.gpa_table_count, *scratch, self.rmap, self.region_count,
                               np.zeros((table_capacity, 2), dtype=np.uint64))
        self._guard = guard(self.base, size)  # a truncated fd: SIGBUS -> zero page + count (sigbus.py)
        self._closed = False
        self.array = np.frombuffer((ctypes.c_uint8 * size).from_address(self.base),
                                   dtype=np.uint8)
        self._warm()

    # ---------------------------------------------------------------- helpers
    def _set_mode(self, iommu: bool) -> None:
        self.iommu = iommu
        self.identity_limit = self.size - self.compact_size if iommu else self.size
        self._compact = RangeAllocator(self.identity_limit, self.size)
        self.params[P_IDENTITY_LIMIT] = self.identity_limit
        self.params[P_IOMMU] = int(iommu)

    def _warm(self) -> None:
        """Compile (or load) the grant kernels now, not mid-request."""
        u = np.uint64(0)
        publish_state(self.kstate)
        iotlb_map(self.kstate, u, u, u, 0)  # refused at once: size 0
        iotlb_drop(self.kstate, np.uint64(1), u, self.kstate.gone)  # an empty range: no row
        revoke_ranges(self.kstate, self.kstate.gone, 0)
        find_grant(self.grants, self.grant_count, u, u, u, u)

    def _map_fd(self, offset: int, length: int, fd: int, file_offset: int,
                prot: int, what: str) -> None:
        map_fd(self.base + offset, length, fd, file_offset, prot, what)

    def _revoke(self, offset: int, length: int) -> None:
        """``PROT_NONE`` anonymous memory over ``[offset, offset+length)``:
        drops the file mapping, keeps the reservation."""
        revoke(self.base + offset, length)

    def set_fault_fd(self, fd: int) -> None:
        """The eventfd to signal when a SIGBUS hits the window (a front-end
        shrank a memory fd it had given us; see ``sigbus.py``)."""
        self._guard.set_fd(fd)

    @property
    def faults(self) -> tuple[int, int]:
        """(SIGBUS faults taken in the window, window offset of the last one);
        each faulting page now reads zeros until the memory is unmapped."""
        last = self._guard.last_fault
        return self._guard.faults, (last - self.base if last else -1)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("window is closed")

    def _rows(self) -> np.ndarray:
        return self.table[: int(self.table_count[0])]

    @property
    def _grants(self) -> np.ndarray:
        """The live grant rows (a view: copy before changing them)."""
        return self.grants[: int(self.grant_count[0])]

    def _set_grants(self, grants: np.ndarray) -> None:
        """Replace the grant rows (``G_*`` columns, sorted by IOVA, each in
        one region) and rewrite both translation tables from them under
        their seqlocks (``grants.publish``)."""
        n = len(grants)
        if n > len(self.grants):
            raise RuntimeError(f"translation table full ({len(self.table)} entries); "
                               "create the Window with a larger table_capacity")
        grants = np.array(grants, dtype=np.uint64)  # it may be a view of self.grants
        old = int(self.grant_count[0])
        self.grants[:n] = grants
        self.grants[n:old] = 0
        self.grant_count[0] = n
        publish_state(self.kstate)

    def _add_grants(self, rows: list[tuple[int, int, int, int, int]]) -> None:
        """Add grant rows ``(iova, iova_end, offset, perm, gpa)`` (``iova_end``
        exclusive) to the existing ones."""
        for s, e, off, perm, gpa in rows:
            if not insert_grant(self.grants, self.grant_count, np.uint64(s), np.uint64(e - 1), np.uint64(off),
                                np.uint64(perm), np.uint64(gpa)):
                publish_state(self.kstate)  # the rows inserted so far are the caller's to undo
                raise RuntimeError(f"translation table full ({len(self.table)} entries); "
                                   "create the Window with a larger table_capacity")
        publish_state(self.kstate)

    def entries(self) -> list[tuple[int, int, int, int]]:
        """The translation table as Python ints ``(iova, iova_end, offset, perm)``
        (``iova_end`` exclusive; the numpy table holds ``iova_last``)."""
        return [(int(s), int(last) + 1, int(off), int(perm)) for s, last, off, perm in self._rows()]

    def granted_perm(self, iova: int) -> int:
        """The permission (1 RO, 2 WO, 3 RW) the byte at ``iova`` is granted
        with now, or 0 if it is not mapped (one consistent look, any thread)."""
        return int(granted_perm(self.table, self.table_count, np.uint64(iova & U64_MASK)))

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
            if v < 0 or not aligned(v):
                raise ValueError(f"{name}: {field} is not page-aligned")
        if size == 0:
            raise ValueError(f"{name}: empty region")
        if userspace_addr + size > U64_LIMIT:
            raise ValueError(f"{name}: uaddr + size overflows 64 bits")
        if not self.iommu and gpa + size > self.size:
            raise ValueError(f"{name} ends beyond the window (0x{self.size:x} bytes)")
        try:
            fd_size = file_size(fd)  # a partial last page maps (zeros past the end)
        except OSError as e:
            raise OSError(e.errno, f"{name}: fd {fd}: {e.strerror}") from None
        if fd_size >= 0 and mmap_offset + size > -(-fd_size // PAGE_SIZE) * PAGE_SIZE:
            # mapping it would "work", and the first access to the missing
            # tail would kill the process with SIGBUS
            raise ValueError(f"{name} ends beyond its fd (mmap_offset + size = 0x{mmap_offset + size:x}, "
                             f"the fd has 0x{fd_size:x} bytes)")
        for r in self.regions_list:
            if gpa < r.gpa + r.size and r.gpa < gpa + size:
                raise ValueError(f"{name} overlaps region gpa=0x{r.gpa:x} size=0x{r.size:x}")
            if userspace_addr < r.uaddr + r.size and r.uaddr < userspace_addr + size:
                raise ValueError(f"{name} overlaps region uaddr=0x{r.uaddr:x} "
                                 f"size=0x{r.size:x}")
        if len(self.regions_list) >= len(self.regions):
            raise ValueError(f"{name}: more than {len(self.regions)} regions")
        region = Region(gpa, size, userspace_addr, mmap_offset)
        if self.iommu:
            region.fd = os.dup(fd)
        else:
            self._map_fd(gpa, size, fd, mmap_offset, PROT_READ | PROT_WRITE, name)
        self.regions_list.append(region)
        self._write_regions()
        if not self.iommu:
            self._add_grants([(gpa, gpa + size, gpa, PERM_RW, gpa)])
        return region

    map_region = add_region

    def _write_regions(self) -> None:
        """Rewrite the region rows from ``regions_list`` (seqlock write)."""
        self.regions_list.sort(key=lambda r: r.gpa)
        n, old = len(self.regions_list), int(self.region_count[0])
        with seq_write(self.region_count):
            for i, r in enumerate(self.regions_list):
                self.regions[i] = (r.gpa, r.gpa + r.size)
                cols = [0] * 5
                cols[R_UADDR], cols[R_SIZE], cols[R_MMAP_OFFSET], cols[R_FD], cols[R_GPA] = (
                    r.uaddr, r.size, r.mmap_offset, r.fd & U64_MASK, r.gpa)
                self.rmap[i] = np.array(cols, np.uint64).view(np.int64)  # a uaddr may pass 2**63
            self.regions[n:old] = 0
            self.rmap[n:old] = -1
            self.region_count[0] = n

    def remove_region(self, gpa: int, size: int, userspace_addr: int, *,
                      quiesce: Callable[[], None] | None = None) -> Region:
        """Drop one region (REM_MEM_REG: named by gpa, size and uaddr; the
        mmap offset is ignored) in RCU order: its region row and every
        translation row into it go first, then ``quiesce()``, then its
        pages (and, with an IOMMU, the grants made of it) are revoked and
        our dup of its fd closed.  ValueError if no region matches."""
        self._check_open()
        match = [r for r in self.regions_list if (r.gpa, r.size, r.uaddr) == (gpa, size, userspace_addr)]
        if not match:
            raise ValueError(f"no memory region gpa=0x{gpa:x} size=0x{size:x} uaddr=0x{userspace_addr:x} to remove "
                             f"(regions: {', '.join(f'gpa=0x{r.gpa:x} size=0x{r.size:x}' for r in self.regions_list) or 'none'})")
        region = match[0]
        g = self._grants
        hit = np.flatnonzero((g[:, G_GPA] >= np.uint64(gpa)) & (g[:, G_GPA] < np.uint64(gpa + size)))
        gone = [(int(g[i, G_OFF]), int(g[i, G_LAST]) - int(g[i, G_IOVA]) + 1) for i in hit]
        # (a) no new lookup finds the region or a translation into it
        self.regions_list.remove(region)
        self._write_regions()
        if len(hit):
            self._set_grants(np.delete(g, hit, axis=0))
        if quiesce is not None:
            quiesce()  # (b) lookups made with the old rows are finished
        for woff, n in gone:  # (c) revoke
            self._revoke(woff, n)
            if woff >= self.identity_limit:
                self._compact.free(woff, n)
        if region.fd >= 0:
            os.close(region.fd)
            region.fd = -1
        return region

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
        self._set_grants(NO_GRANTS)
        with seq_write(self.region_count):
            self.region_count[0] = 0
            self.regions[:] = 0
            self.rmap[:] = -1
        return had

    def unmap_all(self, *, quiesce: Callable[[], None] | None = None) -> None:
        """Drop every region and grant (new SET_MEM_TABLE, RESET): tables
        empty, then ``quiesce()`` (only if something was removed), then the
        whole window is ``PROT_NONE`` again and region fds are closed."""
        self._check_open()
        if self._clear_tables() and quiesce is not None:
            quiesce()  # lcores finish lookups made with the old tables
        self._revoke(0, self.size)
        self._compact = RangeAllocator(self.identity_limit, self.size)
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
        if not (aligned(iova) and aligned(size) and aligned(uaddr)):
            raise ValueError(f"{what}: not page-aligned (page 0x{PAGE_SIZE:x})")
        if iova + size > U64_LIMIT or uaddr + size > U64_LIMIT:
            raise ValueError(f"{what}: range overflows 64 bits")
        if size > self.size - self.identity_limit and iova + size > self.identity_limit:
            raise ValueError(f"{what}: larger than the window's compact area "
                             f"(0x{self.size - self.identity_limit:x} bytes)")
        pieces = self._uaddr_pieces(uaddr, size)  # validates before any change
        offset = iotlb_map(self.kstate, np.uint64(iova), np.uint64(size), np.uint64(uaddr), perm)
        if offset >= 0:  # the plain case, compiled (iotlb_ops.py)
            return int(offset)
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
        i = find_grant(self.grants, self.grant_count, np.uint64(iova), np.uint64(iova + size - 1), np.uint64(perm),
                       np.uint64(r.gpa_at(file_offset)))
        return int(self.grants[i, G_OFF]) if i >= 0 else -1

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
        end = min(-(-(iova + size) // PAGE_SIZE) * PAGE_SIZE, U64_LIMIT)
        if end <= start:
            return
        # (a) no new translation returns these pages (rows dropped or cut, tables republished)
        n = iotlb_drop(self.kstate, np.uint64(start), np.uint64(end - 1), self.kstate.gone)
        if n < 0:
            raise RuntimeError(f"IOTLB invalidate iova=0x{iova:x} size=0x{size:x}: splitting a grant would overflow "
                               f"the translation table ({len(self.table)} entries)")
        if n == 0:
            return
        gone = [(int(off), int(length)) for off, length in self.kstate.gone[:n]]
        if quiesce is not None:
            quiesce()  # (b) lookups made with the old rows are finished
        if not revoke_ranges(self.kstate, self.kstate.gone, n):  # (c) now nobody can be using them
            for woff, length in gone:
                self._revoke(woff, length)  # raises, naming the errno
        for woff, length in gone:
            if woff >= self.identity_limit:
                self._compact.free(woff, length)

    # ------------------------------------------------------------- teardown
    def close(self) -> None:
        """Unmap the whole reservation and close the region fds (idempotent).
        Kernels must have stopped: ``array`` points at unmapped memory after."""
        if self._closed:
            return
        self._closed = True
        self._clear_tables()
        self.array = None
        release(self.base, self.size)
        self._guard.release()
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
