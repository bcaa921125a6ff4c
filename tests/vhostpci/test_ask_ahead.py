"""Asking ahead on an IOTLB miss (``pmd/vhostpci_pmd/iotlb_ahead.py``), split
and packed rings alike: behind an IOMMU that granted only the rings, the
kernel that parks on a buffer's page asks, in the same park, for the pages
of the chains queued behind it -- chained descriptors, an indirect table's
buffers -- each page once, with the direction its descriptor needs (RO to
read VM1's transmit buffers, WO to fill its receive buffers), never a page
granted already; and nothing is consumed, lost or reordered meanwhile.
The rogue VM1 writes the rings by hand; the port's kernels are called
directly (``peer_io``)."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from pmd.vhost_user.messages import IotlbPerm
from pmd.virtio.split import VRING_DESC_F_INDIRECT as IND
from pmd.virtio.split import VRING_DESC_F_NEXT as NEXT
from pmd.virtio.split import VRING_DESC_F_WRITE as WRITE
from pmd.vhostpci_pmd.iotlb import ASK_SLOTS, ASKED_ALREADY, GRANTED, SENT, send_miss
from pmd.vhostpci_pmd.state import PORT_MISS_FD, VQ_PACKED
from tests.util import wait_until
from tests.vhostpci.peer_io import flush, make_packet, recv, send
from tests.vhostpci.rogue_packed import RoguePackedVM1
from tests.vhostpci.rogue_vm1 import HDR_LEN, IND_BUF, INDIRECT, PAGE, RING_BASE, RX, RX_BUF, TX, TX_BUF, RogueVM1
from tests.vhostpci.test_malicious_ring import RX_HDR, Counters, vp  # noqa: F401  (vp: the port fixture)

RO, WO = int(IotlbPerm.RO), int(IotlbPerm.WO)


class Rings:
    """Chains offered the same way on either layout: ``offer(v, [(addr,
    len, flags)])`` (in ring order, ids/next slots chosen here) and
    ``table(gpa, entries)`` (an indirect table of ``(addr, len, flags)``)."""

    def __init__(self, vm: RogueVM1, packed: bool) -> None:
        self.vm, self.packed = vm, packed
        self.slot = [0, 0]  # split: the next free descriptor per ring

    def offer(self, v: int, chain: list[tuple[int, int, int]]) -> None:
        if self.packed:
            self.vm.offer(v, [(a, n, f, 50 + k) for k, (a, n, f) in enumerate(chain)])
            return
        head = self.slot[v]
        for k, (a, n, f) in enumerate(chain):
            self.vm.desc(v, head + k, a, n, f, head + k + 1 if f & NEXT else 0)
        self.slot[v] += len(chain)
        self.vm.offer(v, head)

    def table(self, gpa: int, entries: list[tuple[int, int, int]]) -> None:
        for k, (a, n, f) in enumerate(entries):
            body = struct.pack("<QIHH", a, n, 0, f) if self.packed else struct.pack("<QIHH", a, n, f, 0)
            self.vm.mem.write(gpa + 16 * k, body)


@pytest.fixture(params=["split", "packed"])
def rings(request, vp):  # noqa: F811
    """Rings(vm) of a rogue VM1 behind an IOMMU: the rings, the indirect
    tables' page and one transmit page (slot 6) granted, nothing else."""
    packed = request.param == "packed"
    free0 = vp.pool.available()
    grants = [(RING_BASE, 0x20000, IotlbPerm.RW), (IND_BUF, PAGE, IotlbPerm.RO),
              (TX_BUF + 6 * PAGE, PAGE, IotlbPerm.RO)]
    vm = (RoguePackedVM1 if packed else RogueVM1)(vp.path, iommu=True, grants=grants, extra=INDIRECT)
    try:
        assert vm.features & INDIRECT
        if packed:
            assert wait_until(lambda: all(vp.port.driver.vq[:2, VQ_PACKED] == 1), 3.0)
        # the kernels send MISSes (and ask ahead) once the control thread's
        # service has handed them a dup of the back-end channel (within 0.1 s)
        assert wait_until(lambda: vp.port.driver.device.ctl[PORT_MISS_FD] >= 0, 3.0)
        yield Rings(vm, packed)
        srv = vp.srv
        assert srv.session is not None and not srv.session.closed, srv.last_session.close_reason
    finally:
        n = vp.srv.disconnections
        vm.close()
        assert vp.srv.wait_for(lambda s: s.disconnections > n, 3.0), "disconnection not seen"
    assert vp.pool.available() == free0, "mbufs leaked"


def asked(vp) -> np.ndarray:  # noqa: F811
    """MISSes the kernels sent: [for their own park, ahead]."""
    xs = vp.port.driver.xstats()
    return np.array([xs["iotlb_miss_sent_by_lcore"], xs["iotlb_miss_ahead"]])


def _tx(r: Rings, page: int, pkt: bytes) -> tuple[int, int]:
    """``pkt`` behind its header at the start of transmit page ``page``."""
    data = bytes(HDR_LEN) + pkt
    r.vm.mem.write(TX_BUF + page * PAGE, data)
    return TX_BUF + page * PAGE, len(data)


def test_a_transmit_miss_asks_for_the_queued_chains_pages_once(vp, rings):  # noqa: F811
    """Five chains: a buffer on page 1 (the miss), one packet over two
    descriptors on pages 2 and 3, an indirect table's buffer on page 5, a
    buffer on granted page 6 and one at the middle of page 3.  One MISS and
    three asked ahead (pages 2, 3 and 5, RO), nothing consumed; once VM1
    grants them, all five in order."""
    r = rings
    pkts = [make_packet(5300 + k, 100 + 10 * k) for k in range(5)]
    r.offer(TX, [(*_tx(r, 1, pkts[0]), 0)])
    a, n = _tx(r, 2, pkts[1])
    data = r.vm.mem.read(a, n)
    r.vm.mem.write(TX_BUF + 3 * PAGE, data[40:])
    r.offer(TX, [(a, 40, NEXT), (TX_BUF + 3 * PAGE, n - 40, 0)])
    r.table(IND_BUF, [(*_tx(r, 5, pkts[2]), 0)])
    r.offer(TX, [(IND_BUF, 16, IND)])
    r.offer(TX, [(*_tx(r, 6, pkts[3]), 0)])
    tail = bytes(HDR_LEN) + pkts[4]
    r.vm.mem.write(TX_BUF + 3 * PAGE + 2048, tail)
    r.offer(TX, [(TX_BUF + 3 * PAGE + 2048, len(tail), 0)])
    c, before = Counters(vp.port), asked(vp)
    assert recv(vp.port, vp.pool) == []
    assert r.vm.misses() == [(TX_BUF + p * PAGE, RO) for p in (1, 2, 3, 5)]
    assert recv(vp.port, vp.pool) == []  # still parked: no new park, nothing asked again by the kernel
    assert list(asked(vp) - before) == [1, 3] and c.delta()["iotlb_misses"] == 1, c.delta()
    r.vm.grant(TX_BUF, 0x80000, IotlbPerm.RO)
    got: list[bytes] = []
    assert wait_until(lambda: got.extend(recv(vp.port, vp.pool)) or len(got) >= 5, 3.0), got
    assert got == pkts
    d = c.delta()
    assert d["ipackets"] == 5 and "ierrors" not in d and "bad_descriptors" not in d, d


def test_a_receive_miss_asks_for_the_posted_buffers_pages_write_only(vp, rings):  # noqa: F811
    """Four one-page receive buffers, none granted: the burst is held (none
    dropped), the first page's MISS and the other three asked ahead, each
    WO; once VM1 grants them, each packet lands whole in its own buffer."""
    r = rings
    for k in range(4):
        r.offer(RX, [(RX_BUF + k * PAGE, 2048, WRITE)])
    pkts = [make_packet(5400 + k, 80 + 20 * k) for k in range(4)]
    c, before = Counters(vp.port), asked(vp)
    assert send(vp.port, vp.pool, pkts) == 4, "held on the miss, none dropped"
    assert r.vm.misses() == [(RX_BUF + k * PAGE, WO) for k in range(4)]
    assert (list(asked(vp) - before), c.delta()) == ([1, 3], {"iotlb_misses": 1, "iotlb_miss_requests": 4})
    r.vm.grant(RX_BUF, 0x80000, IotlbPerm.WO)
    assert wait_until(lambda: flush(vp.port, vp.pool) == 0, 3.0)
    for k, p in enumerate(pkts):
        assert r.vm.mem.read(RX_BUF + k * PAGE, HDR_LEN + len(p)) == RX_HDR + p, k
    d = c.delta()
    assert d["opackets"] == 4 and "oerrors" not in d, d


def test_a_page_answered_before_the_kernel_asks_is_not_asked_for_again(vp, rings):  # noqa: F811
    """``send_miss`` looks at the window after the ask's note: a page
    granted meanwhile (its note cleared by the UPDATE) gets no second MISS,
    which QEMU would take only after VM1 unmapped the page and answer with
    nothing, and no note that would hold back the next MISS for it."""
    st = vp.port.driver.device.kernel_state()
    granted, missing = TX_BUF + 6 * PAGE, TX_BUF + 7 * PAGE
    assert send_miss(st, TX, granted, False) == GRANTED
    assert send_miss(st, TX, granted, True) == SENT  # granted RO: a write is asked for
    assert send_miss(st, TX, missing, False) == SENT
    assert send_miss(st, TX, missing, False) == ASKED_ALREADY
    assert rings.vm.misses() == [(granted, WO), (missing, RO)]
    slot = (granted >> 12) & (ASK_SLOTS - 1)
    rings.vm.grant(missing, PAGE, IotlbPerm.RO)  # the UPDATE clears its note
    assert wait_until(lambda: vp.port.driver.device.window.granted_perm(missing) == RO, 3.0)
    assert send_miss(st, TX, missing, False) == GRANTED
    assert st.asked[(missing >> 12) & (ASK_SLOTS - 1), 1] == 0 and st.asked[slot, 0] == granted | 1
