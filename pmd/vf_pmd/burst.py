"""rx/tx burst kernels of the VF port: walk the mmap'd AF_PACKET rings.

rx (TPACKET_V3, Documentation/networking/packet_mmap.rst): take the block at
the queue's cursor once the kernel marked it TP_STATUS_USER (acquire), copy
its tpacket3_hdr entries into mbufs, give the block back (release store of
TP_STATUS_KERNEL) only when every entry in it was consumed.  The cursor
(block, entries done, next entry offset) survives across bursts.

tx (TPACKET_V2): fill frames from the head while they are available, publish
each with a release store of TP_STATUS_SEND_REQUEST, then one
``send(fd, NULL, 0, MSG_DONTWAIT)`` per burst.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from ..atomics import load_acquire, memcpy, store_release
from ..burst import register_burst
from ..csum import complete_partial_l4_checksum
from ..ethdev import (
    ST_IBYTES,
    ST_IERRORS,
    ST_IPACKETS,
    ST_OBYTES,
    ST_OPACKETS,
    ST_RX_NOMBUF,
)
from ..mbuf import HEADROOM, alloc_bulk, free_bulk, mbuf_offset
from ..netdev_port import unsendable
from ..syscalls import socket_send_empty
from .layout import (
    BD_BLOCK_STATUS,
    BD_NUM_PKTS,
    BD_OFFSET_TO_FIRST_PKT,
    ETH_HLEN,
    MSG_DONTWAIT,
    RX_BLOCK,
    RX_IDX,
    RX_OFF,
    T2_DATA,
    T2_LEN,
    T2_SNAPLEN,
    T2_STATUS,
    T3_LEN,
    T3_MAC,
    T3_NEXT_OFFSET,
    T3_SNAPLEN,
    T3_STATUS,
    T3_VLAN_TCI,
    T3_VLAN_TPID,
    TP_STATUS_CSUMNOTREADY,
    TP_STATUS_KERNEL,
    TP_STATUS_SEND_REQUEST,
    TP_STATUS_USER,
    TP_STATUS_VLAN_TPID_VALID,
    TP_STATUS_VLAN_VALID,
    TP_STATUS_WRONG_FORMAT,
    TX_HEAD,
    X_RX_BLOCKS,
    X_RX_CSUM_COMPLETED,
    X_RX_TRUNCATED,
    X_RX_VLAN,
    X_TX_KICK_ERRORS,
    X_TX_KICKS,
    X_TX_RING_FULL,
    X_TX_TOO_BIG,
)


class VfState(NamedTuple):
    stats: np.ndarray  # (nq, N_STATS) int64
    xstats: np.ndarray  # (nq, N_X) int64
    rx8: np.ndarray  # (nrxq, block_size * block_nr) uint8: each queue's mmap'd rx ring
    rx16: np.ndarray  # the same, u16
    rx32: np.ndarray  # the same, u32
    rx_cur: np.ndarray  # (nrxq, N_CUR) int64
    tx8: np.ndarray  # (ntxq, frame_size * frame_nr) uint8: each queue's tx ring
    tx32: np.ndarray
    tx_cur: np.ndarray  # (ntxq, N_CUR) int64
    tx_fds: np.ndarray  # (ntxq,) int64
    block_size: int
    block_nr: int
    frame_size: int
    frame_nr: int
    max_frame: int  # MTU + Ethernet header: longer frames are oerrors, never truncated
    port_id: int


@njit(nogil=True, cache=True, inline="always")
def _be16(ring8, off, val):
    ring8[off] = (val >> 8) & 0xFF
    ring8[off + 1] = val & 0xFF


@njit(nogil=True, cache=True)
def vf_rx(st, q, pool, bufs, nb):
    ring8, ring16, ring32 = st.rx8[q], st.rx16[q], st.rx32[q]
    cur = st.rx_cur[q]
    room = pool.buf_size - HEADROOM
    blk, idx, off = cur[RX_BLOCK], cur[RX_IDX], cur[RX_OFF]
    n = 0
    nbytes = 0
    while n < nb:
        base = blk * st.block_size
        if load_acquire(ring32, (base + BD_BLOCK_STATUS) >> 2) & TP_STATUS_USER == 0:
            break
        num = np.int64(ring32[(base + BD_NUM_PKTS) >> 2])
        if idx == 0:
            off = np.int64(ring32[(base + BD_OFFSET_TO_FIRST_PKT) >> 2])
        want = min(nb - n, num - idx)
        if want > 0 and not alloc_bulk(pool, bufs[n:], want):
            st.stats[q, ST_RX_NOMBUF] += want
            break
        used = 0
        while used < want and idx < num:
            hdr = base + off
            if off <= 0 or off + 48 > st.block_size:  # a corrupt entry: skip the rest of the block
                st.stats[q, ST_IERRORS] += num - idx
                idx = num
                break
            snap = np.int64(ring32[(hdr + T3_SNAPLEN) >> 2])
            wire = np.int64(ring32[(hdr + T3_LEN) >> 2])
            status = ring32[(hdr + T3_STATUS) >> 2]
            mac = hdr + np.int64(ring16[(hdr + T3_MAC) >> 1])
            vlan = 4 if status & TP_STATUS_VLAN_VALID else 0
            off += np.int64(ring32[(hdr + T3_NEXT_OFFSET) >> 2])
            idx += 1
            if snap < wire:
                st.xstats[q, X_RX_TRUNCATED] += 1
                st.stats[q, ST_IERRORS] += 1
                continue
            if snap + vlan > room or snap < ETH_HLEN or mac - base + snap > st.block_size:
                st.stats[q, ST_IERRORS] += 1
                continue
            i = bufs[n + used]
            dst = mbuf_offset(pool, i)
            if vlan:  # the kernel stripped the tag into the header: put it back
                tpid = 0x8100
                if status & TP_STATUS_VLAN_TPID_VALID:
                    tpid = np.int64(ring16[(hdr + T3_VLAN_TPID) >> 1])
                tci = np.int64(ring32[(hdr + T3_VLAN_TCI) >> 2])
                memcpy(pool.data, dst, ring8, mac, 12)
                _be16(pool.data, dst + 12, tpid)
                _be16(pool.data, dst + 14, tci)
                memcpy(pool.data, dst + 16, ring8, mac + 12, snap - 12)
                st.xstats[q, X_RX_VLAN] += 1
            else:
                memcpy(pool.data, dst, ring8, mac, snap)
            if status & TP_STATUS_CSUMNOTREADY:
                # A local sender (veth peer) left the L4 checksum to the NIC;
                # nothing downstream (a VM without GUEST_CSUM) would finish
                # it.  A real VF's wire never sets this.
                if complete_partial_l4_checksum(pool.data, dst, snap + vlan):
                    st.xstats[q, X_RX_CSUM_COMPLETED] += 1
            pool.data_len[i] = snap + vlan
            pool.port[i] = st.port_id
            nbytes += snap + vlan
            used += 1
        if used < want:
            free_bulk(pool, bufs[n + used:], want - used)
        n += used
        if idx >= num:  # every entry consumed: the block goes back to the kernel
            store_release(ring32, (base + BD_BLOCK_STATUS) >> 2, TP_STATUS_KERNEL)
            st.xstats[q, X_RX_BLOCKS] += 1
            blk += 1
            if blk == st.block_nr:
                blk = 0
            idx = 0
            off = 0
    cur[RX_BLOCK], cur[RX_IDX], cur[RX_OFF] = blk, idx, off
    st.stats[q, ST_IPACKETS] += n
    st.stats[q, ST_IBYTES] += nbytes
    return n


@njit(nogil=True, cache=True)
def vf_tx(st, q, pool, bufs, nb):
    ring8, ring32 = st.tx8[q], st.tx32[q]
    cur = st.tx_cur[q]
    head = cur[TX_HEAD]
    n = 0
    queued = 0
    nbytes = 0
    while n < nb:
        i = bufs[n]
        ln = np.int64(pool.data_len[i])
        if unsendable(st, q, ln, X_TX_TOO_BIG):  # taken and dropped, never truncated
            n += 1
            continue
        frame = head * st.frame_size
        status = load_acquire(ring32, (frame + T2_STATUS) >> 2)
        if status != 0 and status != TP_STATUS_WRONG_FORMAT:  # still owned by the kernel: ring full
            st.xstats[q, X_TX_RING_FULL] += 1
            break
        memcpy(ring8, frame + T2_DATA, pool.data, mbuf_offset(pool, i), ln)
        ring32[(frame + T2_LEN) >> 2] = ln
        ring32[(frame + T2_SNAPLEN) >> 2] = ln
        store_release(ring32, (frame + T2_STATUS) >> 2, TP_STATUS_SEND_REQUEST)
        head += 1
        if head == st.frame_nr:
            head = 0
        queued += 1
        nbytes += ln
        n += 1
    cur[TX_HEAD] = head
    if queued > 0 or n < nb:  # n < nb: the ring is full, make sure the kernel is draining it
        st.xstats[q, X_TX_KICKS] += 1
        if socket_send_empty(st.tx_fds[q], MSG_DONTWAIT) < 0:
            st.xstats[q, X_TX_KICK_ERRORS] += 1
    free_bulk(pool, bufs, n)
    st.stats[q, ST_OPACKETS] += queued
    st.stats[q, ST_OBYTES] += nbytes
    return n


register_burst(VfState, vf_rx, vf_tx)
