"""Grant rows and the translation tables built from them.

A grant is one range VM1 made accessible (an IOTLB update, or a whole memory
region without an IOMMU): ``Window`` keeps them sorted in a fixed uint64
array (``G_*`` columns, ``grants[:count[0]]``) and rebuilds the two tables
kernels read (``translate.py``) from it with ``publish``.  Everything here
that changes rows is compiled, so the control thread's IOTLB kernel
(``iotlb_ops.py``) and the window's Python methods share one
implementation: ``insert_grant``, ``drop_range`` (an invalidate's step (a):
remove or split the rows it covers), ``publish`` (merge, then rewrite both
tables under their seqlocks) and ``insert_published`` (one new grant into a
published table, as ``publish`` would have merged it: an UPDATE costs no
rebuild -- a lazy vIOMMU keeps tens of thousands of grants live).  ``seq_write`` is the seqlock's writer half
for Python callers; ``RangeAllocator`` hands out window space for grants
whose IOVA lies beyond the window.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from numba import njit

from ..atomics import fence, store_release
from ..atomics_py import store_flag
from .translate import PERM_RW, row_below


@contextmanager
def seq_write(count: np.ndarray) -> Iterator[None]:
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


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _continues(table, i, s, x, perm):
    """Whether a range at iova ``s``, offset ``x``, ``perm`` continues row
    ``i`` (contiguous in iova and in offset, same perm): one merged row."""
    return table[i, 1] + _ONE == s and table[i, 2] + (s - table[i, 0]) == x and table[i, 3] == perm


@njit(nogil=True, cache=True, inline="always")
def _append_merged(table, n, s, last, x, perm):
    """Append the row ``(s, last, x, perm)`` to ``table[:n]``, or extend the
    last row when both ranges are contiguous (iova and x) with the same
    perm; returns the new row count."""
    if n > 0 and _continues(table, n - 1, s, x, perm):
        table[n - 1, 1] = last
        return n
    table[n, 0] = s
    table[n, 1] = last
    table[n, 2] = x
    table[n, 3] = perm
    return n + 1


@njit(nogil=True, cache=True)
def merge_grants(grants, n, table, gpa_table):
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


NO_GRANTS = np.zeros((0, 5), dtype=np.uint64)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _seq_copy(table, count, src, m):
    """Rewrite ``table`` with ``src[:m]`` under its seqlock (``count = [rows, seq]``):
    seq odd, a fence (no row store is seen before it), rows, seq even (release)."""
    seq = count[1]
    store_release(count, 1, seq + 1)
    fence()
    old = count[0]
    for i in range(m):
        for c in range(4):
            table[i, c] = src[i, c]
    for i in range(m, old):
        for c in range(4):
            table[i, c] = 0
    count[0] = m
    store_release(count, 1, seq + 2)


@njit(nogil=True, cache=True, _nrt=False)
def publish(grants, gcount, table, tcount, gpa_table, gpa_count, scratch_t, scratch_g):
    """Rebuild both translation tables from ``grants[:gcount[0]]``
    (``merge_grants`` into the scratch arrays, then a seqlocked copy each)."""
    nt, ng = merge_grants(grants, gcount[0], scratch_t, scratch_g)
    _seq_copy(table, tcount, scratch_t, nt)
    _seq_copy(gpa_table, gpa_count, scratch_g, ng)


@njit(nogil=True, cache=True, _nrt=False)
def insert_published(table, count, s, last, x, perm):
    """Add the range ``[s, last]`` -> ``x`` with ``perm`` to a published
    translation table (``count = [rows, seq]``) under its seqlock, merged
    with its neighbours exactly as ``merge_grants`` merges: the caller made
    sure no row overlaps it, and the table has room for one more row (it is
    as large as the grant array, whose rows it merges)."""
    n = count[0]
    i = row_below(table, n, s)  # the row before the gap the range fills
    after = i >= 0 and _continues(table, i, s, x, perm)
    before = False
    if i + 1 < n:
        nxt = table[i + 1, 0]
        before = last + _ONE == nxt and table[i + 1, 2] == x + (nxt - s) and table[i + 1, 3] == perm
    seq = count[1]
    store_release(count, 1, seq + 1)
    fence()
    if after and before:  # it closes the gap between two rows: one row
        table[i, 1] = table[i + 1, 1]
        for k in range(i + 1, n - 1):
            for c in range(4):
                table[k, c] = table[k + 1, c]
        for c in range(4):
            table[n - 1, c] = 0
        count[0] = n - 1
    elif after:
        table[i, 1] = last
    elif before:
        table[i + 1, 0] = s
        table[i + 1, 2] = x
    else:
        for k in range(n, i + 1, -1):
            for c in range(4):
                table[k, c] = table[k - 1, c]
        table[i + 1, 0] = s
        table[i + 1, 1] = last
        table[i + 1, 2] = x
        table[i + 1, 3] = perm
        count[0] = n + 1
    store_release(count, 1, seq + 2)


@njit(nogil=True, cache=True, _nrt=False)
def insert_grant(grants, gcount, iova, last, off, perm, gpa):
    """Insert one row in IOVA order (the caller made sure nothing overlaps
    it); False when the array is full."""
    n = gcount[0]
    if n >= len(grants):
        return False
    i = n
    stop = row_below(grants, n, iova) + 1  # the row goes here: shift the rest up
    while i > stop:
        for c in range(5):
            grants[i, c] = grants[i - 1, c]
        i -= 1
    grants[i, G_IOVA] = iova
    grants[i, G_LAST] = last
    grants[i, G_OFF] = off
    grants[i, G_PERM] = perm
    grants[i, G_GPA] = gpa
    gcount[0] = n + 1
    return True


@njit(nogil=True, cache=True, _nrt=False)
def find_grant(grants, gcount, iova, last, perm, gpa):
    """Index of the row exactly ``(iova, last, perm, gpa)``, else -1."""
    i = row_below(grants, gcount[0], iova)
    if i >= 0 and grants[i, G_IOVA] == iova and grants[i, G_LAST] == last and grants[i, G_PERM] == perm \
            and grants[i, G_GPA] == gpa:
        return i
    return -1


@njit(nogil=True, cache=True, _nrt=False)
def overlaps(grants, gcount, start, last):
    """True if a row covers any byte of ``[start, last]`` (rows are sorted
    and disjoint: only the last one starting by ``last`` can)."""
    i = row_below(grants, gcount[0], last)
    return i >= 0 and grants[i, G_LAST] >= start


@njit(nogil=True, cache=True, _nrt=False)
def drop_range(grants, gcount, start, last, gone):
    """Remove ``[start, last]`` from the rows: a row inside goes, a row
    across an end is cut (split in two when the range is inside it).
    ``gone`` gets one ``(window offset, length)`` per removed piece; returns
    how many, or -1 with nothing changed when the rows would not fit (the
    array, or ``gone``)."""
    n = gcount[0]
    hits = 0
    splits = 0
    for i in range(n):
        if grants[i, G_LAST] >= start and grants[i, G_IOVA] <= last:
            hits += 1
            if grants[i, G_IOVA] < start and grants[i, G_LAST] > last:
                splits += 1
    if hits == 0:
        return 0
    if n + splits > len(grants) or hits > len(gone):
        return -1
    ng = 0
    i = 0
    while i < gcount[0]:
        s = grants[i, G_IOVA]
        e = grants[i, G_LAST]
        if e < start or s > last:
            i += 1
            continue
        cs = s if s > start else start
        ce = e if e < last else last
        gone[ng, 0] = grants[i, G_OFF] + (cs - s)
        gone[ng, 1] = ce - cs + _ONE
        ng += 1
        off = grants[i, G_OFF]
        gpa = grants[i, G_GPA]
        perm = grants[i, G_PERM]
        if s < cs and ce < e:  # the range is inside the row: keep both ends
            grants[i, G_LAST] = cs - _ONE
            insert_grant(grants, gcount, ce + _ONE, e, off + (ce + _ONE - s), perm, gpa + (ce + _ONE - s))
            i += 2
        elif s < cs:  # keep the head
            grants[i, G_LAST] = cs - _ONE
            i += 1
        elif ce < e:  # keep the tail
            grants[i, G_IOVA] = ce + _ONE
            grants[i, G_OFF] = off + (ce + _ONE - s)
            grants[i, G_GPA] = gpa + (ce + _ONE - s)
            i += 1
        else:  # all of it goes
            for k in range(i, gcount[0] - 1):
                for c in range(5):
                    grants[k, c] = grants[k + 1, c]
            gcount[0] -= 1
    return ng


def grant_array(rows: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    """Grant rows from ``(iova, iova_end, offset, perm, gpa)`` tuples (``iova_end`` exclusive)."""
    return np.array([(s, e - 1, off, perm, gpa) for s, e, off, perm, gpa in rows],
                    dtype=np.uint64).reshape(len(rows), 5)


def sorted_grants(*parts: np.ndarray) -> np.ndarray:
    """Grant rows joined in IOVA order (they never overlap)."""
    rows = np.concatenate(parts)
    return rows[np.argsort(rows[:, G_IOVA], kind="stable")]



class RangeAllocator:
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

