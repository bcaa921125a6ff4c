"""tools.guest.ramcheck: pages that differ between two RAM dumps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tools.guest.ramcheck import PAGE, lost_pages


class _Dumper:
    """Stands in for a paused Vm1: ``dump_ram`` writes the given bytes."""

    def __init__(self, ram: np.ndarray) -> None:
        self.ram = ram

    def dump_ram(self, path: Path) -> Path:
        self.ram.tofile(path)
        return path


def test_reports_each_differing_page_once_and_removes_the_dumps(tmp_path):
    pages = 9000  # more than one comparison chunk
    a = np.random.default_rng(1).integers(0, 256, pages * PAGE, dtype=np.uint8)
    b = a.copy()
    for page, offset in ((0, 0), (4095, PAGE - 1), (4096, 17), (8999, 100)):
        b[page * PAGE + offset] ^= 0xFF
    b[4096 * PAGE + 18] ^= 1  # a second byte in the same page
    assert lost_pages(_Dumper(a), _Dumper(b), tmp_path) == [0, 4095 * PAGE, 4096 * PAGE, 8999 * PAGE]
    assert list(tmp_path.iterdir()) == []


def test_identical_ram_loses_nothing(tmp_path):
    a = np.arange(4 * PAGE, dtype=np.uint8)
    assert lost_pages(_Dumper(a), _Dumper(a.copy()), tmp_path) == []


def test_sizes_must_match(tmp_path):
    with pytest.raises(ValueError, match="cannot be compared"):
        lost_pages(_Dumper(np.zeros(2 * PAGE, np.uint8)), _Dumper(np.zeros(3 * PAGE, np.uint8)), tmp_path)
    assert list(tmp_path.iterdir()) == []
