"""Fallback interrupts of the virtio-user port (VM1's driver): device calls.

Rx queue ``q`` is receive vring ``v = 2q``.  While polling, the avail
ring's VRING_AVAIL_F_NO_INTERRUPT flag is set (``driver._init_rings``) and,
with EVENT_IDX, the rx kernel parks used_event half an index space ahead
(``vq._no_calls``) at every receive.  Arming clears the flag and, with
EVENT_IDX, sets used_event = last_used (call on the very next used entry),
then a seq_cst fence and a re-read of used idx; the device's ``_publish``
(vhost-pci ``vq.py``) fences between publishing used idx and reading
them, so either it calls or we see the new entries here.  The call eventfd
is ``driver._call[v]`` (the driver's own, given to the device with
SET_VRING_CALL).  This is our own RAM: nothing to log.

A packed ring (``packed_vq=1``) arms its driver area instead: ENABLE, or
DESC at the next used position with EVENT_IDX; DISABLE while polling.

Pending work the driver itself owes the ring also keeps the lcore awake:
staged-but-unposted or returned-but-unrecycled buffers (transient grants
waiting for the control thread): polling, not a call, moves them on.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..atomics import fence, load_acquire
from ..burst import register_intr
from ..virtio.split import VRING_AVAIL_F_NO_INTERRUPT, avail_flags, set_avail_flags, set_used_event, used_idx
from ..virtio.packed import (
    RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_ENABLE, desc_flags_acquire, is_used, pos_idx,
    pos_wrap, set_event_flags,
)
from .vq import (
    DRV_AVAIL, DRV_DESC, DRV_DONE_TAIL, DRV_EVENT_IDX, DRV_FREED, DRV_LAST_USED, DRV_NUM, DRV_PACKED, DRV_POSTED, DRV_READY, DRV_STAGE_TAIL,
    DRV_TRANSIENT, DRV_USED, VirtioUserState,
)

_PARK = 0x8000  # as vq._no_calls


@njit(nogil=True, cache=True)
def virtio_user_arm(st, q):
    """Ask the device to call rx queue ``q``; returns the used entries (or
    the driver's own buffer work) pending after the fence, or -1 if the
    ring is not ready."""
    v = 2 * q
    row = st.vq[v]
    if load_acquire(row, DRV_READY) == 0:
        return np.int64(-1)
    if load_acquire(row, DRV_STAGE_TAIL) != row[DRV_POSTED] or load_acquire(row, DRV_DONE_TAIL) != row[DRV_FREED]:
        return np.int64(1)  # buffers to post or recycle
    tx = st.vq[v + 1]
    if tx[DRV_TRANSIENT] != 0 and load_acquire(tx, DRV_STAGE_TAIL) != tx[DRV_POSTED]:
        return np.int64(1)  # granted tx buffers the rx kernel posts (vq.recv)
    m = st.mem
    num = row[DRV_NUM]
    avail = row[DRV_AVAIL]
    last = row[DRV_LAST_USED]
    if row[DRV_PACKED] != 0:  # the driver area: ENABLE, or DESC at the next used position
        if row[DRV_EVENT_IDX] != 0:
            m.u16[avail >> 1] = np.uint16(last)
            set_event_flags(m, avail, RING_EVENT_FLAGS_DESC)
        else:
            set_event_flags(m, avail, RING_EVENT_FLAGS_ENABLE)
        fence()  # pairs with the device's fence in vq_packed._publish
        return np.int64(1 if is_used(desc_flags_acquire(m, row[DRV_DESC], pos_idx(last)), pos_wrap(last)) else 0)
    set_avail_flags(m, avail, avail_flags(m, avail) & ~VRING_AVAIL_F_NO_INTERRUPT)
    if row[DRV_EVENT_IDX] != 0:
        set_used_event(m, avail, num, last)
    fence()  # pairs with the device's fence in _publish
    return (used_idx(m, row[DRV_USED]) - last) & 0xFFFF


@njit(nogil=True, cache=True)
def virtio_user_disarm(st, q):
    """Back to polling: no calls wanted."""
    v = 2 * q
    row = st.vq[v]
    if load_acquire(row, DRV_READY) == 0:
        return
    m = st.mem
    avail = row[DRV_AVAIL]
    if row[DRV_PACKED] != 0:
        set_event_flags(m, avail, RING_EVENT_FLAGS_DISABLE)
        return
    set_avail_flags(m, avail, avail_flags(m, avail) | VRING_AVAIL_F_NO_INTERRUPT)
    if row[DRV_EVENT_IDX] != 0:
        set_used_event(m, avail, row[DRV_NUM], row[DRV_LAST_USED] + _PARK)


register_intr(VirtioUserState, virtio_user_arm, virtio_user_disarm)
