"""Packet size bins, as DPDK's vhost PMD counts them (RFC 2819's
etherStatsPkts<N>to<M>Octets, frame length without the CRC).

Nine bins hold both of DPDK's schemes: the per-port ``rx_size_*`` names of
the ``net_vhost`` PMD (1024-1522, 1523-max) and the per-queue
``rx_q0_size_*`` names of the vhost library (1024-1518, 1519-max).  The
burst API (``pmd.burst``) counts every packet an rx burst hands out and a
tx burst accepts into a port's stats array (the ``ST_RX_SIZE`` /
``ST_TX_SIZE`` columns of ``pmd.ethdev``), in the kernel that called it:
no driver keeps them, no Python touches a packet.
"""
from __future__ import annotations

import numpy as np
from numba import njit

# bin -> [low, high] frame lengths (high inclusive; -1: no upper bound)
SIZE_BINS = ((0, 63), (64, 64), (65, 127), (128, 255), (256, 511), (512, 1023), (1024, 1518), (1519, 1522),
             (1523, -1))
N_SIZE_BINS = len(SIZE_BINS)

# DPDK's names: (name, the bins it sums)
PORT_BIN_NAMES = (  # net_vhost PMD, per port: "rx_" / "tx_" + name
    ("undersize_packets", (0,)), ("size_64_packets", (1,)), ("size_65_to_127_packets", (2,)),
    ("size_128_to_255_packets", (3,)), ("size_256_to_511_packets", (4,)), ("size_512_to_1023_packets", (5,)),
    ("size_1024_to_1522_packets", (6, 7)), ("size_1523_to_max_packets", (8,)),
)
QUEUE_BIN_NAMES = (  # vhost library, per queue: "rx_q0_" / "tx_q0_" + name
    ("undersize_packets", (0,)), ("size_64_packets", (1,)), ("size_65_127_packets", (2,)),
    ("size_128_255_packets", (3,)), ("size_256_511_packets", (4,)), ("size_512_1023_packets", (5,)),
    ("size_1024_1518_packets", (6,)), ("size_1519_max_packets", (7, 8)),
)


def _bin_table(n: int) -> np.ndarray:
    """bin of every length below n (a constant the kernels index: no branches)."""
    out = np.empty(n, np.int64)
    for b, (lo, hi) in enumerate(SIZE_BINS):
        out[lo:n if hi < 0 else min(hi + 1, n)] = b
    return out


_TABLE_LEN = 2048
_BIN_OF = _bin_table(_TABLE_LEN)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def size_bin(length):
    """The bin of a frame of ``length`` bytes (``SIZE_BINS``)."""
    return _BIN_OF[length] if length < _TABLE_LEN else N_SIZE_BINS - 1


@njit(nogil=True, cache=True, _nrt=False)
def count_sizes(stats, q, col, data_len, bufs, start, end, sign):
    """Add ``sign`` to bin column ``col + size_bin`` of ``stats[q]`` for each
    buffer ``bufs[start:end]`` (lengths from the pool's ``data_len``).
    Runs of one bin are counted in a register and stored once: a store per
    packet into the same counter would chain each packet to the last."""
    prev = -1
    run = 0
    for k in range(start, end):
        b = size_bin(data_len[bufs[k]])
        if b == prev:
            run += 1
        else:
            if run:
                stats[q, col + prev] += sign * run
            prev = b
            run = 1
    if run:
        stats[q, col + prev] += sign * run


def bin_sums(bins: np.ndarray, names: tuple) -> list[tuple[str, int]]:
    """``bins`` (one row of N_SIZE_BINS counters) summed under ``names``
    (``PORT_BIN_NAMES`` or ``QUEUE_BIN_NAMES``)."""
    return [(name, int(sum(int(bins[b]) for b in which))) for name, which in names]
