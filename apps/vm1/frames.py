"""VM1's frames, built and checked in Numba kernels.

Every frame is IPv4 from VM1 to the far end.  Even sequence numbers are ICMP
echo requests (id ``icmp_id``, ICMP seq = (n // 2) & 0xffff), odd ones are UDP
datagrams to ``UDP_DPORT`` from source port ``UDP_SPORT0 + flow``.  Both carry
the payload ``MAGIC | seq u64 LE | flow u32 LE`` then zero padding, so the
far end (and VM1, for what comes back) can tell every packet apart.

What comes back is classified: an echo reply to one of ours (checksum and
payload verified) is a *reply*; one of our own frames unchanged (a loopback
stand-in for the VF) is *looped*; anything else is *other*.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from pmd.burst import rx_burst, tx_burst
from pmd.csum import inet_checksum
from pmd.mbuf import alloc_bulk, free_bulk, mbuf_offset

MAGIC = b"VPCI"
UDP_DPORT = 9000
UDP_SPORT0 = 10000
ETH, IP, L4 = 14, 20, 8
PAYLOAD = ETH + IP + L4  # 42: where MAGIC starts
MIN_SIZE = PAYLOAD + 4 + 8 + 4  # 58 (padded to 60 at least)

# counters (index into the int64 ``counts`` array)
C_REPLY, C_LOOPED, C_DUP, C_BAD, C_OTHER, C_RX = range(6)
N_COUNTS = 6


def template(size: int, src_mac: bytes, dst_mac: bytes, src_ip: bytes, dst_ip: bytes, proto: int) -> np.ndarray:
    """One frame of ``size`` bytes with Ethernet + IPv4 headers filled in and
    the magic in the payload; per-packet fields are written by ``tx_frames``."""
    f = bytearray(size)
    f[0:6], f[6:12], f[12:14] = dst_mac, src_mac, b"\x08\x00"
    f[14], f[15] = 0x45, 0
    f[16:18] = (size - ETH).to_bytes(2, "big")
    f[20:22] = b"\x40\x00"  # DF
    f[22], f[23] = 64, proto
    f[26:30], f[30:34] = src_ip, dst_ip
    f[PAYLOAD:PAYLOAD + 4] = MAGIC
    return np.frombuffer(bytes(f), np.uint8).copy()


@njit(nogil=True, cache=True)
def _put16(d, at, v):
    d[at] = (v >> 8) & 0xFF
    d[at + 1] = v & 0xFF


@njit(nogil=True, cache=True)
def _get16(d, at):
    return (np.int64(d[at]) << 8) | np.int64(d[at + 1])


@njit(nogil=True, cache=True)
def _get_le(d, at, n):
    v = np.int64(0)
    for k in range(n):
        v |= np.int64(d[at + k]) << (8 * k)
    return v


@njit(nogil=True, cache=True)
def _fill(d, tmpl_icmp, tmpl_udp, size, seq, icmp_id, nflows):
    if seq % 2 == 0:
        d[:size] = tmpl_icmp[:size]
    else:
        d[:size] = tmpl_udp[:size]
    _put16(d, 18, seq & 0xFFFF)  # IP id
    flow = 0 if seq % 2 == 0 else (seq // 2) % nflows
    p = PAYLOAD + 4
    for k in range(8):
        d[p + k] = (seq >> (8 * k)) & 0xFF
    for k in range(4):
        d[p + 8 + k] = (flow >> (8 * k)) & 0xFF
    _put16(d, 24, 0)
    _put16(d, 24, inet_checksum(d, ETH, ETH + IP))
    l4 = ETH + IP
    if seq % 2 == 0:  # ICMP echo request
        d[l4] = 8
        d[l4 + 1] = 0
        _put16(d, l4 + 4, icmp_id)
        _put16(d, l4 + 6, (seq // 2) & 0xFFFF)
        _put16(d, l4 + 2, 0)
        _put16(d, l4 + 2, inet_checksum(d, l4, size))
    else:  # UDP, no checksum (optional in IPv4)
        _put16(d, l4, UDP_SPORT0 + flow)
        _put16(d, l4 + 2, UDP_DPORT)
        _put16(d, l4 + 4, size - ETH - IP)
        _put16(d, l4 + 6, 0)


@njit(nogil=True, cache=True)
def tx_frames(st, q, pool, bufs, tmpl_icmp, tmpl_udp, size, seq0, n, icmp_id, nflows):
    """Build frames seq0 .. seq0+n-1 and tx_burst them; returns how many the
    port took (the rest are freed: the caller sends them again), -1 when the
    pool is empty."""
    if n <= 0:
        return 0
    if not alloc_bulk(pool, bufs, n):
        return -1
    for k in range(n):
        off = mbuf_offset(pool, bufs[k])
        _fill(pool.data[off:off + size], tmpl_icmp, tmpl_udp, size, seq0 + k, icmp_id, nflows)
        pool.data_len[bufs[k]] = size
    sent = tx_burst(st, q, pool, bufs, n)
    if sent < n:
        free_bulk(pool, bufs[sent:], n - sent)
    return sent


@njit(nogil=True, cache=True)
def _classify(d, ln, icmp_id, limit):
    """(kind, seq): kind 0 other, 1 echo reply, 2 looped (our own frame), 3 bad
    (one of ours, damaged)."""
    if ln < PAYLOAD + 16 or d[12] != 0x08 or d[13] != 0x00 or d[14] != 0x45:
        return 0, -1
    if d[PAYLOAD] != 86 or d[PAYLOAD + 1] != 80 or d[PAYLOAD + 2] != 67 or d[PAYLOAD + 3] != 73:  # VPCI
        return 0, -1
    seq = _get_le(d, PAYLOAD + 4, 8)
    if seq < 0 or seq >= limit:
        return 3, -1
    proto = d[23]
    l4 = ETH + IP
    if inet_checksum(d, ETH, ETH + IP) != 0:
        return 3, -1
    if proto == 1:
        if _get16(d, l4 + 4) != icmp_id or _get16(d, l4 + 6) != (seq // 2) & 0xFFFF or seq % 2 != 0:
            return 0, -1
        if inet_checksum(d, l4, ln) != 0:
            return 3, -1
        if d[l4] == 0:
            return 1, seq
        if d[l4] == 8:
            return 2, seq
        return 0, -1
    if proto == 17 and _get16(d, l4 + 2) == UDP_DPORT and seq % 2 == 1:
        return 2, seq
    return 0, -1


@njit(nogil=True, cache=True)
def rx_frames(st, q, pool, bufs, nb, icmp_id, seen, counts):
    """One rx_burst: classify every frame, mark its seq in ``seen`` (1 reply,
    2 looped), count duplicates, free the buffers.  Returns frames received."""
    n = rx_burst(st, q, pool, bufs, nb)
    limit = seen.shape[0]
    for k in range(n):
        off = mbuf_offset(pool, bufs[k])
        ln = pool.data_len[bufs[k]]
        kind, seq = _classify(pool.data[off:off + ln], ln, icmp_id, limit)
        counts[C_RX] += 1
        if kind == 0:
            counts[C_OTHER] += 1
        elif kind == 3:
            counts[C_BAD] += 1
        elif seen[seq] != 0:
            counts[C_DUP] += 1
        else:
            seen[seq] = kind
            counts[C_REPLY if kind == 1 else C_LOOPED] += 1
    free_bulk(pool, bufs, n)
    return n
