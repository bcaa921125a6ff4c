"""The 40 testpmd commands a DPDK user types every day, each sent through a
pseudo-terminal to one ``vhostpci-testpmd -i`` session (two net_ring ports)
in an order that keeps the session sane: each must answer as testpmd does
(its own output, then what a follow-up command shows), never with an error.

Run as a module it drives the same session on any checkouts and prints the
status of each command per checkout as a markdown table (``works``,
``partly``: only a reduced form works, ``missing``), e.g. before/after:

    python3 -m tests.test_daily_commands /path/to/old/checkout .
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pexpect
import pytest

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "testpmd> "
JIT_TIMEOUT = 120  # the first start of a port combination may compile

# An answer that is an error, in testpmd's words or ours (one per line start,
# or anywhere for a traceback or an unsupported operation).
ERROR = re.compile(r"^(Command not found|Bad arguments|Error|Invalid|Please|\*\*\* No help)|Traceback|"
                   r"not supported|fail\b|Failed", re.M)


@dataclass(frozen=True)
class Daily:
    """One daily command: ``cmd`` must answer matching every ``expect``
    pattern; then ``verify`` lines run and their answers must match
    ``shows``. ``setup`` lines run first and are not judged. ``partial``:
    a reduced form (a command, or None for ``cmd`` itself, and its
    patterns) that counts as ``partly`` when the full form fails.
    ``settle``: seconds to wait before ``cmd`` (traffic to count)."""

    name: str
    cmd: str
    expect: tuple[str, ...] = ()
    verify: tuple[str, ...] = ()
    shows: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    partial: tuple[str | None, tuple[str, ...]] | None = None
    settle: float = 0.0


DAILY: tuple[Daily, ...] = (
    Daily("show port info all", "show port info all",
          ("Infos for port 1", "Link speed: 10 Gbps", "MTU: 1500", "Promiscuous mode: enabled"),
          partial=(None, ("Infos for port 1",))),
    Daily("show port summary all", "show port summary all",
          ("Number of available ports: 2", r"^1 +\S+ net_ring1 +net_ring +up +10 Gbps")),
    Daily("show device info all", "show device info all", ("Infos for device net_ring1", "Bus name: vdev")),
    Daily("show config fwd", "show config fwd",
          ("io packet forwarding - ports=2", r"RX P=0/Q=0 \(socket 0\) -> TX P=1/Q=0")),
    Daily("show config rxtx", "show config rxtx", ("nb forwarding cores=1 - nb forwarding ports=2", r"RX desc=\d+")),
    Daily("show config cores", "show config cores", ("List of forwarding lcores: +1",)),
    Daily("show rxq|txq info P Q", "show rxq info 0 0", ("Infos for port 0 , RX queue 0", r"Number of RXDs: \d+"),
          verify=("show txq info 1 0",), shows=("Infos for port 1 , TX queue 0",)),
    Daily("set fwd MODE", "set fwd io", ("Set io packet forwarding mode",)),
    Daily("set burst N", "set burst 32", ("set to 32",)),
    Daily("set nbcore N", "set nbcore 1", ("Number of forwarding cores set to 1",)),
    Daily("set nbport N", "set nbport 2", ("Number of forwarding ports set to 2",)),
    Daily("set portlist X,Y", "set portlist 1,0", verify=("show config fwd",),
          shows=(r"RX P=1/Q=0 \(socket 0\) -> TX P=0/Q=0",)),
    Daily("set txpkts X,Y", "set txpkts 64,64", verify=("show config txpkts",), shows=("Segment sizes: 128",),
          setup=("set portlist 0,1",), partial=("set txpkts 64", ("set to 64",))),
    Daily("set eth-peer P MAC", "set eth-peer 1 02:00:00:00:00:aa", verify=("show config fwd",),
          shows=("peer=02:00:00:00:00:AA",), setup=("set txpkts 64",)),
    Daily("mac_addr set P MAC", "mac_addr set 0 02:00:00:00:52:10", verify=("show port info 0",),
          shows=("MAC address: 02:00:00:00:52:10",), setup=("set eth-peer 1 02:00:00:00:00:01",)),
    Daily("set promisc all on", "set promisc all on", verify=("show port info 0",),
          shows=("Promiscuous mode: enabled",), setup=("mac_addr set 0 02:00:00:00:52:00",)),
    Daily("set allmulti all on", "set allmulti all on", verify=("show port info 0",),
          shows=("Allmulticast mode: enabled",)),
    Daily("set verbose N", "set verbose 0", ("Change verbose level from 0 to 0",)),
    Daily("set record-burst-stats on", "set record-burst-stats on",
          verify=("start tx_first", "show fwd stats all", "stop"), shows=(r"RX-bursts : \d+",)),
    Daily("help SECTION", "help display", (r"show port \(info\|stats",), partial=("help", ("start",))),
    Daily("clear port stats all", "clear port stats all", ("NIC statistics for port 1 cleared",)),
    Daily("clear port xstats all", "clear port xstats all", verify=("show port xstats 0",),
          shows=("rx_good_packets: 0",)),
    Daily("start tx_first N", "start tx_first 4", (r"Logical Core 1 \(socket 0\) forwards packets",),
          partial=("start tx_first", (r"Logical Core 1 \(socket 0\) forwards packets",))),
    Daily("show port stats all", "show port stats all", ("NIC statistics for port 1", r"RX-packets: +[1-9]",
                                                         r"Rx-pps: +\d+"), settle=0.5),
    Daily("show fwd stats all", "show fwd stats all",
          ("Forward statistics for port 1", "Accumulated forward statistics for all ports", r"RX-packets: +[1-9]")),
    Daily("show port xstats all", "show port xstats all",
          (r"rx_good_packets: [1-9]", r"rx_q0_good_packets: [1-9]", r"tx_q0_good_bytes: [1-9]"),
          partial=(None, ("NIC extended statistics for port 1",))),
    Daily("stop", "stop", ("Accumulated forward statistics for all ports", r"RX-packets: +[1-9]", "Done.")),
    Daily("clear fwd stats all", "clear fwd stats all", verify=("show fwd stats all",),
          shows=(r"Accumulated forward statistics for all ports *\+*\n  RX-packets: 0 ",)),
    Daily("start", "start", (r"Logical Core 1 \(socket 0\) forwards packets",)),
    Daily("port stop all", "port stop all", ("Stopping ports...", "Done"), setup=("stop",)),
    Daily("port config all rxq|txq|rxd|txd N", "port config all rxd 512",
          verify=("port config all txd 512", "port config all rxq 1", "port config all txq 1", "show config rxtx"),
          shows=("RX desc=512", "TX desc=512")),
    Daily("port config mtu P N", "port config mtu 0 9000", verify=("show port info 0",), shows=("MTU: 9000",)),
    Daily("port start all", "port start all", ("Port 1: ", "Done"),
          setup=("port config all rxd 1024", "port config all txd 1024", "port config mtu 0 1500")),
    Daily("set link-down port P", "set link-down port 0", verify=("show port info 0",), shows=("Link status: down",)),
    Daily("set link-up port P", "set link-up port 0", verify=("show port info 0",), shows=("Link status: up",)),
    Daily("port reset P", "port reset 0", ("Resetting ports...", "Done"), verify=("port start 0",),
          shows=("Port 0: ",), setup=("port stop 0",)),
    Daily("port attach VDEV", "port attach net_ring2", ("Port 2 is attached",)),
    Daily("port close P", "port close 2", ("Port 2 is closed",)),
    Daily("port detach P", "port detach 2", ("Device net_ring2 is detached",)),
    Daily("quit", "quit", ("Bye...",)),
)


@dataclass
class Outcome:
    status: str  # works | partly | missing
    answer: str = ""  # the first line of a failing answer
    outputs: dict[str, str] = field(default_factory=dict)


class Session:
    """One ``vhostpci-testpmd -i`` of checkout ``tree`` in a pseudo-terminal."""

    def __init__(self, tree: Path, tmp: Path) -> None:
        argv = ["-m", "apps.testpmd", "-l", "0-1", "--vdev", "net_ring0", "--vdev", "net_ring1"]
        if (tree / "pmd" / "telemetry.py").exists():  # a telemetry socket of its own, not the default one
            argv += ["--file-prefix", f"vhostpci-daily-{os.getpid()}"]
        env = dict(os.environ, PYTHONPATH=str(tree), VHOSTPCI_TESTPMD_HISTORY=str(tmp / "history"))
        self.child = pexpect.spawn(sys.executable, argv + ["--", "-i"], cwd=str(tree), env=env,
                                   encoding="utf-8", timeout=30, dimensions=(50, 200))
        self.child.expect_exact(PROMPT, timeout=JIT_TIMEOUT)

    def run(self, line: str) -> str:
        """Send one command; its answer up to the next prompt (or the end, for quit)."""
        self.child.sendline(line)
        if line == "quit":
            self.child.expect(pexpect.EOF, timeout=30)
        else:
            self.child.expect_exact(PROMPT, timeout=JIT_TIMEOUT)
        return self.child.before.replace("\r\n", "\n")

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


def _fails(out: str, patterns: tuple[str, ...]) -> str | None:
    """Why ``out`` is not the answer wanted (None: it is)."""
    err = ERROR.search(out)
    if err:
        return out[err.start():].split("\n", 1)[0].strip()
    missing = [p for p in patterns if not re.search(p, out, re.M)]
    return f"no {missing[0]!r} in the answer" if missing else None


def judge(session: Session, d: Daily) -> Outcome:
    """Run ``d`` (setup, command, verification) and grade its answers."""
    for line in d.setup:
        session.run(line)
    time.sleep(d.settle)
    outputs = {d.cmd: session.run(d.cmd)}
    why = _fails(outputs[d.cmd], d.expect)
    if why is None and d.verify:
        for line in d.verify:
            outputs[line] = session.run(line)
        why = next((w for w in (_fails(outputs[line], ()) for line in d.verify) if w), None)
        if why is None:
            why = _fails("\n".join(outputs[line] for line in d.verify), d.shows)
    if why is None:
        return Outcome("works", outputs=outputs)
    if d.partial is not None:
        cmd, patterns = d.partial
        out = outputs[d.cmd] if cmd is None else session.run(cmd)
        if _fails(out, patterns) is None:
            return Outcome("partly", why, outputs)
    return Outcome("missing", why, outputs)


def run_all(tree: Path) -> dict[str, Outcome]:
    """Every daily command, in order, in one session of checkout ``tree``."""
    with tempfile.TemporaryDirectory(prefix="vhostpci-daily-") as tmp:
        session = Session(tree, Path(tmp))
        try:
            return {d.name: judge(session, d) for d in DAILY}
        finally:
            session.close()


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[str, Outcome]]:
    yield run_all(ROOT)


def test_forty_commands() -> None:
    assert len(DAILY) == 40 and len({d.name for d in DAILY}) == 40


@pytest.mark.parametrize("name", [d.name for d in DAILY])
def test_daily_command(outcomes: dict[str, Outcome], name: str) -> None:
    got = outcomes[name]
    assert got.status == "works", (got.answer, got.outputs)
    assert not any("Traceback" in out for out in got.outputs.values()), got.outputs


def table(trees: list[Path]) -> str:
    """The markdown table: one row per command, one status column per checkout."""
    results = [run_all(t) for t in trees]
    heads = [_label(t) for t in trees]
    lines = ["| # | command | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(trees)]
    for i, d in enumerate(DAILY, 1):
        cells = [r[d.name].status + (f" (`{r[d.name].answer}`)" if r[d.name].answer else "") for r in results]
        row = [str(i), f"`{d.name}`", *cells]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    for head, r in zip(heads, results):
        counts = {s: sum(o.status == s for o in r.values()) for s in ("works", "partly", "missing")}
        lines.append(f"\n{head}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def _label(tree: Path) -> str:
    import subprocess
    rev = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return f"{tree} ({rev.stdout.strip()})" if rev.returncode == 0 else str(tree)


if __name__ == "__main__":
    print(table([Path(p).resolve() for p in sys.argv[1:] or [str(ROOT)]]))
