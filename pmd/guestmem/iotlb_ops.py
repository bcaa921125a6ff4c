"""An IOTLB update and invalidate as compiled steps over a window's arrays.

``WinState`` bundles what a kernel needs of a ``Window``: its base address
and mode, the grant rows, both translation tables and the region map (each
region's uaddr range, mmap offset and fd).  The window's own Python methods
call these kernels too, so there is one implementation of each step; the
control thread's IOTLB kernel (the vhost-pci port's ``iotlb_serve.py``)
calls them without Python per message.

``iotlb_map`` takes only the plain case -- one region, an identity offset
(IOVA inside the window), nothing overlapping but an identical grant -- and
answers -1 for everything else, which the caller hands to
``Window.iotlb_update`` (re-grants, the compact area, grants across regions,
and the error messages).  Its steps also run apart: ``plain_grant`` (the
checks) and ``insert_grant`` on the grant rows' writer, ``map_grant`` (the
mmap) and ``publish_grant`` (the tables) later on a polling lcore (the
vhost-pci port's ``iotlb_maps.py``).  Invalidation is two steps around a grace period:
``iotlb_drop`` (rows out, tables republished) and, once no lcore can hold
an old translation, ``revoke_ranges`` (``PROT_NONE`` over the pages).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from ..syscalls import mmap_at
from .grants import find_grant, insert_grant, insert_published, drop_range, overlaps, publish
from .translate import PERM_RO, PERM_RW
from .vmem import MAP_FIXED, MAP_SHARED, PAGE_SIZE, PROT_NONE, PROT_READ, PROT_WRITE, RESERVE_FLAGS

# WinState.params
P_BASE, P_IDENTITY_LIMIT, P_IOMMU = range(3)
# WinState.rmap columns (int64)
R_UADDR, R_SIZE, R_MMAP_OFFSET, R_FD, R_GPA = range(5)

_PAGE = np.uint64(PAGE_SIZE)
_ONE = np.uint64(1)
# plain_grant's answers besides a region index
NOT_PLAIN, SAME_GRANT = np.int64(-1), np.int64(-2)


class WinState(NamedTuple):
    """A window's arrays, as kernels take them (``Window.kstate``)."""

    params: np.ndarray  # int64 [base address, identity limit, iommu]
    grants: np.ndarray  # uint64 (capacity, 5): grants.G_* rows, sorted
    gcount: np.ndarray  # int64 [rows]
    table: np.ndarray
    tcount: np.ndarray
    gpa_table: np.ndarray
    gpa_count: np.ndarray
    scratch_t: np.ndarray
    scratch_g: np.ndarray
    rmap: np.ndarray  # int64 (max_regions, 5): R_* columns
    rcount: np.ndarray  # int64 [rows, seq] (the regions' seqlock count)
    gone: np.ndarray  # uint64 (capacity, 2): scratch for an invalidate's (offset, length) pieces


@njit(nogil=True, cache=True, _nrt=False)
def publish_state(ws):
    publish(ws.grants, ws.gcount, ws.table, ws.tcount, ws.gpa_table, ws.gpa_count, ws.scratch_t, ws.scratch_g)


@njit(nogil=True, cache=True, _nrt=False)
def plain_grant(ws, iova, size, uaddr, perm):
    """The checks of ``iotlb_map``: the region of the grant ``[iova,
    iova+size)`` -> VM1's ``uaddr`` when it is the plain case, NOT_PLAIN, or
    SAME_GRANT when that very grant is there already.  Reads the grant rows
    (their writer's call)."""
    if ws.params[P_IOMMU] == 0 or perm < PERM_RO or perm > PERM_RW:
        return NOT_PLAIN
    if size == 0 or (iova | size | uaddr) & (_PAGE - _ONE) != 0:
        return NOT_PLAIN
    end = iova + size
    if end < iova or end > np.uint64(ws.params[P_IDENTITY_LIMIT]) or uaddr + size < uaddr:
        return NOT_PLAIN
    r = -1
    for k in range(ws.rcount[0]):
        ru = np.uint64(ws.rmap[k, R_UADDR])
        if ru <= uaddr and uaddr + size <= ru + np.uint64(ws.rmap[k, R_SIZE]):
            r = k
            break
    if r < 0 or ws.rmap[r, R_FD] < 0:
        return NOT_PLAIN
    last = end - _ONE
    if find_grant(ws.grants, ws.gcount, iova, last, np.uint64(perm), grant_gpa(ws, r, uaddr)) >= 0:
        return SAME_GRANT  # asked twice (ahead and on demand): mapped already
    if overlaps(ws.grants, ws.gcount, iova, last) or ws.gcount[0] >= len(ws.grants):
        return NOT_PLAIN
    return np.int64(r)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def grant_gpa(ws, r, uaddr):
    """VM1's guest-physical address of ``uaddr`` in region ``r``."""
    return np.uint64(ws.rmap[r, R_GPA]) + (uaddr - np.uint64(ws.rmap[r, R_UADDR]))


@njit(nogil=True, cache=True, _nrt=False)
def map_grant(ws, r, iova, size, uaddr, perm):
    """The plain grant's pages (region ``r``) at window offset ``iova``;
    False if the mmap failed (the range is reserved again)."""
    prot = PROT_READ if perm == PERM_RO else PROT_READ | PROT_WRITE
    addr = ws.params[P_BASE] + np.int64(iova)
    file_off = ws.rmap[r, R_MMAP_OFFSET] + np.int64(uaddr - np.uint64(ws.rmap[r, R_UADDR]))
    if mmap_at(addr, np.int64(size), prot, MAP_SHARED | MAP_FIXED, ws.rmap[r, R_FD], file_off) != addr:
        _revoke(ws, np.int64(iova), np.int64(size))
        return False
    return True


@njit(nogil=True, cache=True, _nrt=False)
def publish_grant(ws, iova, last, gpa, perm):
    """A plain grant, mapped, into both translation tables (the kernels see it from here)."""
    insert_published(ws.table, ws.tcount, iova, last, iova, np.uint64(perm))
    insert_published(ws.gpa_table, ws.gpa_count, iova, last, gpa, np.uint64(PERM_RW))


@njit(nogil=True, cache=True, _nrt=False)
def iotlb_map(ws, iova, size, uaddr, perm):
    """Map the grant ``[iova, iova+size)`` -> VM1's ``uaddr`` with ``perm``
    at window offset ``iova`` and publish it; returns the offset, or -1 when
    this is not the plain case (nothing changed: the caller takes it)."""
    r = plain_grant(ws, iova, size, uaddr, perm)
    if r == SAME_GRANT:
        return np.int64(iova)
    if r < 0 or not map_grant(ws, r, iova, size, uaddr, perm):
        return np.int64(-1)
    gpa = grant_gpa(ws, r, uaddr)
    last = iova + size - _ONE
    insert_grant(ws.grants, ws.gcount, iova, last, iova, np.uint64(perm), gpa)
    publish_grant(ws, iova, last, gpa, perm)
    return np.int64(iova)


@njit(nogil=True, cache=True, _nrt=False)
def iotlb_drop(ws, start, last, gone):
    """Step (a) of an invalidate: the rows of ``[start, last]`` out of the
    grants (``gone`` gets their ``(offset, length)``) and both tables
    republished; returns how many pieces went, or -1 (nothing changed: the
    rows would not fit)."""
    n = drop_range(ws.grants, ws.gcount, start, last, gone)
    if n > 0:
        publish_state(ws)
    return n


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _revoke(ws, off, length):
    addr = ws.params[P_BASE] + off
    return mmap_at(addr, length, PROT_NONE, RESERVE_FLAGS | MAP_FIXED, -1, 0) == addr


@njit(nogil=True, cache=True, _nrt=False)
def revoke_ranges(ws, gone, n):
    """Step (c): ``PROT_NONE`` anonymous memory over each ``gone[:n]``
    range (after the grace period); False if one mmap failed.

    ``gone[:n]`` are the pieces of one ``drop_range`` call, in IOVA order:
    between two pieces below the identity limit (window offset = IOVA)
    every page was inside the dropped range, so none is granted now, and
    one ``mmap`` revokes a run of such pieces with the gaps between them.
    A lazy guest IOMMU's flush drops hundreds of pages at once: one call
    instead of one per page (each a TLB flush)."""
    ok = True
    limit = np.int64(ws.params[P_IDENTITY_LIMIT])
    k = 0
    while k < n:
        off = np.int64(gone[k, 0])
        end = off + np.int64(gone[k, 1])
        k += 1
        while end <= limit and k < n and np.int64(gone[k, 0]) >= end:  # the next identity piece joins the run
            nxt = np.int64(gone[k, 0]) + np.int64(gone[k, 1])
            if nxt > limit:
                break
            end = nxt
            k += 1
        ok &= _revoke(ws, off, end - off)
    return ok
