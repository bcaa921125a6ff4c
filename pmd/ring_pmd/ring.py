"""A single-producer single-consumer ring of int32 buffer indices.

Indices are free-running int64 counters (never wrap in practice); the
producer owns ``ctl[PROD]``, the consumer ``ctl[CONS]``, each on its own
cache line, published with release stores and read with acquire loads.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..atomics import load_acquire, store_release

PROD = 0
CONS = 8


def new_rings(nb_queues: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Slots (nq, size) and control words (nq, 16) for ``nb_queues`` rings."""
    if size <= 0 or size & (size - 1):
        raise ValueError(f"ring size must be a power of two, got {size}")
    return np.zeros((nb_queues, size), np.int32), np.zeros((nb_queues, 16), np.int64)


@njit(nogil=True, cache=True, _nrt=False)
def ring_enqueue(slots, ctl, bufs, nb):
    """Enqueue up to ``nb`` of ``bufs``; returns how many fitted."""
    size = slots.shape[0]
    prod = ctl[PROD]
    cons = load_acquire(ctl, CONS)
    n = min(nb, size - (prod - cons))
    mask = size - 1
    for k in range(n):
        slots[(prod + k) & mask] = bufs[k]
    store_release(ctl, PROD, prod + n)
    return n


@njit(nogil=True, cache=True, _nrt=False)
def ring_dequeue(slots, ctl, bufs, nb):
    """Dequeue up to ``nb`` entries into ``bufs``; returns how many."""
    size = slots.shape[0]
    cons = ctl[CONS]
    prod = load_acquire(ctl, PROD)
    n = min(nb, prod - cons)
    mask = size - 1
    for k in range(n):
        bufs[k] = slots[(cons + k) & mask]
    store_release(ctl, CONS, cons + n)
    return n


@njit(nogil=True, cache=True, _nrt=False)
def ring_count(ctl):
    return load_acquire(ctl, PROD) - load_acquire(ctl, CONS)
