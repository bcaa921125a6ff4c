"""Each forwarding engine's effect on packet bytes, one burst at a time,
called directly (no lcore) so the result is exact."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from pmd.fwd.common import CFG_NB_FLOWS, MODE_NAMES, N_FS
from pmd.fwd.dispatch import fwd_one
from pmd.fwd.pktgen import ipv4_checksum, udp_template
from pmd.mbuf import alloc_bulk, mbuf_offset
from pmd.ring_pmd.ring import ring_dequeue, ring_enqueue

N = 8


@pytest.fixture
def rig(fwd):
    """Two loopback ring ports; stream 0 is port 0 rx -> port 1 tx."""
    for v in ("net_ring0", "net_ring1"):
        fwd.attach_port(v).start()
    fwd.streams = fwd.layout()
    fs = np.zeros((len(fwd.streams), N_FS), np.int64)
    ctx = fwd._ctx(fs, fwd._cfg(False))
    ctx.cfg[CFG_NB_FLOWS] = 4
    return fwd, ctx, fwd._lcore_streams(1)[0]


def inject(fwd, frames: list[bytes]) -> None:
    """Put frames into port 0's rx ring as if they had arrived."""
    pool, drv = fwd.pool, fwd.ports[0].driver
    bufs = np.zeros(len(frames), np.int32)
    assert alloc_bulk(pool, bufs, len(frames))
    for i, f in zip(bufs, frames):
        off = mbuf_offset(pool, i)
        pool.data[off:off + len(f)] = np.frombuffer(f, np.uint8)
        pool.data_len[i] = len(f)
    assert ring_enqueue(drv.rx_slots[0], drv.rx_ctl[0], bufs, len(bufs)) == len(bufs)


def collect(fwd) -> list[bytes]:
    """Frames port 1 sent (it loops back into its own rx ring)."""
    pool, drv = fwd.pool, fwd.ports[1].driver
    bufs = np.zeros(512, np.int32)
    n = ring_dequeue(drv.rx_slots[0], drv.rx_ctl[0], bufs, 512)
    out = []
    for i in bufs[:n]:
        off = mbuf_offset(pool, i)
        out.append(bytes(pool.data[off:off + pool.data_len[i]]))
    from pmd.mbuf import free_bulk
    free_bulk(pool, bufs, n)
    return out


def frames(n=N, size=80) -> list[bytes]:
    rng = np.random.default_rng(1)
    return [bytes(rng.integers(0, 256, size, dtype=np.uint8)) for _ in range(n)]


def run(ctx, stream, mode: str, burst: int = 32) -> int:
    return fwd_one(stream, ctx, MODE_NAMES.index(mode), burst)


def test_io_leaves_bytes_untouched(rig):
    fwd, ctx, s = rig
    sent = frames()
    inject(fwd, sent)
    assert run(ctx, s, "io") == N
    assert collect(fwd) == sent
    assert ctx.fs[0, 0] == N and ctx.fs[0, 1] == N


def test_macswap_swaps_and_keeps_payload(rig):
    fwd, ctx, s = rig
    sent = frames()
    inject(fwd, sent)
    run(ctx, s, "macswap")
    got = collect(fwd)
    assert got == [f[6:12] + f[0:6] + f[12:] for f in sent]


def test_mac_rewrites_to_tx_port_and_peer(rig):
    fwd, ctx, s = rig
    sent = frames()
    inject(fwd, sent)
    run(ctx, s, "mac")
    peer, own = bytes([2, 0, 0, 0, 0, 1]), fwd.ports[1].mac()
    assert collect(fwd) == [peer + own + f[12:] for f in sent]


def test_rxonly_frees_everything(rig):
    fwd, ctx, s = rig
    before = fwd.pool.available()
    inject(fwd, frames())
    assert run(ctx, s, "rxonly") == N
    assert collect(fwd) == []
    assert fwd.pool.available() == before


@pytest.mark.parametrize("size", [64, 1518])
def test_txonly_sends_valid_template(rig, size):
    fwd, ctx, s = rig
    ctx = ctx._replace(tmpl=udp_template(size))
    assert run(ctx, s, "txonly", burst=16) == 16
    got = collect(fwd)
    assert len(got) == 16 and all(len(f) == size for f in got)
    f = got[0]
    assert f[0:6] == bytes([2, 0, 0, 0, 0, 1]) and f[6:12] == fwd.ports[1].mac()
    assert f[12:14] == b"\x08\x00" and ipv4_checksum(f[14:34]) == 0
    assert int.from_bytes(f[16:18], "big") == size - 14


def test_flowgen_spreads_flows_with_valid_checksums(rig):
    fwd, ctx, s = rig
    run(ctx, s, "flowgen", burst=8)
    got = collect(fwd)
    dsts = [f[30:34] for f in got]
    assert len(set(dsts)) == 4  # nb_flows
    assert all(ipv4_checksum(f[14:34]) == 0 for f in got)


def _ping(seq: int, payload: bytes = b"abcdefgh") -> bytes:
    icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, 0x1234, seq) + payload)
    struct.pack_into("!H", icmp, 2, _inet_checksum(bytes(icmp)))
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0,
                               bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])))
    struct.pack_into("!H", ip, 10, _inet_checksum(bytes(ip)))
    return bytes.fromhex("02000000520000aabbccddee0800") + bytes(ip) + bytes(icmp)


def _inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


ARP_REQUEST = (bytes.fromhex("ffffffffffff" "00aabbccddee" "0806" "0001" "0800" "06" "04" "0001")
               + bytes.fromhex("00aabbccddee") + bytes([10, 0, 0, 1]) + bytes(6) + bytes([10, 0, 0, 2]) + bytes(18))


@pytest.fixture
def echo_rig(fwd):
    """One loopback ring port in icmpecho mode: its stream answers on port 0."""
    fwd.attach_port("net_ring0").start()
    fwd.config.mode = "icmpecho"
    fwd.streams = fwd.layout()
    fs = np.zeros((len(fwd.streams), N_FS), np.int64)
    ctx = fwd._ctx(fs, fwd._cfg(False))
    return fwd, ctx, fwd._lcore_streams(1)[0]


def test_icmpecho_answers_arp_and_ping_drops_the_rest(echo_rig):
    fwd, ctx, stream = echo_rig
    assert (stream.tx_port, fwd.streams[0].tx_port) == (0, 0)
    free = fwd.pool.available()
    udp = bytes(udp_template(64))
    inject(fwd, [_ping(1), ARP_REQUEST, udp, _ping(2)])
    assert run(ctx, stream, "icmpecho") == 4
    # replies looped back into port 0's own rx ring
    pool, drv = fwd.pool, fwd.ports[0].driver
    bufs = np.zeros(8, np.int32)
    n = ring_dequeue(drv.rx_slots[0], drv.rx_ctl[0], bufs, 8)
    out = [bytes(pool.data[mbuf_offset(pool, i):][:pool.data_len[i]]) for i in bufs[:n]]
    from pmd.mbuf import free_bulk
    free_bulk(pool, bufs, n)
    assert fwd.pool.available() == free  # the UDP frame was freed, nothing leaked
    assert len(out) == 3
    mac = fwd.ports[0].mac()
    for reply, seq in ((out[0], 1), (out[2], 2)):
        assert reply[:6] == bytes.fromhex("00aabbccddee") and reply[6:12] == mac
        assert reply[26:30] == bytes([10, 0, 0, 2]) and reply[30:34] == bytes([10, 0, 0, 1])
        assert reply[34] == 0 and struct.unpack("!H", reply[40:42])[0] == seq
        assert _inet_checksum(reply[34:]) == 0 and _inet_checksum(reply[14:34]) == 0
    arp = out[1]
    assert arp[:6] == bytes.fromhex("00aabbccddee") and arp[6:12] == mac
    assert arp[20:22] == b"\x00\x02" and arp[22:28] == mac and arp[28:32] == bytes([10, 0, 0, 2])
    assert arp[32:38] == bytes.fromhex("00aabbccddee") and arp[38:42] == bytes([10, 0, 0, 1])
