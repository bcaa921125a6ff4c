"""Malicious packed rings (virtio 1.2, 2.8): a hostile VM1 writing packed
descriptors by hand (``rogue_packed.RoguePackedVM1``) against one
``net_vhost_pci0`` port whose kernels are called directly (``peer_io``).

As for the split ring (``test_malicious_ring.py``): every bad chain is
returned empty and counted, the queue goes on (a good packet after it is
delivered intact), the device writes nothing outside the descriptor ring,
the device area and the buffers it may fill; an IOTLB miss parks the chain
until VM1 grants the page.  Packed specifics: the used element carries the
chain's buffer id (its last descriptor's) at the head's slot, the ring
moves on by the slots the chain covered (a chain NEXT all around the ring
included), and a receive packet that cannot complete leaves every
descriptor it began unchanged.
"""
from __future__ import annotations

import struct

import pytest

from pmd.vhost_user.messages import IotlbPerm
from pmd.virtio.features import VIRTIO_F_IN_ORDER
from pmd.virtio.packed import VRING_DESC_F_INDIRECT as IND
from pmd.virtio.packed import VRING_DESC_F_NEXT as NEXT
from pmd.virtio.packed import VRING_DESC_F_WRITE as WRITE
from pmd.vhostpci_pmd.state import VQ_LAST_AVAIL, VQ_PACKED
from pmd.vhostpci_pmd.txhold import room
from tests.util import wait_until
from tests.vhostpci.peer_io import flush, make_packet, recv, send
from tests.vhostpci.rogue_packed import RoguePackedVM1
from tests.vhostpci.rogue_vm1 import (
    HDR_LEN, HOLE, IND_BUF, INDIRECT, MRG_RXBUF, NUM, PAGE, RING_BASE, RX, TX, TX_BUF, ring_addrs,
)
from tests.vhostpci.test_malicious_ring import RX_HDR, Counters, vp  # noqa: F401  (vp: the port fixture)

GOOD_ID = 77


@pytest.fixture
def connect(vp):  # noqa: F811
    """connect(iommu, **kw) -> RoguePackedVM1, closed after the test; the port's
    session and control thread must live through it, no mbuf may leak."""
    made: list[RoguePackedVM1] = []
    free0 = vp.pool.available()

    def make(iommu: bool = False, **kw) -> RoguePackedVM1:
        vm = RoguePackedVM1(vp.path, iommu=iommu, **kw)
        made.append(vm)
        assert wait_until(lambda: all(vp.port.driver.vq[:2, VQ_PACKED] == 1), 3.0)
        return vm

    yield make
    srv = vp.srv
    for vm in made:
        n = srv.disconnections
        assert srv.session is not None and not srv.session.closed, srv.last_session.close_reason
        vm.close()
        assert srv.wait_for(lambda s, n=n: s.disconnections > n, 3.0), "disconnection not seen"
    assert srv._thread is not None and srv._thread.is_alive(), "control thread died"
    assert vp.pool.available() == free0, "mbufs leaked"


def ring_parts(v: int) -> list[tuple[int, int]]:
    """What the device may write on ring ``v``: its descriptor ring (used elements)."""
    return [(ring_addrs(v)[0], 16 * NUM)]


def tx_buf(vm, slot: int, pkt: bytes) -> tuple[int, int]:
    return vm.tx_buffer(slot, pkt)


def offer_good_tx(vm, seq: int = 1001) -> bytes:
    pkt = make_packet(seq, 100)
    vm.offer(TX, [(*tx_buf(vm, 40, pkt), 0, GOOD_ID)])
    return pkt


def _table(vm, gpa, entries):
    for k, (addr, ln, flags) in enumerate(entries):
        vm.mem.write(gpa + 16 * k, struct.pack("<QIHH", addr, ln, 0, flags))


# ---------------------------------------------------------------- dequeue
# (vm) -> (chain offered, counter that must move)
def write_flag_on_tx(vm):
    return [(*tx_buf(vm, 0, make_packet(7, 80)), WRITE, 5)], "bad_descriptors"


def addr_in_hole(vm):
    return [(HOLE, 92, 0, 5)], "bad_descriptors"


def write_flag_mid_chain(vm):
    gpa, n = tx_buf(vm, 0, make_packet(7, 80))
    return [(gpa, 40, NEXT, 5), (gpa + 40, n - 40, WRITE, 6)], "bad_descriptors"


def packet_bigger_than_mbuf(vm):
    return [(TX_BUF, 1500, NEXT, 5), (TX_BUF + 0x1000, 1500, 0, 6)], "too_big"


def indirect_with_next(vm):
    _table(vm, IND_BUF, [(*tx_buf(vm, 0, make_packet(7, 80)), 0)])
    return [(IND_BUF, 16, IND | NEXT, 5)], "bad_descriptors"


def indirect_len_not_multiple_of_16(vm):
    _table(vm, IND_BUF, [(*tx_buf(vm, 0, make_packet(7, 80)), 0)])
    return [(IND_BUF, 24, IND, 5)], "bad_descriptors"


def indirect_write_entry(vm):
    _table(vm, IND_BUF, [(*tx_buf(vm, 0, make_packet(7, 80)), WRITE)])
    return [(IND_BUF, 16, IND, 5)], "bad_descriptors"


def indirect_nested(vm):
    _table(vm, IND_BUF + 0x1000, [(*tx_buf(vm, 0, make_packet(7, 80)), 0)])
    _table(vm, IND_BUF, [(IND_BUF + 0x1000, 16, IND)])
    return [(IND_BUF, 16, IND, 5)], "bad_descriptors"


def indirect_table_in_hole(vm):
    return [(HOLE, 32, IND, 5)], "bad_descriptors"


DEQ_CASES = [write_flag_on_tx, addr_in_hole, write_flag_mid_chain, packet_bigger_than_mbuf, indirect_with_next,
             indirect_len_not_multiple_of_16, indirect_write_entry, indirect_nested, indirect_table_in_hole]


@pytest.mark.parametrize("make_bad", DEQ_CASES, ids=[f.__name__ for f in DEQ_CASES])
def test_dequeue_bad_chain_counted_queue_goes_on(vp, connect, make_bad):  # noqa: F811
    vm = connect(extra=INDIRECT)
    c = Counters(vp.port)
    chain, counter = make_bad(vm)
    vm.offer(TX, chain)
    good = offer_good_tx(vm)
    before = vm.snapshot()
    assert recv(vp.port, vp.pool) == [good]
    last_id = 5 if chain[0][2] & IND else chain[-1][3]
    assert vm.used_at(TX, 0) == (last_id, 0, True)  # the chain's id (its last descriptor's), at its head
    assert vm.used_at(TX, len(chain)) == (GOOD_ID, 0, True)  # the ring moved on by the chain's slots
    assert int(vp.port.driver.vq[TX, VQ_LAST_AVAIL]) == (1 << 15) | (len(chain) + 1)
    assert c.delta() == {counter: 1, "ierrors": 1, "ipackets": 1}
    assert vm.changes(before, ring_parts(TX)) == []
    assert recv(vp.port, vp.pool) == []
    assert c.delta() == {counter: 1, "ierrors": 1, "ipackets": 1}


def test_dequeue_chain_next_all_around_the_ring_then_queue_goes_on(vp, connect):  # noqa: F811
    """Every descriptor of the ring NEXT: one bad chain of num slots,
    returned once; the wrap counter flips and the next packet is read."""
    vm = connect()
    c = Counters(vp.port)
    gpa, n = tx_buf(vm, 0, make_packet(7, 80))
    vm.offer(TX, [(gpa, 16, NEXT, k) for k in range(NUM)])
    assert recv(vp.port, vp.pool) == []
    assert c.delta() == {"bad_descriptors": 1, "ierrors": 1}
    assert vm.used_at(TX, 0)[2]
    assert int(vp.port.driver.vq[TX, VQ_LAST_AVAIL]) == 0  # index 0, wrap counter 0
    good = offer_good_tx(vm)
    assert recv(vp.port, vp.pool) == [good]
    assert vm.used_at(TX, NUM) == (GOOD_ID, 0, True)


def test_dequeue_many_packets_across_the_wrap(vp, connect):  # noqa: F811
    """Three laps of the ring in bursts of 20, chains of 1 and 2 descriptors
    and indirect tables mixed: every packet intact, in order."""
    vm = connect(extra=INDIRECT)
    sent, got = [], []
    for seq in range(3 * NUM):
        pkt = make_packet(seq, 60 + seq * 7 % 1400)
        gpa, n = tx_buf(vm, seq % 32, pkt)
        if seq % 3 == 0:
            chain = [(gpa, 20, NEXT, seq), (gpa + 20, n - 20, 0, seq)]
        elif seq % 3 == 1:
            table = IND_BUF + (seq % 32) * 64
            _table(vm, table, [(gpa, 10, 0), (gpa + 10, n - 10, 0)])
            chain = [(table, 32, IND, seq)]
        else:
            chain = [(gpa, n, 0, seq)]
        vm.offer(TX, chain)
        sent.append(pkt)
        if seq % 20 == 19 or seq == 3 * NUM - 1:
            got += recv(vp.port, vp.pool)
    assert got == sent


# ---------------------------------------------------------------- enqueue
def rx_read_only(vm):
    return [(vm.rx_slot(0), 2048, 0, 5)], "bad_descriptors"


def rx_too_small(vm):
    return [(vm.rx_slot(0), 20, WRITE, 5)], "too_big"


def rx_addr_in_hole(vm):
    return [(HOLE, 2048, WRITE, 5)], "bad_descriptors"


def rx_read_only_mid_chain(vm):
    return [(vm.rx_slot(0), 8, WRITE | NEXT, 5), (vm.rx_slot(1), 2048, 0, 6)], "bad_descriptors"


def rx_indirect_read_only_entry(vm):
    _table(vm, IND_BUF, [(vm.rx_slot(0), 2048, 0)])
    return [(IND_BUF, 16, IND, 5)], "bad_descriptors"


ENQ_CASES = [rx_read_only, rx_too_small, rx_addr_in_hole, rx_read_only_mid_chain, rx_indirect_read_only_entry]


@pytest.mark.parametrize("make_bad", ENQ_CASES, ids=[f.__name__ for f in ENQ_CASES])
def test_enqueue_bad_chain_counted_queue_goes_on(vp, connect, make_bad):  # noqa: F811
    vm = connect(extra=INDIRECT)
    c = Counters(vp.port)
    chain, counter = make_bad(vm)
    vm.offer(RX, chain)
    good_buf = vm.rx_slot(40)
    vm.offer(RX, [(good_buf, 2048, WRITE, GOOD_ID)])
    before = vm.snapshot()
    lost, good = make_packet(3001, 100), make_packet(3002, 200)
    assert send(vp.port, vp.pool, [lost, good]) == 2  # the bad one is taken and dropped
    assert vm.used_at(RX, 0)[1:] == (0, True)
    assert vm.used_at(RX, len(chain)) == (GOOD_ID, HDR_LEN + len(good), True)
    assert vm.mem.read(good_buf, HDR_LEN + len(good)) == RX_HDR + good
    assert c.delta() == {counter: 1, "oerrors": 1, "opackets": 1}
    # a device-writable first buffer may have been filled before the chain proved bad (as on a split ring)
    writable = [(chain[0][0], chain[0][1])] if chain[0][2] & WRITE else []
    assert vm.changes(before, ring_parts(RX) + writable + [(good_buf, HDR_LEN + len(good))]) == []
    assert send(vp.port, vp.pool, [good]) == 0  # ring empty: not taken, not counted
    assert c.delta() == {counter: 1, "oerrors": 1, "opackets": 1}


def test_enqueue_mergeable_waits_whole_then_completes(vp, connect):  # noqa: F811
    """MRG_RXBUF with 64-byte buffers: a 300-byte packet needs 5; with 3
    offered it is not taken and the 3 descriptors stay exactly as VM1 wrote
    them; with 5 it is written across them, num_buffers = 5."""
    vm = connect(extra=MRG_RXBUF)
    for k in range(3):
        vm.offer(RX, [(vm.rx_slot(k), 64, WRITE, k)])
    ring = vm.mem.read(ring_addrs(RX)[0], 16 * NUM)
    pkt = make_packet(4001, 300)
    assert send(vp.port, vp.pool, [pkt]) == 0
    assert vm.mem.read(ring_addrs(RX)[0], 16 * NUM) == ring
    for k in range(3, 5):
        vm.offer(RX, [(vm.rx_slot(k), 64, WRITE, k)])
    c = Counters(vp.port)
    assert send(vp.port, vp.pool, [pkt]) == 1
    lens = [vm.used_at(RX, k) for k in range(5)]
    assert [u[0] for u in lens] == list(range(5)) and all(u[2] for u in lens)
    assert [u[1] for u in lens] == [64, 64, 64, 64, HDR_LEN + 300 - 4 * 64]
    data = b"".join(vm.mem.read(vm.rx_slot(k), u[1]) for k, u in enumerate(lens))
    assert data == bytes(10) + struct.pack("<H", 5) + pkt
    assert c.delta() == {"opackets": 1}


def test_iotlb_miss_parks_packed_chain_until_granted(vp, connect):  # noqa: F811
    """Behind an IOMMU, a tx buffer VM1 has not granted: the chain stays
    available (nothing used), one MISS for its page; the grant delivers it."""
    grants = [(RING_BASE, 0x20000, IotlbPerm.RW)]
    vm = connect(iommu=True, grants=grants)
    pkt = make_packet(5001, 100)
    vm.offer(TX, [(*tx_buf(vm, 3, pkt), 0, 9)])
    c = Counters(vp.port)
    assert recv(vp.port, vp.pool) == []
    assert not vm.used_at(TX, 0)[2]
    assert [m[0] for m in vm.misses()] == [TX_BUF + 3 * 0x1000]
    vm.grant(TX_BUF, 0x80000, IotlbPerm.RO)
    assert wait_until(lambda: (got := recv(vp.port, vp.pool)) and got == [pkt] or False, 3.0)
    assert vm.used_at(TX, 0) == (9, 0, True)
    assert c.delta()["iotlb_misses"] == 1


def test_in_order_transmit_burst_returns_one_used_element(vp, connect):  # noqa: F811
    """VIRTIO_F_IN_ORDER (2.8.9): a burst of three chains (1, 2 and 1
    descriptors) comes back as one used element at the batch's first
    position with the last chain's id; the ring moves on by all four slots."""
    vm = connect(extra=1 << VIRTIO_F_IN_ORDER)
    assert vm.features & (1 << VIRTIO_F_IN_ORDER)
    pkts = [make_packet(6000 + k, 90) for k in range(3)]
    bufs = [tx_buf(vm, k, p) for k, p in enumerate(pkts)]
    vm.offer(TX, [(*bufs[0], 0, 10)])
    vm.offer(TX, [(bufs[1][0], 30, NEXT, 11), (bufs[1][0] + 30, bufs[1][1] - 30, 0, 11)])
    vm.offer(TX, [(*bufs[2], 0, 12)])
    ring = vm.mem.read(ring_addrs(TX)[0] + 16, 48)
    assert recv(vp.port, vp.pool) == pkts
    assert vm.used_at(TX, 0) == (12, 0, True)
    assert vm.mem.read(ring_addrs(TX)[0] + 16, 48) == ring  # the rest of the batch untouched
    assert int(vp.port.driver.vq[TX, VQ_LAST_AVAIL]) == (1 << 15) | 4
    good = offer_good_tx(vm)
    assert recv(vp.port, vp.pool) == [good]
    assert vm.used_at(TX, 4) == (GOOD_ID, 0, True)


def test_tx_room_counts_the_available_receive_chains(vp, connect):  # noqa: F811
    """The forwarding engines ask the port how many packets it can take
    (tx_room): on a packed ring, the chains VM1 made available, however many
    bursts ago they were counted."""
    vm = connect()
    st = vp.port.kernel_state()
    assert room(st, 0) == 0
    for k in range(5):
        vm.offer(RX, [(vm.rx_slot(k), 2048, WRITE, k)])
    assert room(st, 0) == 5
    assert send(vp.port, vp.pool, [make_packet(7000 + k, 100) for k in range(2)]) == 2
    assert room(st, 0) == 3
    vm.offer(RX, [(vm.rx_slot(5), 2048, WRITE, 5)])
    assert send(vp.port, vp.pool, [make_packet(7002 + k, 100) for k in range(3)]) == 3
    assert room(st, 0) == 1  # the one offered after the count


def _offer_plain(vm, first: int, n: int) -> None:
    """``n`` one-buffer receive chains (a page each) at positions ``first``..,
    id = position + 100 (ids are VM1's to choose: none equal to a slot)."""
    for k in range(first, first + n):
        vm.offer(RX, [(vm.rx_slot(k % NUM), 2048, WRITE, k + 100)])


def test_enqueue_lines_across_the_wrap_each_packet_whole(vp, connect):  # noqa: F811
    """Bursts of plain packets into one-buffer chains, aligned to a line of
    four descriptors or not (the line path and the one-packet path take
    turns), five times round the ring: each packet whole behind its header
    in its own buffer, each used element at its slot with the chain's id,
    the written length and the wrap counter of its round; nothing else of
    VM1 touched."""
    vm = connect()
    c = Counters(vp.port)
    pos = 0
    for burst in (3, 29, 32, 7, 25, 64, 1, 31, 4, 4, 60, 40, 20):
        _offer_plain(vm, pos, burst)
        pkts = [make_packet(7000 + pos + k, 60 + (pos + k) * 37 % 1400) for k in range(burst)]
        before = vm.snapshot()
        assert send(vp.port, vp.pool, pkts) == burst
        bufs = [(vm.rx_slot((pos + k) % NUM), HDR_LEN + len(p)) for k, p in enumerate(pkts)]
        assert vm.changes(before, ring_parts(RX) + bufs) == []
        for k, p in enumerate(pkts):
            assert vm.used_at(RX, pos + k) == (pos + k + 100, HDR_LEN + len(p), True), (burst, k)
            assert vm.mem.read(vm.rx_slot((pos + k) % NUM), HDR_LEN + len(p)) == RX_HDR + p
        pos += burst
    assert pos > 4 * NUM
    assert c.delta() == {"opackets": pos}


def test_enqueue_line_with_a_bad_or_chained_buffer_keeps_order(vp, connect):  # noqa: F811
    """A line whose third chain is too small for its packet, and a line with
    a two-descriptor chain in it: the line path leaves both to the
    one-packet path, which drops the packet that does not fit (counted,
    used element empty) and writes the others in order, each at its slot."""
    vm = connect()
    c = Counters(vp.port)
    vm.offer(RX, [(vm.rx_slot(0), 2048, WRITE, 100)])
    vm.offer(RX, [(vm.rx_slot(1), 2048, WRITE, 101)])
    vm.offer(RX, [(vm.rx_slot(2), 20, WRITE, 102)])  # too small
    vm.offer(RX, [(vm.rx_slot(3), 2048, WRITE, 103)])
    vm.offer(RX, [(vm.rx_slot(4), 2048, WRITE, 104)])
    vm.offer(RX, [(vm.rx_slot(5), 30, WRITE | NEXT, 105), (vm.rx_slot(5) + 30, 2018, WRITE, 105)])  # slots 5, 6
    vm.offer(RX, [(vm.rx_slot(7), 2048, WRITE, 107)])
    _offer_plain(vm, 8, 4)
    pkts = [make_packet(7500 + k, 100 + 10 * k) for k in range(10)]
    assert send(vp.port, vp.pool, pkts) == 10
    slots = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10]
    for k, (n, p) in enumerate(zip(slots, pkts)):
        want = (n + 100, 0 if n == 2 else HDR_LEN + len(p), True)
        assert vm.used_at(RX, n) == want, k
        if n != 2:
            assert vm.mem.read(vm.rx_slot(n), HDR_LEN + len(p)) == RX_HDR + p
    assert c.delta() == {"too_big": 1, "oerrors": 1, "opackets": 9}


def test_dequeue_lines_across_the_wrap_each_packet_whole(vp, connect):  # noqa: F811
    """Bursts of one-buffer transmit chains of every alignment, a bad chain
    and a two-descriptor chain now and then, five times round the ring: every good
    packet intact and in order, the bad one counted, each used element at
    its slot with the chain's id, nothing but the descriptor ring written."""
    vm = connect()
    c = Counters(vp.port)
    pos = 0
    sent: list[bytes] = []
    bad = 0
    for burst in (3, 29, 32, 7, 25, 64, 1, 31, 4, 4, 60, 40, 20):
        heads, pkts = [], []
        k = 0
        while k < burst:
            pkt = make_packet(8000 + pos, 60 + pos * 37 % 1400)
            gpa, n = tx_buf(vm, pos % NUM, pkt)
            if pos % 50 == 10:  # a bad chain: device-writable
                heads.append(vm.offer(TX, [(gpa, n, WRITE, pos + 100)]))
                bad += 1
                pos, k = pos + 1, k + 1
                continue
            if pos % 50 == 30 and k + 2 <= burst:  # a chain of two over two slots
                heads.append(vm.offer(TX, [(gpa, 20, NEXT, pos + 100), (gpa + 20, n - 20, 0, pos + 100)]))
                pkts.append(pkt)
                pos, k = pos + 2, k + 2
                continue
            heads.append(vm.offer(TX, [(gpa, n, 0, pos + 100)]))
            pkts.append(pkt)
            pos, k = pos + 1, k + 1
        before = vm.snapshot()
        assert recv(vp.port, vp.pool) == pkts, burst
        assert vm.changes(before, ring_parts(TX)) == []
        for h in heads:
            assert vm.used_at(TX, h) == (h + 100, 0, True), (burst, h)
        sent += pkts
    assert pos > 4 * NUM and bad >= 4
    assert c.delta() == {"bad_descriptors": bad, "ierrors": bad, "ipackets": len(sent)}


def test_enqueue_lines_behind_an_iommu_page_by_page(vp, connect):  # noqa: F811
    """Behind an IOMMU, receive buffers granted write-only a page at a time,
    the seventh not yet: the first line goes whole, the second up to the
    ungranted buffer, whose packet and the one after wait (held, asked for
    WO) and go in order once VM1 grants the page."""
    vm = connect(iommu=True, grants=[(RING_BASE, 0x20000, IotlbPerm.RW)])
    for k in (0, 1, 2, 3, 4, 5, 7):
        vm.grant(vm.rx_slot(k), PAGE, IotlbPerm.WO)
    _offer_plain(vm, 0, 8)
    c = Counters(vp.port)
    pkts = [make_packet(7700 + k, 80 + 40 * k) for k in range(8)]
    assert send(vp.port, vp.pool, pkts) == 8, "two held on the miss, none dropped"
    assert [vm.used_at(RX, k)[2] for k in range(8)] == [True] * 6 + [False] * 2
    assert (vm.rx_slot(6), IotlbPerm.WO) in vm.misses()
    vm.grant(vm.rx_slot(6), PAGE, IotlbPerm.WO)
    assert flush(vp.port, vp.pool) == 0
    for k, p in enumerate(pkts):
        assert vm.used_at(RX, k) == (k + 100, HDR_LEN + len(p), True), k
        assert vm.mem.read(vm.rx_slot(k), HDR_LEN + len(p)) == RX_HDR + p
    d = c.delta()
    assert d["opackets"] == 8 and d["iotlb_misses"] >= 1 and "oerrors" not in d, d


def test_in_order_dequeue_lines_one_used_element_per_burst(vp, connect):  # noqa: F811
    """VIRTIO_F_IN_ORDER with bursts of one-buffer chains of every alignment
    (the line path and the one-chain path take turns), four times round the
    ring: every packet intact and in order, and each burst comes back as one
    used element at its first position with its last chain's id."""
    vm = connect(extra=1 << VIRTIO_F_IN_ORDER)
    assert vm.features & (1 << VIRTIO_F_IN_ORDER)
    c = Counters(vp.port)
    pos = 0
    for burst in (5, 32, 3, 31, 8, 64, 2, 30, 33, 4, 50):
        pkts = [make_packet(9000 + pos + k, 60 + (pos + k) * 29 % 1400) for k in range(burst)]
        for k, p in enumerate(pkts):
            vm.offer(TX, [(*tx_buf(vm, (pos + k) % NUM, p), 0, pos + k + 100)])
        assert recv(vp.port, vp.pool, nb=burst) == pkts, burst
        assert vm.used_at(TX, pos) == ((pos + burst - 1 + 100) & 0xFFFF, 0, True), burst
        pos += burst
    assert pos > 4 * NUM
    assert c.delta() == {"ipackets": pos}


def test_dequeue_lines_behind_an_iommu_page_by_page(vp, connect):  # noqa: F811
    """Behind an IOMMU, transmit buffers granted read-only a page at a time,
    the seventh not yet: the first line of four goes whole, the second up to
    the ungranted buffer, whose chain stays available (a MISS for its page,
    read-only) with the one after it; both come in order once VM1 grants
    the page."""
    vm = connect(iommu=True, grants=[(RING_BASE, 0x20000, IotlbPerm.RW)])
    pkts = [make_packet(9500 + k, 70 + 30 * k) for k in range(8)]
    for k, p in enumerate(pkts):
        if k != 6:
            vm.grant(TX_BUF + k * PAGE, PAGE, IotlbPerm.RO)
        vm.offer(TX, [(*tx_buf(vm, k, p), 0, k + 100)])
    c = Counters(vp.port)
    assert recv(vp.port, vp.pool) == pkts[:6]
    assert (TX_BUF + 6 * PAGE, IotlbPerm.RO) in vm.misses()
    assert [vm.used_at(TX, k)[2] for k in (0, 6, 7)] == [True, False, False]
    vm.grant(TX_BUF + 6 * PAGE, PAGE, IotlbPerm.RO)
    assert wait_until(lambda: (got := recv(vp.port, vp.pool)) and got == pkts[6:] or False, 3.0)
    assert vm.used_at(TX, 6) == (106, 0, True)
    d = c.delta()
    assert d["ipackets"] == 8 and d["iotlb_misses"] >= 1 and "ierrors" not in d, d
