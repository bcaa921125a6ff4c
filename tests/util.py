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


def thread_cpu_percent(tid: int, seconds: float) -> float:
    """CPU use (user + system) of this process's thread ``tid`` over
    ``seconds`` of wall time, in % of one CPU (psutil)."""
    import psutil

    proc = psutil.Process()

    def cpu() -> float:
        t = next(t for t in proc.threads() if t.id == tid)
        return t.user_time + t.system_time

    c0, w0 = cpu(), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (cpu() - c0) / (time.monotonic() - w0)
