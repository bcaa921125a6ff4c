"""Fallback interrupts of the VF port: sleep on the AF_PACKET socket.

The rx ring is TPACKET_V3: the kernel hands whole blocks over
(TP_STATUS_USER) when one is full or its retire timer fires, and then wakes
the socket's pollers (``packet_poll`` reports EPOLLIN while a handed-over
block waits).  Arming has nothing to write: it only looks whether the block
at the queue's cursor is already ours (pending work: do not sleep).  A block
handed over after that look makes the socket readable, so no wake-up is
lost; the latency of a wake-up is at most the block retire timeout.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..atomics import load_acquire
from ..burst import register_intr
from .burst import VfState
from .layout import BD_BLOCK_STATUS, RX_BLOCK, TP_STATUS_USER


@njit(nogil=True, cache=True)
def vf_arm(st, q):
    """1 if the block at rx queue ``q``'s cursor is already handed over, else 0."""
    base = st.rx_cur[q, RX_BLOCK] * st.block_size
    if load_acquire(st.rx32[q], (base + BD_BLOCK_STATUS) >> 2) & TP_STATUS_USER:
        return np.int64(1)
    return np.int64(0)


@njit(nogil=True, cache=True)
def vf_disarm(st, q):
    """Nothing to undo: the socket notifies whether or not anyone sleeps."""


register_intr(VfState, vf_arm, vf_disarm)
