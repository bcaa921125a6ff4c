"""Send and receive packets through a port from Python tests (one burst per
call, compiled once).  Packets carry a sequence number and a CRC32 of their
payload so a receiver can prove each one arrived intact."""
from __future__ import annotations

import zlib

import numpy as np
from numba import njit

from pmd.burst import rx_burst, tx_burst, tx_flush
from pmd.mbuf import alloc_bulk, free_bulk, mbuf_offset

HDR = bytes.fromhex("020000000001" "020000000002" "88b5")  # dst, src, local experimental ethertype


def make_packet(seq: int, size: int) -> bytes:
    """``size`` bytes: Ethernet header, seq (u64), pseudo-random body, CRC32
    of all before it but the MAC addresses (mac/macswap forwarding rewrites them)."""
    body_len = size - len(HDR) - 8 - 4
    body = np.random.default_rng(seq).integers(0, 256, body_len, dtype=np.uint8).tobytes()
    head = HDR + seq.to_bytes(8, "little") + body
    return head + zlib.crc32(head[12:]).to_bytes(4, "little")


def check_packet(pkt: bytes) -> int:
    """The packet's sequence number, or -1 if its CRC does not match."""
    if len(pkt) < len(HDR) + 12 or zlib.crc32(pkt[12:-4]) != int.from_bytes(pkt[-4:], "little"):
        return -1
    return int.from_bytes(pkt[len(HDR):len(HDR) + 8], "little")


@njit(nogil=True, cache=True)
def _send(st, q, pool, data, lens, n):
    bufs = np.empty(max(n, 1), np.int32)
    if not alloc_bulk(pool, bufs, n):
        return -1
    for k in range(n):
        off = mbuf_offset(pool, bufs[k])
        pool.data[off:off + lens[k]] = data[k, :lens[k]]
        pool.data_len[bufs[k]] = lens[k]
    sent = tx_burst(st, q, pool, bufs, n)
    if sent < n:
        free_bulk(pool, bufs[sent:], n - sent)
    return sent


@njit(nogil=True, cache=True)
def _recv(st, q, pool, out, lens, nb):
    bufs = np.empty(nb, np.int32)
    n = rx_burst(st, q, pool, bufs, nb)
    for k in range(n):
        off = mbuf_offset(pool, bufs[k])
        ln = pool.data_len[bufs[k]]
        lens[k] = ln
        out[k, :ln] = pool.data[off:off + ln]
    free_bulk(pool, bufs, n)
    return n


def send(port, pool, packets: list[bytes], queue: int = 0) -> int:
    """tx_burst ``packets`` on ``port``; returns how many the port took."""
    if not packets:
        return 0
    width = max(len(p) for p in packets)
    data = np.zeros((len(packets), width), np.uint8)
    lens = np.zeros(len(packets), np.int64)
    for k, p in enumerate(packets):
        data[k, :len(p)] = np.frombuffer(p, np.uint8)
        lens[k] = len(p)
    return int(_send(port.kernel_state(), queue, pool, data, lens, len(packets)))


@njit(nogil=True, cache=True)
def _flush(st, q, pool):
    return tx_flush(st, q, pool)


def flush(port, pool, queue: int = 0) -> int:
    """tx_flush on ``port``: send what it holds; returns how many it still holds."""
    return int(_flush(port.kernel_state(), queue, pool))


def recv(port, pool, nb: int = 64, queue: int = 0, width: int = 2048) -> list[bytes]:
    """One rx_burst of up to ``nb`` packets from ``port``."""
    out = np.zeros((nb, width), np.uint8)
    lens = np.zeros(nb, np.int64)
    n = int(_recv(port.kernel_state(), queue, pool, out, lens, nb))
    return [out[k, :lens[k]].tobytes() for k in range(n)]
