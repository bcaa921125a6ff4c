"""The packed ring's position arithmetic and event rule (virtio 1.2, 2.8),
checked against a plain model: a position counts slots modulo 2*num, the
wrap counter is 1 on even laps."""
from __future__ import annotations

import pytest

from pmd.virtio.packed import (
    AVAIL_USED_MASK, VRING_PACKED_DESC_F_AVAIL, VRING_PACKED_DESC_F_USED, avail_flag_bits, is_avail, is_used,
    need_event, pos_advance, pos_distance, used_flag_bits,
)

NUM = 8


def pos(n: int) -> int:
    """Position after ``n`` slots from the start (index 0, wrap 1)."""
    n %= 2 * NUM
    return n % NUM | (1 - n // NUM) << 15


@pytest.mark.parametrize("start", range(2 * NUM))
def test_advance_and_distance_follow_the_model(start):
    for n in range(NUM + 1):
        assert pos_advance(pos(start), n, NUM) == pos(start + n)
        assert pos_distance(pos(start), pos(start + n), NUM) == n


def test_flag_bits():
    assert avail_flag_bits(1) == VRING_PACKED_DESC_F_AVAIL and avail_flag_bits(0) == VRING_PACKED_DESC_F_USED
    assert used_flag_bits(1) == AVAIL_USED_MASK and used_flag_bits(0) == 0
    for w in (0, 1):
        assert is_avail(avail_flag_bits(w), w) and not is_used(avail_flag_bits(w), w)
        assert is_used(used_flag_bits(w), w) and not is_avail(used_flag_bits(w), w)
        assert not is_avail(avail_flag_bits(1 - w), w)  # last lap's entry


@pytest.mark.parametrize("start", range(2 * NUM))
def test_need_event_fires_exactly_when_the_event_position_is_passed(start):
    """Moving from ``old`` to ``new`` (1..num slots) notifies iff the event
    position is one of the slots moved over (old <= event < new)."""
    for moved in range(1, NUM + 1):
        for ev in range(start - NUM, start + 2 * NUM):
            want = start <= ev < start + moved
            got = need_event(pos(ev), pos(start + moved), pos(start), NUM)
            if abs(ev - start) < NUM:  # an event position within a lap of old is unambiguous
                assert got == want, (start, moved, ev)
