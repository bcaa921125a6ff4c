"""IOTLB misses ahead of the one a kernel is parked on.

Behind a strict vIOMMU VM1 maps every buffer just before it posts it, so a
queue of N new buffers means N misses.  Asked one at a time, each costs a
full round trip (lcore -> control thread -> QEMU -> UPDATE -> lcore: ~0.1-3
ms under TCG).  When the control thread sends the MISS a kernel parked on,
it also looks at the next available chains of that ring (read-only: the
kernel consumes nothing past its miss) and asks for every buffer page that is
not granted yet, so QEMU answers them back to back (DPDK's vhost asks one at
a time: this is where a back-end that sees the whole ring can do better).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..virtio.split import (
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, avail_entry, desc_addr, desc_flags, desc_len, desc_next,
)
from ..guestmem.translate import translate
from .vq import VQ_AVAIL, VQ_DESC, VQ_LAST_AVAIL, VQ_NUM, VQ_READY

PAGE = 4096
MAX_AHEAD = 64  # chains looked at per call
MAX_ASK = 16  # pages asked for per call: a few round trips' worth, never a flood


@njit(nogil=True, cache=True, _nrt=False)
def _add(out, n, page):
    for k in range(n):
        if out[k] == page:
            return n
    if n < len(out):
        out[n] = page
        n += 1
    return n


@njit(nogil=True, cache=True, _nrt=False)
def misses_ahead(st, v, out):
    """Pages of the buffers in ring ``v``'s next available chains that the
    window does not grant the way the descriptor is used: ``page | 1`` for a
    device-writable descriptor (ask WO), ``page`` for a readable one (ask
    RO: never more than VM1 granted, or its IOMMU reports a fault); fills
    ``out`` (distinct, in ring order) and returns how many.  Chains whose
    descriptor table itself is not mapped are skipped (the kernel's own miss
    covers those); indirect tables are looked into when mapped."""
    row = st.vq[v]
    if row[VQ_READY] == 0:
        return 0
    num = row[VQ_NUM]
    m = st.mem
    desc = translate(st.table, st.tcount, row[VQ_DESC], 16 * num, False)
    avail = translate(st.table, st.tcount, row[VQ_AVAIL], 6 + 2 * num, False)
    if desc < 0 or avail < 0:
        return 0
    last = row[VQ_LAST_AVAIL]
    pending = (np.int64(m.u16[(avail + 2) >> 1]) - last) & 0xFFFF
    n = 0
    for k in range(min(pending, MAX_AHEAD, num)):
        head = avail_entry(m, avail, (last + k) & (num - 1))
        if head >= num:
            continue
        tbl, tn, i = desc, num, head
        if desc_flags(m, desc, head) & VRING_DESC_F_INDIRECT:
            tn = desc_len(m, desc, head) // 16
            tbl = translate(st.table, st.tcount, desc_addr(m, desc, head), 16 * tn, False)
            if tbl < 0 or tn == 0:
                continue
            i = 0
        for _ in range(tn):  # a chain visits each descriptor once at most
            addr = desc_addr(m, tbl, i)
            length = desc_len(m, tbl, i)
            flags = desc_flags(m, tbl, i)
            write = flags & VRING_DESC_F_WRITE != 0
            if length > 0 and translate(st.table, st.tcount, addr, length, write) < 0:
                a = np.int64(addr) & ~np.int64(PAGE - 1)
                end = np.int64(addr) + length
                while a < end:
                    if translate(st.table, st.tcount, a, 1, write) < 0:
                        n = _add(out, n, a | (1 if write else 0))
                    a += PAGE
            if flags & VRING_DESC_F_NEXT == 0:
                break
            i = desc_next(m, tbl, i)
            if i >= tn:
                break
        if n >= len(out):
            break
    return n
