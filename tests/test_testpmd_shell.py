"""vhostpci-testpmd end to end: the interactive shell in a pseudo-terminal
(one shared process for most checks) and the non-interactive stats mode."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

ROOT = Path(__file__).resolve().parent.parent
CMD = [sys.executable, "-m", "apps.testpmd", "-l", "0-1", "--vdev", "net_ring0", "--vdev", "net_ring1", "--"]
PROMPT = "testpmd> "
JIT_TIMEOUT = 60  # the first start of a port combination may compile


def _env(tmp: Path) -> dict[str, str]:
    """Keep $HOME (the Numba cache lives under it); history goes to ``tmp``."""
    return dict(os.environ, VHOSTPCI_TESTPMD_HISTORY=str(tmp / "history"), PYTHONPATH=str(ROOT))


@pytest.fixture(scope="module")
def shell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pexpect.spawn]:
    tmp = tmp_path_factory.mktemp("testpmd")
    child = pexpect.spawn(CMD[0], CMD[1:] + ["-i"], cwd=str(ROOT), env=_env(tmp),
                          encoding="utf-8", timeout=20, dimensions=(50, 200))
    try:
        child.expect_exact(PROMPT, timeout=JIT_TIMEOUT)
        yield child
    finally:
        if child.isalive():
            child.terminate(force=True)
        assert "Traceback" not in (child.before or "")


def run(child: pexpect.spawn, line: str, timeout: float = 20) -> str:
    """Send one command; return its output up to the next prompt."""
    child.sendline(line)
    child.expect_exact(PROMPT, timeout=timeout)
    out = child.before
    assert "Traceback" not in out, out
    return out


def rx_packets(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"RX-packets:\s+(\d+)", text)]


def test_startup_and_info(shell: pexpect.spawn) -> None:
    out = run(shell, "show port info all")
    assert "Infos for port 0" in out and "Infos for port 1" in out
    assert "Device name: net_ring0" in out and "Driver name: net_ring" in out
    assert "Link status: up" in out and "Started: yes" in out
    assert "MAC address: 02:" in out


def test_show_config_fwd(shell: pexpect.spawn) -> None:
    out = run(shell, "show config fwd")
    assert "io packet forwarding" in out
    assert "Logical Core 1 (socket 0) forwards packets on 2 streams:" in out
    assert "RX P=0/Q=0 (socket 0) -> TX P=1/Q=0 (socket 0) peer=02:00:00:00:00:01" in out


@pytest.mark.parametrize("line, message", [
    ("set fwd bogus", "Bad arguments"),
    ("set burst 0", "Bad arguments"),
    ("set burst x", "Bad arguments"),
    ("set nbcore 5", "Bad arguments"),
    ("port start 9", "invalid port id 9"),
    ("show port stats 9", "invalid port id 9"),
    ("show port", "Bad arguments"),
    ("foo", "Command not found"),
    ("port attach net_bogus0", "unknown driver"),
    ("port detach 0", "must be closed"),
    ("stop", "not started"),
])
def test_bad_input(shell: pexpect.spawn, line: str, message: str) -> None:
    assert message in run(shell, line)


def test_settings(shell: pexpect.spawn) -> None:
    assert "Set macswap packet forwarding mode" in run(shell, "set fwd macswap")
    assert "macswap packet forwarding" in run(shell, "show config fwd")
    assert "Set io packet forwarding mode" in run(shell, "set fwd io")
    assert "burst set to 64" in run(shell, "set burst 64")
    assert "txpkts set to 128" in run(shell, "set txpkts 128")
    assert "Number of forwarding cores set to 1" in run(shell, "set nbcore 1")
    assert "packets/burst=64" in run(shell, "show config fwd")
    run(shell, "set burst 32")


def test_port_lifecycle(shell: pexpect.spawn) -> None:
    out = run(shell, "port attach net_ring2")
    assert "Port 2 is attached" in out
    assert "Started: no" in run(shell, "show port info 2")
    assert "Port 2: 02:" in run(shell, "port start 2")
    assert "Started: yes" in run(shell, "show port info 2")
    assert "Done" in run(shell, "port stop 2")
    assert "Port 2 is closed" in run(shell, "port close 2")
    assert "must be stopped" not in run(shell, "show port info 2")
    assert "Device net_ring2 is detached" in run(shell, "port detach 2")
    assert "invalid port id 2" in run(shell, "show port info 2")


def test_forwarding(shell: pexpect.spawn) -> None:
    run(shell, "clear port stats all")
    out = run(shell, "start tx_first", timeout=JIT_TIMEOUT)
    assert "Logical Core 1" in out
    assert "already started" in run(shell, "start")
    assert "Please stop forwarding first" in run(shell, "set fwd mac")
    assert "Please stop forwarding first" in run(shell, "port stop 0")
    time.sleep(0.5)
    first = run(shell, "show port stats all")
    assert "NIC statistics for port 0" in first and "NIC statistics for port 1" in first
    assert all(n > 0 for n in rx_packets(first)), first
    time.sleep(0.5)
    second = run(shell, "show port stats 0")
    pps = int(re.search(r"Rx-pps:\s+(\d+)", second).group(1))
    assert pps > 0, second
    out = run(shell, "stop")
    assert "Forward statistics for port 0" in out and "Accumulated forward statistics" in out
    assert "Done." in out
    assert all(n > 0 for n in rx_packets(out)), out
    assert "cleared" in run(shell, "clear port stats 0")
    assert rx_packets(run(shell, "show port stats 0")) == [0]


def test_completion(shell: pexpect.spawn) -> None:
    shell.send("show port st\t")
    shell.expect_exact("show port stats ")
    shell.send("\t\t")
    shell.expect("0 +1 +all")  # readline lists matches sorted, then redraws the line
    shell.expect_exact(PROMPT + "show port stats ")
    shell.sendline("0")
    shell.expect_exact("NIC statistics for port 0")
    shell.expect_exact(PROMPT)
    shell.send("set fwd mac\t\t")
    shell.expect("mac +macswap")
    shell.expect_exact(PROMPT + "set fwd mac")
    shell.send("\x15")  # ^U: drop the line
    shell.sendline("set fwd io")
    shell.expect_exact("Set io packet forwarding mode")
    shell.expect_exact(PROMPT)


def test_ctrl_c_cancels_line(shell: pexpect.spawn) -> None:
    shell.send("show port")
    shell.expect_exact("show port")  # readline has the text
    shell.sendintr()
    shell.expect_exact(PROMPT)
    assert "Command not found" in run(shell, "bar")


def test_help_and_quit(shell: pexpect.spawn) -> None:
    out = run(shell, "help")
    for word in ("start", "stop", "show", "set", "port", "quit"):
        assert word in out
    shell.sendline("quit")
    shell.expect(pexpect.EOF, timeout=20)
    assert "Traceback" not in shell.before
    assert "Bye..." in shell.before
    shell.close()
    assert shell.exitstatus == 0
    history = Path(shell.env["VHOSTPCI_TESTPMD_HISTORY"]).read_text()
    assert "show port info all" in history


def test_stdin_script(tmp_path: Path) -> None:
    script = "start tx_first\nshow port stats all\nstop\nquit\n"
    p = subprocess.run(CMD, input=script, cwd=ROOT, env=_env(tmp_path), capture_output=True,
                       text=True, timeout=JIT_TIMEOUT + 20)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    assert "testpmd> show port stats all" in p.stdout
    assert "Forward statistics for port 1" in p.stdout


def test_bad_app_option(tmp_path: Path) -> None:
    p = subprocess.run(CMD + ["--forward-mode=bogus"], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                       text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "error" in p.stderr


def test_auto_start_stats_period(tmp_path: Path) -> None:
    args = ["--auto-start", "--tx-first", "--stats-period", "1", "--forward-mode=io"]
    proc = subprocess.Popen(CMD + args, cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        # Wait for forwarding to be up (the compile may take a while), then ~4 periods.
        deadline = time.monotonic() + JIT_TIMEOUT
        line = ""
        while "Logical Core" not in line:
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "forwarding did not start"
        time.sleep(4)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    blocks = out.split("Port statistics")[1:]
    assert len(blocks) >= 2, out
    port0 = [rx_packets(b)[0] for b in blocks]
    assert all(n > 0 for n in port0) and port0 == sorted(port0) and port0[-1] > port0[0], port0
    assert "Forward statistics for port 0" in out and "Bye..." in out
