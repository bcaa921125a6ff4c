"""Fallback interrupts of the vhost-pci port: kick notifications (virtio 1.2, 2.7.7/2.7.10).

Rx queue ``q`` reads VM1's transmit vring ``v = 2q + 1``.  While polling,
the rx kernel (``vq._begin``) sets VRING_USED_F_NO_NOTIFY at every burst;
to sleep, the lcore arms the ring: clear the flag and, with EVENT_IDX, set
avail_event to last_avail_idx (so VM1 kicks on its very next post), then a
seq_cst fence and a re-read of avail idx.  The fence pairs with the one
VM1's driver issues between publishing avail idx and reading the flag /
avail_event (``virtio_user_pmd.vq._post``, Linux's virtqueue_kick_prepare):
either VM1 sees the ring armed and kicks, or we see its new entries here
and do not sleep.  Without both fences a wake-up can be lost (both fences were needed in testing).

A vring that has not started (no front-end yet) has nothing to arm: the
lcore sleeps on the rx queue's wake-up eventfd (``driver.intr_fds``), which
the control thread writes after it publishes VQ_READY (or a RARP request,
``announce.py``); the arm kernel reads both after the lcore fetched the fds,
so a change in between is seen either here or as a readable fd.

Every write into VM1 memory (used flags, avail_event) is logged for
migration (``vq._log``).  A packed ring arms its device area instead
(``vq_packed.arm_packed``: ENABLE, or DESC at the next position).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..atomics import fence, load_acquire
from ..burst import register_intr
from ..grace import section_enter, section_leave
from ..virtio.split import USED_FLAGS, VRING_USED_F_NO_NOTIFY, avail_event_at, avail_idx, set_avail_event, set_used_flags
from .iotlb_lend import OWN_LENT, give_back
from .iotlb_maps import lcore_maps
from .state import PORT_RARP_DONE, PORT_RARP_REQ, VQ_EVENT_IDX, VQ_LAST_AVAIL, VQ_NUM, VQ_PACKED, VQ_READER, VQ_READY, VQ_USED, VhostPciState
from .vq import _log, _ring_offsets
from .vq_packed import arm_packed, disarm_packed

# With EVENT_IDX, disarming parks avail_event this far ahead of last_avail
# (VM1 would kick once per 32768 posts at most, as vq._begin never moves it).
_PARK = 0x8000


@njit(nogil=True, cache=True)
def _used_offset(st, v):
    """Window offset of ring ``v``'s used ring, or -1 (not ready / not mapped)."""
    if load_acquire(st.vq[v], VQ_READY) == 0:
        return np.int64(-1), np.int64(0), np.int64(0)
    num = st.vq[v, VQ_NUM]
    desc, avail, used = _ring_offsets(st, v, num)
    if desc < 0:
        return np.int64(-1), np.int64(0), np.int64(0)
    return used, avail, num


@njit(nogil=True, cache=True)
def vhost_pci_arm(st, q):
    """Ask VM1 to kick rx queue ``q``'s ring; returns the entries pending
    after the fence (> 0: do not sleep; an announcement owed counts), 0 for a
    vring not started (nothing to arm: its wake-up eventfd says when), or -1
    if the ring cannot be armed (its used ring is not mapped)."""
    row = st.vq[2 * q + 1]
    section_enter(row, VQ_READER)
    pending = _arm(st, q)
    section_leave(row, VQ_READER)
    if q == 0 and pending == 0:
        give_back(st.ctl, OWN_LENT)  # asleep it cannot serve VM1's IOTLB messages (iotlb_lend.py) ...
        fence()  # ... nor map the UPDATEs acked meanwhile: those queued before its stamp went, it maps
        lcore_maps(st.iotlb.ws, st.vq, st.asked, st.iotlb.maps)  # now (the control thread, the rest)
    return pending


@njit(nogil=True, cache=True, inline="always")
def _arm(st, q):
    v = 2 * q + 1
    if q == 0 and load_acquire(st.ctl, PORT_RARP_REQ) != st.ctl[PORT_RARP_DONE]:
        return np.int64(1)  # an announcement to hand out (announce.py)
    if load_acquire(st.vq[v], VQ_READY) == 0:
        return np.int64(0)
    if st.vq[v, VQ_PACKED] != 0:
        return arm_packed(st, v)
    used, avail, num = _used_offset(st, v)
    if used < 0:
        return np.int64(-1)
    m = st.mem
    ring = st.vq[v, VQ_USED]  # guest address, for the dirty log
    last = st.vq[v, VQ_LAST_AVAIL]
    set_used_flags(m, used, 0)  # clear NO_NOTIFY
    _log(st, v, ring + USED_FLAGS, 2)
    if st.vq[v, VQ_EVENT_IDX] != 0:
        set_avail_event(m, used, num, last)
        _log(st, v, ring + avail_event_at(num), 2)
    fence()  # pairs with VM1's fence between avail idx and reading flags/avail_event
    return (avail_idx(m, avail) - last) & 0xFFFF


@njit(nogil=True, cache=True)
def vhost_pci_disarm(st, q):
    """Back to polling: no kicks wanted (``vq._begin`` keeps the flag set)."""
    row = st.vq[2 * q + 1]
    section_enter(row, VQ_READER)
    _disarm(st, q)
    section_leave(row, VQ_READER)


@njit(nogil=True, cache=True, inline="always")
def _disarm(st, q):
    v = 2 * q + 1
    if st.vq[v, VQ_PACKED] != 0:
        disarm_packed(st, v)
        return
    used, avail, num = _used_offset(st, v)
    if used < 0:
        return
    m = st.mem
    ring = st.vq[v, VQ_USED]
    set_used_flags(m, used, VRING_USED_F_NO_NOTIFY)
    _log(st, v, ring + USED_FLAGS, 2)
    if st.vq[v, VQ_EVENT_IDX] != 0:
        set_avail_event(m, used, num, st.vq[v, VQ_LAST_AVAIL] + _PARK)
        _log(st, v, ring + avail_event_at(num), 2)


register_intr(VhostPciState, vhost_pci_arm, vhost_pci_disarm)
