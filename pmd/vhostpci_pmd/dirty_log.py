"""The dirty log (vhost-user.rst "Migration"): one bit per 4 KiB page of
VM1's guest-physical memory, set for every byte the device writes while
VHOST_F_LOG_ALL is on, so VM1's hypervisor re-sends those pages.

The log is a shared mapping the front-end gives (SET_LOG_BASE) and may
replace at any time; kernels reach it through ``logctl`` (its address and
size) instead of holding an array, so the port's kernel state never
changes.  The control thread clears ``LOG_ON`` and waits for the lcores to
be quiescent before the old mapping goes away.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..atomics import fetch_or_u8_at, load_acquire
from ..vhost_user.messages import VHOST_LOG_PAGE
from ..guestmem.translate import iova_to_gpa

LOG_ON, LOG_ADDR, LOG_SIZE = 0, 1, 2
N_LOGCTL = 8
_PAGE_SHIFT = VHOST_LOG_PAGE.bit_length() - 1


def new_logctl() -> np.ndarray:
    return np.zeros(N_LOGCTL, np.int64)


@njit(nogil=True, cache=True, _nrt=False)
def _mark(logctl, gpa, length):
    addr = logctl[LOG_ADDR]
    size = logctl[LOG_SIZE]
    page = gpa >> _PAGE_SHIFT
    end = (gpa + length - 1) >> _PAGE_SHIFT
    while page <= end:
        byte = page >> 3
        if byte < size:  # pages beyond the log were not asked for
            fetch_or_u8_at(addr, byte, 1 << (page & 7))
        page += 1


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def log_write(logctl, gpa_table, gcount, iommu, addr, length):
    """Mark ``[addr, addr + length)`` dirty; ``addr`` is a GPA, or an IOVA
    when ``iommu`` (looked up page by page if its gpas are scattered)."""
    if length <= 0 or load_acquire(logctl, LOG_ON) == 0:
        return
    if not iommu:
        _mark(logctl, np.int64(addr), length)
        return
    gpa = iova_to_gpa(gpa_table, gcount, addr, length)
    if gpa >= 0:
        _mark(logctl, gpa, length)
        return
    a = np.int64(addr)
    end = a + length
    while a < end:  # the range crosses gpa discontinuities
        nxt = min(((a >> _PAGE_SHIFT) + 1) << _PAGE_SHIFT, end)
        g = iova_to_gpa(gpa_table, gcount, a, 1)
        if g >= 0:
            _mark(logctl, g, nxt - a)
        a = nxt
