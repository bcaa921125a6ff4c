"""The telemetry socket answers Debian's real dpdk-telemetry.py client for a
running vhostpci-testpmd, and is removed on exit."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from pmd.telemetry import SOCKET_NAME, runtime_dir

ROOT = Path(__file__).resolve().parent.parent
CLIENT = shutil.which("dpdk-telemetry.py")
PROMPT = "testpmd> "


def query(prefix: str, *cmds: str) -> list[dict]:
    """Run the client non-interactively (commands on stdin): one JSON line each."""
    p = subprocess.run([sys.executable, CLIENT, "-f", prefix], input="\n".join(cmds) + "\n",
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


@pytest.mark.skipif(CLIENT is None, reason="dpdk-telemetry.py not installed (Debian dpdk)")
def test_dpdk_telemetry_client(tmp_path: Path) -> None:
    prefix = f"vhostpci-test-{os.getpid()}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), VHOSTPCI_TESTPMD_HISTORY=str(tmp_path / "h"))
    sock = Path(runtime_dir(prefix)) / SOCKET_NAME
    child = pexpect.spawn(sys.executable, ["-m", "apps.testpmd", "-l", "0-1", "--file-prefix", prefix,
                                           "--vdev", "net_ring0", "--vdev", "net_ring1", "--", "-i"],
                          cwd=str(ROOT), env=env, encoding="utf-8", timeout=60)
    try:
        child.expect_exact(PROMPT)
        assert sock.exists()
        child.sendline("start tx_first")
        child.expect_exact(PROMPT)
        time.sleep(0.3)
        out = query(prefix, "/", "/info", "/help,/ethdev/stats", "/ethdev/list", "/ethdev/stats,0",
                    "/ethdev/xstats,1", "/ethdev/info,0", "/ethdev/link_status,0", "/vhostpci/info,1",
                    "/ethdev/stats,9", "/ethdev/stats,x", "/bogus")
        assert len(out) == 12, out
        cmds, info, help_, lst, stats, xstats, dev, link, drv, bad, bad2, bogus = out
        assert {"/ethdev/stats", "/ethdev/xstats", "/vhostpci/info", "/help"} <= set(cmds["/"])
        assert info["/info"]["pid"] == child.pid and info["/info"]["max_output_len"] > 0
        assert "port_id" in help_["/help"]["/ethdev/stats"]
        assert lst == {"/ethdev/list": [0, 1]}
        assert stats["/ethdev/stats"]["ipackets"] > 0 and len(stats["/ethdev/stats"]["q_ipackets"]) == 16
        assert xstats["/ethdev/xstats"]["rx_good_packets"] > 0
        assert xstats["/ethdev/xstats"]["rx_q0_good_packets"] > 0
        assert dev["/ethdev/info"]["name"] == "net_ring0" and dev["/ethdev/info"]["dev_started"] == 1
        assert link == {"/ethdev/link_status": {"status": "UP", "speed": 10000, "duplex": "full-duplex"}}
        assert drv["/vhostpci/info"]["driver"] == "net_ring" and drv["/vhostpci/info"]["ring size"] == 1024
        assert bad == {"/ethdev/stats": None} and bad2 == {"/ethdev/stats": None} and bogus == {"/bogus": None}
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        if child.isalive():
            child.terminate(force=True)
    assert not sock.exists()
    assert not sock.parent.exists()


def test_second_instance_takes_the_next_name(tmp_path: Path) -> None:
    from pmd.telemetry import TelemetryServer

    base = str(tmp_path / "d" / SOCKET_NAME)
    first = TelemetryServer(base, {})
    try:
        second = TelemetryServer(base, {})
        try:
            assert (first.path, second.path) == (base, base + ":1")
            assert json.loads(second.reply("/info"))["/info"]["pid"] == os.getpid()
        finally:
            second.close()
    finally:
        first.close()
    assert not (tmp_path / "d").exists()


def test_no_telemetry_serves_no_socket(tmp_path: Path) -> None:
    """``--no-telemetry``: no socket, no run directory, while the app runs."""
    prefix = f"vhostpci-notel-{os.getpid()}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), VHOSTPCI_TESTPMD_HISTORY=str(tmp_path / "h"))
    child = pexpect.spawn(sys.executable, ["-m", "apps.testpmd", "-l", "0-1", "--no-telemetry", "--file-prefix",
                                           prefix, "--vdev", "net_null0", "--", "-i"],
                          cwd=str(ROOT), env=env, encoding="utf-8", timeout=60)
    try:
        child.expect_exact(PROMPT)
        assert "TELEMETRY" not in child.before
        assert not Path(runtime_dir(prefix)).exists()
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        if child.isalive():
            child.terminate(force=True)
