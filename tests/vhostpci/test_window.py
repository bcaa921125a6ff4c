"""The window: VM1 memory visible only where granted, and translation to it."""
from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from numba import njit

import pmd  # noqa: F401  (numba cache dir)
from pmd.atomics import load_acquire
from pmd.guestmem.translate import PERM_RO, PERM_RW, PERM_WO, translate, translate_gpa
from pmd.guestmem.window import PAGE_SIZE, Window

ROOT = Path(__file__).resolve().parents[2]
PG = PAGE_SIZE
RAM_SIZE = 1 << 20
UADDR = 0x7F12_0000_0000  # where "QEMU" mapped VM1 RAM
MMAP_OFFSET = 0


@pytest.fixture
def ram():
    """VM1 RAM: a memfd with a per-page pattern (byte = page number + 1)."""
    fd = os.memfd_create("vm1-ram")
    os.ftruncate(fd, RAM_SIZE)
    m = mmap.mmap(fd, RAM_SIZE)
    for p in range(RAM_SIZE // PG):
        m[p * PG:(p + 1) * PG] = bytes([(p + 1) & 0xFF]) * PG
    yield fd, m
    m.close()
    os.close(fd)


def _u64(x):
    """Values from descriptors arrive as uint64; Python ints >= 2**63 must too."""
    return np.uint64(x) if x >= 1 << 63 else x


def tr(w, iova, length, write=False):
    return int(translate(w.table, w.table_count, _u64(iova), _u64(length), write))


# ---------------------------------------------------------------- no IOMMU
def test_region_shows_vm1_memory_both_ways(ram):
    fd, m = ram
    gpa = 0x4000_0000
    with Window(1 << 32) as w:
        w.map_region(fd, gpa, RAM_SIZE, MMAP_OFFSET, UADDR)
        assert w.array[gpa] == 1 and w.array[gpa + 5 * PG + 7] == 6
        assert bytes(w.array[gpa + PG:gpa + PG + 4]) == b"\x02" * 4
        w.array[gpa + 3 * PG:gpa + 3 * PG + 4] = np.frombuffer(b"VM2!", np.uint8)
        assert m[3 * PG:3 * PG + 4] == b"VM2!"
        assert w.uaddr_to_gpa(UADDR + 0x1234) == gpa + 0x1234
        assert w.uaddr_to_gpa(UADDR + RAM_SIZE) == -1
        # both kernels agree: GPA is the offset, bounds checked
        rc = w.region_count
        assert translate_gpa(w.regions, rc, gpa + 10, 100) == gpa + 10
        assert translate_gpa(w.regions, rc, gpa + RAM_SIZE - 4, 4) == gpa + RAM_SIZE - 4
        assert translate_gpa(w.regions, rc, gpa + RAM_SIZE - 4, 5) == -1
        assert translate_gpa(w.regions, rc, gpa - 1, 1) == -1
        assert translate_gpa(w.regions, rc, gpa, -1) == -1  # huge length
        assert tr(w, gpa + 10, 100, True) == gpa + 10
        assert tr(w, gpa + RAM_SIZE, 1) == -1


def test_region_checks(ram):
    fd, _ = ram
    with Window(1 << 24) as w:
        with pytest.raises(ValueError, match="beyond the window"):
            w.map_region(fd, 1 << 24, PG, 0, UADDR)
        with pytest.raises(ValueError, match="not page-aligned"):
            w.map_region(fd, 0x800, PG, 0, UADDR)
        w.map_region(fd, 0, RAM_SIZE, 0, UADDR)
        with pytest.raises(ValueError, match="overlaps"):
            w.map_region(fd, PG, PG, 0, UADDR + RAM_SIZE)
        w.unmap_all()
        assert w.region_count[0] == 0 and w.table_count[0] == 0
        w.map_region(fd, 0, RAM_SIZE, 0, UADDR)  # a new SET_MEM_TABLE
        assert w.array[PG] == 2


def test_iommu_mode_maps_nothing_up_front(ram):
    fd, _ = ram
    with Window(1 << 32, iommu=True) as w:
        w.add_region(fd, 0, RAM_SIZE, MMAP_OFFSET, UADDR)
        assert w.table_count[0] == 0
        assert tr(w, 0, 1) == -1 and tr(w, 0x10000, 64) == -1


# ---------------------------------------------------------------- IOMMU
def test_iotlb_update_translate_invalidate(ram):
    fd, m = ram
    with Window(1 << 32, iommu=True) as w:
        w.add_region(fd, 0, RAM_SIZE, MMAP_OFFSET, UADDR)
        assert tr(w, 0x10000, 64) == -1
        off = w.iotlb_update(0x10000, PG, UADDR + 7 * PG, PERM_RW)
        assert off == 0x10000
        assert tr(w, 0x10000 + 16, 64) == 0x10000 + 16
        assert tr(w, 0x10000 + 16, 64, True) == 0x10000 + 16
        assert tr(w, 0x10000 + PG - 4, 5) == -1  # crosses the entry end
        assert tr(w, 0x10000, 0) == 0x10000
        assert tr(w, 0x10000, -1) == -1 and tr(w, -1, 1) == -1
        assert tr(w, 0x10000 + PG, 1) == -1
        assert w.array[0x10000] == 8 and w.array[0x10000 + PG - 1] == 8
        w.array[0x10000:0x10004] = np.frombuffer(b"ping", np.uint8)
        assert m[7 * PG:7 * PG + 4] == b"ping"
        w.iotlb_invalidate(0x10000, PG)
        assert tr(w, 0x10000, 1) == -1 and w.entries() == []


def test_permissions(ram):
    fd, _ = ram
    with Window(1 << 32, iommu=True) as w:
        w.add_region(fd, 0, RAM_SIZE, MMAP_OFFSET, UADDR)
        w.iotlb_update(0x20000, PG, UADDR, PERM_RO)
        w.iotlb_update(0x40000, PG, UADDR + PG, PERM_WO)
        assert tr(w, 0x20000, 8) == 0x20000 and tr(w, 0x20000, 8, True) == -1
        assert tr(w, 0x40000, 8, True) == 0x40000 and tr(w, 0x40000, 8) == -1
        assert [e[3] for e in w.entries()] == [PERM_RO, PERM_WO]
        assert w.array[0x20000] == 1  # RO is readable


def test_update_checks(ram):
    fd, _ = ram
    with Window(1 << 32, iommu=True) as w:
        w.add_region(fd, 0, RAM_SIZE, MMAP_OFFSET, UADDR)
        with pytest.raises(ValueError, match="not page-aligned"):
            w.iotlb_update(0x10800, PG, UADDR, PERM_RW)
        with pytest.raises(ValueError, match="not page-aligned"):
            w.iotlb_update(0x10000, 100, UADDR, PERM_RW)
        with pytest.raises(ValueError, match="perm"):
            w.iotlb_update(0x10000, PG, UADDR, 0)
        with pytest.raises(ValueError, match="in no memory region"):
            w.iotlb_update(0x10000, 2 * PG, UADDR + RAM_SIZE - PG, PERM_RW)
        assert w.entries() == []
        # invalidate never validates uaddr/perm (garbage from QEMU) nor alignment
        w.iotlb_invalidate(0x123, 1)
        w.iotlb_invalidate(0, (1 << 64) - 1)


def test_partial_invalidate_splits(ram):
    fd, _ = ram
    with Window(1 << 32, iommu=True) as w:
        w.add_region(fd, 0, RAM_SIZE, MMAP_OFFSET, UADDR)
        w.iotlb_update(0x10000, 3 * PG, UADDR + 4 * PG, PERM_RW)
        w.iotlb_invalidate(0x10000 + PG, PG)
        assert w.entries() == [(0x10000, 0x10000 + PG, 0x10000, PERM_RW),
                               (0x10000 + 2 * PG, 0x10000 + 3 * PG, 0x10000 + 2 * PG, PERM_RW)]
        assert w.array[0x10000] == 5 and w.array[0x10000 + 2 * PG] == 7
        assert tr(w, 0x10000 + PG, 1) == -1
        assert tr(w, 0x10000 + 2 * PG + 8, 8) == 0x10000 + 2 * PG + 8


def test_adjacent_grants_coalesce(ram):
    fd, _ = ram
    with Window(1 << 32, iommu=True) as w:
        w.add_region(fd, 0, RAM_SIZE, MMAP_OFFSET, UADDR)
        w.iotlb_update(0x10000, PG, UADDR, PERM_RW)
        w.iotlb_update(0x10000 + PG, PG, UADDR + 9 * PG, PERM_RW)
        assert w.entries() == [(0x10000, 0x10000 + 2 * PG, 0x10000, PERM_RW)]
        assert tr(w, 0x10000 + PG - 8, 16) == 0x10000 + PG - 8  # spans both pages
        assert w.array[0x10000] == 1 and w.array[0x10000 + PG] == 10


def test_compact_offsets_for_huge_iovas(ram):
    fd, m = ram
    with Window(1 << 30, iommu=True) as w:
        w.add_region(fd, 0, RAM_SIZE, MMAP_OFFSET, UADDR)
        iova = 0x7FFF_FFFF_0000
        off = w.iotlb_update(iova, 2 * PG, UADDR + 2 * PG, PERM_RW)
        assert w.identity_limit <= off < w.size
        assert tr(w, iova + 12, 4) == off + 12
        assert tr(w, iova + PG, 4) == off + PG
        assert w.array[off] == 3 and w.array[off + PG] == 4
        # a following grant lands next to it and coalesces
        off2 = w.iotlb_update(iova + 2 * PG, PG, UADDR + 3 * PG, PERM_RW)
        assert off2 == off + 2 * PG and len(w.entries()) == 1
        # near the top of the 64-bit space: no overflow
        top = (1 << 64) - PG
        off3 = w.iotlb_update(top, PG, UADDR, PERM_RO)
        assert tr(w, top + PG - 1, 1) == off3 + PG - 1
        assert tr(w, top + PG - 1, 2) == -1
        assert tr(w, top, (1 << 64) - 1) == -1
        # invalidating frees compact space for reuse
        w.iotlb_invalidate(iova, 3 * PG)
        w.iotlb_invalidate(top, PG)
        assert tr(w, iova, 1) == -1
        assert w._compact.free_list == [[w.identity_limit, w.size]]


# ------------------------------------------------------- isolation is real
CHILD = textwrap.dedent("""
    import mmap, os, sys
    sys.path.insert(0, {root!r})
    import pmd
    from pmd.guestmem.window import Window, PAGE_SIZE as PG
    fd = os.memfd_create("vm1")
    os.ftruncate(fd, 1 << 20)
    m = mmap.mmap(fd, 1 << 20)
    m[5 * PG] = 0x5A
    w = Window(1 << 32, iommu={iommu})
    w.add_region(fd, 0, 1 << 20, 0, 0x7f0000000000)
    if {iommu}:
        w.iotlb_update(0x10000, 3 * PG, 0x7f0000000000 + 5 * PG, 3)
        good = 0x10000
    else:
        good = 5 * PG
    print(int(w.array[good]), flush=True)
    action = {action!r}
    if action == "ungranted":
        print(int(w.array[0x20000 if {iommu} else (1 << 20) + PG]), flush=True)
    elif action == "invalidated":
        w.iotlb_invalidate(0x10000, PG)
        print(int(w.array[0x10000 + PG]), flush=True)  # still granted
        print(int(w.array[0x10000]), flush=True)
    elif action == "readonly_write":
        w.iotlb_invalidate(0x10000, 3 * PG)
        w.iotlb_update(0x10000, PG, 0x7f0000000000 + 5 * PG, 1)
        print(int(w.array[0x10000]), flush=True)
        w.array[0x10000] = 1
    w.close()
""")


def run_child(action, iommu=True):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONFAULTHANDLER"}
    return subprocess.run(
        [sys.executable, "-c", CHILD.format(root=str(ROOT), iommu=iommu, action=action)],
        capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("iommu", [True, False])
def test_granted_page_reads_fine(iommu):
    p = run_child("none", iommu)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["90"]


@pytest.mark.parametrize("iommu", [True, False])
def test_ungranted_page_faults(iommu):
    p = run_child("ungranted", iommu)
    assert p.returncode == -signal.SIGSEGV, (p.returncode, p.stderr)
    assert p.stdout.split() == ["90"]


def test_invalidated_page_faults():
    p = run_child("invalidated")
    assert p.returncode == -signal.SIGSEGV, (p.returncode, p.stderr)
    assert p.stdout.split() == ["90", "0"]


def test_write_to_readonly_grant_faults():
    p = run_child("readonly_write")
    assert p.returncode == -signal.SIGSEGV, (p.returncode, p.stderr)
    assert p.stdout.split() == ["90", "90"]


# ------------------------------------------------------------------ leaks
def _fds():
    return len(os.listdir("/proc/self/fd"))


def _maps():
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def _cycle(fd, iommu):
    w = Window(1 << 36, iommu=iommu)
    w.add_region(fd, 0x1000_0000, RAM_SIZE, 0, UADDR)
    if iommu:
        w.iotlb_update(0x10000, 3 * PG, UADDR, PERM_RW)
        w.iotlb_update(0x7FFF_0000_0000, PG, UADDR + PG, PERM_RO)
        w.iotlb_invalidate(0x10000 + PG, PG)
        assert w.array[0x10000] == 1
    else:
        assert w.array[0x1000_0000] == 1
    w.close()
    w.close()


def test_no_fd_or_mapping_leak(ram):
    fd, _ = ram
    _cycle(fd, True)  # warm up: first-use allocations (numpy, ctypes types)
    _cycle(fd, False)
    fds, maps = _fds(), _maps()
    for i in range(50):
        _cycle(fd, i % 2 == 0)
    assert _fds() == fds
    # the only allowance: the Python allocator may take one more arena
    assert _maps() <= maps + 1, (maps, _maps())
    w = Window(1 << 36, iommu=True)
    w.add_region(fd, 0, RAM_SIZE, 0, UADDR)
    assert _fds() == fds + 1  # the dup of the region fd
    w.unmap_all()
    assert _fds() == fds
    w.close()


# ------------------------------------------------- regions with offsets, kernels
def test_regions_with_mmap_offset_and_grant_across_regions(ram):
    fd, _ = ram
    half = RAM_SIZE // 2
    with Window(1 << 34, iommu=False) as w:  # low RAM + RAM above 4 GiB, one memfd
        w.map_region(fd, 0, half, 0, UADDR)
        w.map_region(fd, 1 << 32, half, half, UADDR + half)
        assert w.array[(1 << 32)] == half // PG + 1
        assert w.uaddr_to_gpa(UADDR + half + 5) == (1 << 32) + 5
        assert tr(w, half - 4, 8) == -1  # no GPA region straddles
    with Window(1 << 34, iommu=True) as w:
        w.add_region(fd, 0, half, 0, UADDR)
        w.add_region(fd, 1 << 32, half, half, UADDR + half)
        off = w.iotlb_update(0x30000, 2 * PG, UADDR + half - PG, PERM_RW)
        assert w.array[off] == half // PG and w.array[off + PG] == half // PG + 1
        assert tr(w, 0x30000 + PG - 2, 4) == off + PG - 2


@pytest.mark.parametrize("iommu", [False, True], ids=["plain", "iommu"])
def test_region_beyond_its_fd_is_refused_naming_it(ram, iommu):
    """mmap would accept a region longer than its file; the first access to
    the missing tail would then be a SIGBUS.  fstat is checked first."""
    fd, _ = ram
    with Window(1 << 30, iommu=iommu) as w:
        with pytest.raises(ValueError, match=r"gpa=0x200000 size=0x100000 .*mmap_offset=0x1000 ends beyond its fd "
                                             r"\(mmap_offset \+ size = 0x101000, the fd has 0x100000 bytes\)"):
            w.add_region(fd, 0x200000, RAM_SIZE, PG, UADDR)
        assert w.region_count[0] == 0 and w.table_count[0] == 0 and not w.regions_list
        w.add_region(fd, 0x200000, RAM_SIZE - PG, PG, UADDR)  # the same region, within the fd
        assert w.region_count[0] == 1
    short = os.memfd_create("partial-page")
    try:
        os.ftruncate(short, PG + 100)  # a partial last page maps: zeros past the end
        with Window(1 << 30) as w:
            w.add_region(short, 0, 2 * PG, 0, UADDR)
            assert w.array[2 * PG - 1] == 0
            with pytest.raises(ValueError, match="ends beyond its fd"):
                w.add_region(short, 4 * PG, 3 * PG, 0, UADDR + 4 * PG)
    finally:
        os.close(short)


def test_mmap_errors_name_the_request(ram):
    fd, _ = ram
    with Window(1 << 30) as w:
        with pytest.raises(OSError, match="gpa=0x0"):
            w.map_region(9999, 0, PG, 0, UADDR)  # not an fd
        assert w.region_count[0] == 0
    with pytest.raises(OSError, match="window reservation"):
        Window(1 << 62)  # larger than the address space


def test_translate_inside_a_kernel_with_descriptor_types(ram):
    """Descriptor fields are u64 addr / u32 len: no float promotion, and a
    kernel that loops sees table updates through ``table_count``."""
    from numba import njit

    @njit(nogil=True)
    def sum_reads(table, count, arr, addrs, lens):
        total = 0
        bad = 0
        for i in range(addrs.shape[0]):
            off = translate(table, count, addrs[i], lens[i], False)
            if off < 0:
                bad += 1
                continue
            for j in range(lens[i]):
                total += arr[off + j]
        return total, bad

    fd, _ = ram
    with Window(1 << 32, iommu=True) as w:
        w.add_region(fd, 0, RAM_SIZE, 0, UADDR)
        addrs = np.array([0x10000, 0x10000 + PG - 2, 0x20000, 1 << 63], dtype=np.uint64)
        lens = np.array([4, 4, 2, 1], dtype=np.uint32)
        assert sum_reads(w.table, w.table_count, w.array, addrs, lens) == (0, 4)
        w.iotlb_update(0x10000, PG, UADDR + PG, PERM_RO)
        assert sum_reads(w.table, w.table_count, w.array, addrs, lens) == (8, 3)
        w.iotlb_update(0x20000, PG, UADDR + 2 * PG, PERM_RW)
        assert sum_reads(w.table, w.table_count, w.array, addrs, lens) == (14, 2)


# ------------------------------------------- RCU order: rows, quiesce, unmap
def _readable(w, off):
    """Whether the window byte at ``off`` can be read: write(2) from it gets
    EFAULT where a direct read would SIGSEGV."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    r, wr = os.pipe()
    try:
        return libc.write(wr, ctypes.c_void_p(w.base + off), 1) == 1
    finally:
        os.close(r)
        os.close(wr)


def test_invalidate_quiesces_after_the_table_before_the_unmap(ram):
    fd, _ = ram
    with Window(1 << 32, iommu=True) as w:
        w.add_region(fd, 0, RAM_SIZE, MMAP_OFFSET, UADDR)
        w.iotlb_update(0x10000, 2 * PG, UADDR + 4 * PG, PERM_RW)
        w.iotlb_update(0x30000, PG, UADDR, PERM_RW)
        seen = []

        def quiesce():
            seen.append((tr(w, 0x10000, 1), tr(w, 0x30000, 1), _readable(w, 0x10000),
                         _readable(w, 0x10000 + PG), int(w.array[0x10000 + PG])))

        w.iotlb_invalidate(0x10000, 0x30000, quiesce=quiesce)  # both grants, one quiesce
        assert seen == [(-1, -1, True, True, 6)]
        assert not _readable(w, 0x10000) and not _readable(w, 0x30000)
        w.iotlb_invalidate(0x10000, 0x30000, quiesce=quiesce)  # nothing removed: no quiesce
        assert len(seen) == 1
        # a re-grant over an existing one goes through the same order
        w.iotlb_update(0x10000, PG, UADDR, PERM_RO)
        seen.clear()
        off = w.iotlb_update(0x10000, PG, UADDR + PG, PERM_RW,
                             quiesce=lambda: seen.append((tr(w, 0x10000, 1), int(w.array[0x10000]))))
        assert seen == [(-1, 1)] and off == 0x10000 and w.array[0x10000] == 2
        w.iotlb_update(0x50000, PG, UADDR, PERM_RW, quiesce=lambda: seen.append("x"))  # no overlap
        assert len(seen) == 1


def test_unmap_all_and_reset_keep_array_and_tables(ram):
    fd, _ = ram
    w = Window(1 << 32, iommu=False)
    try:
        array, table, count = w.array, w.table, w.table_count
        regions, rcount = w.regions, w.region_count
        w.map_region(fd, 0, RAM_SIZE, 0, UADDR)
        seen = []
        w.reset(True, quiesce=lambda: seen.append((tr(w, PG, 1), translate_gpa(regions, rcount, PG, 1),
                                                   _readable(w, PG))))
        assert seen == [(-1, -1, True)] and not _readable(w, PG)
        assert w.iommu and w.identity_limit == w.size - w.compact_size
        assert w.array is array and w.table is table and w.table_count is count
        assert w.regions is regions and w.region_count is rcount
        w.add_region(fd, 0, RAM_SIZE, 0, UADDR)
        off = w.iotlb_update(1 << 40, PG, UADDR + PG, PERM_RW)  # compact area exists now
        assert off >= w.identity_limit and w.array[off] == 2
        w.reset(False, quiesce=lambda: seen.append("q"))
        assert seen[1:] == ["q"] and not w.iommu and w.identity_limit == w.size
        w.reset(False, quiesce=lambda: seen.append("again"))  # empty: no quiesce
        assert seen[1:] == ["q"]
        w.map_region(fd, 0, RAM_SIZE, 0, UADDR)
        assert tr(w, PG, 1) == PG and w.array[PG] == 2
    finally:
        w.close()


# ------------------------------------------------ seqlock: no torn lookups
@njit(nogil=True, cache=True)
def _watch(table, count, iova, expect, stop, progress, cap):
    """Translate ``iova`` until ``stop[0]`` (or ``cap`` rounds); returns
    (wrong, hits, misses): wrong = neither -1 nor ``expect``."""
    wrong = 0
    hits = 0
    misses = 0
    for i in range(cap):
        if (i & 1023) == 0:
            if load_acquire(stop, 0) != 0:
                break
            progress[0] = i + 1  # plain store: only read after join
            progress[1] = 1
        off = translate(table, count, iova, 8, False)
        if off == expect:
            hits += 1
        elif off == -1:
            misses += 1
        else:
            wrong += 1
    return wrong, hits, misses


def test_seqlock_no_torn_translation_under_rewrites(ram):
    """A kernel translates one grant while the control thread keeps shifting
    the table's rows around it (other grants come and go, the watched one is
    re-granted at the same offset): every answer is the offset or -1."""
    import threading
    import time

    fd, _ = ram
    with Window(1 << 30, iommu=True) as w:
        w.add_region(fd, 0, RAM_SIZE, 0, UADDR)
        watched = 1 << 40  # beyond the identity part: a compact offset, unlike its neighbours
        expect = w.iotlb_update(watched, PG, UADDR, PERM_RW)
        assert expect == w.identity_limit
        stop = np.zeros(1, dtype=np.int64)
        progress = np.zeros(2, dtype=np.int64)
        out = []
        _watch(w.table, w.table_count, np.uint64(watched), expect, np.ones(1, np.int64), progress, 1)
        t = threading.Thread(target=lambda: out.append(
            _watch(w.table, w.table_count, np.uint64(watched), expect, stop, progress, 1 << 40)))
        t.start()
        rewrites = 0
        try:
            deadline = time.monotonic() + 3.0
            while progress[1] == 0 and time.monotonic() < deadline:
                time.sleep(0.001)
            end = time.monotonic() + 1.0
            k = 0
            while time.monotonic() < end:
                k += 1
                # identity grants below the watched IOVA and compact ones above:
                # row indices shift with every change
                n = 1 + k % 40
                for j in range(n):
                    w.iotlb_update(0x100000 + 2 * j * PG, PG, UADDR + (j % 8) * PG, PERM_RW)
                w.iotlb_update(watched + (2 + 2 * (k % 5)) * PG, PG, UADDR, PERM_RO)
                w.iotlb_invalidate(0x100000, 2 * n * PG)
                w.iotlb_invalidate(watched + PG, 1 << 20)
                assert w.iotlb_update(watched, PG, UADDR, PERM_RW) == expect  # re-grant, same place
                rewrites += 2 * n + 4
        finally:
            stop[0] = 1
            t.join(10)
        assert not t.is_alive()
        wrong, hits, misses = out[0]
        assert wrong == 0, (wrong, hits, misses)
        assert hits > 0 and rewrites > 1000 and progress[0] > 1


def test_random_grants_and_invalidates_match_a_page_model(ram):
    """Against a page-by-page model: after each random update/invalidate,
    every page of the IOVA range translates as the model says (window offset
    holds the right VM1 page, perm respected, gpa for the dirty log)."""
    from pmd.guestmem.translate import iova_to_gpa
    fd, _ = ram
    rng = np.random.default_rng(7)
    pages = 48
    base = 0x100000
    model: dict[int, tuple[int, int]] = {}  # iova page -> (VM1 ram page, perm)
    with Window(1 << 32, iommu=True) as w:
        w.add_region(fd, 0, RAM_SIZE, MMAP_OFFSET, UADDR)
        for _ in range(300):
            first = int(rng.integers(0, pages))
            n = int(rng.integers(1, 5))
            n = min(n, pages - first)
            if rng.random() < 0.6:
                ram_page = int(rng.integers(0, RAM_SIZE // PG - n))
                perm = int(rng.choice([PERM_RO, PERM_WO, PERM_RW]))
                w.iotlb_update(base + first * PG, n * PG, UADDR + ram_page * PG, perm)
                for k in range(n):
                    model[first + k] = (ram_page + k, perm)
            else:
                w.iotlb_invalidate(base + first * PG, n * PG)
                for k in range(n):
                    model.pop(first + k, None)
            for p in range(pages):
                iova = base + p * PG + 5
                off = tr(w, iova, 1, write=False)
                woff = tr(w, iova, 1, write=True)
                gpa = int(iova_to_gpa(w.gpa_table, w.gpa_table_count, iova, 1))
                if p not in model:
                    assert off == woff == gpa == -1, p
                    continue
                ram_page, perm = model[p]
                assert gpa == ram_page * PG + 5, p
                if perm == PERM_WO:
                    assert off == -1 and woff >= 0
                else:
                    assert off >= 0 and w.array[off - 5] == (ram_page + 1) & 0xFF, p
                    assert woff == (off if perm == PERM_RW else -1), p
            assert len(w.entries()) <= len(model)


def test_identical_regrant_keeps_the_mapping(ram):
    """The same grant twice (asked ahead and on demand) changes nothing: no
    invalidate, same offset; a grant differing in pages or perm replaces."""
    fd, _ = ram
    calls = []
    with Window(1 << 32, iommu=True) as w:
        w.add_region(fd, 0, RAM_SIZE, MMAP_OFFSET, UADDR)
        off = w.iotlb_update(0x10000, PG, UADDR + 4 * PG, PERM_RO)
        seq = int(w.table_count[1])
        assert w.iotlb_update(0x10000, PG, UADDR + 4 * PG, PERM_RO, quiesce=lambda: calls.append(1)) == off
        assert calls == [] and int(w.table_count[1]) == seq
        w.iotlb_update(0x10000, PG, UADDR + 4 * PG, PERM_RW, quiesce=lambda: calls.append(2))
        assert calls == [2] and w.entries() == [(0x10000, 0x10000 + PG, 0x10000, PERM_RW)]
        w.iotlb_update(0x10000, PG, UADDR + 6 * PG, PERM_RW, quiesce=lambda: calls.append(3))
        assert calls == [2, 3] and w.array[0x10000] == 7


def test_hugetlbfs_regions_map_at_their_gpa(hugepages):
    """VM1's memory in hugetlbfs files (DPDK on hugepages): the window's base
    is aligned for them, a 2 MiB-aligned region maps and both sides see the
    same bytes; a region a hugepage cannot map at is refused, naming it, and
    nothing of it is registered."""
    huge = 2 << 20
    path = os.path.join(hugepages, "vm1-ram")
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    try:
        os.unlink(path)
        os.ftruncate(fd, 4 * huge)
        m = mmap.mmap(fd, 4 * huge)
        m[huge:huge + 5] = b"hello"
        with Window() as w:
            assert w.base % (1 << 30) == 0
            w.add_region(fd, 0x4000_0000, 2 * huge, huge, UADDR)  # file offset 2 MiB
            assert bytes(w.array[0x4000_0000:0x4000_0005]) == b"hello"
            w.array[0x4000_0000 + huge] = 7
            assert m[2 * huge] == 7
            with pytest.raises(OSError, match="memory region gpa=0x80001000"):
                w.add_region(fd, 0x8000_1000, huge, 2 * huge, UADDR + (1 << 30))
            assert [r.gpa for r in w.regions_list] == [0x4000_0000]
        m.close()
    finally:
        os.close(fd)
