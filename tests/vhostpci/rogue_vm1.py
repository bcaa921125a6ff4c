"""A hostile VM1 driven by hand: a vhost-user front-end (``FrontendSession``)
over its own ``GuestMemory`` whose split rings the test writes byte by byte,
so every malformed descriptor, avail index or grant can be produced.

Layout (GPAs; with an IOMMU the IOVAs are the same numbers):

- ``LOW``  [0, 64 KiB): a small region at GPA 0 (a wrapped 64-bit address
  lands here), all sentinel;
- ``A``    [0x100000, +4 MiB): rings at ``RING_BASE + v * 0x10000`` (desc
  +0, avail +0x1000, used +0x2000, one page each), tx buffers from
  ``TX_BUF`` and rx buffers from ``RX_BUF`` (one page per slot), indirect
  tables from ``IND_BUF``, sentinel above ``SENTINEL``;
- ``HIGH`` [0x100000000, +4 MiB): above 4 GiB, sentinel except what a test
  puts there.

Every byte starts as a known pattern; ``changes(before)`` lists what moved
so a test can prove the device wrote only where it was allowed to.

``python -m tests.vhostpci.rogue_vm1 SCENARIO`` runs a case that may kill
the process (a stray access to a PROT_NONE window page) in a child.
"""
from __future__ import annotations

import os
import struct

import numpy as np

from pmd.vhost_user.frontend import FrontendSession
from pmd.vhost_user.messages import VHOST_USER_F_PROTOCOL_FEATURES, IotlbPerm
from pmd.virtio.features import VIRTIO_F_IOMMU_PLATFORM, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC
from pmd.virtio.split import ring_sizes
from pmd.virtio_user_pmd.guest_memory import GuestMemory

PAGE = 4096
NUM = 64
HDR_LEN = 12  # VERSION_1 virtio-net header
MIB = 1 << 20

LOW = (0x0, 0x10000)
A = (0x100000, 4 * MIB)
HIGH = (0x1_0000_0000, 4 * MIB)
LAYOUT = [LOW, A, HIGH]

RING_BASE = 0x100000
TX_BUF = 0x200000  # slot i at TX_BUF + i * PAGE (vring 1, device reads)
RX_BUF = 0x280000  # slot i at RX_BUF + i * PAGE (vring 0, device writes)
IND_BUF = 0x300000  # indirect tables
SENTINEL = 0x380000  # never offered to the device
HOLE = 0x8000_0000  # between A and HIGH: no memory at all

VERSION_1 = 1 << VIRTIO_F_VERSION_1
PROTOCOL_FEATURES = 1 << VHOST_USER_F_PROTOCOL_FEATURES
IOMMU = 1 << VIRTIO_F_IOMMU_PLATFORM
INDIRECT = 1 << VIRTIO_RING_F_INDIRECT_DESC
MRG_RXBUF = 1 << VIRTIO_NET_F_MRG_RXBUF
EVENT_IDX = 1 << VIRTIO_RING_F_EVENT_IDX

TX, RX = 1, 0  # VM1's transmit ring (device dequeue) and receive ring (device enqueue)


def ring_addrs(v: int) -> tuple[int, int, int]:
    base = RING_BASE + v * 0x10000
    return base, base + PAGE, base + 2 * PAGE  # desc, avail, used


def pattern(gpa: int, size: int) -> bytes:
    """A position-dependent non-zero filler."""
    x = np.arange(gpa, gpa + size, dtype=np.uint64)
    return ((x * np.uint64(2654435761) >> np.uint64(13)) % np.uint64(251) + np.uint64(1)).astype(np.uint8).tobytes()


class RogueVM1:
    """One connection to the port, rings and grants under the test's control.

    ``grants``: with ``iommu``, the initial IOTLB updates ``[(iova, size, perm)]``
    (default: rings RW, tx buffers RO, rx buffers WO, indirect tables RO).
    ``extra``: feature bits to negotiate too, those the port offers
    (``features`` holds what was negotiated).
    """

    BASE = 0  # SET_VRING_BASE (a packed ring: 1 << 15, its wrap counter)

    def __init__(self, path: str, *, iommu: bool, grants: list[tuple[int, int, int]] | None = None,
                 extra: int = 0) -> None:
        self.iommu = iommu
        self.mem = GuestMemory(LAYOUT, name="rogue-vm1")
        for gpa, size in LAYOUT:
            self.mem.write(gpa, pattern(gpa, size))
        self.kick = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(2)]
        self.call = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(2)]
        self.avail_idx = [0, 0]
        for v in range(2):  # rings start zeroed, like a driver's fresh allocation
            desc, avail, used = ring_addrs(v)
            for a in (desc, avail, used):
                self.mem.write(a, bytes(PAGE))
        self.fe = FrontendSession.connect(path, timeout=5.0)
        try:
            self._handshake(grants, extra)
        except BaseException:
            self.close()
            raise

    def _handshake(self, grants, extra: int) -> None:
        fe = self.fe
        offered = fe.get_features()
        want = VERSION_1 | PROTOCOL_FEATURES | (IOMMU if self.iommu else 0) | (extra & offered)
        self.features = want
        fe.set_owner()
        fe.set_protocol_features(fe.get_protocol_features())
        fe.set_backend_req_fd()
        fe.set_features(want)
        fe.set_mem_table(self.mem)
        if self.iommu:
            if grants is None:
                grants = [(RING_BASE, 0x20000, IotlbPerm.RW), (TX_BUF, 0x80000, IotlbPerm.RO),
                          (RX_BUF, 0x80000, IotlbPerm.WO), (IND_BUF, 0x80000, IotlbPerm.RO)]
            for iova, size, perm in grants:
                self.grant(iova, size, perm)
        sizes = ring_sizes(NUM)
        for v in range(2):
            desc, avail, used = ring_addrs(v)
            if self.iommu:
                addrs = (desc, used, avail)
            else:
                addrs = (self.mem.gpa_to_uaddr(desc, sizes[0]), self.mem.gpa_to_uaddr(used, sizes[2]),
                         self.mem.gpa_to_uaddr(avail, sizes[1]))
            fe.set_vring_num(v, NUM)
            fe.set_vring_base(v, self.BASE)
            fe.set_vring_addr(v, *addrs)
            fe.set_vring_kick(v, self.kick[v])
            fe.set_vring_call(v, self.call[v])
            fe.set_vring_enable(v, True)

    # ------------------------------------------------------------ IOMMU
    def grant(self, iova: int, size: int, perm: int) -> None:
        """IOTLB update with IOVA = GPA."""
        self.fe.iotlb_update(iova, size, self.mem.gpa_to_uaddr(iova, size), perm)

    def misses(self, timeout: float = 2.0) -> list[tuple[int, int]]:
        """The IOTLB MISS messages the back-end sent, as (iova, perm); not answered."""
        got: list[tuple[int, int]] = []
        self.fe.poll_backend_requests(lambda iova, perm: got.append((iova, perm)), timeout=timeout)
        return got

    # ------------------------------------------------------------ rings
    def desc(self, v: int, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
        self.mem.write(ring_addrs(v)[0] + 16 * i, struct.pack("<QIHH", addr & (2 ** 64 - 1), length, flags, nxt))

    def offer(self, v: int, head: int) -> None:
        """Put ``head`` in the next avail slot and publish the new avail idx."""
        _, avail, _ = ring_addrs(v)
        slot = self.avail_idx[v] % NUM
        self.mem.write(avail + 4 + 2 * slot, struct.pack("<H", head & 0xFFFF))
        self.set_avail_idx(v, self.avail_idx[v] + 1)

    def set_avail_idx(self, v: int, idx: int) -> None:
        self.avail_idx[v] = idx & 0xFFFF
        self.mem.write(ring_addrs(v)[1] + 2, struct.pack("<H", idx & 0xFFFF))

    def used_idx(self, v: int) -> int:
        return struct.unpack("<H", self.mem.read(ring_addrs(v)[2] + 2, 2))[0]

    def used(self, v: int, slot: int) -> tuple[int, int]:
        return struct.unpack("<II", self.mem.read(ring_addrs(v)[2] + 4 + 8 * (slot % NUM), 8))

    def used_entries(self, v: int) -> list[tuple[int, int]]:
        return [self.used(v, s) for s in range(self.used_idx(v))]

    # ------------------------------------------------------------ packets
    def tx_buffer(self, slot: int, pkt: bytes, *, hdr: bytes = bytes(HDR_LEN), gpa: int | None = None) -> tuple[int, int]:
        """Header + packet into a tx buffer; returns (gpa, length) for a descriptor."""
        gpa = TX_BUF + slot * PAGE if gpa is None else gpa
        self.mem.write(gpa, hdr + pkt)
        return gpa, len(hdr) + len(pkt)

    @staticmethod
    def rx_slot(slot: int) -> int:
        return RX_BUF + slot * PAGE

    # ------------------------------------------------------------ memory checks
    def snapshot(self) -> dict[int, np.ndarray]:
        return {gpa: np.frombuffer(self.mem.read(gpa, size), np.uint8) for gpa, size in LAYOUT}

    def changes(self, before: dict[int, np.ndarray], allowed: list[tuple[int, int]] = ()) -> list[tuple[int, int]]:
        """Changed byte ranges [(gpa, end)] outside the used rings and ``allowed`` [(gpa, length)]."""
        ok = [(ring_addrs(v)[2], ring_sizes(NUM)[2]) for v in range(2)] + list(allowed)
        out = []
        for gpa, size in LAYOUT:
            now = np.frombuffer(self.mem.read(gpa, size), np.uint8)
            diff = now != before[gpa]
            for a, n in ok:
                lo, hi = max(a - gpa, 0), min(a + n - gpa, size)
                if lo < hi:
                    diff[lo:hi] = False
            idx = np.flatnonzero(diff)
            if idx.size:
                breaks = np.flatnonzero(np.diff(idx) > 1)
                starts = np.concatenate(([idx[0]], idx[breaks + 1]))
                ends = np.concatenate((idx[breaks], [idx[-1]])) + 1
                out += [(gpa + int(s), gpa + int(e)) for s, e in zip(starts, ends)]
        return out

    # ------------------------------------------------------------ teardown
    def close(self) -> None:
        self.fe.close()
        for fd in self.kick + self.call:
            os.close(fd)
        self.kick = self.call = []
        self.mem.close()


# ------------------------------------------------------------ child scenarios
def _mrg_split_at_grant_edge() -> None:
    """MRG_RXBUF, IOMMU: the first rx chain is the last 11 bytes of a granted
    page whose next page VM1 never granted (PROT_NONE in the window).  Prints
    what the device did; a device writing past that descriptor dies with SIGSEGV."""
    import shutil
    import tempfile

    from pmd.ethdev import Port
    from pmd.vdev import parse_vdev
    from pmd.mbuf import create_pool
    from tests.vhostpci.peer_io import make_packet, send

    d = tempfile.mkdtemp(prefix="vmr", dir="/tmp")
    path = os.path.join(d, "vp.sock")
    port = Port(0, parse_vdev(f"net_vhost_pci0,path={path}"))
    port.start()
    page = HIGH[0] + 0x40000  # granted WO; page + PAGE never granted
    vm = RogueVM1(path, iommu=True, extra=MRG_RXBUF,
                  grants=[(RING_BASE, 0x20000, IotlbPerm.RW), (RX_BUF, 0x80000, IotlbPerm.WO),
                          (page, PAGE, IotlbPerm.WO)])
    try:
        print("mrg:", bool(vm.features & MRG_RXBUF), flush=True)
        vm.desc(RX, 0, page + PAGE - 11, 11, 2)  # WRITE
        vm.offer(RX, 0)
        vm.desc(RX, 1, RX_BUF, 2048, 2)
        vm.offer(RX, 1)
        print("sent:", send(port, create_pool(64), [make_packet(1, 100)]), flush=True)
        print("used:", vm.used_entries(RX), flush=True)
    finally:
        vm.close()
        port.close()
        shutil.rmtree(d, ignore_errors=True)


SCENARIOS = {"mrg_split_at_grant_edge": _mrg_split_at_grant_edge}

if __name__ == "__main__":
    import sys

    SCENARIOS[sys.argv[1]]()
