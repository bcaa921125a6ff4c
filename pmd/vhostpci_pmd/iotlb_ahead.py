"""The pages a parked vring asks for ahead (``iotlb.ask_ahead``): what the
next available chains need that VM1's IOMMU has not granted yet.

A strict guest IOMMU grants a buffer's page only when asked; one MISS per
buffer would cost a round trip per packet.  When a kernel parks on a miss,
``misses_ahead`` looks at the chains queued behind it, read-only (nothing
is consumed past the miss), and lists every page that is not granted the
way its descriptor uses it: ``page | 1`` for a device-writable descriptor
(asked WO), ``page`` for a readable one (asked RO), each once, in ring
order.  Both layouts:

- split: the available ring's heads from ``last_avail``, each chain through
  ``next`` (or its indirect table);
- packed: the descriptor ring from the device's position while the flags
  say "available" for the expected wrap counter, each chain through
  consecutive slots (or its indirect table).

A descriptor table or ring that is not mapped is skipped (the kernel's own
miss asks for it); an indirect table is looked into when mapped; a page
granted without the needed permission is not asked for (asking would get
the same answer: ``iotlb.buffer_offset`` counts it once it is reached).
This runs on the lcore, so at most MAX_VISITS descriptors and pages are
looked at, whatever chains and lengths VM1 wrote: a hostile ring must not
stall the data path.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..guestmem.translate import granted_perm, translate
from ..guestmem.vmem import PAGE_SIZE
from ..virtio import packed, split
from .state import VQ_AVAIL, VQ_DESC, VQ_LAST_AVAIL, VQ_NUM, VQ_PACKED, VQ_READY

MAX_AHEAD = 256  # chains looked at (a whole ring of usual size); also the pages listed, at most
MAX_VISITS = 4 * MAX_AHEAD  # descriptors and pages looked at, at most


@njit(nogil=True, cache=True, _nrt=False)
def _add(out, n, page):
    for k in range(n):
        if out[k] == page:
            return n
    if n < len(out):
        out[n] = page
        n += 1
    return n


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _buffer(st, out, n, visits, addr, length, write):
    """List the ungranted pages of one buffer; returns (n, visits left)."""
    if length > 0 and translate(st.table, st.tcount, addr, length, write) < 0:
        a = np.int64(addr) & ~np.int64(PAGE_SIZE - 1)
        end = np.int64(addr) + length
        while a < end and visits > 0:
            visits -= 1
            if granted_perm(st.table, st.tcount, a) == 0:
                n = _add(out, n, a | (1 if write else 0))
            a += PAGE_SIZE
    return n, visits


@njit(nogil=True, cache=True, _nrt=False)
def _split_ahead(st, v, out):
    row = st.vq[v]
    num = row[VQ_NUM]
    m = st.mem
    desc_size, avail_size, _ = split.ring_sizes(num)
    desc = translate(st.table, st.tcount, row[VQ_DESC], desc_size, False)
    avail = translate(st.table, st.tcount, row[VQ_AVAIL], avail_size, False)
    if desc < 0 or avail < 0:
        return 0
    last = row[VQ_LAST_AVAIL]
    pending = (split.avail_idx(m, avail) - last) & 0xFFFF
    n = 0
    visits = MAX_VISITS
    for k in range(min(pending, MAX_AHEAD, num)):
        head = split.avail_entry(m, avail, (last + k) & (num - 1))
        if head >= num:
            continue
        tbl, tn, i = desc, num, head
        if split.desc_flags(m, desc, head) & split.VRING_DESC_F_INDIRECT:
            tn = split.desc_len(m, desc, head) // split.DESC_SIZE
            tbl = translate(st.table, st.tcount, split.desc_addr(m, desc, head), split.DESC_SIZE * tn, False)
            if tbl < 0 or tn == 0:
                continue
            i = 0
        for _ in range(tn):  # a chain visits each descriptor once at most
            visits -= 1
            if visits < 0:
                return n
            flags = split.desc_flags(m, tbl, i)
            n, visits = _buffer(st, out, n, visits, split.desc_addr(m, tbl, i), split.desc_len(m, tbl, i),
                                flags & split.VRING_DESC_F_WRITE != 0)
            if flags & split.VRING_DESC_F_NEXT == 0:
                break
            i = split.desc_next(m, tbl, i)
            if i >= tn:
                break
        if n >= len(out):
            break
    return n


@njit(nogil=True, cache=True, _nrt=False)
def _packed_ahead(st, v, out):
    row = st.vq[v]
    num = row[VQ_NUM]
    m = st.mem
    desc_size, _, _ = packed.ring_sizes(num)
    desc = translate(st.table, st.tcount, row[VQ_DESC], desc_size, False)
    if desc < 0:
        return 0
    pos = row[VQ_LAST_AVAIL]
    i, wrap = packed.pos_idx(pos), packed.pos_wrap(pos)
    n = 0
    visits = MAX_VISITS
    slots = 0
    chains = 0
    while slots < num and chains < MAX_AHEAD and n < len(out):
        flags = packed.desc_flags_acquire(m, desc, i)  # the head's flags, then the rest of its chain
        if not packed.is_avail(flags, wrap):
            break
        chains += 1
        while True:  # one chain: consecutive slots while NEXT, or one INDIRECT
            visits -= 1
            if visits < 0:
                return n
            addr, length = packed.desc_addr(m, desc, i), packed.desc_len(m, desc, i)
            if flags & packed.VRING_DESC_F_INDIRECT:
                tn = length // packed.DESC_SIZE
                tbl = translate(st.table, st.tcount, addr, packed.DESC_SIZE * tn, False)
                for j in range(tn if tbl >= 0 else 0):
                    visits -= 1
                    if visits < 0:
                        return n
                    n, visits = _buffer(st, out, n, visits, packed.desc_addr(m, tbl, j), packed.desc_len(m, tbl, j),
                                        packed.desc_flags(m, tbl, j) & packed.VRING_DESC_F_WRITE != 0)
            else:
                n, visits = _buffer(st, out, n, visits, addr, length, flags & packed.VRING_DESC_F_WRITE != 0)
            slots += 1
            i += 1
            if i == num:
                i = 0
                wrap ^= 1
            if flags & packed.VRING_DESC_F_NEXT == 0 or slots >= num:
                break
            flags = packed.desc_flags(m, desc, i)
    return n


@njit(nogil=True, cache=True, _nrt=False)
def misses_ahead(st, v, out):
    """Pages of the buffers in vring ``v``'s next available chains that the
    window does not grant the way the descriptor is used (see the module
    docstring); fills ``out`` (distinct, in ring order) and returns how many."""
    if st.vq[v, VQ_READY] == 0:
        return 0
    if st.vq[v, VQ_PACKED] != 0:
        return _packed_ahead(st, v, out)
    return _split_ahead(st, v, out)
