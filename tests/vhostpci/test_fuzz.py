"""Fuzzers against a running port, each in a child process (a crash kills
the child, not pytest; the parent names the signal): a stateful fuzzer of
vhost-user message sequences (``fuzz_vu.py``) and a ring fuzzer of random
descriptor tables, indices, flags, chains and indirect tables
(``fuzz_ring.py``).  Both use hypothesis with a fresh random seed per run
(printed, and passed back with ``python -m tests.vhostpci.fuzz_* ... SEED``
to replay).  Acceptance: 0 crashes, 0 leaked fds or guest mappings, the
other ports keep forwarding.  Run with ``-s`` to see the figures."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# at most this many, within BUDGET_S seconds each
VU_EXAMPLES, VU_STEPS = 300, 50  # here: ~7-15k steps, 10-20k messages
RING_CASES = 4000  # here: ~2-3k cases
BUDGET_S = 30
# The budget starts once the child's port forwards.  Before that, on a cold
# Numba cache, the child compiles the forwarding loop for its own ports
# (ring pairs beside the vhost-pci port): ~50 s here, up to 4x that when
# the machine runs slow.  So the hang guard is minutes, not the usual 60 s.
CHILD_LIMIT_S = 400


def run_child(module: str, *args: str, timeout: float = CHILD_LIMIT_S) -> dict:
    seed = str(int.from_bytes(os.urandom(4), "little"))
    p = subprocess.run([sys.executable, "-m", module, *args, seed], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    where = f"(replay: python -m {module} {' '.join(args)} {seed})"
    if p.returncode < 0:
        pytest.fail(f"VM2 died of {signal.Signals(-p.returncode).name} {where}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    assert p.returncode == 0, f"{where}\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    result = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"\n[fuzz] {module} seed {seed}: {result}")
    return result


@pytest.mark.alarm(CHILD_LIMIT_S + 30)
def test_vhost_user_message_sequences():
    r = run_child("tests.vhostpci.fuzz_vu", str(VU_EXAMPLES), str(VU_STEPS), str(BUDGET_S))
    assert r["messages"] >= 2000, r
    assert r["acked"] > 0 and r["nacked"] > 0 and r["hung_up"] > 0 and r["connections"] > 100, r
    assert r["leaks"] == {"fds": [], "memfd_maps": [], "window_rows": 0}, r
    assert r["ring_ports_forwarding"], r
    assert r["unexpected_errors"] == 0, r["unexpected_first"]  # every refusal names what was wrong


@pytest.mark.alarm(CHILD_LIMIT_S + 30)
def test_random_rings():
    r = run_child("tests.vhostpci.fuzz_ring", str(RING_CASES), str(BUDGET_S))
    assert r["cases"] >= 500 and r["descriptors"] > 5 * r["cases"], r
    assert r["bad_descriptors"] > 0 and r["port_rx"] > 0, r  # both bad and good chains were met
    assert r["lcore_alive"] and r["ring_ports_forwarding"] and r["round_trip_after"], r
    assert r["leaks"] == {"fds": [], "memfd_maps": [], "window_rows": 0}, r
