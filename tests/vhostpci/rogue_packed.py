"""A hostile VM1 with packed rings (virtio 1.2, 2.8): ``RogueVM1``'s memory,
grants and checks, VIRTIO_F_RING_PACKED negotiated, and descriptors written
by hand at the driver's ring positions.  Per vring (``ring_addrs``): the
descriptor ring at ``desc`` (64 x 16 B), the driver area at ``avail``, the
device area at ``used``."""
from __future__ import annotations

import struct

from pmd.virtio.features import VIRTIO_F_RING_PACKED
from pmd.virtio.packed import VRING_PACKED_DESC_F_AVAIL as AVAIL
from pmd.virtio.packed import VRING_PACKED_DESC_F_USED as USED
from tests.vhostpci.rogue_vm1 import NUM, RogueVM1, ring_addrs

PACKED = 1 << VIRTIO_F_RING_PACKED


class RoguePackedVM1(RogueVM1):
    """``offer(v, [(addr, len, flags, id), ...])`` writes one chain at the
    driver's position (the head's flags last), ``used_at(pos)`` reads what the
    device wrote back."""

    BASE = 1 << 15  # index 0, wrap counter 1

    def __init__(self, path: str, *, iommu: bool, grants=None, extra: int = 0) -> None:
        self.pos = [0, 0]  # slots the driver has written on each ring (wrap = 1 - (pos // NUM) % 2)
        super().__init__(path, iommu=iommu, grants=grants, extra=extra | PACKED)
        assert self.features & PACKED, "the port did not negotiate packed rings"

    @staticmethod
    def _wrap(n: int) -> int:
        return 1 - (n // NUM) % 2

    def write_desc(self, v: int, slot: int, addr: int, length: int, flags: int, buf_id: int) -> None:
        self.mem.write(ring_addrs(v)[0] + 16 * slot, struct.pack("<QIHH", addr & (2 ** 64 - 1), length,
                                                                 buf_id & 0xFFFF, flags & 0xFFFF))

    def offer(self, v: int, chain: list[tuple[int, int, int, int]]) -> int:
        """Make ``chain`` available at the next positions; returns the head's position count."""
        head = self.pos[v]
        for k, (addr, length, flags, buf_id) in list(enumerate(chain))[::-1]:  # head last
            n = head + k
            bits = AVAIL if self._wrap(n) else USED
            self.write_desc(v, n % NUM, addr, length, flags | bits, buf_id)
        self.pos[v] = head + len(chain)
        return head

    def used_at(self, v: int, n: int) -> tuple[int, int, bool]:
        """(id, len, used?) of the descriptor at position count ``n``."""
        _, length, buf_id, flags = struct.unpack("<QIHH", self.mem.read(ring_addrs(v)[0] + 16 * (n % NUM), 16))
        w = self._wrap(n)
        return buf_id, length, (flags & (AVAIL | USED)) == ((AVAIL | USED) if w else 0)
