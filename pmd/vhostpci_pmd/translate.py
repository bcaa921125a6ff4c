"""Address translation in kernels: guest address -> offset in the window.

The window (``window.py``) maps VM1 memory only where VM1 granted it; these
functions are the kernels' own check in front of that hardware backstop.  A
guest address that is not mapped, a buffer that runs past the end of its
entry, an overflowing ``addr + length`` or a write into a read-only grant all
give ``-1``: the caller counts it (or, with an IOMMU, sends a MISS and parks
the descriptor) and never touches the window.

Tables (owned by ``Window``; the control thread rewrites them only while the
lcores using the port are quiescent):

- ``table``: ``(N, 4)`` uint64 rows ``[iova_start, iova_last, window_offset,
  perm]``, sorted by ``iova_start``, non-overlapping.  ``iova_last`` is the
  last byte (inclusive) so a grant of the top page of the 64-bit space fits;
  ``perm`` is the vhost-user access mask (1 RO, 2 WO, 3 RW).  Without an IOMMU
  the window fills it with the memory regions, ``[gpa, gpa_last, gpa, RW]``,
  so one kernel serves both modes.
- ``regions``: ``(M, 2)`` uint64 rows ``[gpa_start, gpa_end]``, ``gpa_end``
  exclusive (regions lie inside the window, far below 2**64).
- counts are 1-element int64 arrays, read with an acquire load so a kernel
  that polls in a loop sees a new table after its quiescent point.

All arithmetic is done in uint64 with explicit range checks: descriptor
addresses and lengths come from an untrusted peer.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..atomics import load_acquire

PERM_RO = 1
PERM_WO = 2
PERM_RW = 3


@njit(nogil=True, cache=True)
def translate(table, count, iova, length, write):
    """Window offset of ``[iova, iova + length)``, or -1.

    ``-1`` when the range is not inside one table entry, or when ``write`` and
    the entry is not writable (or not ``write`` and not readable).  ``length``
    0 checks only that ``iova`` itself is mapped.
    """
    n = load_acquire(count, 0)
    a = np.uint64(iova)
    ln = np.uint64(length)
    need = np.uint64(2) if write else np.uint64(1)
    # binary search: last row with iova_start <= a
    lo = np.int64(0)
    hi = np.int64(n)
    while lo < hi:
        mid = (lo + hi) >> 1
        if table[mid, 0] <= a:
            lo = mid + 1
        else:
            hi = mid
    i = lo - 1
    if i < 0:
        return np.int64(-1)
    last = table[i, 1]
    if a > last:
        return np.int64(-1)
    # bytes a .. a+ln-1 must end by last; last - a >= 0, so nothing wraps
    if ln > np.uint64(0) and ln - np.uint64(1) > last - a:
        return np.int64(-1)
    if (table[i, 3] & need) != need:
        return np.int64(-1)
    return np.int64(table[i, 2] + (a - table[i, 0]))


@njit(nogil=True, cache=True)
def translate_gpa(regions, count, gpa, length):
    """``gpa`` itself (its window offset without an IOMMU) if
    ``[gpa, gpa + length)`` lies inside one memory region, else -1."""
    n = load_acquire(count, 0)
    a = np.uint64(gpa)
    ln = np.uint64(length)
    for i in range(n):
        start = regions[i, 0]
        end = regions[i, 1]
        if a >= start and a < end and ln <= end - a:
            return np.int64(a)
    return np.int64(-1)
