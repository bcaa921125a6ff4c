"""``--metrics``: every port's xstats in Prometheus' text format over HTTP,
off by default, loopback by default, and a clear error (exit 1, nothing
started) when the address is taken."""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from pmd.metrics import CONTENT_TYPE, MetricsError, MetricsServer
from tests.conftest import ROOT
from tests.util import wait_until

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\} (-?[0-9.e+]+)$')


def parse(text: str) -> dict[tuple[str, str], float]:
    """Prometheus text format -> {(metric, labels): value}; every line must be a
    sample, a HELP or a TYPE line, each family typed before its samples."""
    out: dict[tuple[str, str], float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            assert kind in ("counter", "gauge", "untyped"), line
            typed.add(name)
        elif line.startswith("# HELP "):
            continue
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            assert m.group(1) in typed, line
            out[(m.group(1), m.group(2))] = float(m.group(3))
    return out


def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.headers["Content-Type"], r.read().decode()


def test_endpoint_serves_every_ports_xstats(fwd):
    for v in ("net_ring0", "net_ring1"):
        fwd.attach_port(v).start()
    fwd.config.mode, fwd.config.burst, fwd.config.txpkts = "rxonly", 24, 100
    fwd.start(tx_first=True)
    assert wait_until(lambda: all(p.stats().ipackets == 24 for p in fwd.ports.values()), 20)
    fwd.stop()
    server = MetricsServer("127.0.0.1", 0, lambda: dict(fwd.ports))
    try:
        kind, text = scrape(server.port)
        assert kind == CONTENT_TYPE
        m = parse(text)
        for pid, name in ((0, "net_ring0"), (1, "net_ring1")):
            lbl = f'port="{pid}",name="{name}"'
            assert m[("vhostpci_rx_good_packets_total", lbl)] == 24
            assert m[("vhostpci_tx_good_bytes_total", lbl)] == 2400
            assert m[("vhostpci_rx_q0_size_65_127_packets_total", lbl)] == 24
            assert m[("vhostpci_rx_size_65_to_127_packets_total", lbl)] == 24
            assert m[("vhostpci_port_link_up", lbl)] == 1
            assert m[("vhostpci_port_info", lbl + ',driver="net_ring"')] == 1
        with pytest.raises(urllib.error.HTTPError) as e:
            scrape(server.port, "/")
        assert e.value.code == 404
        with pytest.raises(MetricsError, match=rf"127.0.0.1:{server.port}: cannot listen: address already in use"):
            MetricsServer("127.0.0.1", server.port)
    finally:
        server.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FWD = [sys.executable, "-m", "apps.fwd", "-l", "0-1", "--vdev", "net_ring0", "--vdev", "net_ring1"]


def test_fwd_app_serves_metrics_while_forwarding():
    port = _free_port()
    p = subprocess.Popen([*FWD[:3], "--metrics", str(port), *FWD[3:], "--", "--tx-first", "--stats-period", "0.5"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120  # a cold start compiles
        while time.monotonic() < deadline and not p.stdout.readline().startswith("port 0"):
            assert p.poll() is None, p.stderr.read()
        m = parse(scrape(port)[1])
        assert m[("vhostpci_rx_good_packets_total", 'port="0",name="net_ring0"')] > 0
        import psutil
        listening = [c.laddr for c in psutil.Process(p.pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", port)], listening  # loopback only
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(30)
    assert p.returncode == 0
    with pytest.raises(OSError):  # closed with the app
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.mark.parametrize("app", ["apps.fwd", "apps.testpmd"])
def test_address_in_use_is_one_line_exit_1_nothing_started(app, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [sys.executable, "-m", app, "-l", "0-1", "--metrics", f"127.0.0.1:{port}", "--no-telemetry",
                "--vdev", f"net_vhost_pci0,path={tmp_path}/vp.sock", "--", "--duration" if app == "apps.fwd"
                else "--auto-start", *(["1"] if app == "apps.fwd" else [])]
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 1, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--metrics 127.0.0.1:{port}: cannot listen: address already in use" in lines[0], \
        out.stderr
    assert not (tmp_path / "vp.sock").exists() and "Port 0" not in out.stdout  # no port was made
