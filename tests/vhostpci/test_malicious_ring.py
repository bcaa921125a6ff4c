"""Malicious-ring tests: a hostile VM1 (``rogue_vm1.RogueVM1``, a hand-driven
vhost-user front-end writing its rings byte by byte) against one
``net_vhost_pci0`` port in this process, whose device kernels are called
directly through ``peer_io.recv`` (dequeue from VM1's tx ring, vring 1) and
``peer_io.send`` (enqueue into VM1's rx ring, vring 0).

Every bad case checks the issue's acceptance: the process neither crashes nor
touches memory it may not (every guest byte outside the used rings and the
buffers the device may write is compared before/after; any stray access to
an ungranted window page would be a SIGSEGV), the counters show the error,
and the queue keeps going: a good packet offered after the bad one goes
through with exact bytes.  With an IOMMU an unmapped address is a miss: the
descriptor stays parked until VM1 grants the page, then it is delivered.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import pytest

from pmd.ethdev import Port
from pmd.vdev import parse_vdev
from pmd.mbuf import create_pool
from pmd.vhost_user.messages import IotlbPerm
from pmd.vhostpci_pmd.state import VQ_LAST_AVAIL, VQ_LAST_USED
from pmd.vhostpci_pmd.txhold import HOLD_CAP, room
from pmd.virtio.split import VRING_DESC_F_INDIRECT as IND
from pmd.virtio.split import VRING_DESC_F_NEXT as NEXT
from pmd.virtio.split import VRING_DESC_F_WRITE as WRITE
from tests.conftest import ROOT
from tests.util import wait_until
from tests.vhostpci.peer_io import flush, make_packet, recv, send
from tests.vhostpci.rogue_vm1 import (
    EVENT_IDX,
    HDR_LEN,
    HIGH,
    HOLE,
    IND_BUF,
    INDIRECT,
    MRG_RXBUF,
    NUM,
    PAGE,
    RING_BASE,
    RX,
    RX_BUF,
    TX,
    TX_BUF,
    A,
    RogueVM1,
    ring_addrs,
)

RX_HDR = bytes(10) + struct.pack("<H", 1)  # what the device writes: zeros, num_buffers = 1
GOOD_SLOT = 40  # descriptor index of the good packet that follows a bad one
XKEYS = ("iotlb_misses", "bad_descriptors", "too_big", "bad_ring", "iotlb_miss_requests")
SKEYS = ("ipackets", "ierrors", "opackets", "oerrors")


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def vp():
    d = tempfile.mkdtemp(prefix="vmr", dir="/tmp")
    path = os.path.join(d, "vp.sock")
    port = Port(0, parse_vdev(f"net_vhost_pci0,path={path}"))
    port.start()
    pool = create_pool(512)
    try:
        yield SimpleNamespace(port=port, path=path, pool=pool, srv=port.driver.server)
    finally:
        port.close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def connect(vp):
    """connect(iommu, **kw) -> RogueVM1; closed (and the disconnection seen) after the test,
    which also checks that the port's control thread lived through it and no mbuf leaked."""
    made: list[RogueVM1] = []
    free0 = vp.pool.available()

    def make(iommu: bool = False, **kw) -> RogueVM1:
        vm = RogueVM1(vp.path, iommu=iommu, **kw)
        made.append(vm)
        return vm

    yield make
    srv = vp.srv
    for vm in made:
        n = srv.disconnections
        assert srv.session is not None and not srv.session.closed, \
            f"the port dropped VM1's session: {srv.last_session.close_reason}"
        vm.close()
        assert srv.wait_for(lambda s, n=n: s.disconnections > n, 3.0), "disconnection not seen"
    assert srv._thread is not None and srv._thread.is_alive(), "control thread died"
    assert vp.pool.available() == free0, "mbufs leaked"


class Counters:
    """Port xstats + stats, read as deltas from construction."""

    def __init__(self, port: Port) -> None:
        self.port = port
        self.base = self._read()

    def _read(self) -> dict[str, int]:
        xs = self.port.driver.xstats()
        st = self.port.stats()
        return {**{k: xs[k] for k in XKEYS}, **{k: getattr(st, k) for k in SKEYS}}

    def delta(self) -> dict[str, int]:
        now = self._read()
        return {k: now[k] - self.base[k] for k in now if now[k] != self.base[k]}


def last_avail(vp, v: int) -> int:
    return int(vp.port.driver.vq[v, VQ_LAST_AVAIL])


def offer_good_tx(vm: RogueVM1, seq: int, slot: int = GOOD_SLOT, size: int = 100) -> bytes:
    pkt = make_packet(seq, size)
    vm.desc(TX, slot, *vm.tx_buffer(slot, pkt))
    vm.offer(TX, slot)
    return pkt


def offer_good_rx(vm: RogueVM1, slot: int = GOOD_SLOT) -> int:
    vm.desc(RX, slot, vm.rx_slot(slot), 2048, WRITE)
    vm.offer(RX, slot)
    return vm.rx_slot(slot)


# ---------------------------------------------------------------- dequeue: bad descriptors, no IOMMU
# Each case builds bad descriptors in VM1's tx ring, offers one head and
# returns (head as it must come back in the used ring, counter that must move).

def _pkt_desc(vm, i, flags=0, nxt=0, seq=7, size=80):
    vm.desc(TX, i, *vm.tx_buffer(i, make_packet(seq, size)), flags, nxt)


def head_is_num(vm):
    vm.offer(TX, NUM)
    return NUM, "bad_descriptors"


def head_is_ffff(vm):
    vm.offer(TX, 0xFFFF)
    return 0xFFFF, "bad_descriptors"


def next_out_of_range(vm):
    _pkt_desc(vm, 0, NEXT, NUM)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def next_ffff(vm):
    _pkt_desc(vm, 3, NEXT, 0xFFFF)
    vm.offer(TX, 3)
    return 3, "bad_descriptors"


def self_loop(vm):
    vm.desc(TX, 0, vm.tx_buffer(0, b"")[0], 4, NEXT, 0)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def two_loop_small(vm):
    """a -> b -> a with 4-byte buffers: 64 hops never fill an mbuf."""
    vm.desc(TX, 0, vm.tx_buffer(0, b"")[0], 4, NEXT, 1)
    vm.desc(TX, 1, vm.tx_buffer(1, b"")[0], 4, NEXT, 0)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def two_loop_packet_sized(vm):
    """a -> b -> a, each a packet-sized buffer: the copy fills the mbuf
    before the hop count runs out, so the device cannot tell this loop from
    an honest chain too long for an mbuf: either counter is accepted."""
    _pkt_desc(vm, 0, NEXT, 1)
    _pkt_desc(vm, 1, NEXT, 0)
    vm.offer(TX, 0)
    return 0, ("bad_descriptors", "too_big")


def addr_in_hole(vm):
    vm.desc(TX, 0, HOLE, HDR_LEN + 60)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def addr_past_region_end(vm):
    end = A[0] + A[1]
    vm.desc(TX, 0, end - 40, HDR_LEN + 64)  # starts inside region A, ends in the hole
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def len_ffffffff_in_region(vm):
    vm.desc(TX, 0, vm.tx_buffer(0, b"")[0], 0xFFFFFFFF)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def addr_top_of_64bit_space(vm):
    vm.desc(TX, 0, 2 ** 64 - 16, 0xFFFFFFFF)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def addr_wraps_past_2_64(vm):
    """[2**64 - 4, 2**64 - 4 + 76) wraps around to GPA 0..72 (memory exists
    there): the descriptor is invalid, nothing may be read from GPA 8."""
    vm.desc(TX, 0, 2 ** 64 - 4, HDR_LEN + 64)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def header_only_descriptor_in_hole(vm):
    """A 12-byte header descriptor at an address with no memory, then the
    packet: every descriptor is checked, not only those the copy needs."""
    gpa, _ = vm.tx_buffer(1, make_packet(13, 80), hdr=b"")
    vm.desc(TX, 0, HOLE, HDR_LEN, NEXT, 1)
    vm.desc(TX, 1, gpa, 80)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def write_flag_on_tx(vm):
    _pkt_desc(vm, 0, WRITE)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def write_flag_mid_chain(vm):
    _pkt_desc(vm, 0, NEXT, 1)
    vm.desc(TX, 1, vm.tx_buffer(1, b"x" * 16)[0], 16, WRITE)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def packet_bigger_than_mbuf(vm):
    vm.desc(TX, 0, *vm.tx_buffer(0, make_packet(9, 3000)))
    vm.offer(TX, 0)
    return 0, "too_big"


DEQ_CASES = [head_is_num, head_is_ffff, next_out_of_range, next_ffff, self_loop, two_loop_small,
             two_loop_packet_sized, addr_in_hole, addr_past_region_end, len_ffffffff_in_region,
             addr_top_of_64bit_space, addr_wraps_past_2_64, header_only_descriptor_in_hole,
             write_flag_on_tx, write_flag_mid_chain, packet_bigger_than_mbuf]


def check_bad_then_good_dequeue(vp, vm, make_bad):
    """Bad head(s), then a good packet in the same burst: the bad one comes
    back with len 0 and is counted, the good one is delivered intact."""
    c = Counters(vp.port)
    bad_head, counter = make_bad(vm)
    good = offer_good_tx(vm, 1001)
    before = vm.snapshot()  # VM1 is done writing: from here on only the device may write
    got = recv(vp.port, vp.pool)
    assert got == [good], f"{len(got)} packets, lengths {[len(p) for p in got]}"
    assert vm.used_entries(TX) == [(bad_head, 0), (GOOD_SLOT, 0)]
    assert last_avail(vp, TX) == 2 and int(vp.port.driver.vq[TX, VQ_LAST_USED]) == 2
    d = c.delta()
    if not isinstance(counter, str):  # one of several, exactly once
        counter = next((k for k in counter if k in d), counter[0])
    assert d == {counter: 1, "ierrors": 1, "ipackets": 1}
    assert vm.changes(before) == [], "the device wrote outside the used ring"
    assert recv(vp.port, vp.pool) == []  # nothing left over, nothing counted twice
    assert c.delta() == {counter: 1, "ierrors": 1, "ipackets": 1}


@pytest.mark.parametrize("make_bad", DEQ_CASES, ids=[f.__name__ for f in DEQ_CASES])
def test_dequeue_bad_descriptor_counted_queue_goes_on(vp, connect, make_bad):
    vm = connect()
    check_bad_then_good_dequeue(vp, vm, make_bad)


def test_dequeue_chain_of_num_plus_cycle_counted_once_then_queue_goes_on(vp, connect):
    """All NUM descriptors chained and the last pointing back to the first:
    one bad descriptor, no hang; the ring is reused for a good packet."""
    vm = connect()
    c = Counters(vp.port)
    base = vm.tx_buffer(0, b"")[0]
    for i in range(NUM):
        vm.desc(TX, i, base + 4 * i, 4, NEXT, (i + 1) % NUM)
    vm.offer(TX, 0)
    before = vm.snapshot()
    assert recv(vp.port, vp.pool) == []
    assert vm.used_entries(TX) == [(0, 0)] and last_avail(vp, TX) == 1
    assert c.delta() == {"bad_descriptors": 1, "ierrors": 1}
    assert vm.changes(before) == []
    good = offer_good_tx(vm, 1002, slot=5)
    before = vm.snapshot()
    assert recv(vp.port, vp.pool) == [good]
    assert vm.used_entries(TX) == [(0, 0), (5, 0)]
    assert c.delta() == {"bad_descriptors": 1, "ierrors": 1, "ipackets": 1}
    assert vm.changes(before) == []


def test_dequeue_chain_of_exactly_num_descriptors_is_delivered(vp, connect):
    """The boundary: a chain of NUM descriptors (no cycle) is legal."""
    vm = connect()
    pkt = make_packet(1003, 4 * NUM - HDR_LEN)
    base, _ = vm.tx_buffer(0, pkt)
    for i in range(NUM):
        vm.desc(TX, i, base + 4 * i, 4, NEXT if i < NUM - 1 else 0, i + 1)
    vm.offer(TX, 0)
    c = Counters(vp.port)
    assert recv(vp.port, vp.pool) == [pkt]
    assert c.delta() == {"ipackets": 1}


def test_avail_idx_more_than_num_ahead_is_bad_ring_then_fixed(vp, connect):
    vm = connect()
    c = Counters(vp.port)
    good = offer_good_tx(vm, 1004)  # avail idx 1
    vm.set_avail_idx(TX, NUM + 1)  # claims 65 entries in a ring of 64
    before = vm.snapshot()
    for _ in range(3):
        assert recv(vp.port, vp.pool) == []
    d = c.delta()
    assert d.get("bad_ring", 0) >= 1 and set(d) == {"bad_ring"}, d
    assert vm.used_idx(TX) == 0 and last_avail(vp, TX) == 0
    assert vm.changes(before) == []
    vm.set_avail_idx(TX, 1)  # the driver fixes its index
    before = vm.snapshot()
    assert recv(vp.port, vp.pool) == [good]
    assert vm.used_entries(TX) == [(GOOD_SLOT, 0)] and last_avail(vp, TX) == 1
    assert c.delta()["ipackets"] == 1
    assert vm.changes(before) == []


def test_avail_idx_exactly_num_ahead_is_fine(vp, connect):
    vm = connect()
    pkts = [offer_good_tx(vm, 2000 + k, slot=k, size=64) for k in range(NUM)]
    c = Counters(vp.port)
    assert recv(vp.port, vp.pool, nb=NUM) == pkts
    assert vm.used_idx(TX) == NUM and c.delta() == {"ipackets": NUM}


# ---------------------------------------------------------------- enqueue: bad rx descriptors, no IOMMU
# Each returns (head, counter, device-writable ranges [(gpa, len)]).

def rx_head_is_num(vm):
    vm.offer(RX, NUM)
    return NUM, "bad_descriptors", []


def rx_read_only_descriptor(vm):
    vm.desc(RX, 0, vm.rx_slot(0), 2048, 0)  # no WRITE flag: the device must not write
    vm.offer(RX, 0)
    return 0, "bad_descriptors", []


def rx_read_only_mid_chain(vm):
    vm.desc(RX, 0, vm.rx_slot(0), 32, WRITE | NEXT, 1)
    vm.desc(RX, 1, vm.rx_slot(1), 2048, NEXT, 2)  # read-only
    vm.desc(RX, 2, vm.rx_slot(2), 2048, WRITE)
    vm.offer(RX, 0)
    return 0, "bad_descriptors", [(vm.rx_slot(0), 32)]


def rx_buffer_too_small(vm):
    vm.desc(RX, 0, vm.rx_slot(0), HDR_LEN + 10, WRITE)  # packet of 100 B: too big for it
    vm.offer(RX, 0)
    return 0, "too_big", [(vm.rx_slot(0), HDR_LEN + 10)]


def rx_next_out_of_range(vm):
    vm.desc(RX, 0, vm.rx_slot(0), 32, WRITE | NEXT, NUM)
    vm.offer(RX, 0)
    return 0, "bad_descriptors", [(vm.rx_slot(0), 32)]


def rx_loop(vm):
    """a -> b -> a, 1 byte each: NUM hops hold 64 of the 112 bytes needed."""
    vm.desc(RX, 0, vm.rx_slot(0), 1, WRITE | NEXT, 1)
    vm.desc(RX, 1, vm.rx_slot(1), 1, WRITE | NEXT, 0)
    vm.offer(RX, 0)
    return 0, "bad_descriptors", [(vm.rx_slot(0), 1), (vm.rx_slot(1), 1)]


def rx_addr_in_hole(vm):
    vm.desc(RX, 0, HOLE, 2048, WRITE)
    vm.offer(RX, 0)
    return 0, "bad_descriptors", []


def rx_addr_past_region_end(vm):
    vm.desc(RX, 0, A[0] + A[1] - 40, 2048, WRITE)
    vm.offer(RX, 0)
    return 0, "bad_descriptors", []


def rx_addr_top_of_64bit_space(vm):
    vm.desc(RX, 0, 2 ** 64 - 16, 0xFFFFFFFF, WRITE)
    vm.offer(RX, 0)
    return 0, "bad_descriptors", []


def rx_indirect_len_not_multiple_of_16(vm):
    _table(vm, IND_BUF, [(vm.rx_slot(0), 2048, WRITE, 0)])
    vm.desc(RX, 0, IND_BUF, 24, IND)
    vm.offer(RX, 0)
    return 0, "bad_descriptors", []


def rx_indirect_read_only_entry(vm):
    _table(vm, IND_BUF, [(vm.rx_slot(0), 2048, 0, 0)])
    vm.desc(RX, 0, IND_BUF, 16, IND)
    vm.offer(RX, 0)
    return 0, "bad_descriptors", []


ENQ_CASES = [rx_head_is_num, rx_read_only_descriptor, rx_read_only_mid_chain, rx_buffer_too_small,
             rx_next_out_of_range, rx_loop, rx_addr_in_hole, rx_addr_past_region_end,
             rx_addr_top_of_64bit_space, rx_indirect_len_not_multiple_of_16, rx_indirect_read_only_entry]


@pytest.mark.parametrize("make_bad", ENQ_CASES, ids=[f.__name__ for f in ENQ_CASES])
def test_enqueue_bad_descriptor_counted_queue_goes_on(vp, connect, make_bad):
    vm = connect()
    c = Counters(vp.port)
    bad_head, counter, writable = make_bad(vm)
    good_buf = offer_good_rx(vm)
    before = vm.snapshot()
    lost, good = make_packet(3001, 100), make_packet(3002, 200)
    assert send(vp.port, vp.pool, [lost, good]) == 2  # the bad one is taken and dropped
    assert vm.used_entries(RX) == [(bad_head, 0), (GOOD_SLOT, HDR_LEN + len(good))]
    assert vm.mem.read(good_buf, HDR_LEN + len(good)) == RX_HDR + good
    assert last_avail(vp, RX) == 2
    assert c.delta() == {counter: 1, "oerrors": 1, "opackets": 1}
    assert vm.changes(before, writable + [(good_buf, HDR_LEN + len(good))]) == []
    assert send(vp.port, vp.pool, [good]) == 0  # ring empty: not taken, not counted
    assert c.delta() == {counter: 1, "oerrors": 1, "opackets": 1}


def test_enqueue_loop_that_holds_the_packet_writes_only_its_own_buffers(vp, connect):
    """Observed behaviour, not an error case the device can see: an rx chain
    a -> b -> a whose first laps already hold the packet is filled and
    returned (the device stops at the packet's end and never walks into the
    loop).  What matters for isolation: only a and b were written."""
    vm = connect()
    vm.desc(RX, 0, vm.rx_slot(0), 8, WRITE | NEXT, 1)
    vm.desc(RX, 1, vm.rx_slot(1), 8, WRITE | NEXT, 0)
    vm.offer(RX, 0)
    good_buf = offer_good_rx(vm)
    before = vm.snapshot()
    c = Counters(vp.port)
    pkt, good = make_packet(3101, 100), make_packet(3102, 200)
    assert send(vp.port, vp.pool, [pkt, good]) == 2
    assert vm.used_entries(RX) == [(0, HDR_LEN + len(pkt)), (GOOD_SLOT, HDR_LEN + len(good))]
    assert vm.mem.read(good_buf, HDR_LEN + len(good)) == RX_HDR + good
    assert c.delta() == {"opackets": 2}
    assert vm.changes(before, [(vm.rx_slot(0), 8), (vm.rx_slot(1), 8), (good_buf, HDR_LEN + len(good))]) == []


# ---------------------------------------------------------------- indirect descriptors
# Bad tables, each with VIRTIO_RING_F_INDIRECT_DESC negotiated when the port offers it.

def _table(vm, gpa, entries):
    for k, (addr, ln, flags, nxt) in enumerate(entries):
        vm.mem.write(gpa + 16 * k, struct.pack("<QIHH", addr, ln, flags, nxt))


def _tx_parts(vm, slot=0, seq=11, size=80):
    """A header buffer and a packet buffer: two good table entries."""
    gpa, _ = vm.tx_buffer(slot, make_packet(seq, size))
    return (gpa, HDR_LEN, 0, 0), (gpa + HDR_LEN, size, 0, 0)


def ind_len_not_multiple_of_16(vm):
    h, p = _tx_parts(vm)
    _table(vm, IND_BUF, [(h[0], h[1], NEXT, 1), p])
    vm.desc(TX, 0, IND_BUF, 24, IND)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def ind_len_zero(vm):
    vm.desc(TX, 0, IND_BUF, 0, IND)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def ind_table_outside_memory(vm):
    vm.desc(TX, 0, HOLE, 32, IND)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def ind_table_at_top_of_64bit_space(vm):
    vm.desc(TX, 0, 2 ** 64 - 16, 0xFFFFFFF0, IND)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def ind_nested(vm):
    h, p = _tx_parts(vm)
    _table(vm, IND_BUF + PAGE, [(h[0], h[1], NEXT, 1), p])
    _table(vm, IND_BUF, [(IND_BUF + PAGE, 32, IND, 0)])
    vm.desc(TX, 0, IND_BUF, 16, IND)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def ind_with_next_on_head(vm):
    h, p = _tx_parts(vm)
    _table(vm, IND_BUF, [(h[0], h[1], NEXT, 1), p])
    _pkt_desc(vm, 1, seq=12)
    vm.desc(TX, 0, IND_BUF, 32, IND | NEXT, 1)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def ind_next_beyond_table(vm):
    h, p = _tx_parts(vm)
    _table(vm, IND_BUF, [(h[0], h[1], NEXT, 2), p])  # 2 entries, next = 2
    vm.desc(TX, 0, IND_BUF, 32, IND)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def ind_loop_in_table(vm):
    h, _ = _tx_parts(vm)
    _table(vm, IND_BUF, [(h[0], 4, NEXT, 1), (h[0], 4, NEXT, 0)])
    vm.desc(TX, 0, IND_BUF, 32, IND)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def ind_write_entry_on_tx(vm):
    h, p = _tx_parts(vm)
    _table(vm, IND_BUF, [(h[0], h[1], NEXT, 1), (p[0], p[1], WRITE, 0)])
    vm.desc(TX, 0, IND_BUF, 32, IND)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def ind_entry_addr_in_hole(vm):
    h, p = _tx_parts(vm)
    _table(vm, IND_BUF, [(h[0], h[1], NEXT, 1), (HOLE, p[1], 0, 0)])
    vm.desc(TX, 0, IND_BUF, 32, IND)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


IND_CASES = [ind_len_not_multiple_of_16, ind_len_zero, ind_table_outside_memory, ind_table_at_top_of_64bit_space,
             ind_nested, ind_with_next_on_head, ind_next_beyond_table, ind_loop_in_table,
             ind_write_entry_on_tx, ind_entry_addr_in_hole]


@pytest.mark.parametrize("make_bad", IND_CASES, ids=[f.__name__ for f in IND_CASES])
def test_indirect_bad_table_counted_queue_goes_on(vp, connect, make_bad):
    vm = connect(extra=INDIRECT)
    check_bad_then_good_dequeue(vp, vm, make_bad)


def test_indirect_well_formed_chain_is_delivered(vp, connect):
    vm = connect(extra=INDIRECT)
    assert vm.features & INDIRECT, "the port does not offer VIRTIO_RING_F_INDIRECT_DESC"
    c = Counters(vp.port)
    pkt = make_packet(4001, 300)
    gpa, _ = vm.tx_buffer(0, pkt)
    _table(vm, IND_BUF, [(gpa, HDR_LEN, NEXT, 2), (0, 0, 0, 0), (gpa + HDR_LEN, 100, NEXT, 3),
                         (gpa + HDR_LEN + 100, 200, 0, 0)])  # 4 entries, out of order, one unused
    vm.desc(TX, 0, IND_BUF, 64, IND)
    vm.offer(TX, 0)
    good = offer_good_tx(vm, 4002)
    before = vm.snapshot()
    assert recv(vp.port, vp.pool) == [pkt, good]
    assert vm.used_entries(TX) == [(0, 0), (GOOD_SLOT, 0)]
    assert c.delta() == {"ipackets": 2}
    assert vm.changes(before) == []


# ---------------------------------------------------------------- IOMMU
def test_iommu_ungranted_buffer_parks_until_granted_then_delivered(vp, connect):
    vm = connect(iommu=True)
    page = HIGH[0] + 0x10000  # never granted
    c = Counters(vp.port)
    parked = make_packet(5001, 120)
    vm.desc(TX, 0, *vm.tx_buffer(0, parked, gpa=page))
    vm.offer(TX, 0)
    good = offer_good_tx(vm, 5002)
    before = vm.snapshot()
    for _ in range(3):
        assert recv(vp.port, vp.pool) == []
    assert vm.used_idx(TX) == 0 and last_avail(vp, TX) == 0
    misses = vm.misses()
    assert misses and misses[0][0] // PAGE * PAGE == page and misses[0][1] == IotlbPerm.RO, misses
    # The control thread counts a MISS after its sendmsg returns, which can be
    # after VM1 already read it: the counter is eventually exact, not at once.
    assert wait_until(lambda: c.delta().get("iotlb_miss_requests", 0) >= 1), c.delta()
    d = c.delta()
    assert d.get("iotlb_misses", 0) >= 1, d
    assert "ipackets" not in d and "ierrors" not in d and "bad_descriptors" not in d, d
    vm.grant(page, PAGE, IotlbPerm.RO)
    assert recv(vp.port, vp.pool) == [parked, good]  # never dropped, order kept
    assert vm.used_entries(TX) == [(0, 0), (GOOD_SLOT, 0)] and last_avail(vp, TX) == 2
    d = c.delta()
    assert d["ipackets"] == 2 and "ierrors" not in d and "bad_descriptors" not in d, d
    assert vm.changes(before) == []


def test_iommu_write_into_read_only_grant_is_never_written(vp, connect):
    """Rx buffers VM1 granted read-only: a miss for a write (the device asks
    for WO); the port holds the packets (taken, not written, not dropped)
    and, once VM1 grants the page writable, delivers them in order."""
    page = HIGH[0] + 0x20000
    vm = connect(iommu=True)
    vm.grant(page, PAGE, IotlbPerm.RO)
    c = Counters(vp.port)
    vm.desc(RX, 0, page, 2048, WRITE)
    vm.desc(RX, 1, page + 2048, 2048, WRITE)
    vm.offer(RX, 0)
    vm.offer(RX, 1)
    before = vm.snapshot()
    pkts = [make_packet(6001, 150), make_packet(6002, 90)]
    assert send(vp.port, vp.pool, pkts[:1]) == 1, "held on the miss (a refusal would be a drop in io fwd)"
    assert send(vp.port, vp.pool, pkts[1:]) == 1, "queued behind the held one"
    for _ in range(3):
        assert flush(vp.port, vp.pool) == 2, "still held: VM1 has not granted"
    assert vm.changes(before) == [], "the device wrote into a read-only grant (or elsewhere)"
    assert vm.used_idx(RX) == 0 and last_avail(vp, RX) == 0
    misses = vm.misses()
    assert misses and misses[0] == (page, IotlbPerm.WO), misses
    d = c.delta()
    assert d.get("iotlb_misses", 0) >= 1 and "opackets" not in d and "oerrors" not in d, d
    assert vp.port.driver.xstats()["tx_held_on_miss"] == 2
    vm.grant(page, PAGE, IotlbPerm.RW)
    assert flush(vp.port, vp.pool) == 0
    assert vm.used_entries(RX) == [(0, HDR_LEN + len(pkts[0])), (1, HDR_LEN + len(pkts[1]))]
    assert vm.mem.read(page, HDR_LEN + len(pkts[0])) == RX_HDR + pkts[0]
    assert vm.mem.read(page + 2048, HDR_LEN + len(pkts[1])) == RX_HDR + pkts[1]
    assert c.delta()["opackets"] == 2
    assert vm.changes(before, [(page, HDR_LEN + len(pkts[0])), (page + 2048, HDR_LEN + len(pkts[1]))]) == []


def test_burst_behind_held_packets_is_held_when_the_ring_is_full(vp, connect):
    """While packets are held, the port's room is the hold's free space, not
    the ring's: a burst that comes then is taken whole even if the grant
    arrived and the ring fills while the held ones go out.  The ring's chains
    run out after the held packet: the burst waits in the hold (refusing it
    would drop it in io fwd), then goes in order when VM1 posts more."""
    page = HIGH[0] + 0x40000  # not granted yet: the first packet misses
    vm = connect(iommu=True)
    c = Counters(vp.port)
    vm.desc(RX, 0, page, 2048, WRITE)
    vm.offer(RX, 0)
    pkts = [make_packet(6201 + k, 100 + k) for k in range(4)]
    assert send(vp.port, vp.pool, pkts[:1]) == 1, "held on the miss"
    vm.grant(page, 2 * PAGE, IotlbPerm.RW)
    assert room(vp.port.kernel_state(), 0) == HOLD_CAP - 1, "room: the hold's space while one is held"
    assert send(vp.port, vp.pool, pkts[1:]) == 3, "the held one fills the ring; the burst must wait, not drop"
    assert vm.used_entries(RX) == [(0, HDR_LEN + len(pkts[0]))]
    for k in range(1, 4):
        vm.desc(RX, k, page + 2048 * k, 2048, WRITE)
        vm.offer(RX, k)
    assert flush(vp.port, vp.pool) == 0
    assert vm.used_entries(RX) == [(k, HDR_LEN + len(p)) for k, p in enumerate(pkts)]
    for k, p in enumerate(pkts):
        assert vm.mem.read(page + 2048 * k, HDR_LEN + len(p)) == RX_HDR + p
    d = c.delta()
    assert d["opackets"] == 4 and "oerrors" not in d, d


def test_held_packets_are_dropped_and_counted_when_the_ring_stops(vp, connect):
    """A packet held on a miss when VM1 goes away: the next flush frees it
    (oerrors), the pool is whole again (the fixture checks)."""
    vm = RogueVM1(vp.path, iommu=True)  # not connect()'s: this test closes it itself
    page = HIGH[0] + 0x30000  # never granted
    vm.desc(RX, 0, page, 2048, WRITE)
    vm.offer(RX, 0)
    c = Counters(vp.port)
    assert send(vp.port, vp.pool, [make_packet(6101, 100)]) == 1
    assert flush(vp.port, vp.pool) == 1
    n = vp.srv.disconnections
    vm.close()
    assert vp.srv.wait_for(lambda s: s.disconnections > n and s.session is None, 3.0)
    assert flush(vp.port, vp.pool) == 0
    d = c.delta()
    assert d["oerrors"] == 1 and "opackets" not in d and d["iotlb_misses"] >= 1, d


def test_iommu_read_from_write_only_grant_is_a_miss(vp, connect):
    """A tx descriptor into VM1's rx area (granted WO): the device may not read it."""
    vm = connect(iommu=True)
    buf = vm.rx_slot(3)
    c = Counters(vp.port)
    vm.desc(TX, 0, *vm.tx_buffer(0, make_packet(6101, 90), gpa=buf))
    vm.offer(TX, 0)
    before = vm.snapshot()
    assert recv(vp.port, vp.pool) == []
    misses = vm.misses()
    assert misses and misses[0][0] // PAGE == buf // PAGE and misses[0][1] == IotlbPerm.RO, misses
    assert vm.used_idx(TX) == 0 and c.delta().get("iotlb_misses", 0) >= 1
    assert vm.changes(before) == []


def _ring_grants(skip: str):
    """Default grants with one part of vring 1 (tx) left out or read-only."""
    desc, avail, used = ring_addrs(TX)
    grants = [(RING_BASE, 0x10000, IotlbPerm.RW)]
    for part, a in (("desc", desc), ("avail", avail), ("used", used)):
        if part == skip:
            continue
        grants.append((a, PAGE, IotlbPerm.RW))
    if skip == "used_read_only":
        grants[-1] = (used, PAGE, IotlbPerm.RO)
    grants += [(TX_BUF, 0x80000, IotlbPerm.RO), (RX_BUF, 0x80000, IotlbPerm.WO)]
    return grants


@pytest.mark.parametrize("skip, miss_perm", [("desc", IotlbPerm.RO), ("avail", IotlbPerm.RO),
                                             ("used", IotlbPerm.WO), ("used_read_only", IotlbPerm.WO)])
def test_iommu_ring_not_granted_is_a_miss_then_resumes(vp, connect, skip, miss_perm):
    vm = connect(iommu=True, grants=_ring_grants(skip))
    desc, avail, used = ring_addrs(TX)
    where = {"desc": desc, "avail": avail, "used": used, "used_read_only": used}[skip]
    c = Counters(vp.port)
    good = offer_good_tx(vm, 7001)
    before = vm.snapshot()
    for _ in range(3):
        assert recv(vp.port, vp.pool) == []
    assert vm.used_idx(TX) == 0 and last_avail(vp, TX) == 0
    misses = vm.misses()
    assert misses and misses[0] == (where, miss_perm), misses
    d = c.delta()
    assert d.get("iotlb_misses", 0) >= 1 and "ipackets" not in d and "bad_ring" not in d, d
    assert vm.changes(before) == []
    vm.grant(where, PAGE, IotlbPerm.RW)
    assert recv(vp.port, vp.pool) == [good]
    assert vm.used_entries(TX) == [(GOOD_SLOT, 0)]
    assert c.delta()["ipackets"] == 1


def test_indirect_well_formed_rx_chain_is_filled(vp, connect):
    """Enqueue through an indirect table (its head carries WRITE, which the
    device must ignore, 2.7.5.3.2): header and packet land in the table's buffers."""
    vm = connect(extra=INDIRECT)
    assert vm.features & INDIRECT, "the port does not offer VIRTIO_RING_F_INDIRECT_DESC"
    a, b = vm.rx_slot(0), vm.rx_slot(1)
    _table(vm, IND_BUF, [(a, HDR_LEN + 50, WRITE | NEXT, 1), (b, 2048, WRITE, 0)])
    vm.desc(RX, 0, IND_BUF, 32, IND | WRITE)
    vm.offer(RX, 0)
    before = vm.snapshot()
    c = Counters(vp.port)
    pkt = make_packet(4101, 300)
    assert send(vp.port, vp.pool, [pkt]) == 1
    assert vm.used_entries(RX) == [(0, HDR_LEN + len(pkt))]
    assert vm.mem.read(a, HDR_LEN + 50) + vm.mem.read(b, len(pkt) - 50) == RX_HDR + pkt
    assert c.delta() == {"opackets": 1}
    assert vm.changes(before, [(a, HDR_LEN + 50), (b, len(pkt) - 50)]) == []


def test_iommu_indirect_table_not_granted_parks_then_delivered(vp, connect):
    vm = connect(iommu=True, extra=INDIRECT)
    assert vm.features & INDIRECT
    tbl = HIGH[0] + 0x30000  # never granted
    h, p = _tx_parts(vm, seq=5101)
    _table(vm, tbl, [(h[0], h[1], NEXT, 1), p])
    vm.desc(TX, 0, tbl, 32, IND)
    vm.offer(TX, 0)
    good = offer_good_tx(vm, 5102)
    before = vm.snapshot()
    c = Counters(vp.port)
    assert recv(vp.port, vp.pool) == []
    misses = vm.misses()
    assert misses and misses[0] == (tbl, IotlbPerm.RO), misses
    assert vm.used_idx(TX) == 0 and "ipackets" not in c.delta()
    vm.grant(tbl, PAGE, IotlbPerm.RO)
    assert recv(vp.port, vp.pool) == [make_packet(5101, 80), good]
    assert c.delta()["ipackets"] == 2 and "ierrors" not in c.delta()
    assert vm.changes(before) == []


# ---------------------------------------------------------------- MRG_RXBUF, EVENT_IDX
def test_mrg_rxbuf_bad_chain_mid_packet_returns_all_its_chains_empty(vp, connect):
    """With MRG_RXBUF a packet spans chains: the second one is read-only, so
    the packet is dropped, both chains come back with len 0, and the next
    packet is delivered in the next chain."""
    vm = connect(extra=MRG_RXBUF)
    assert vm.features & MRG_RXBUF, "the port does not offer VIRTIO_NET_F_MRG_RXBUF"
    vm.desc(RX, 0, vm.rx_slot(0), 64, WRITE)
    vm.offer(RX, 0)
    vm.desc(RX, 1, vm.rx_slot(1), 2048, 0)  # read-only
    vm.offer(RX, 1)
    good_buf = offer_good_rx(vm)
    before = vm.snapshot()
    c = Counters(vp.port)
    lost, good = make_packet(8001, 100), make_packet(8002, 200)
    assert send(vp.port, vp.pool, [lost, good]) == 2
    assert vm.used_entries(RX) == [(0, 0), (1, 0), (GOOD_SLOT, HDR_LEN + len(good))]
    assert vm.mem.read(good_buf, HDR_LEN + len(good)) == RX_HDR + good
    d = c.delta()
    assert d == {"bad_descriptors": 1, "oerrors": 1, "opackets": 1}, d
    assert vm.changes(before, [(vm.rx_slot(0), 64), (good_buf, HDR_LEN + len(good))]) == []


def test_mrg_rxbuf_packet_spans_three_chains(vp, connect):
    vm = connect(extra=MRG_RXBUF)
    assert vm.features & MRG_RXBUF
    for k in range(3):
        vm.desc(RX, k, vm.rx_slot(k), 400, WRITE)
        vm.offer(RX, k)
    before = vm.snapshot()
    c = Counters(vp.port)
    pkt = make_packet(8101, 1000)
    assert send(vp.port, vp.pool, [pkt]) == 1
    assert vm.used_entries(RX) == [(0, 400), (1, 400), (2, HDR_LEN + len(pkt) - 800)]
    data = b"".join(vm.mem.read(vm.rx_slot(k), n) for k, n in ((0, 400), (1, 400), (2, HDR_LEN + 200)))
    assert data == bytes(10) + struct.pack("<H", 3) + pkt
    d = c.delta()
    assert d["opackets"] == 1 and "oerrors" not in d and "bad_descriptors" not in d, d
    assert vm.changes(before, [(vm.rx_slot(0), 400), (vm.rx_slot(1), 400), (vm.rx_slot(2), 212)]) == []


def test_mrg_rxbuf_not_enough_buffers_waits_without_loss(vp, connect):
    """One 64-byte chain for a 112-byte packet: not an error, the packet waits
    (not taken) and goes out once VM1 adds a chain."""
    vm = connect(extra=MRG_RXBUF)
    assert vm.features & MRG_RXBUF
    vm.desc(RX, 0, vm.rx_slot(0), 64, WRITE)
    vm.offer(RX, 0)
    c = Counters(vp.port)
    pkt = make_packet(8201, 100)
    assert send(vp.port, vp.pool, [pkt]) == 0
    assert vm.used_idx(RX) == 0 and last_avail(vp, RX) == 0 and c.delta() == {}
    vm.desc(RX, 1, vm.rx_slot(1), 64, WRITE)
    vm.offer(RX, 1)
    assert send(vp.port, vp.pool, [pkt]) == 1
    assert vm.used_entries(RX) == [(0, 64), (1, HDR_LEN + len(pkt) - 64)]
    assert vm.mem.read(vm.rx_slot(0), 64) + vm.mem.read(vm.rx_slot(1), 48) == \
        bytes(10) + struct.pack("<H", 2) + pkt


@pytest.mark.parametrize("used_event", [0, 0x7FFF, 0xFFFF])
def test_event_idx_garbage_used_event_is_harmless(vp, connect, used_event):
    """used_event is the driver's to choose: any value only decides calls."""
    vm = connect(extra=EVENT_IDX)
    assert vm.features & EVENT_IDX, "the port does not offer VIRTIO_RING_F_EVENT_IDX"
    for v in (TX, RX):
        vm.mem.write(ring_addrs(v)[1] + 4 + 2 * NUM, struct.pack("<H", used_event))
    pkts = [offer_good_tx(vm, 9000 + k, slot=k, size=64) for k in range(3)]
    buf = offer_good_rx(vm)
    before = vm.snapshot()
    c = Counters(vp.port)
    assert recv(vp.port, vp.pool) == pkts
    assert send(vp.port, vp.pool, [pkts[0]]) == 1
    assert vm.mem.read(buf, HDR_LEN + 64) == RX_HDR + pkts[0]
    assert c.delta() == {"ipackets": 3, "opackets": 1}
    assert vm.changes(before, [(buf, HDR_LEN + 64)]) == []


# Regression: num_buffers' high byte was once written one past the first descriptor.


def test_mrg_rxbuf_header_split_at_num_buffers_writes_only_inside_descriptors(vp, connect):
    """The first chain ends after 11 header bytes, between num_buffers' low and
    high byte: the high byte belongs at the start of the second chain; the
    byte after the first descriptor (VM1 memory the device was not given) must
    stay as it was."""
    vm = connect(extra=MRG_RXBUF)
    assert vm.features & MRG_RXBUF
    a, b = vm.rx_slot(0), vm.rx_slot(1)
    vm.desc(RX, 0, a, 11, WRITE)
    vm.offer(RX, 0)
    vm.desc(RX, 1, b, 2048, WRITE)
    vm.offer(RX, 1)
    before = vm.snapshot()
    c = Counters(vp.port)
    pkt = make_packet(8301, 100)
    assert send(vp.port, vp.pool, [pkt]) == 1
    assert vm.used_entries(RX) == [(0, 11), (1, 1 + len(pkt))]
    assert vm.mem.read(a, 11) + vm.mem.read(b, 1 + len(pkt)) == bytes(10) + struct.pack("<H", 2) + pkt
    assert vm.changes(before, [(a, 11), (b, 1 + len(pkt))]) == [], "written past the first descriptor"
    assert c.delta()["opackets"] == 1


def ind_table_unaligned(vm):
    """A table at an 8-byte (not 16-byte) aligned address: rejected, never
    read through misaligned views."""
    h, p = _tx_parts(vm)
    _table(vm, IND_BUF + 8, [(h[0], h[1], NEXT, 1), p])
    vm.desc(TX, 0, IND_BUF + 8, 32, IND)
    vm.offer(TX, 0)
    return 0, "bad_descriptors"


def test_indirect_unaligned_table_is_bad(vp, connect):
    vm = connect(extra=INDIRECT)
    check_bad_then_good_dequeue(vp, vm, ind_table_unaligned)


def test_mrg_rxbuf_header_split_at_grant_edge_does_not_crash():
    """The same header split in IOMMU mode, with the first chain ending exactly
    at the end of a granted page, in a child process (a stray write there is a
    SIGSEGV): the packet must go through and the child exit cleanly."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONFAULTHANDLER"}
    p = subprocess.run([sys.executable, "-m", "tests.vhostpci.rogue_vm1", "mrg_split_at_grant_edge"], check=False,
                       cwd=ROOT, capture_output=True, text=True, timeout=50, env=env)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr[-2000:])
    assert "mrg: True" in p.stdout and "sent: 1" in p.stdout, p.stdout
    assert "used: [(0, 11), (1, 101)]" in p.stdout, p.stdout
