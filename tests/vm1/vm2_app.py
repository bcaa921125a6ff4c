"""VM2 as an operator runs it: ``python3 -m apps.fwd`` (vhostpci-fwd) in a
child process, its vhost-pci port a vhost-user *client* of QEMU's socket
(``client=1``: it connects, and reconnects with back-off), its VF the test's
veth.  The restart tests SIGKILL it (by PID) and start a new one.

PYTHONPATH is set to this checkout, so the child runs this tree's code.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import CPUS, ROOT, WORKER_CPU

STATS_PERIOD = 0.2  # s between the app's stats lines: how precisely the tests see it forward again
_VP_LINE = re.compile(r"^port 0 net_vhost_pci0\s.*\bipackets (\d+)\s+opackets (\d+)")


class Vm2App:
    """One VM2 process at a time; ``start`` again after ``kill`` for a restart.

    ``lines`` holds (monotonic time, line) of every process started, and a
    copy of everything goes to LOG for a post-mortem.
    """

    def __init__(self, sock: str, iface: str, log: Path) -> None:
        self.argv = [sys.executable, "-m", "apps.fwd", "-l", f"0@{CPUS[0]},1@{WORKER_CPU}",
                     "--vdev", f"net_vhost_pci0,path={sock},client=1", "--vdev", f"net_vf0,iface={iface}",
                     "--", "--forward-mode", "io", "--stats-period", str(STATS_PERIOD)]
        self.log = log
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[tuple[float, int, str]] = []  # (time, generation, line)
        self.generation = 0
        self._lock = threading.Lock()
        self._readers: list[threading.Thread] = []

    def start(self) -> float:
        """Start a new VM2 process; returns when it was started."""
        assert self.proc is None or self.proc.poll() is not None, "VM2 still running"
        self.generation += 1
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        t = time.monotonic()
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        reader = threading.Thread(target=self._read, args=(self.proc, self.generation), daemon=True)
        reader.start()
        self._readers.append(reader)
        return t

    def _read(self, proc: subprocess.Popen[str], gen: int) -> None:
        assert proc.stdout is not None
        with open(self.log, "a") as log:
            for line in proc.stdout:
                now = time.monotonic()
                log.write(f"{now:.3f} #{gen} {line}")
                log.flush()
                with self._lock:
                    self.lines.append((now, gen, line.rstrip("\n")))

    def port_counts(self) -> tuple[int, int] | None:
        """(ipackets, opackets) of the vhost-pci port in the running process's last stats line."""
        with self._lock:
            for _, gen, line in reversed(self.lines):
                if gen != self.generation:
                    return None
                m = _VP_LINE.match(line)
                if m:
                    return int(m.group(1)), int(m.group(2))
        return None

    def wait_forwarding(self, timeout: float) -> float | None:
        """When the running process first reported frames written into VM1
        (the port's opackets > 0), waiting up to TIMEOUT s; None if it did not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for t, gen, line in self.lines:
                    m = _VP_LINE.match(line) if gen == self.generation else None
                    if m and int(m.group(2)) > 0:
                        return t
            if self.proc is None or self.proc.poll() is not None:
                return None
            time.sleep(0.05)
        return None

    def kill(self) -> float:
        """SIGKILL the running VM2 (by PID) and reap it; returns when it was killed."""
        assert self.proc is not None
        t = time.monotonic()
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        return t

    def close(self) -> None:
        """Stop whatever VM2 runs (SIGTERM, then SIGKILL), by PID."""
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for reader in self._readers:  # they end at EOF, the process being gone
            reader.join(10)
