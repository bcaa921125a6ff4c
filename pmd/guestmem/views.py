"""Typed views of one byte area (a window or a guest RAM mapping), the
form every ring kernel takes memory in: ``m.u16[off >> 1]`` reads the u16
at byte offset ``off`` (offsets of aligned fields are exact)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Mem(NamedTuple):
    """Typed views of one byte area; offsets are byte offsets into ``u8``."""

    u8: np.ndarray
    u16: np.ndarray
    u32: np.ndarray
    u64: np.ndarray


def mem_views(area: np.ndarray) -> Mem:
    """Four views of ``area`` (uint8, length a multiple of 8)."""
    return Mem(area, area.view(np.uint16), area.view(np.uint32), area.view(np.uint64))
