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
    # SIGINT at its default: a pytest started in the background of a
    # non-interactive shell inherits it ignored, and so would the shell
    child = pexpect.spawn(CMD[0], CMD[1:] + ["-i"], cwd=str(ROOT), env=_env(tmp),
                          encoding="utf-8", timeout=20, dimensions=(50, 200),
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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
    ("port start 9", "Invalid port 9\r\nThe valid ports array is [ 0 1 ]"),
    ("show port stats 9", "Invalid port 9"),
    ("show port info 9", "Invalid port 9"),
    ("show rxq info 0 7", "invalid rx queue 7 for port 0 (1 configured)"),
    ("set eth-peer 0 zz:00:00:00:00:01", "invalid MAC address"),
    ("set record-burst-stats maybe", "expected on or off"),
    ("start tx_first x", "tx_first bursts must be an integer"),
    ("port config mtu 0 20", "mtu must be 68..65535, got 20"),
    ("port config all rxq 2", "Please stop all ports first"),
    ("help nosuchsection", "No help on nosuchsection"),
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
    assert "Number of packets per burst set to 64" in run(shell, "set burst 64")
    assert "txpkts set to 128" in run(shell, "set txpkts 128")
    assert "Number of forwarding cores set to 1" in run(shell, "set nbcore 1")
    assert "packets/burst=64" in run(shell, "show config rxtx")
    assert "packets/burst" not in run(shell, "show config fwd")  # testpmd: streams only
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
    assert "Invalid port 2" in run(shell, "show port info 2")


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


def xstat(text: str, name: str) -> int:
    return int(re.search(rf"^{name}: (\d+)", text, re.M).group(1))


def test_fwd_stats_bursts_and_xstats(shell: pexpect.spawn) -> None:
    run(shell, "set record-burst-stats on")
    run(shell, "clear port xstats all")
    run(shell, "start tx_first 2", timeout=JIT_TIMEOUT)
    time.sleep(0.3)
    out = run(shell, "show fwd stats all")
    assert "Accumulated forward statistics" in out and "Done." not in out
    # testpmd's spread: every rx burst call, the empty ones first
    assert re.search(r"RX-bursts : \d+ \[\d+% of 0 pkts( \+ \d+% of (32 pkts|other))+\]", out), out
    x = run(shell, "show port xstats 0")
    assert xstat(x, "rx_good_packets") > 0 and xstat(x, "rx_q0_good_packets") > 0
    for name in ("tx_good_bytes", "rx_q0_packets", "tx_q0_bytes", "rx_q0_dropped_pkts", "rx_mbuf_allocation_errors"):
        xstat(x, name)
    run(shell, "clear fwd stats all")
    out = run(shell, "stop")
    assert "Forward statistics for port 0" in out
    run(shell, "clear fwd stats all")
    assert rx_packets(run(shell, "show fwd stats all")) == [0, 0, 0]
    run(shell, "clear port xstats 0")
    x = run(shell, "show port xstats 0")
    assert xstat(x, "rx_good_packets") == 0 and xstat(x, "tx_q0_good_packets") == 0
    run(shell, "set record-burst-stats off")
    assert "RX-bursts" not in run(shell, "show fwd stats all")


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


def test_port_summary_and_info(shell: pexpect.spawn) -> None:
    out = run(shell, "show port summary all")
    assert "Number of available ports: 2" in out
    assert re.search(r"^0 +02:00:00:00:52:00 net_ring0 +net_ring +up +10 Gbps", out, re.M), out
    info = run(shell, "show port info 0")
    for line in ("Link speed: 10 Gbps", "MTU: 1500", "Promiscuous mode: enabled", "Allmulticast mode: enabled"):
        assert line in info, info


def test_show_config_rxtx_cores_txpkts(shell: pexpect.spawn) -> None:
    out = run(shell, "show config rxtx")
    assert "nb forwarding cores=1 - nb forwarding ports=2" in out
    assert "port 0: RX queue number: 1 Tx queue number: 1" in out and "RX desc=1024" in out
    assert "List of forwarding lcores:  1" in run(shell, "show config cores")
    assert "txpkts set to 160 (segments 64,96 joined into one buffer)" in run(shell, "set txpkts 64,96")
    assert "Segment sizes: 160" in run(shell, "show config txpkts")
    run(shell, "set txpkts 64")


def test_queue_and_device_info(shell: pexpect.spawn) -> None:
    out = run(shell, "show rxq info 1 0")
    assert "Infos for port 1 , RX queue 0" in out and "Number of RXDs: 1024" in out
    assert "Infos for port 0 , TX queue 0" in run(shell, "show port 0 txq 0 info")
    dev = run(shell, "show device info all")
    assert "Infos for device net_ring0" in dev and "Infos for device net_ring1" in dev and "Bus name: vdev" in dev


def test_promisc_allmulti(shell: pexpect.spawn) -> None:
    assert run(shell, "set promisc all on").strip() == "set promisc all on"
    out = run(shell, "set promisc 0 off")
    assert "Error during disabling promiscuous mode for port 0: Operation not supported" in out
    assert "Error during disabling all-multicast mode for port 1" in run(shell, "set allmulti all off")


def test_link_up_down_and_mtu_on_ports_with_no_wire(shell: pexpect.spawn) -> None:
    """As DPDK's: net_ring's link state is settable, net_null's is not; both
    keep an MTU (reported; a ring carries any frame length)."""
    assert run(shell, "set link-down port 0").strip() == "set link-down port 0"
    assert "Link status: down" in run(shell, "show port info 0")
    assert re.search(r"^0 +\S+ net_ring0 +net_ring +down +None", run(shell, "show port summary all"), re.M)
    run(shell, "set link-up port 0")
    assert "Link status: up" in run(shell, "show port info 0")
    assert "Port 2 is attached" in run(shell, "port attach net_null2")
    assert "Set link down fail. (net_null2: link state is not settable (operation not supported by net_null))" \
        in run(shell, "set link-down port 2")
    run(shell, "port config mtu 2 9000")
    assert "MTU: 9000" in run(shell, "show port info 2")
    run(shell, "port close 2")
    assert "Device net_null2 is detached" in run(shell, "port detach 2")


def test_nbport_portlist(shell: pexpect.spawn) -> None:
    out = run(shell, "set nbport 1")
    assert "Number of forwarding ports set to 1" in out and "the last port will pair with itself" in out
    assert "RX P=0/Q=0 (socket 0) -> TX P=0/Q=0" in run(shell, "show config fwd")
    assert "Forwarding ports: 1, 0" in run(shell, "set portlist 1,0")
    out = run(shell, "show config fwd")
    assert "ports=2" in out and "RX P=1/Q=0 (socket 0) -> TX P=0/Q=0" in out
    assert "nb ports 3 out of configured ports 2" in run(shell, "set nbport 3")
    assert "Invalid port 5" in run(shell, "set portlist 0,5")
    run(shell, "set portlist 0,1")


def test_eth_peer_and_mac_addr(shell: pexpect.spawn) -> None:
    run(shell, "set eth-peer 1 02:00:00:00:00:aa")
    assert "peer=02:00:00:00:00:AA" in run(shell, "show config fwd")
    run(shell, "mac_addr set 0 02:11:22:33:44:55")
    assert "MAC address: 02:11:22:33:44:55" in run(shell, "show port info 0")
    run(shell, "set eth-peer 1 02:00:00:00:00:01")
    run(shell, "mac_addr set 0 02:00:00:00:52:00")


def test_port_config_reset_and_start_refusal(shell: pexpect.spawn) -> None:
    run(shell, "port stop all")
    assert "Not all ports were started" in run(shell, "start")
    run(shell, "port config all rxd 512")
    assert "RX desc=512" in run(shell, "show config rxtx")
    assert "size must be a power of two" in run(shell, "port config 0 txd 100")  # the devarg's own check
    run(shell, "port config 1 rxq 2")
    run(shell, "port config 1 txq 2")
    assert "Port 1: 02:" in run(shell, "port start 1")  # queue counts apply at start
    assert "Current number of RX queues: 2" in run(shell, "show port info 1")
    assert "Infos for port 1 , RX queue 1" in run(shell, "show rxq info 1 1")
    assert "Please stop all ports first" in run(shell, "port reset 1")
    run(shell, "port stop 1")
    out = run(shell, "port reset 1")
    assert "Resetting ports..." in out and "Done" in out
    assert "Current number of RX queues: 1" in run(shell, "show port info 1")
    run(shell, "port config all rxd 1024")
    assert "Port 1: 02:" in run(shell, "port start all")


def test_verbose(shell: pexpect.spawn) -> None:
    assert "Change verbose level from 0 to 1" in run(shell, "set verbose 1")
    assert "Change verbose level from 1 to 0" in run(shell, "set verbose 0")


def test_help_and_quit(shell: pexpect.spawn) -> None:
    out = run(shell, "help")
    assert "Help is available for the following sections:" in out
    for word in ("start", "stop", "show", "set", "port", "quit", "help config"):
        assert word in out
    out = run(shell, "help display")
    assert "show port (info|stats|summary|xstats) (port_id|all)" in out and "show fwd stats all" in out
    assert "set fwd (io|mac|macswap|rxonly|txonly|flowgen|icmpecho)" in run(shell, "help config")
    assert "port reset (port_id|all)" in run(shell, "help all")
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


def test_pasted_dpdk_command_line_forwards(tmp_path: Path) -> None:
    """A typical DPDK testpmd command line, EAL and app options, pasted: it
    starts (notices for what means nothing here) and forwards."""
    prefix = f"vhostpci-paste-{os.getpid()}"
    argv = [sys.executable, "-m", "apps.testpmd", "-l", "0-1", "-n", "4", "--no-pci", "--no-huge", "-m", "512",
            "--iova-mode=va", "--proc-type=primary", "--single-file-segments", "--file-prefix", prefix,
            "--log-level=lib.eal:notice", "-a", "0000:00:04.0", "--vdev", "net_ring0", "--vdev", "net_ring1",
            "--", "--rxq=1", "--txq=1", "--rxd=512", "--txd=512", "--nb-cores=1", "--forward-mode=io",
            "--port-topology=paired", "--total-num-mbufs=8192", "--mbcache=256", "--rss-ip", "--burst=32",
            "--eth-peer=0,02:00:00:00:00:aa", "--record-burst-stats"]
    script = "start tx_first\nshow config rxtx\nshow config fwd\nshow port stats all\nstop\nquit\n"
    p = subprocess.run(argv, input=script, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                       timeout=JIT_TIMEOUT + 30)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    for opt in ("-n", "--no-pci", "--iova-mode", "--single-file-segments", "-a"):
        assert f"EAL: {opt}: no effect here" in p.stderr, p.stderr
    assert "--mbcache: no effect here" in p.stderr and "--rss-ip: no effect here" in p.stderr
    assert "RX desc=512" in p.stdout and "peer=02:00:00:00:00:AA" in p.stdout
    assert "RX-bursts : " in p.stdout
    assert all(n > 0 for n in rx_packets(p.stdout.split("testpmd> stop")[1])), p.stdout


@pytest.mark.parametrize("eal, message", [
    (["-l", "0"], "no worker lcore to forward on"),
    (["-l", "0-1", "--vdev", "net_ring5,size=abc"], "bad value for devarg size='abc' of net_ring5: expected an integer"),
    (["-l", "0-1", "--proc-type=secondary"], "--proc-type secondary: not supported"),
])
def test_startup_errors(tmp_path: Path, eal: list[str], message: str) -> None:
    p = subprocess.run([sys.executable, "-m", "apps.testpmd", *eal, "--", "-i"], cwd=ROOT, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Configuring Port" not in p.stdout


def test_help_and_version(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "apps.testpmd", "-h"], cwd=ROOT, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "EAL common options:" in p.stdout and "--forward-mode MODE" in p.stdout
    p = subprocess.run([sys.executable, "-m", "apps.testpmd", "--version"], cwd=ROOT, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("vhostpci-testpmd (vhostpci ")


def test_burst_line_as_testpmd() -> None:
    """testpmd's burst spread: the empty calls first, then the full bursts; the
    sizes this loop does not tell apart summed as ``other`` (the remainder)."""
    from apps.testpmd.display import burst_line
    assert burst_line("RX", 0, 0, 0, 32) is None  # testpmd prints no line then
    assert burst_line("RX", 7, 0, 0, 32) == "  RX-bursts : 7 [100% of 0 pkts]"
    assert burst_line("TX", 0, 10, 10, 32) == "  TX-bursts : 10 [0% of 0 pkts + 100% of 32 pkts]"
    assert burst_line("RX", 50, 50, 25, 32) == "  RX-bursts : 100 [50% of 0 pkts + 25% of 32 pkts + 25% of other]"
    assert burst_line("RX", 1, 2, 0, 64) == "  RX-bursts : 3 [33% of 0 pkts + 67% of other]"


def test_fwd_stats_columns_as_testpmd() -> None:
    """The lines scripts parse, column for column as Debian's dpdk-testpmd 22.11 prints them."""
    from apps.testpmd.display import fwd_stats
    out = fwd_stats({0: {"rx": 8675456, "tx": 8675584, "dropped": 0}}).splitlines()
    assert "  RX-packets: 8675456        RX-dropped: 0             RX-total: 8675456" in out
    assert "  TX-packets: 8675584        TX-dropped: 0             TX-total: 8675584" in out
    assert "  ---------------------- Forward statistics for port 0  ----------------------" in out
    assert "  +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++" in out
    assert out[-1] == "Done."
