"""Python-side stores to control words that running kernels read.

Python writes a numpy element with a plain aligned 8-byte store, which on
x86 is atomic and (being a separate function call) not reordered by the
compiler across the caller's other work; kernels read it with an acquire
load.  Kept in one place so the assumption is documented once.
"""
from __future__ import annotations

import numpy as np


def store_flag(arr: np.ndarray, idx: int, value: int) -> None:
    """Publish ``arr[idx] = value`` to kernels polling it with load_acquire."""
    assert arr.dtype.itemsize == 8 and arr.flags.aligned
    arr[idx] = value
