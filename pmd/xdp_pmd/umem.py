"""The UMEM of an AF_XDP port is an mbuf pool, as DPDK's net_af_xdp builds
its UMEM over a mempool: each XSK registers the whole of the pool's memory
in unaligned-chunk mode, one chunk per mbuf, so a frame's UMEM address is
its byte offset in ``pool.data`` (buffer ``i`` at ``i * buf_size``).

When that pool is the one the forwarding runtime hands every burst (the
port was given it with ``use_pool``), an mbuf *is* a UMEM frame: tx posts
the mbuf's address on the tx ring, rx hands the frame out as an mbuf, and a
packet between VM1 and the VF is copied once, by the vhost-pci port, into
or out of the frame.  Otherwise (no pool given, a pool that cannot serve:
see ``unfit``) the port makes a private pool of its own as the UMEM, and
the bursts copy between the caller's mbufs and its frames.

Ownership: a frame is the application's (free in the pool, or an mbuf in
a burst) or the kernel side of one queue of the port (posted on its fill
ring, received but not yet taken, queued for tx until its completion):
``own[i]`` is 0, or q + 1 for queue q.  A frame moves between the two only
in the burst kernels, so it is never on two rings.  The kernel may keep
frames it took from a fill ring (copy mode parks them when an rx ring is
full), so at stop, once the sockets are closed, every frame still marked
goes back to the pool (``release_held``): nothing lost, the pool's count
exact.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..mbuf import MbufPool, create_pool, free_bulk
from ..ringarea import PAGE_SIZE
from . import layout as L

ADDR_MASK = (1 << L.UNALIGNED_OFFSET_SHIFT) - 1


def unfit(pool: MbufPool, max_frame: int, frames: int) -> str | None:
    """Why ``pool`` cannot be the UMEM of a port receiving ``max_frame`` B
    frames whose fill rings keep ``frames`` frames; None when it can."""
    if not L.XDP_UMEM_MIN_CHUNK_SIZE <= pool.buf_size <= PAGE_SIZE:
        return f"its {pool.buf_size} B buffers are not {L.XDP_UMEM_MIN_CHUNK_SIZE}..{PAGE_SIZE} B (a UMEM chunk)"
    if max_frame > pool.buf_size - L.XDP_PACKET_HEADROOM:
        return (f"a {max_frame} B frame does not fit its {pool.buf_size} B buffers behind the kernel's "
                f"{L.XDP_PACKET_HEADROOM} B XDP headroom")
    if pool.data.ctypes.data % PAGE_SIZE:
        return "its memory is not page-aligned"
    if pool.size < 2 * frames:
        return f"its {pool.size} buffers are fewer than twice the {frames} the port's fill rings keep"
    return None


def may_straddle(pool: MbufPool) -> bool:
    """True when a buffer of ``pool`` may span two pages: a zero-copy NIC
    refuses a frame over pages that are not contiguous in DMA space, which
    the port cannot know (copy mode does not care)."""
    return PAGE_SIZE % pool.buf_size != 0


def private_pool(frame_size: int, frames: int) -> MbufPool:
    """The port's own UMEM when the app's pool cannot be it."""
    return create_pool(frames, buf_size=frame_size)


def release_held(own: np.ndarray, pool: MbufPool) -> int:
    """Every frame the kernel side still holds back to ``pool`` (the sockets
    are closed: nothing refers to them); returns how many."""
    held = np.flatnonzero(own).astype(np.int32)
    own[:] = 0
    free_bulk(pool, held, len(held))
    return len(held)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def is_umem(pool, up):
    """True when ``pool`` is the UMEM ``up`` (the one-copy path)."""
    return pool.data.ctypes.data == up.data.ctypes.data


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def frame_addr(pool, i):
    """The UMEM address of mbuf ``i``'s packet data."""
    return np.int64(i) * pool.buf_size + pool.data_off[i]


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def chunk_addr(pool, i):
    """The UMEM address of mbuf ``i``'s chunk (what a fill ring carries)."""
    return np.int64(i) * pool.buf_size


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def frame_of(bs, own, owner, addr):
    """Mbuf index of an address the kernel returned (rx: chunk | offset <<
    48; completion: what tx posted) in a UMEM of ``bs`` B chunks, or -1
    when it is no frame queue ``owner - 1`` holds."""
    i = (np.int64(addr) & ADDR_MASK) // bs
    if 0 <= i < len(own) and own[i] == owner:
        return i
    return np.int64(-1)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def data_offset(bs, i, addr):
    """Where the data of rx address ``addr`` starts in chunk ``i``."""
    return (np.int64(addr) & ADDR_MASK) - i * bs + (np.int64(addr) >> L.UNALIGNED_OFFSET_SHIFT)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def take_frame(up, own, i, data_off, ln, port_id):
    """Frame ``i`` leaves the kernel side as an mbuf of ``ln`` bytes."""
    own[i] = 0
    up.data_off[i] = data_off
    up.data_len[i] = ln
    up.ol_flags[i] = 0
    up.port[i] = port_id
