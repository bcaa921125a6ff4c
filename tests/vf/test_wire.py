"""apps/wire.py: what a killed process left behind is reclaimed by name,
only where the owning process is gone."""
from __future__ import annotations

import os
import subprocess

from apps.bench.vm1 import WIRE_NS
from apps.wire import VethWire, reclaim_leftovers

from .conftest import _require_root


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_dead_runs_namespace_and_veth_are_reclaimed_a_live_ones_are_not():
    _require_root()
    dead, live = _dead_pid(), os.getpid()
    wires = [VethWire(f"vbm{pid}h", f"vbm{pid}n", f"{WIRE_NS}{pid}") for pid in (dead, live)]
    try:
        for w in wires:
            w.create()
        assert reclaim_leftovers(WIRE_NS, "vbm{}h") == [f"{WIRE_NS}{dead}"]
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"{WIRE_NS}{dead}" not in namespaces and f"{WIRE_NS}{live}" in namespaces
        assert not os.path.exists(f"/sys/class/net/vbm{dead}h") and os.path.exists(f"/sys/class/net/vbm{live}h")
    finally:
        for w in wires:
            w.delete()
