"""vhostpci-testpmd as VM2 with a net_vhost_pci port, VM1 in another process:
link and driver info in the shell, forwarding, xstats, port stop/start."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect

from tests.conftest import ROOT
from tests.test_testpmd_shell import JIT_TIMEOUT, PROMPT, _env, run
from tests.vhostpci.test_port_traffic import run_vm1


def test_shell_drives_a_vhost_pci_port(sockdir: str, tmp_path: Path) -> None:
    path = os.path.join(sockdir, "vp.sock")
    child = pexpect.spawn(sys.executable, ["-m", "apps.testpmd", "-l", "0-1", "--vdev", f"net_vhost_pci0,path={path}",
                                           "--", "-i"], cwd=str(ROOT), env=_env(tmp_path), encoding="utf-8",
                          timeout=20, dimensions=(50, 200))
    try:
        child.expect_exact(PROMPT, timeout=JIT_TIMEOUT)
        out = run(child, "show port info 0")
        assert "Driver name: net_vhost_pci" in out and "Link status: down" in out and "connected: no" in out
        run(child, "start", timeout=JIT_TIMEOUT)
        for round_ in range(2):
            res = run_vm1(path, "--count", "300", "--iommu", "buffers")
            assert (res["received"], res["bad"]) == (300, 0), res
            out = run(child, "show port xstats 0")
            assert "NIC extended statistics for port 0" in out and "bad_descriptors: 0" in out
            assert f"rx_good_packets: {300 * (round_ + 1)}" in out, out
            if round_ == 0:  # stop the port: VM1's socket goes away; start: back
                run(child, "stop")
                out = run(child, "port stop 0")
                assert not os.path.exists(path)
                run(child, "port start 0")
                assert os.path.exists(path)
                run(child, "start")
        out = run(child, "stop")
        assert "Forward statistics for port 0" in out
        child.sendline("quit")
        child.expect(pexpect.EOF, timeout=20)
        assert "Traceback" not in child.before
    finally:
        if child.isalive():
            child.terminate(force=True)
    assert not os.path.exists(path)
