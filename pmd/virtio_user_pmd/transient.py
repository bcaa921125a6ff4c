"""iommu=transient: the emulated IOMMU grants each buffer just before the
device sees it and revokes it once the device returned it (``vq.py``'s
FIFOs: the stage FIFO up to MAP_DONE, the done FIFO up to UNMAP_DONE).

One ``transient_round`` serves every vring at once, compiled: the ids
staged since the last round become UPDATEs, the ids returned become
INVALIDATEs, one message per run of consecutive ids (the free FIFO keeps
ids in cyclic order, so a round is one or two runs a FIFO), all sent in
one batch (``iotlb_batch``); only once every reply came do MAP_DONE and
UNMAP_DONE move, and the kernels post (or reuse) those buffers.  Python
runs once per round, never per buffer or per message.

``granted[v, id]`` says which buffers hold a grant now: a MISS is
answered from it, and a reconnect grants them again.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..atomics import load_acquire, store_release
from .iotlb_batch import INVALIDATE, UPDATE, call_batch, put_iotlb
from .vq import DRV_BUF, DRV_DONE_TAIL, DRV_MAP_DONE, DRV_NUM, DRV_STAGE_TAIL, DRV_STRIDE, DRV_TRANSIENT, DRV_UNMAP_DONE

# transient_round's counts (its ``counts`` argument)
TR_GRANTS, TR_INVALIDATES, TR_ROUNDS = range(3)
N_TR = 4


def batch_capacity(nvq: int, num: int) -> int:
    """Messages a round may write at most: a run per id, both FIFOs."""
    return 2 * nvq * num


@njit(nogil=True, cache=True, _nrt=False)
def _runs(fifo, ids, lo, hi, num, base, stride, uaddr, perm, kind, granted, buf, n):
    """Messages for the ids at ``[lo, hi)`` of ``fifo`` (mod num): one per
    run of consecutive ids; ``granted`` follows (UPDATE: 1, INVALIDATE: 0).
    ``uaddr`` (the local address of buffer 0) and ``perm``: 0 for an
    INVALIDATE, as QEMU sends it.  Returns the batch's new message count."""
    mark = 1 if kind == UPDATE else 0
    step = stride if kind == UPDATE else 0
    first = np.int64(-1)
    count = 0
    for k in range(lo, hi):
        i = np.int64(fifo[ids, k & (num - 1)])
        granted[ids, i] = mark
        if count > 0 and i == first + count:
            count += 1
            continue
        if count > 0:
            put_iotlb(buf, n, base + first * stride, count * stride, uaddr + first * step, perm, kind)
            n += 1
        first, count = i, 1
    if count > 0:
        put_iotlb(buf, n, base + first * stride, count * stride, uaddr + first * step, perm, kind)
        n += 1
    return n


@njit(nogil=True, cache=True)
def transient_round(vq, stage, done, granted, uaddr, perm, fd, buf, reply, upto, counts, timeout_ns):
    """Grant what was staged and revoke what was returned, on every
    transient vring; ``uaddr[v]``/``perm[v]``: the local address of vring
    ``v``'s first buffer and the permission its buffers get.  ``fd`` < 0:
    no back-end (its grants died with it): only ``granted`` and the
    counters move.  Returns how many messages were sent, or -1 when the
    channel failed or the back-end refused one (nothing moves then)."""
    n = 0
    for v in range(vq.shape[0]):
        row = vq[v]
        upto[v, 0] = row[DRV_MAP_DONE]
        upto[v, 1] = row[DRV_UNMAP_DONE]
        if row[DRV_TRANSIENT] == 0:
            continue
        num, base, stride = row[DRV_NUM], row[DRV_BUF], row[DRV_STRIDE]
        tail = load_acquire(row, DRV_STAGE_TAIL)
        n = _runs(stage, v, upto[v, 0], tail, num, base, stride, uaddr[v], perm[v], UPDATE, granted, buf, n)
        upto[v, 0] = tail
    n_updates = n
    for v in range(vq.shape[0]):
        row = vq[v]
        if row[DRV_TRANSIENT] == 0:
            continue
        num, base, stride = row[DRV_NUM], row[DRV_BUF], row[DRV_STRIDE]
        tail = load_acquire(row, DRV_DONE_TAIL)
        n = _runs(done, v, upto[v, 1], tail, num, base, stride, 0, 0, INVALIDATE, granted, buf, n)
        upto[v, 1] = tail
    if fd >= 0 and n > 0 and call_batch(fd, buf, n, reply, timeout_ns) != 0:
        return -1
    for v in range(vq.shape[0]):
        store_release(vq[v], DRV_MAP_DONE, upto[v, 0])
        store_release(vq[v], DRV_UNMAP_DONE, upto[v, 1])
    if fd >= 0:
        counts[TR_GRANTS] += n_updates
        counts[TR_INVALIDATES] += n - n_updates
    counts[TR_ROUNDS] += 1
    return n
