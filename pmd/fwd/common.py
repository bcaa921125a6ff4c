"""What every forwarding engine shares: the stream and context records, the
config slots, and the tx-then-account step.

A *stream* is one (rx port, rx queue) -> (tx port, tx queue) pair, served by
exactly one lcore, so its counters have a single writer.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit

from ..atomics import memcpy
from ..burst import rx_burst, tx_burst, tx_room
from ..mbuf import MbufPool, alloc_bulk, free_bulk, mbuf_offset
from .pktgen import MIN_FRAME

MAX_BURST = 512

# Forwarding modes (cfg[CFG_MODE])
MODE_IO, MODE_MAC, MODE_MACSWAP, MODE_RXONLY, MODE_TXONLY, MODE_FLOWGEN, MODE_ICMPECHO = range(7)
MODE_NAMES = ("io", "mac", "macswap", "rxonly", "txonly", "flowgen", "icmpecho")
# Engines that answer on the port a packet came in on (streams pair a port with itself).
REPLY_MODES = ("icmpecho",)

# cfg slots (int64 array, read once when a loop starts); CFG_TX_FIRST is the
# number of txonly bursts sent on each stream before forwarding; CFG_IDLE_WAIT_NS
# how long a pass that found nothing waits before the next (``loop.py``)
CFG_MODE, CFG_BURST, CFG_TX_FIRST, CFG_IDLE_POLLS, CFG_NB_FLOWS, CFG_IDLE_WAIT_NS = range(6)
N_CFG = 8

# Per-stream forward counters (fs[sid, ...]): packets, then non-empty bursts,
# full bursts and empty rx polls (testpmd's record-burst-stats)
FS_RX, FS_TX, FS_DROPPED, FS_RX_BURSTS, FS_RX_FULL, FS_TX_BURSTS, FS_TX_FULL, FS_RX_EMPTY = range(8)
N_FS = 8

# Loop exit reasons
EXIT_STOPPED, EXIT_IDLE = 0, 1


class Stream(NamedTuple):
    rx: Any  # rx port's kernel state
    rxq: int
    tx: Any  # tx port's kernel state
    txq: int
    sid: int  # row in FwdCtx.fs
    tx_port: int  # port id, row in FwdCtx.macs / peer_macs


class FwdCtx(NamedTuple):
    """One lcore's view: shared pool, tables and counters plus its own scratch."""

    pool: MbufPool
    bufs: np.ndarray  # int32[MAX_BURST] scratch burst
    cfg: np.ndarray  # int64[N_CFG]
    macs: np.ndarray  # uint8[nports, 6]: each port's own MAC
    peer_macs: np.ndarray  # uint8[nports, 6]: where mac/txonly send to
    tmpl: np.ndarray  # uint8[txpkts]: txonly/flowgen template frame
    fs: np.ndarray  # int64[nstreams, N_FS]
    flow: np.ndarray  # int64[8]: flowgen's running flow index


@njit(nogil=True, cache=True, _nrt=False)
def receive(s, ctx, burst):
    """rx up to ``burst`` packets of the stream into ``ctx.bufs`` and count them."""
    n = rx_burst(s.rx, s.rxq, ctx.pool, ctx.bufs, burst)
    if n > 0:
        ctx.fs[s.sid, FS_RX] += n
        ctx.fs[s.sid, FS_RX_BURSTS] += 1
        if n == burst:
            ctx.fs[s.sid, FS_RX_FULL] += 1
    else:
        ctx.fs[s.sid, FS_RX_EMPTY] += 1
    return n


@njit(nogil=True, cache=True, _nrt=False)
def receive_for(s, ctx, burst):
    """``receive`` for an engine that sends what it receives on the stream's
    tx port: no more than that port can take now (``pmd.burst.tx_room``), so
    nothing is received only to be dropped -- the source ring holds it."""
    room = tx_room(s.tx, s.txq)
    if room <= 0:
        return 0
    return receive(s, ctx, min(burst, room))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def send_burst(s, ctx, n):
    """tx ``ctx.bufs[:n]`` on the stream; free and count what the port refused."""
    sent = 0
    if n > 0:
        sent = tx_burst(s.tx, s.txq, ctx.pool, ctx.bufs, n)
        if sent < n:
            free_bulk(ctx.pool, ctx.bufs[sent:], n - sent)
            ctx.fs[s.sid, FS_DROPPED] += n - sent
        ctx.fs[s.sid, FS_TX] += sent
        ctx.fs[s.sid, FS_TX_BURSTS] += 1
        if sent == ctx.cfg[CFG_BURST]:
            ctx.fs[s.sid, FS_TX_FULL] += 1
    return sent


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def write_mac(data, off, mac):
    memcpy(data, off, mac, 0, 6)  # a constant size: two stores, no loop


@njit(nogil=True, cache=True, _nrt=False)
def fill_from_template(s, ctx, n):
    """Allocate ``n`` buffers holding the template frame addressed from the
    tx port to its peer; returns how many were allocated (n or 0).  As
    testpmd's txonly, only the Ethernet/IPv4/UDP headers are written: the
    payload is whatever the buffer held (a generator, not a data source)."""
    pool = ctx.pool
    if not alloc_bulk(pool, ctx.bufs, n):
        return 0
    size = len(ctx.tmpl)  # >= MIN_FRAME (pktgen.udp_template): the headers' copy has a constant size
    for k in range(n):
        i = ctx.bufs[k]
        off = mbuf_offset(pool, i)
        memcpy(pool.data, off, ctx.tmpl, 0, MIN_FRAME)
        write_mac(pool.data, off, ctx.peer_macs[s.tx_port])
        write_mac(pool.data, off + 6, ctx.macs[s.tx_port])
        pool.data_len[i] = size
    return n
