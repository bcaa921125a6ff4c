"""Small helpers shared by the tests."""
from __future__ import annotations

import time
from typing import Callable

from tools.guest.qemu_binary import SERIES as QEMU_SERIES  # noqa: F401  (parametrize over it)


def wait_until(pred: Callable[[], object], timeout: float = 5.0, interval: float = 0.002) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` s passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


_qemus: dict[str, object] = {}


def qemu_or_skip(series: str):
    """``tools.guest.qemu_binary.find_qemu(series)`` (fetched once per run),
    or pytest.skip with the reason it is missing."""
    import pytest

    from tools.guest.qemu_binary import QemuMissing, find_qemu
    if series not in _qemus:
        try:
            _qemus[series] = find_qemu(series)
        except QemuMissing as e:
            _qemus[series] = str(e)
    found = _qemus[series]
    if isinstance(found, str):
        pytest.skip(f"QEMU {series}: {found}")
    return found
