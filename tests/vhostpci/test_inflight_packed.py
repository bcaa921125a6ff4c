"""Inflight tracking of packed rings (``inflight_packed.py``): the region the
kernels write (``take_chain``, ``release_chains``, ``settle_chains``,
``mark_delivered_packed``), stopped at each step of a batch's return as a
kill would stop it, and what ``recover`` makes of it.  End to end (a VM2
killed mid-traffic, packed rings) is in ``test_inflight.py``."""
from __future__ import annotations

import numpy as np
import pytest

from pmd.guestmem.views import mem_views
from pmd.vhostpci_pmd.inflight import IF_DELIVERED, IF_TAKEN, RESUB_DELIVERED
from pmd.vhostpci_pmd.inflight_packed import (
    E_INFLIGHT, P_DESC_NUM, P_DESC_SIZE, P_HEADER, P_VERSION, mark_delivered_packed, queue_area, recover,
    release_chains, settle_chains, take_chain,
)
from pmd.virtio.packed import (
    VRING_DESC_F_NEXT, avail_flag_bits, desc_flags, pos_advance, set_desc_body, set_desc_flags, used_flag_bits,
)

NUM = 8
CHAINS = (1, 2, 1)  # slots of the chains VM1 posted at positions 0, 1-2, 3 (wrap 1)
START = 1 << 15  # position 0, wrap counter 1


class Ring:
    """A packed ring in a byte array, a region area beside it, and the
    kernels' region steps driven by hand."""

    def __init__(self) -> None:
        self.ring = np.zeros(16 * NUM, np.uint8)
        self.m = mem_views(self.ring)
        self.area = np.zeros(queue_area(NUM), np.uint8)
        self.im = mem_views(self.area)
        assert recover(self.area, 0, NUM, START, 0, True, self.flags).heads == []  # initialised
        slot = 0
        self.posted = []
        for c, slots in enumerate(CHAINS):
            for j in range(slots):
                set_desc_body(self.m, 0, slot, 0x10000 * (c + 1) + 0x100 * j, 100 + slot, c)
                flags = avail_flag_bits(1) | (VRING_DESC_F_NEXT if j < slots - 1 else 0)
                set_desc_flags(self.m, 0, slot, flags)
                self.posted.append((0x10000 * (c + 1) + 0x100 * j, 100 + slot, c, flags))
                slot += 1
        self.heads = []
        self.counter = 0

    def flags(self, idx: int) -> int:
        return int(desc_flags(self.m, 0, idx))

    def take(self, chains: int) -> None:
        slot = sum(CHAINS[:len(self.heads)])
        for c in range(len(self.heads), len(self.heads) + chains):
            self.heads.append(int(take_chain(self.im, 0, NUM, self.m, 0, slot, CHAINS[c], self.counter)))
            self.counter += 1
            slot += CHAINS[c]

    def used_over_taken(self) -> None:
        """What dequeue writes at take time: a used element over each chain's head, flags
        of all but the batch's first (here: the lengths and ids go, as used elements do)."""
        for s in range(sum(CHAINS)):
            set_desc_body(self.m, 0, s, 0x10000, 0, 99)
            if s:
                set_desc_flags(self.m, 0, s, used_flag_bits(1))

    def release(self, n: int) -> int:
        """Steps 1-6 for the first ``n`` chains taken; returns the new position."""
        new_pos = pos_advance(START, sum(CHAINS[:n]), NUM)
        release_chains(self.im, 0, NUM, np.array(self.heads[:n], np.uint16), n, new_pos)
        return new_pos

    def publish(self) -> None:
        set_desc_flags(self.m, 0, 0, used_flag_bits(1))

    def settle(self, n: int) -> None:
        settle_chains(self.im, 0, np.array(self.heads[:n], np.uint16), n)

    def recover(self, published=lambda v, p: None):
        return recover(self.area, 0, NUM, START, 0, True, self.flags, published)

    def inflight(self) -> list[int]:
        return [int(self.area[P_HEADER + P_DESC_SIZE * h + E_INFLIGHT]) for h in range(NUM)]


def test_a_fresh_area_is_initialised_with_one_free_list():
    area = np.zeros(queue_area(NUM), np.uint8)
    got = recover(area, 0, NUM, 3 | START, 0x55, True, lambda i: 0)
    assert (got.heads, got.pos, got.repaired, got.next_counter) == ([], 3 | START, 0, 0)
    assert area[P_VERSION] == 1 and area[P_DESC_NUM] == NUM
    nxt = area[P_HEADER:P_HEADER + P_DESC_SIZE * NUM].view(np.uint16).reshape(NUM, 16)[:, 1]
    assert list(nxt) == list(range(1, NUM + 1))


def test_chains_in_flight_come_back_in_counter_order_with_their_descriptors():
    r = Ring()
    r.take(3)
    r.used_over_taken()
    got = r.recover()
    assert got.heads == r.heads and got.pos == START and got.next_counter == 3
    assert [tuple(int(x) for x in row) for row in got.descs] == r.posted


def test_a_returned_batch_is_not_resubmitted():
    r = Ring()
    r.take(3)
    r.release(2)
    r.publish()
    r.settle(2)
    got = r.recover()
    assert got.heads == r.heads[2:] and got.pos == pos_advance(START, 3, NUM)
    assert [tuple(int(x) for x in row) for row in got.descs] == r.posted[3:]
    assert got.repaired == 0


@pytest.mark.parametrize("published", [False, True], ids=["rolled_back", "committed"])
def test_a_kill_inside_a_batch_return_is_rolled_back_or_committed_by_the_ring(published):
    """Killed after the used position moved: the ring's first flags decide."""
    r = Ring()
    r.take(3)
    r.used_over_taken()
    r.release(2)
    if published:
        r.publish()
    got = r.recover()
    if published:
        assert got.heads == r.heads[2:] and got.pos == pos_advance(START, 3, NUM)
        assert got.repaired == 2  # their flags were still set: cleared on the free list
    else:
        assert got.heads == r.heads and got.pos == START and got.repaired == 0
        assert [tuple(int(x) for x in row) for row in got.descs] == r.posted
    assert sum(f != 0 for f in r.inflight()) == len(got.heads)


def test_a_kill_before_the_used_position_moved_rolls_the_free_list_back():
    r = Ring()
    r.take(3)
    head = r.heads[0]
    release_chains(r.im, 0, NUM, np.array([head], np.uint16), 1, START)  # the free list moved, not the position
    got = r.recover()
    assert got.heads == r.heads and got.pos == START


def test_a_chain_taken_halfway_goes_back_on_the_free_list():
    r = Ring()
    r.take(1)
    snapshot = r.area.copy()
    r.take(1)
    # killed inside take_chain: the head entry in flight, old_free_head not moved yet
    r.area[:P_HEADER] = snapshot[:P_HEADER]
    got = r.recover()
    assert got.heads == r.heads[:1] and got.repaired == 1


@pytest.mark.parametrize("delivered", [False, True], ids=["not_published", "published"])
def test_commit_records_roll_forward_or_back(delivered):
    r = Ring()
    r.take(2)
    mark_delivered_packed(r.im, 0, NUM, r.heads[1], 1, 4, 7 | START)
    assert r.inflight()[r.heads[1]] == IF_DELIVERED
    mark_delivered_packed(r.im, 0, NUM, r.heads[0], 12345, 4, 7)  # a stale source word: ignored
    assert r.inflight()[r.heads[0]] == IF_TAKEN
    asked = []
    got = r.recover(lambda v, p: asked.append((v, p)) or delivered)
    assert asked == [(4, 7 | START)]
    assert got.heads == [r.heads[0], r.heads[1] | (RESUB_DELIVERED if delivered else 0)]
    assert r.inflight()[r.heads[1]] == (IF_DELIVERED if delivered else IF_TAKEN)


def test_a_region_whose_lists_do_not_add_up_is_reinitialised():
    r = Ring()
    r.take(3)
    e = P_HEADER + P_DESC_SIZE * r.heads[1]
    r.area[e + 6:e + 8].view(np.uint16)[0] = 5  # num: the chain's entries no longer end at its last
    got = r.recover()
    assert got.heads == [] and got.pos == START and not any(r.inflight())
