"""Read sections (``pmd/grace.py``): the finer grace period an IOTLB
invalidation waits for -- only the sections open when it began."""
from __future__ import annotations

import threading

import numpy as np

from pmd.grace import wait_sections

COL = 3


def test_closed_sections_do_not_hold_the_wait():
    table = np.zeros((4, 8), np.int64)
    table[:, COL] = [0, 2, 4, 1000]  # even: outside, whatever passed before
    assert wait_sections(table, COL, 1_000_000_000) == 0


def test_an_open_section_holds_the_wait_until_it_is_left():
    table = np.zeros((4, 8), np.int64)
    table[2, COL] = 7  # vring 2 is inside
    assert wait_sections(table, COL, 20_000_000) == 1 << 2  # timed out: names it
    left = threading.Event()

    def leave() -> None:
        left.wait(5.0)
        table[2, COL] = 8

    t = threading.Thread(target=leave)
    t.start()
    left.set()
    assert wait_sections(table, COL, 5_000_000_000) == 0
    t.join()
    assert table[2, COL] == 8, "the wait returned before the section was left"


def test_a_section_entered_again_counts_as_left():
    table = np.zeros((2, 8), np.int64)
    table[1, COL] = 3

    def next_burst() -> None:
        table[1, COL] = 5  # left (4) and entered again (5): holds only newer lookups
    threading.Timer(0.01, next_burst).start()
    assert wait_sections(table, COL, 5_000_000_000) == 0
    assert table[1, COL] == 5
