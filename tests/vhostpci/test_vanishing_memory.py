"""VM1 shrinks a memory fd after VM2 accepted its table (the fd's size was
checked then): the port's next access to the missing pages is a SIGBUS.
VM2 survives it (``pmd/guestmem/sigbus.py``): the faulting page reads
zeros, the session that gave the memory is closed naming the cause, the
fault is counted (xstats ``guest_memory_faults``), the other ports never
stop forwarding and the next front-end is served.  Run in a child process
(``vanishing_vm1.py``) so a regression kills the child, not pytest."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run_child(*args: str) -> dict[str, str]:
    p = subprocess.run([sys.executable, "-m", "tests.vhostpci.vanishing_vm1", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    if p.returncode < 0:
        pytest.fail(f"VM2 died of {signal.Signals(-p.returncode).name}:\n{p.stdout}\n{p.stderr[-3000:]}")
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    out = dict(line.split(": ", 1) for line in p.stdout.splitlines() if ": " in line)
    print(f"\n[vanishing memory {' '.join(args)}] {out}")
    return out


@pytest.mark.parametrize("mode, size", [("plain", 0), ("plain", 0x1000), ("iommu", 0)],
                         ids=["plain-all", "plain-all-but-a-page", "iommu-all"])
def test_vm1_truncates_its_memory_under_a_running_port(mode, size):
    out = run_child(mode, str(size))
    assert out["first round trip"] == "True"
    assert out["session closed"] == "True"
    assert "VM1's memory vanished under the port" in out["reason"] and "SIGBUS" in out["reason"], out["reason"]
    assert int(out["faults"]) >= 1
    assert out["link up"] == "False"
    assert out["lcore running"] == "True"
    assert out["ring ports forward"] == "True"
    assert out["new front-end round trip"] == "True"


CHILD_OUTSIDE = """
import mmap, os
import numpy as np
from pmd.guestmem import sigbus
from pmd.guestmem.window import Window
w = Window(1 << 30)  # installs the handler
assert sigbus.installed()
fd = os.memfd_create("not-guest-memory")
os.ftruncate(fd, 2 * 4096)
m = mmap.mmap(fd, 2 * 4096)
a = np.frombuffer(m, np.uint8)
os.ftruncate(fd, 0)
print("reading", flush=True)
print(int(a[4096]))
print("survived")
"""


def test_sigbus_outside_guest_memory_still_kills():
    """The handler only covers guarded guest memory: any other SIGBUS is a
    bug and gets the action that was there before (default: the process dies)."""
    p = subprocess.run([sys.executable, "-X", "faulthandler", "-c", CHILD_OUTSIDE], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == -signal.SIGBUS, (p.returncode, p.stdout, p.stderr[-2000:])
    assert "reading" in p.stdout and "survived" not in p.stdout
    assert "Fatal Python error: Bus error" in p.stderr  # faulthandler, the previous action, still ran
