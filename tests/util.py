"""Small helpers shared by the tests."""
from __future__ import annotations

import os
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


def memfd_maps() -> set[str]:
    """This process's mappings of memfds (guest memory), as "perms offset ... path start-end"
    lines; anonymous mappings come and go with malloc and are left out."""
    with open("/proc/self/maps") as f:
        return {" ".join(line.split()[1:]) + " " + line.split()[0] for line in f if "/memfd:" in line}


def memfd_fds() -> set[str]:
    """This process's open memfds (guest memory), as "fd -> /memfd:name" strings.  Other
    fds are left out: a thread of an earlier test (a poll loop winding down, a logger) may
    open or close one at any moment."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed between listdir and readlink
        if target.startswith("/memfd:"):
            out.add(f"{fd} -> {target}")
    return out


def read_guarded(addr: int, length: int) -> bytes | None:
    """``length`` bytes at ``addr`` of this process, or None if any of them is
    not mapped: the kernel copies them into a pipe and answers EFAULT where a
    direct read would kill the process (a test peeking at a window that VM1
    may change under it)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    r, w = os.pipe()
    try:
        os.set_blocking(w, False)
        out = bytearray()
        while len(out) < length:
            n = libc.write(w, ctypes.c_void_p(addr + len(out)), min(length - len(out), 65536))
            if n <= 0:
                return None
            out += os.read(r, n)
        return bytes(out)
    finally:
        os.close(r)
        os.close(w)
