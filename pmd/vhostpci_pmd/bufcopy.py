"""Copies between a walked chain and an mbuf, for both ring layouts.

``chain.py`` (split) and ``chain_packed.py`` (packed) turn descriptors into
a checked buffer vector (rows ``[window offset, length, guest address]``);
these loops copy over it and never look at a descriptor.  The virtio-net
header travels as mbuf metadata; every byte written into VM1 memory goes
through ``log`` (the dirty log).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..atomics import memcpy, prefetch_read, prefetch_write
from ..mbuf import mbuf_offset
from ..virtio.features import NET_HDR_LEN, NET_HDR_NUM_BUFFERS
from .chain import CHAIN_TOO_BIG, VEC_ADDR, VEC_LEN, VEC_OFF
from .dirty_log import log_write
from .state import VQ_IOMMU

# The header of a plain packet (no offload, num_buffers = 1): one 12-byte
# copy (two stores) where a byte loop took twelve, each with its own index fix-up.
PLAIN_HDR = np.zeros(NET_HDR_LEN, np.uint8)
PLAIN_HDR[NET_HDR_NUM_BUFFERS] = 1


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def log(st, v, addr, length):
    """Every byte written into VM1 memory goes through here (dirty log)."""
    log_write(st.logctl, st.gtable, st.gcount, st.vq[v, VQ_IOMMU] != 0, addr, length)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def prefetch_buffer(m, addr, write):
    """Ask for the first two lines (header and a small packet) of the
    buffer at guest address ``addr`` (to be written if ``write``, a
    constant at every call): the buffer was last touched by VM1's CPU, and
    the miss then overlaps the copies of the packets before it (DPDK's
    vhost prefetches likewise).  The window maps guest memory at offset =
    address (guest-physical address, or IOVA for a grant), so the address
    itself is the guess: a prefetch is a hint that never faults, and the
    copy still goes through the checked translation (one table search per
    buffer, not two)."""
    off = np.int64(addr)
    if 0 <= off < len(m.u8) - 128:
        if write:
            prefetch_write(m.u8, off)
            prefetch_write(m.u8, off + 64)
        else:
            prefetch_read(m.u8, off)
            prefetch_read(m.u8, off + 64)


# The virtio-net header (5.1.6) travels as mbuf metadata (ol_flags):
# flags | gso_type << 8 | gso_size << 16 | csum_start << 32 | csum_offset << 48
# (hdr_len is recomputable; num_buffers belongs to the ring, not the packet).
@njit(nogil=True, cache=True, inline="always", _nrt=False)
def hdr_shift(pos):
    if pos < 2:
        return pos * 8
    if 4 <= pos < 10:
        return (pos - 2) * 8
    return -1


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def copy_out(st, vec, cnt, hdr, pool, mbuf, room):
    """Copy a walked device-readable chain (``vec[:cnt]``) into mbuf
    ``mbuf``, the net header into its ol_flags; returns the packet length
    or CHAIN_TOO_BIG."""
    m = st.mem
    dst = mbuf_offset(pool, mbuf)
    pos = np.int64(0)  # bytes of the chain consumed
    total = np.int64(0)  # bytes of packet copied
    ol = np.uint64(0)
    for e in range(cnt):
        off = vec[e, VEC_OFF]
        ln = vec[e, VEC_LEN]
        k = np.int64(0)
        if pos == 0 and ln >= hdr and hdr == NET_HDR_LEN:
            # the common case: the whole header in the first buffer
            h = m.u8
            ol = (np.uint64(h[off]) | np.uint64(h[off + 1]) << np.uint64(8)
                  | np.uint64(h[off + 4]) << np.uint64(16) | np.uint64(h[off + 5]) << np.uint64(24)
                  | np.uint64(h[off + 6]) << np.uint64(32) | np.uint64(h[off + 7]) << np.uint64(40)
                  | np.uint64(h[off + 8]) << np.uint64(48) | np.uint64(h[off + 9]) << np.uint64(56))
            k = pos = np.int64(NET_HDR_LEN)
        while pos < hdr and k < ln:
            sh = hdr_shift(pos)
            if sh >= 0:
                ol |= np.uint64(m.u8[off + k]) << np.uint64(sh)
            pos += 1
            k += 1
        rest = ln - k
        if rest > 0:
            if total + rest > room:
                return np.int64(CHAIN_TOO_BIG)
            copy_lines(pool.data, dst + total, m.u8, off + k, rest)
            total += rest
    pool.ol_flags[mbuf] = ol
    return total


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def copy_lines(dst, doff, src, soff, n):
    """``n`` bytes from ``src[soff:]`` to ``dst[doff:]``: whole 64-byte
    lines as constant-size copies (inlined: one vector load and store
    each), the rest in one call.  A 64-byte packet is then copied without
    the libc call a variable size costs."""
    while n >= 64:
        memcpy(dst, doff, src, soff, 64)
        doff += 64
        soff += 64
        n -= 64
    if n > 0:
        memcpy(dst, doff, src, soff, n)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def packet_in(pool, i, hdr):
    """What an enqueue reads of mbuf ``i`` (both ring layouts): ``(length,
    data offset, offload flags, bytes to place with a ``hdr``-byte header)``."""
    ln = np.int64(pool.data_len[i])
    return ln, mbuf_offset(pool, i), pool.ol_flags[i], hdr + ln


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def copy_in(st, v, vec, cnt, hdr, pool, src, ol, done, off_lo, off_hi):
    """Write header+packet into a walked device-writable chain
    (``vec[:cnt]``), ``done`` bytes of ``hdr + length`` being already in
    earlier chains.  Returns ``(done_after, off_lo, off_hi)``: the window
    offsets of the header's num_buffers bytes once written (they may lie in
    two buffers)."""
    m = st.mem
    for e in range(cnt):
        off = vec[e, VEC_OFF]
        w = vec[e, VEC_LEN]
        k = np.int64(0)
        if done == 0 and w >= NET_HDR_LEN and hdr == NET_HDR_LEN and ol == 0:
            # the common case: a plain packet, the whole header in the first buffer
            memcpy(m.u8, off, PLAIN_HDR, 0, NET_HDR_LEN)
            off_lo = off + NET_HDR_NUM_BUFFERS
            off_hi = off_lo + 1
            k = done = np.int64(NET_HDR_LEN)
        while done < hdr and k < w:
            sh = hdr_shift(done)
            b = np.uint64(0)
            if sh >= 0:
                b = (ol >> np.uint64(sh)) & np.uint64(0xFF)
            if done == NET_HDR_NUM_BUFFERS:
                off_lo = off + k
                b = np.uint64(1)
            elif done == NET_HDR_NUM_BUFFERS + 1:
                off_hi = off + k
            m.u8[off + k] = np.uint8(b)
            k += 1
            done += 1
        if k < w:
            copy_lines(m.u8, off + k, pool.data, src + (done - hdr), w - k)
            done += w - k
        log(st, v, vec[e, VEC_ADDR], w)
    return done, off_lo, off_hi
