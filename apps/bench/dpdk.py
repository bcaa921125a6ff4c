"""DPDK's ``dpdk-testpmd`` as a subprocess driven like a user at its prompt.

Commands go to its stdin (``-i``), its output comes back through a pty (so
its printf output is line-buffered, not stuck in a pipe buffer) and is
parsed by a reader thread.  Rates come from testpmd's own ``Rx-pps`` /
``Tx-pps`` ("throughput since last show", timed with the TSC), so the delay
of the pipe does not enter the figures.

Every process gets its own ``--file-prefix``; ``close()`` ends it by PID
(quit, then SIGTERM, then SIGKILL) and removes its runtime directory and,
on hugepages (``huge_dir``), its hugepage files.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pty
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

TESTPMD = "dpdk-testpmd"
PROMPT = "testpmd> "
NB_MBUFS = 16384  # 16384 x 2176 B: fits -m 256 (-m 256 works with this pool)

_NUM = r"\s*(\d+)"
_RE = {
    "port": re.compile(r"NIC statistics for port (\d+)"),
    "rx_packets": re.compile(r"RX-packets:" + _NUM),
    "tx_packets": re.compile(r"TX-packets:" + _NUM),
    "rx_pps": re.compile(r"Rx-pps:" + _NUM),
    "tx_pps": re.compile(r"Tx-pps:" + _NUM),
}


class DpdkError(RuntimeError):
    """testpmd did not come up or did not answer; the message has its last output lines."""


def testpmd_path() -> str | None:
    return shutil.which(TESTPMD)


def runtime_dir(prefix: str) -> str:
    """Where EAL keeps its runtime files for ``--file-prefix prefix``."""
    if os.geteuid() == 0:
        base = "/var/run"
    else:
        base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return os.path.join(base, "dpdk", prefix)


@dataclass
class PortStats:
    port: int
    rx_packets: int = 0
    tx_packets: int = 0
    rx_pps: int = 0
    tx_pps: int = 0


class Testpmd:
    """One ``dpdk-testpmd -i`` process with one vdev, one forwarding lcore
    (``--lcores '0@CPU,1@CPU'``: main and forwarding lcore on ``cpu``)."""

    def __init__(self, vdev: str, mode: str, size: int, cpu: int, prefix: str, mem_mb: int = 256,
                 eal_extra: tuple[str, ...] = (), huge_dir: str | None = None, queues: int = 1) -> None:
        self.prefix = prefix
        self.huge_dir = huge_dir  # a hugetlbfs mount (DPDK's usual set-up), or None: --no-huge
        memory = ["--huge-dir", huge_dir] if huge_dir else ["--no-huge"]
        self.argv = [
            testpmd_path() or TESTPMD, "--lcores", f"0@{cpu},1@{cpu}", "--no-pci", *memory, "-m", str(mem_mb),
            "--file-prefix", prefix, *eal_extra, "--vdev", vdev, "--",
            "-i", f"--forward-mode={mode}", "--nb-cores=1", f"--total-num-mbufs={NB_MBUFS}",
            f"--txpkts={size}", "--burst=32", f"--rxq={queues}", f"--txq={queues}",
        ]
        self.proc: subprocess.Popen | None = None
        self._fd = -1
        self._text = ""  # everything it printed, \r removed
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    # ----------------------------------------------------------- process
    def start(self, timeout: float = 30.0) -> Testpmd:
        """Start it and wait for its prompt; raises DpdkError if no port came up."""
        master, slave = pty.openpty()
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=slave, stderr=slave,
                                         start_new_session=True, text=True)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self._fd = master
        self._reader = threading.Thread(target=self._read, name=f"testpmd-{self.prefix}", daemon=True)
        self._reader.start()
        self._wait(lambda t: PROMPT in t, timeout, "prompt")
        if "No probed ethernet devices" in self._text or "Port 0" not in self._text:
            raise DpdkError(f"{TESTPMD} ({self.prefix}) has no port:\n{self.tail()}")
        return self

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 65536)
            except OSError:  # EIO: the process closed its side of the pty
                data = b""
            with self._cond:
                if not data:
                    self._cond.notify_all()
                    return
                self._text += data.decode(errors="replace").replace("\r", "")
                self._cond.notify_all()

    def _wait(self, cond, timeout: float, what: str, start: int = 0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not cond(self._text[start:]):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None
                                 and not self._reader_alive()):
                    raise DpdkError(f"{TESTPMD} ({self.prefix}): no {what} within {timeout:.0f} s "
                                    f"(exit code {self.proc.poll() if self.proc else None}):\n{self.tail()}")
                self._cond.wait(min(left, 0.1))
            return self._text[start:]

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def tail(self, n: int = 15) -> str:
        return "\n".join("    " + line for line in self._text.rstrip().splitlines()[-n:])

    def command(self, cmd: str, timeout: float = 10.0) -> str:
        """Send one command; return what it printed up to the next prompt."""
        assert self.proc is not None and self.proc.stdin is not None
        with self._cond:
            start = len(self._text)
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        out = self._wait(lambda t: PROMPT in t, timeout, f"prompt after {cmd!r}", start)
        return out[: out.index(PROMPT)]

    def stats(self) -> dict[int, PortStats]:
        """``show port stats all``: per port counters and the rates since the last call."""
        out: dict[int, PortStats] = {}
        cur: PortStats | None = None
        for line in self.command("show port stats all").splitlines():
            m = _RE["port"].search(line)
            if m:
                cur = out.setdefault(int(m.group(1)), PortStats(int(m.group(1))))
                continue
            if cur is None:
                continue
            for key in ("rx_packets", "tx_packets", "rx_pps", "tx_pps"):
                m = _RE[key].search(line)
                if m:
                    setattr(cur, key, int(m.group(1)))
        return out

    def close(self) -> None:
        """End the process (quit, SIGTERM, SIGKILL: by its PID) and remove its runtime dir."""
        p = self.proc
        if p is not None and p.poll() is None:
            try:
                assert p.stdin is not None
                p.stdin.write("stop\nquit\n")
                p.stdin.flush()
            except (OSError, ValueError):
                pass
            for sig, wait in ((None, 3.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
                if sig is not None:
                    try:
                        os.kill(p.pid, sig)
                    except ProcessLookupError:
                        break
                try:
                    p.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if p is not None:
            if p.stdin is not None:
                try:
                    p.stdin.close()
                except OSError:
                    pass
            p.wait()
        if self._reader is not None:
            self._reader.join(2.0)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        shutil.rmtree(runtime_dir(self.prefix), ignore_errors=True)
        if self.huge_dir:  # EAL keeps its hugepage files (for secondary processes): give the pages back
            for path in glob.glob(os.path.join(glob.escape(self.huge_dir), self.prefix + "*")):
                with contextlib.suppress(OSError):
                    os.unlink(path)
