"""Small helpers shared by the tests."""
from __future__ import annotations

import time
from typing import Callable


def wait_until(pred: Callable[[], object], timeout: float = 5.0, interval: float = 0.002) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` s passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())
