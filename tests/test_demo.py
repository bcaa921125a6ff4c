"""The VM-to-VM demo (``apps/fwd/demo.py``, what ``vhostpci-fwd`` runs with
no ``--vdev``): VM1 in a child process -> vhost-pci -> VF -> a namespace
whose kernel answers, and back; or the net_ring stand-in when not root.
Each run must report traffic both ways with no loss and leave nothing
behind (child processes, veth, namespace, socket directory)."""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow  # first run compiles VM1's and the forwarding kernels (~45 s), later ~8 s each

DEMO = [sys.executable, "-m", "apps.fwd.demo", "-l", "0-1", "--"]
# the same program, told it is not root (to test the fallback as root too)
NOT_ROOT = [sys.executable, "-c",
            ("import os, sys; os.geteuid = lambda: 1000; from apps.fwd.demo import main; "
             "sys.exit(main(sys.argv[1:]))"), "-l", "0-1", "--"]


def _sockdirs() -> set[str]:
    return set(glob.glob(os.path.join(os.environ.get("TMPDIR", "/tmp"), "vhostpci-demo-*")))


def _run(cmd: list[str], *opts: str) -> tuple[subprocess.CompletedProcess, dict]:
    before = _sockdirs()
    out = subprocess.run(cmd + ["--duration", "4", "--stats-period", "1", "--json", *opts],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1])
    # live stats: a line per port per second
    assert len(re.findall(r"^port 0 net_vhost_pci0 .* Mpps", out.stdout, re.MULTILINE)) >= 3, out.stdout
    assert "Summary (" in out.stdout
    # nothing left behind: socket directory, VM1 (and the namespace's receiver)
    assert _sockdirs() <= before
    for pid in re.findall(r"\(pid (\d+)", out.stdout):
        assert not os.path.exists(f"/proc/{pid}"), f"child {pid} left running:\n{out.stdout}"
    return out, summary


def _check_traffic(s: dict) -> None:
    assert s["vm1_sent"] > 10000  # 20 kpps for 4 s
    assert s["to_far_end"] == s["vm1_sent"] and s["to_far_end_lost"] == 0
    assert s["back_to_vm1"] > 0 and s["from_far_end_lost"] == 0
    assert s["loss"] == 0 and s["duplicates"] == 0 and s["bad"] == 0
    assert s["mpps_to_far_end"] > 0 and s["mpps_back"] > 0


@pytest.mark.parametrize("vf", ["packet", "xdp"])
def test_demo_vf_namespace_both_ways_no_loss_nothing_left(vf):
    """VM1 (our virtio-user) -> vhost-pci -> VF (AF_PACKET or AF_XDP) ->
    namespace and back: every echo request and datagram arrived (the
    namespace's kernel checks the IP checksums, its receiver the sequence
    numbers), every reply reached VM1 with its checksums intact."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("the namespace wire needs root and iproute2 (the ring fallback is tested below)")
    out, s = _run(DEMO, "--vf", vf)
    assert s["topology"] == "vf-namespace"
    _check_traffic(s)
    assert s["ns_icmp_echos_in"] == s["vm1_icmp_sent"] > 0  # the namespace's kernel got every echo request
    assert s["ns_udp_received"] == s["vm1_udp_sent"] > 0  # ... and its receiver every datagram
    assert len(s["ns_udp_flows"]) == 4
    assert s["from_far_end_sent"] == s["back_to_vm1"] == s["vm1_icmp_sent"]  # every reply reached VM1
    assert re.search(rf"^port 1 {'net_vf0' if vf == 'packet' else 'net_vf_xdp0'} ", out.stdout, re.MULTILINE)
    ns = re.search(r"in namespace (\S+)", out.stdout).group(1)
    host = re.search(r"<-> VF (\S+)", out.stdout).group(1)
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not os.path.exists(f"/sys/class/net/{host}")  # and with it any XDP program


def test_demo_falls_back_to_net_ring_when_not_root():
    out, s = _run(NOT_ROOT)
    assert "not root: the VF is played by net_ring0" in out.stdout
    assert s["topology"] == "ring-loopback"
    _check_traffic(s)
    assert s["back_to_vm1"] == s["vm1_sent"]  # every frame looped back intact
    assert "namespace" not in out.stdout.split("Summary")[0].replace("no namespace", "")


def test_demo_bad_options_exit_2():
    for opts in (["--", "--duration", "0"], ["--vdev", "net_ring0", "--"]):
        out = subprocess.run([sys.executable, "-m", "apps.fwd.demo", "-l", "0-1", *opts],
                             cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 2, out.stdout + out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "error" in out.stderr
