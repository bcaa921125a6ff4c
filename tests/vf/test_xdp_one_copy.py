"""One copy between VM1 and the AF_XDP VF: the app's mbuf pool is the
port's UMEM, so tx posts the mbuf's own address on the tx ring and rx hands
the frame the kernel filled out as the mbuf; mbufs of another pool are
copied (counted); the pool's count is exact after stop.  End to end: our
virtio-user VM1 -> vhost-pci -> net_vf_xdp -> namespace and back, every
frame intact, no copy in the VF port, and the kernel transmitting from the
very buffers the vhost-pci port wrote."""
from __future__ import annotations

import shutil
import tempfile
import time

import numpy as np
import pytest
from numba import njit

from pmd.burst import rx_burst, tx_burst
from pmd.ethdev import Port
from pmd.mbuf import alloc_bulk, create_pool, free_bulk, mbuf_offset
from pmd.vdev import parse_vdev
from pmd.xdp_pmd import layout as L
from tests.util import wait_until
from tests.vf import ns_peer
from tests.vf.conftest import send_all, xdp_attached
from tests.vf.test_vf_port import recv_until
from tests.vhostpci.peer_io import flush, make_packet, recv, send

pytestmark = pytest.mark.usefixtures("compiled_xdp")
RING = 256
FILL = L.FILL_RING_FACTOR * RING  # the frames each fill ring keeps


@njit(nogil=True, cache=True)
def _tx(st, q, pool, bufs, n):
    return tx_burst(st, q, pool, bufs, n)


@njit(nogil=True, cache=True)
def _rx(st, q, pool, bufs, nb):
    return rx_burst(st, q, pool, bufs, nb)


def _fill(pool, pkts: list[bytes]) -> np.ndarray:
    bufs = np.zeros(len(pkts), np.int32)
    assert alloc_bulk(pool, bufs, len(pkts))
    for i, p in zip(bufs, pkts):
        off = mbuf_offset(pool, i)
        pool.data[off:off + len(p)] = np.frombuffer(p, np.uint8)
        pool.data_len[i] = len(p)
    return bufs


def _tx_descs(port, first: int, n: int, q: int = 0) -> list[tuple[int, int]]:
    """(addr, len) of tx ring entries first .. first + n - 1 (the kernel
    reads them, it does not clear them)."""
    st = port.kernel_state()
    out = []
    for k in range(first, first + n):
        d = int(st.off[L.TX, L.OFF_DESC]) + (k & (st.ring_size - 1)) * 16
        out.append((int(st.tx64[q, d >> 3]), int(st.tx32[q, (d + 8) >> 2])))
    return out


def _tx_producer(port, q: int = 0) -> int:
    st = port.kernel_state()
    return int(st.tx32[q, int(st.off[L.TX, L.OFF_PRODUCER]) >> 2])


def _drain(port, pool) -> None:
    deadline = time.monotonic() + 5
    while flush(port, pool) and time.monotonic() < deadline:
        time.sleep(0.001)


@pytest.fixture
def xdp_with_pool(veth):
    ports = []

    def make(pool, extra: str = "") -> Port:
        p = Port(0, parse_vdev(f"net_vf_xdp0,iface={veth.host},ring_size={RING}{extra}"))
        ports.append(p)
        p.use_pool(pool)
        p.start()
        return p

    yield make
    for p in ports:
        p.close()
    assert xdp_attached(veth.host) == "none"


def test_tx_posts_the_mbufs_and_rx_hands_out_the_frames(veth, xdp_with_pool):
    pool = create_pool(2048)
    port = xdp_with_pool(pool)
    assert port.driver.info()["umem"].startswith("the mbuf pool")
    assert pool.available() == pool.size - FILL  # the fill ring's frames
    # tx: the descriptors carry the mbufs' own addresses (nothing copied)
    pkts = [make_packet(k, 60 + 29 * k) for k in range(40)]
    peer = veth.start_peer("recv", len(pkts), 5)
    bufs = _fill(pool, pkts)
    first = _tx_producer(port)
    assert _tx(port.kernel_state(), 0, pool, bufs, len(bufs)) == len(bufs)
    assert _tx_descs(port, first, len(bufs)) == [
        (int(i) * pool.buf_size + int(pool.data_off[i]), len(p)) for i, p in zip(bufs, pkts)]
    _drain(port, pool)
    assert [bytes.fromhex(h) for h in veth.peer_result(peer)["packets"]] == pkts
    assert wait_until(lambda: (flush(port, pool), pool.available())[1] == pool.size - FILL, 2)  # completions back
    # rx: the mbufs are the frames the kernel wrote (behind its XDP headroom)
    veth.run_peer("send", 20, "64,1514,333", 2000, 0)
    got, data_offs = [], []
    out = np.zeros(64, np.int32)
    deadline = time.monotonic() + 5
    while len(got) < 20 and time.monotonic() < deadline:
        n = _rx(port.kernel_state(), 0, pool, out, 64)
        for i in out[:n]:
            off = mbuf_offset(pool, i)
            got.append(pool.data[off:off + pool.data_len[i]].tobytes())
            data_offs.append(int(pool.data_off[i]))
        free_bulk(pool, out, n)
    assert [ns_peer.check_packet(p) for p in got] == list(range(20))
    assert set(data_offs) == {L.XDP_PACKET_HEADROOM}
    xs = port.driver.xstats()
    assert (xs["tx_copied"], xs["rx_copied"], xs["rx_bad_desc"], xs["tx_invalid_descs"]) == (0, 0, 0, 0), xs
    port.stop()
    assert pool.available() == pool.size  # every frame the kernel side held is back


def test_mbufs_of_another_pool_are_copied(veth, xdp_with_pool):
    pool, other = create_pool(2048), create_pool(512)
    port = xdp_with_pool(pool)
    pkts = [make_packet(k, 100 + k) for k in range(50)]
    peer = veth.start_peer("recv", len(pkts), 5)
    assert send_all(port, other, pkts) == len(pkts)
    assert [bytes.fromhex(h) for h in veth.peer_result(peer)["packets"]] == pkts
    veth.run_peer("send", 30, "64,1514", 2000, 0)
    assert [ns_peer.check_packet(p) for p in recv_until(port, other, 30)] == list(range(30))
    xs = port.driver.xstats()
    assert (xs["tx_copied"], xs["rx_copied"]) == (50, 30), xs
    _drain(port, other)
    port.stop()
    assert (pool.available(), other.available()) == (pool.size, other.size)


def test_a_pool_that_cannot_be_the_umem_is_copied_from_and_says_why(veth, xdp_with_pool, caplog):
    pool = create_pool(RING)  # fewer buffers than twice the fill ring
    port = xdp_with_pool(pool)
    assert "fewer than twice" in port.driver.info()["umem"]
    assert "the mbuf pool cannot be the UMEM" in caplog.text
    pkts = [make_packet(k, 200) for k in range(10)]
    peer = veth.start_peer("recv", len(pkts), 5)
    assert send_all(port, pool, pkts) == len(pkts)
    assert [bytes.fromhex(h) for h in veth.peer_result(peer)["packets"]] == pkts
    assert port.driver.xstats()["tx_copied"] == 10
    port.stop()
    assert pool.available() == pool.size


def _vm1_sizes(k: int) -> int:
    return 64 + (k * 97) % 1451  # 64 .. 1514


def test_vm1_to_namespace_and_back_with_one_copy(veth, fwd):
    """VM1 -> vhost-pci -> net_vf_xdp -> namespace and back, io forwarding:
    exact frames both ways, the VF port copied nothing, and its tx ring
    points into the forwarding pool at the bytes VM1 sent."""
    count = 600
    d = tempfile.mkdtemp(prefix="vfxdp1c", dir="/tmp")
    vm1 = None
    try:
        vp = fwd.attach_port(f"net_vhost_pci0,path={d}/vp.sock")
        vf = fwd.attach_port(f"net_vf_xdp1,iface={veth.host},ring_size=1024")
        vp.start()
        vf.start()
        assert vf.driver.info()["umem"].startswith("the mbuf pool")
        fwd.config.mode = "io"
        fwd.start()
        vm1 = Port(9, parse_vdev(f"net_virtio_user9,path={d}/vp.sock"))
        vm1.start()
        assert vm1.driver.wait_link(True, 10)
        pool = create_pool(4096)
        assert wait_until(lambda: (recv(vm1, pool), vm1.driver.rx_buffers_posted())[1]
                          >= vm1.driver.args["queue_size"], 5)
        # VM1 -> namespace
        pkts = [make_packet(k, _vm1_sizes(k)) for k in range(count)]
        peer = veth.start_peer("recv", count, 20)
        sent = 0
        deadline = time.monotonic() + 20
        while sent < count and time.monotonic() < deadline:
            sent += send(vm1, pool, pkts[sent:sent + 32])
            time.sleep(0.0005)
        got = [bytes.fromhex(h) for h in veth.peer_result(peer)["packets"]]
        assert got == pkts  # every frame, in order, byte for byte
        # the VF's tx ring: the last frames went out of the forwarding pool's buffers,
        # each holding what VM1 sent (vhost-pci copied VM1's buffer straight into the
        # frame); a completed frame goes back to the pool and may carry a later packet
        tail = 200
        last = {addr: (ln, pkt) for (addr, ln), pkt in zip(_tx_descs(vf, _tx_producer(vf) - tail, tail),
                                                             pkts[-tail:])}
        assert len(last) >= 32
        for addr, (ln, pkt) in last.items():
            assert fwd.pool.data[addr:addr + ln].tobytes() == pkt
        # namespace -> VM1
        veth.run_peer("send", count, "64,1514,700", 20_000, 0)
        seqs = []
        deadline = time.monotonic() + 10
        while len(seqs) < count and time.monotonic() < deadline:
            seqs += [ns_peer.check_packet(p) for p in recv(vm1, pool)]
        assert sorted(seqs) == list(range(count))
        xs = vf.driver.xstats()
        assert (xs["tx_copied"], xs["rx_copied"], xs["rx_bad_desc"]) == (0, 0, 0), xs
        assert vf.stats().opackets == count and vf.stats().ipackets >= count
    finally:
        if vm1 is not None:
            vm1.close()
        shutil.rmtree(d, ignore_errors=True)
    fwd.stop()
    for pid in (0, 1):
        fwd.stop_port(pid)
    assert fwd.pool.available() == fwd.pool.size  # nothing lost on the way or held after stop


def test_stop_sends_what_the_tx_ring_took_and_every_frame_comes_back(veth, xdp_with_pool):
    """tx_burst took 200 frames, one wakeup sent 32 (copy mode): stop sends
    the rest before closing, and the pool gets every frame back."""
    pool = create_pool(2048)
    port = xdp_with_pool(pool)
    pkts = [make_packet(k, 90) for k in range(200)]
    peer = veth.start_peer("recv", len(pkts), 5)
    bufs = _fill(pool, pkts)
    assert _tx(port.kernel_state(), 0, pool, bufs, len(bufs)) == len(bufs)
    port.stop()
    assert [bytes.fromhex(h) for h in veth.peer_result(peer)["packets"]] == pkts
    assert pool.available() == pool.size


def test_two_queues_share_the_pool_as_their_umem():
    """Each queue's XSK registers the same pool; frames stay with the queue
    that posted them, and stop gives back every one."""
    from tests.vf.conftest import make_veth
    from tests.vf.test_xdp_port import _flow_ids, _udp_flows

    with make_veth(queues=2) as v:
        pool = create_pool(4 * FILL)
        port = Port(0, parse_vdev(f"net_vf_xdp0,iface={v.host},queues=2,ring_size={RING}"))
        try:
            port.use_pool(pool)
            port.start()
            assert port.driver.info()["umem"].startswith("the mbuf pool")
            assert pool.available() == pool.size - 2 * FILL
            _udp_flows(v.ns, v.peer, v.subnet, 64)
            per_queue: dict[int, list[int]] = {0: [], 1: []}
            deadline = time.monotonic() + 5
            while sum(map(len, per_queue.values())) < 64 and time.monotonic() < deadline:
                for q in (0, 1):
                    per_queue[q] += _flow_ids(recv(port, pool, queue=q))
            assert sorted(per_queue[0] + per_queue[1]) == list(range(64))
            assert per_queue[0] and per_queue[1]
            peer = v.start_peer("recv", 2, 3)
            assert send_all(port, pool, [make_packet(7, 80)], queue=1) == 1
            assert send_all(port, pool, [make_packet(8, 80)], queue=0) == 1
            got = [bytes.fromhex(h) for h in v.peer_result(peer)["packets"]]
            assert sorted(got) == sorted([make_packet(7, 80), make_packet(8, 80)])
            xs = port.driver.xstats()
            assert (xs["tx_copied"], xs["rx_copied"], xs["rx_bad_desc"]) == (0, 0, 0), xs
        finally:
            port.close()
        assert pool.available() == pool.size
        assert xdp_attached(v.host) == "none"
