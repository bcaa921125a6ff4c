"""The virtio-user port's burst functions: the ring's layout picks the
kernels (``vq.py`` split, ``vq_packed.py`` packed) with one test per burst,
none per packet."""
from __future__ import annotations

from numba import njit

from ..burst import register_burst
from .vq import DRV_PACKED, VirtioUserState, recv, xmit
from .vq_packed import recv_packed, xmit_packed


@njit(nogil=True, cache=True, _nrt=False)
def virtio_user_rx(st, q, pool, bufs, nb):
    if st.vq[2 * q, DRV_PACKED] != 0:
        return recv_packed(st, 2 * q, q, pool, bufs, nb)
    return recv(st, 2 * q, q, pool, bufs, nb)


@njit(nogil=True, cache=True, _nrt=False)
def virtio_user_tx(st, q, pool, bufs, nb):
    if st.vq[2 * q + 1, DRV_PACKED] != 0:
        return xmit_packed(st, 2 * q + 1, q, pool, bufs, nb)
    return xmit(st, 2 * q + 1, q, pool, bufs, nb)


register_burst(VirtioUserState, virtio_user_rx, virtio_user_tx)
