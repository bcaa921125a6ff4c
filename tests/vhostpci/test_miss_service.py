"""The control thread's half of IOTLB misses (``IotlbMisses.service``): it
asks for the page a kernel parked on when the kernel could not, and never
for a page whose park was answered meanwhile.  A MISS for an address VM1
has already unmapped again is answered by QEMU with a fault and no UPDATE,
and its note would hold back the kernel's own MISS when VM1 reuses the
address: a 100 ms stall on a real strict-IOMMU guest.  The vrings' words
and the window's grants are set by hand here; the session only records the
MISSes it is asked to send."""
from __future__ import annotations

import numpy as np

from pmd.vhost_user.messages import IotlbPerm
from pmd.vhostpci_pmd.iotlb import ASK_SLOTS, IotlbMisses
from pmd.vhostpci_pmd.state import N_VQ, VQ_MISS_IOVA, VQ_MISS_PENDING, VQ_MISS_SENT, VQ_MISS_WRITE, VQ_READY

PAGE = 0x7f00_1234_5000


class Session:
    """Records MISSes; ``during_send`` runs as each one is sent (the lcore
    serving an UPDATE meanwhile)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, IotlbPerm]] = []
        self.during_send = lambda: None

    def send_iotlb_miss(self, iova: int, perm: IotlbPerm) -> bool:
        self.sent.append((iova, perm))
        self.during_send()
        return True


def parked(iova: int, write: bool = False, sent_by_kernel: bool = False) -> np.ndarray:
    vq = np.zeros((2, N_VQ), np.int64)
    vq[:, VQ_READY] = 1
    vq[1, VQ_MISS_IOVA] = iova
    vq[1, VQ_MISS_WRITE] = int(write)
    vq[1, VQ_MISS_SENT] = int(sent_by_kernel)
    vq[1, VQ_MISS_PENDING] = 1
    return vq


def row(misses: IotlbMisses, page: int) -> list[int]:
    return [int(x) for x in misses.asked[(page >> 12) & (ASK_SLOTS - 1)]]


def test_a_park_the_kernel_could_not_ask_for_is_asked_for_once_with_its_direction():
    grants: dict[int, int] = {}
    misses = IotlbMisses(parked(PAGE + 0x10, write=True), lambda page: grants.get(page, 0))
    s = Session()
    misses.service(s)
    misses.service(s)  # within MISS_RESEND_S: not again
    assert s.sent == [(PAGE, IotlbPerm.WO)]
    assert row(misses, PAGE)[0] == PAGE | 1


def test_a_park_the_kernel_asked_for_itself_is_not_asked_for_again():
    misses = IotlbMisses(parked(PAGE, sent_by_kernel=True), lambda page: 0)
    s = Session()
    misses.service(s)
    assert s.sent == []


def test_a_page_granted_since_the_park_is_not_asked_for():
    misses = IotlbMisses(parked(PAGE), lambda page: 1 if page == PAGE else 0)
    s = Session()
    misses.service(s)
    assert s.sent == []
    assert row(misses, PAGE) == [0, 0]


def test_a_page_granted_without_the_needed_write_is_asked_for():
    misses = IotlbMisses(parked(PAGE, write=True), lambda page: 1)
    s = Session()
    misses.service(s)
    assert s.sent == [(PAGE, IotlbPerm.WO)]


def test_a_park_answered_during_the_send_leaves_no_note_behind():
    vq = parked(PAGE)
    misses = IotlbMisses(vq, lambda page: 0)
    s = Session()

    def answered() -> None:  # the lcore maps the UPDATE and un-parks the vring
        vq[1, VQ_MISS_PENDING] = 0

    s.during_send = answered
    misses.service(s)
    assert s.sent == [(PAGE, IotlbPerm.RO)]  # raced: sent, but
    assert row(misses, PAGE) == [0, 0]  # a kernel parking on the reused address asks at once


def test_a_park_moved_to_another_page_during_the_send_leaves_no_note_behind():
    vq = parked(PAGE)
    misses = IotlbMisses(vq, lambda page: 0)
    s = Session()
    s.during_send = lambda: vq.__setitem__((1, VQ_MISS_IOVA), PAGE + 0x2000)
    misses.service(s)
    assert row(misses, PAGE) == [0, 0]
