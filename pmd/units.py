"""Sizes written the way DPDK and QEMU options write them (``32M``, ``1G``)."""
from __future__ import annotations

import mmap

import re

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
SIZE_PATTERN = r"(\d+)([KMG]?)"  # a number and an optional binary unit suffix


def size_bytes(number: str, unit: str) -> int:
    """Bytes of a size already split by ``SIZE_PATTERN`` (its two groups)."""
    return int(number) * _UNITS[unit.upper()]


def parse_size(text: str) -> int:
    """``"256M"`` -> 268435456; ValueError if TEXT is not a number with an optional K/M/G suffix."""
    m = re.fullmatch(SIZE_PATTERN, text.strip().upper())
    if not m:
        raise ValueError(f"size {text!r} is not a number with an optional K/M/G suffix")
    return size_bytes(*m.groups())

# The host page size: the unit of every mapping (guest memory, AF_PACKET rings).
PAGE_SIZE = mmap.PAGESIZE
