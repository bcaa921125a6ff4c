"""Address translation in kernels: guest address -> offset in the window.

The window (``window.py``) maps VM1 memory only where VM1 granted it; these
functions are the kernels' own check in front of that hardware backstop.  A
guest address that is not mapped, a buffer that runs past the end of its
entry, an overflowing ``addr + length`` or a write into a read-only grant all
give ``-1``: the caller counts it (or, with an IOMMU, sends a MISS and parks
the descriptor) and never touches the window.

Tables (owned by ``Window``; the control thread rewrites them while lcores
translate, see "Seqlock" below):

- ``table``: ``(N, 4)`` uint64 rows ``[iova_start, iova_last, window_offset,
  perm]``; ``gpa_table``: the same shape, ``[iova_start, iova_last, gpa, 3]``
  (for the dirty log; a row never spans two guest-physical ranges), sorted by ``iova_start``, non-overlapping.  ``iova_last`` is the
  last byte (inclusive) so a grant of the top page of the 64-bit space fits;
  ``perm`` is the vhost-user access mask (1 RO, 2 WO, 3 RW).  Without an IOMMU
  the window fills it with the memory regions, ``[gpa, gpa_last, gpa, RW]``,
  so one kernel serves both modes.
- ``regions``: ``(M, 2)`` uint64 rows ``[gpa_start, gpa_end]``, ``gpa_end``
  exclusive (regions lie inside the window, far below 2**64).
- counts are 2-element int64 arrays ``[rows, seq]``.

Seqlock: the writer makes ``seq`` odd, rewrites rows and count, makes it even
again.  A reader takes ``seq`` (acquire; spins while odd), looks up, then an
acquire fence (keeps the table loads above it) and re-reads ``seq``; if it
moved, the lookup may have mixed old and new rows and is retried.  A torn
lookup never indexes out of bounds: ``rows`` is always at most the table's
capacity, so garbage only ever yields a wrong value, which the retry discards.
Removing rows is not enough to unmap: the window revokes pages only after
the port's lcores are quiescent (``Window.iotlb_invalidate(quiesce=...)``).

All arithmetic is done in uint64 with explicit range checks: descriptor
addresses and lengths come from an untrusted peer.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..atomics import cpu_pause, fence_acquire, load_acquire

PERM_RO = 1
PERM_WO = 2
PERM_RW = 3

# table columns (the window's gpa_table has the gpa in COL_OFFSET's place)
COL_IOVA, COL_LAST, COL_OFFSET, COL_PERM = range(4)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def row_below(rows, n, a):
    """Index of the last of the sorted ``rows[:n]`` whose start (column 0)
    is at most ``a``, or -1 (binary search)."""
    lo = np.int64(0)
    hi = np.int64(n)
    while lo < hi:
        mid = (lo + hi) >> 1
        if rows[mid, 0] <= a:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _lookup(table, n, a, ln, need, col):
    i = row_below(table, n, a)
    if i < 0:
        return np.int64(-1)
    start = table[i, COL_IOVA]
    last = table[i, COL_LAST]
    off = table[i, col]
    perm = table[i, COL_PERM]
    if a < start or a > last:
        return np.int64(-1)
    if col == COL_PERM:  # granted_perm's question (a constant: folded away elsewhere)
        return np.int64(perm)
    if (perm & need) != need:
        return np.int64(-1)
    # bytes a .. a+ln-1 must end by last (last - a >= 0: nothing wraps) or
    # continue in the next rows: a buffer across two pages granted one by
    # one (each IOTLB UPDATE is a page) is still one range of the window
    while ln > np.uint64(0) and ln - np.uint64(1) > last - a:
        i += 1
        if i >= n or table[i, COL_IOVA] != last + np.uint64(1):
            return np.int64(-1)
        if table[i, col] != off + (table[i, COL_IOVA] - start) or (table[i, COL_PERM] & need) != need:
            return np.int64(-1)
        last = table[i, COL_LAST]
    return np.int64(off + (a - start))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _seq_lookup(table, count, iova, length, need, col):
    a = np.uint64(iova)
    ln = np.uint64(length)
    while True:
        seq = load_acquire(count, 1)
        if seq & 1:  # a rewrite is in progress
            cpu_pause()
            continue
        res = _lookup(table, load_acquire(count, 0), a, ln, need, col)
        fence_acquire()  # the table loads stay above the re-check
        if load_acquire(count, 1) == seq:
            return res
        cpu_pause()


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def translate_inline(table, count, iova, length, write):
    """``translate`` inlined into the caller, for a per-packet call site
    (a call passes both arrays by value: ~10 ns a packet); elsewhere the
    plain call keeps the kernels small and quick to compile."""
    return _seq_lookup(table, count, iova, length, np.uint64(2) if write else np.uint64(1), COL_OFFSET)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _row_of(table, count, a):
    """The row holding ``a`` as one consistent look: ``(start, last,
    offset, perm)``, perm 0 if no row holds it."""
    while True:
        seq = load_acquire(count, 1)
        if seq & 1:
            cpu_pause()
            continue
        i = row_below(table, load_acquire(count, 0), a)
        start = last = off = perm = np.uint64(0)
        if i >= 0:
            start, last, off, perm = table[i, COL_IOVA], table[i, COL_LAST], table[i, COL_OFFSET], table[i, COL_PERM]
        fence_acquire()
        if load_acquire(count, 1) == seq:
            return start, last, off, perm if i >= 0 and a <= last else np.uint64(0)
        cpu_pause()


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def translate_remembered(table, count, iova, length, write, memo):
    """``translate`` for the lookups of one burst, remembering the last row
    it found in ``memo`` (int64 ``[start, last, offset, perm]``, perm 0:
    none; the caller clears it when a burst begins): a buffer inside that
    row costs two compares, not a table search.  Sound for one burst only:
    the rows a burst saw stay mapped until it ends (an IOTLB invalidation
    waits for the vring's read section, a memory table change for the
    lcore's quiescent point), as a translation made mid-burst does."""
    a = np.uint64(iova)
    ln = np.uint64(length)
    need = np.uint64(2) if write else np.uint64(1)
    if ln == 0:
        return translate_inline(table, count, iova, length, write)
    start, last = np.uint64(memo[0]), np.uint64(memo[1])
    if np.uint64(memo[3]) & need == need and start <= a <= last and ln - np.uint64(1) <= last - a:
        return np.int64(np.uint64(memo[2]) + (a - start))
    start, last, off, perm = _row_of(table, count, a)
    if perm & need == need and start <= a and ln - np.uint64(1) <= last - a:
        memo[0], memo[1], memo[2], memo[3] = np.int64(start), np.int64(last), np.int64(off), np.int64(perm)
        return np.int64(off + (a - start))
    return translate_inline(table, count, iova, length, write)  # across rows, or refused


@njit(nogil=True, cache=True, _nrt=False)
def translate(table, count, iova, length, write):
    """Window offset of ``[iova, iova + length)``, or -1.

    ``-1`` when the range is not covered by one table entry or a run of
    adjacent entries contiguous in the window, or when ``write`` and an
    entry is not writable (or not ``write`` and not readable).  ``length``
    0 checks only that ``iova`` itself is mapped.  ``count`` is the window's
    ``table_count`` ``[rows, seq]``: a lookup that raced a rewrite is retried.
    """
    return translate_inline(table, count, iova, length, write)


@njit(nogil=True, cache=True, _nrt=False)
def granted_perm(table, count, iova):
    """The permission (1 RO, 2 WO, 3 RW) the byte at ``iova`` is granted
    with, or 0 if it is not mapped: one consistent look, so a caller can
    tell "not granted (yet)" from "granted without the access it needs"."""
    return max(_seq_lookup(table, count, iova, 1, np.uint64(0), COL_PERM), np.int64(0))


@njit(nogil=True, cache=True, _nrt=False)
def iova_to_gpa(gpa_table, count, iova, length):
    """Guest-physical address of ``[iova, iova + length)`` if it is one
    contiguous gpa range (the window's ``gpa_table``), else -1.  The dirty
    log is kept in gpas."""
    return _seq_lookup(gpa_table, count, iova, length, np.uint64(0), COL_OFFSET)


@njit(nogil=True, cache=True, _nrt=False)
def translate_gpa(regions, count, gpa, length):
    """``gpa`` itself (its window offset without an IOMMU) if
    ``[gpa, gpa + length)`` lies inside one memory region, else -1.
    ``count`` is the window's ``region_count`` ``[rows, seq]`` (seqlock)."""
    a = np.uint64(gpa)
    ln = np.uint64(length)
    while True:
        seq = load_acquire(count, 1)
        if seq & 1:
            cpu_pause()
            continue
        n = load_acquire(count, 0)
        res = np.int64(-1)
        for i in range(n):
            start = regions[i, 0]
            end = regions[i, 1]
            if a >= start and a < end and ln <= end - a:
                res = np.int64(a)
                break
        fence_acquire()
        if load_acquire(count, 1) == seq:
            return res
        cpu_pause()
