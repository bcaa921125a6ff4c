"""The VM-to-VM demo: what ``vhostpci-fwd`` runs when given no ``--vdev``.

    VM1 (child process)            VM2 (this process)                       the wire
    net_virtio_user0  <-socket->  port 0 net_vhost_pci0 <-io fwd-> port 1 net_vf0 = veth  <->  namespace
    ICMP echo + UDP flows                                                                   kernel answers echo,
    counts echo replies                                                                     ns_receiver counts UDP

VM1 sends paced, sequence-numbered frames for ``--duration`` seconds; the
namespace's kernel answers the echo requests (the replies travel back VF ->
vhost-pci -> VM1) and a UDP receiver there counts the datagrams.  One stats
line per port every ``--stats-period`` seconds, then a summary: packets each
way, loss, Mpps.  Everything it made (child processes, veth pair, namespace,
socket directory) is removed on every exit path, Ctrl-C included.

The VF port is ``net_vf0`` (AF_PACKET) or, with ``--vf xdp``, ``net_vf_xdp0``
(AF_XDP).  Without root (or with ``--no-vf``) the VF is played by
``net_ring0``, which loops every frame straight back: VM1 then counts its own
frames coming back.

    python3 -m apps.fwd.demo -l 0-2 -- --duration 10
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pmd.eal import EalConfig, eal_init
from pmd.ethdev import PortError, format_mac
from pmd.fwd.runtime import Forwarding, FwdError
from pmd.lcore import LcoreManager
from pmd.metrics import start_metrics
from pmd.rates import RateTracker
from pmd.signals import StopSignals

from apps.wire import VethWire, wire_unavailable

from .main import format_line

ROOT = Path(__file__).resolve().parents[2]
NS_RECEIVER = ROOT / "apps" / "vm1" / "ns_receiver.py"
VM1_IP, NS_IP = "10.99.0.1", "10.99.0.2"
UDP_PORT = 9000  # apps.vm1.frames.UDP_DPORT (not imported: that module compiles kernels)
PROG = "vhostpci-fwd"
VF_VDEVS = {"packet": "net_vf0", "xdp": "net_vf_xdp0"}  # --vf


class _ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like EAL errors
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_demo_args(argv: list[str]) -> argparse.Namespace:
    p = _ArgParser(prog=f"{PROG} (demo)",
                   description="VM1 -> vhost-pci -> VF -> namespace and back, for a set time.")
    p.add_argument("--duration", type=float, default=10.0, help="seconds VM1 sends (default 10)")
    p.add_argument("--stats-period", type=float, default=1.0, help="seconds between stats lines (0: none)")
    p.add_argument("--rate", type=int, default=20000,
                   help="VM1's packets per second, half ICMP echo, half UDP (default 20000)")
    p.add_argument("--flows", type=int, default=4, help="UDP flows (default 4)")
    p.add_argument("--size", type=int, default=64, help="frame size in bytes (default 64)")
    p.add_argument("--iommu", default="buffers", choices=("off", "static", "buffers", "transient"),
                   help="VM1's IOMMU mode (default buffers)")
    p.add_argument("--no-vf", action="store_true", help="use the net_ring stand-in even as root")
    p.add_argument("--vf", default="packet", choices=tuple(VF_VDEVS),
                   help="the VF port: packet (net_vf, AF_PACKET; default) or xdp (net_vf_xdp, AF_XDP)")
    p.add_argument("--json", action="store_true", help="also print the summary as one JSON line")
    p.add_argument("--total-num-mbufs", type=int, default=8192)
    p.add_argument("--startup-timeout", type=float, default=240.0,
                   help="seconds to wait for VM1 to compile and connect (default 240)")
    a = p.parse_args(argv)
    if a.duration <= 0 or a.rate < 1 or a.flows < 1:
        p.error("--duration, --rate and --flows must be positive")
    if not 60 <= a.size <= 1514:
        p.error(f"--size must be 60..1514, got {a.size}")
    return a


# ---- the wire: a veth pair whose far end is in a namespace -------------------------------

class Wire(VethWire):
    """veth ``host`` (the VF's netdev) <-> ``peer`` in namespace ``ns`` with
    address NS_IP/24 and a permanent neighbour entry for VM1 (no ARP)."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000000}"
        super().__init__(f"vpd{tag}h", f"vpd{tag}n", f"vhostpci-demo-{tag}")

    def create(self, vm1_mac: str) -> None:  # type: ignore[override]
        super().create()
        self.peer_ip("addr", "add", f"{NS_IP}/24", "dev", self.peer)
        self.peer_ip("neigh", "add", VM1_IP, "lladdr", vm1_mac, "dev", self.peer, "nud", "permanent")
        self.peer_ip("link", "set", "lo", "up")


def read_snmp(pid: int) -> dict[str, int]:
    """``Icmp``/``Udp`` counters of the network namespace process ``pid`` is in,
    as {"Icmp.InEchos": n, ...}."""
    out: dict[str, int] = {}
    lines = Path(f"/proc/{pid}/net/snmp").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        proto, *keys = names.split()
        for k, v in zip(keys, values.split()[1:]):
            out[f"{proto.rstrip(':')}.{k}"] = int(v)
    return out


# ---- child processes ------------------------------------------------------------------------

class Child:
    """A child process in its own session (Ctrl-C reaches only us: we stop it
    in order), its stdout lines read by a thread."""

    def __init__(self, name: str, cmd: list[str], stdin: bool = False) -> None:
        self.name = name
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, start_new_session=True,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_line(self, want, timeout: float, stop: StopSignals) -> str | None:
        """The first stdout line ``want(line)`` accepts; None on timeout, exit or a signal."""
        deadline = time.monotonic() + timeout
        while not stop.stopped and time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.05)
            except queue.Empty:
                continue
            if line is None:
                return None
            if want(line):
                return line
        return None

    def send(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write(text)
            self.proc.stdin.flush()

    def result(self, timeout: float) -> dict | None:
        """Its last JSON line (after it exits or within ``timeout``)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.05)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith("{"):
                last = json.loads(line)
                break
        return last

    def kill(self) -> None:
        """SIGTERM, then SIGKILL after 3 s; always reaped."""
        p = self.proc
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in (p.stdin, p.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


# ---- the demo ------------------------------------------------------------------------------

def _say(text: str = "") -> None:
    print(text, flush=True)


def _pct(lost: int, of: int) -> str:
    return f"{100.0 * lost / of:.3f}%" if of else "-"


def run_demo(eal: EalConfig, argv: list[str]) -> int:
    """Run the default topology with the parsed EAL options (lcores; its
    ``vdevs`` must be empty) and the app options ``argv`` (after ``--``).
    Returns the exit status: 0 after a run, 1 when VM1 failed, 2 on a bad
    option or setup error, 130 when interrupted before traffic started."""
    a = parse_demo_args(argv)
    if eal.vdevs:
        print(f"{PROG}: error: the demo builds its own ports; drop --vdev", file=sys.stderr)
        return 2
    with StopSignals() as stop, contextlib.ExitStack() as cleanup:
        try:
            return _run(eal, a, stop, cleanup)
        except (FwdError, PortError, RuntimeError, OSError, subprocess.SubprocessError) as e:
            msg = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) and e.stderr else e
            print(f"{PROG}: error: {msg}", file=sys.stderr)
            return 2
        finally:
            _say("Cleaning up ...")


def _run(eal: EalConfig, a: argparse.Namespace, stop: StopSignals, cleanup: contextlib.ExitStack) -> int:
    metrics = start_metrics(eal.metrics)  # first: an address in use starts nothing
    if metrics is not None:
        cleanup.callback(metrics.close)
    sockdir = tempfile.mkdtemp(prefix="vhostpci-demo-")
    cleanup.callback(shutil.rmtree, sockdir, ignore_errors=True)
    sock = os.path.join(sockdir, "vm2.sock")
    vm1_mac = "02:56:55:53:00:00"  # net_virtio_user0's MAC (VirtioUserDriver.mac)

    why = "--no-vf" if a.no_vf else wire_unavailable()
    wire = receiver = None
    if why is None:
        wire = Wire()
        cleanup.callback(wire.delete)
        wire.create(vm1_mac)
        receiver = Child("ns-receiver", ["ip", "netns", "exec", wire.ns, sys.executable, str(NS_RECEIVER),
                                         str(UDP_PORT)])
        cleanup.callback(receiver.kill)
        if receiver.wait_line(lambda s: s == "ready", 10, stop) is None:
            raise RuntimeError("the UDP receiver in the namespace did not start")
        _say(f"Namespace {wire.ns}: {NS_IP} on {wire.peer}, UDP receiver on port {UDP_PORT} "
             f"(pid {receiver.proc.pid})")
        far_vdev, dst_mac = f"{VF_VDEVS[a.vf]},iface={wire.host}", wire.peer_mac()
    else:
        far_vdev, dst_mac = "net_ring0", "02:00:00:00:00:01"
        _say(f"{why}: the VF is played by net_ring0, which loops every frame back to VM1 "
             f"(no veth, no namespace, no kernel answering)")

    fw = Forwarding(LcoreManager(eal.lcores, eal.main_lcore), a.total_num_mbufs)
    cleanup.callback(fw.close)
    if metrics is not None:
        metrics.ports = lambda: fw.ports
    vp = fw.attach_port(f"net_vhost_pci0,path={sock}")
    far = fw.attach_port(far_vdev)
    vp.start()
    far.start()
    fw.config.mode = "io"
    fw.config.nb_cores = len(fw.lcores.workers)
    for pid, port in fw.ports.items():
        _say(f"Port {pid}: {port.name} MAC {format_mac(port.mac())}")
    if wire is not None:
        _say(f"VM1 {VM1_IP} ({vm1_mac}) <-> vhost-pci {sock} <-> VF {wire.host} <-> veth {wire.peer} "
             f"{NS_IP} ({dst_mac}) in namespace {wire.ns}")
    else:
        _say(f"VM1 {VM1_IP} ({vm1_mac}) <-> vhost-pci {sock} <-> net_ring0 (loopback)")

    vm1 = Child("vm1", [sys.executable, "-m", "apps.vm1", "--path", sock, "--iommu", a.iommu,
                        "--dst-mac", dst_mac, "--src-ip", VM1_IP, "--dst-ip", NS_IP, "--rate", str(a.rate),
                        "--flows", str(a.flows), "--size", str(a.size), "--duration", str(a.duration),
                        "--link-timeout", str(a.startup_timeout)], stdin=True)
    cleanup.callback(vm1.kill)
    workers = {fw.lcores.cpu_of(lc) for lc in fw.lcores.workers}
    spare = os.sched_getaffinity(0) - workers
    with contextlib.suppress(OSError):
        if spare:  # keep VM1 off the forwarding lcores' CPUs
            os.sched_setaffinity(vm1.proc.pid, spare)
    _say(f"VM1 started (pid {vm1.proc.pid}, net_virtio_user0 iommu={a.iommu}); "
         f"compiling kernels (first run: up to a minute; later runs load them from cache) ...")
    fw.start()
    if stop.stopped:
        _say("Interrupted before traffic started.")
        return 130
    lcores = sorted({s.lcore for s in fw.streams})
    _say(f"Forwarding io on lcore(s) {', '.join(map(str, lcores))}: "
         + ", ".join(f"{s.rx_port}->{s.tx_port}@{s.lcore}" for s in fw.streams))
    if vm1.wait_line(lambda s: s == "ready", a.startup_timeout, stop) is None:
        if stop.stopped:
            _say("Interrupted before traffic started.")
            return 130
        print(f"{PROG}: error: VM1 did not come up (exit status {vm1.proc.poll()})", file=sys.stderr)
        return 1

    snmp0 = read_snmp(receiver.proc.pid) if receiver else {}
    rates = RateTracker()
    for pid, port in fw.ports.items():
        rates.rates(pid, port.stats().totals)
    _say(f"VM1 sending {a.rate} pps ({a.size} B: ICMP echo + UDP in {a.flows} flows) for {a.duration:g} s")
    vm1.send("go\n")
    t0 = time.monotonic()
    period = a.stats_period if a.stats_period > 0 else None
    deadline = t0 + a.duration + 30  # VM1 ends on its own after duration + drain
    signalled = False
    next_line = t0 + (period or 0)
    while vm1.proc.poll() is None and time.monotonic() < deadline:
        if stop.stopped and not signalled:
            vm1.proc.send_signal(signal.SIGTERM)  # VM1 stops sending, drains, reports
            signalled = True
        time.sleep(0.05)
        if period is not None and time.monotonic() >= next_line:
            next_line += period
            for pid, port in fw.ports.items():
                st = port.stats().totals
                rx_pps, _, tx_pps, _ = rates.rates(pid, st)
                _say(format_line(pid, port.name, st, rx_pps, tx_pps))
    res = vm1.result(5)
    elapsed = time.monotonic() - t0
    snmp1 = read_snmp(receiver.proc.pid) if receiver else {}
    udp = None
    if receiver is not None:
        receiver.proc.send_signal(signal.SIGTERM)
        udp = receiver.result(5)
    fwd = fw.stop()
    _say(f"Stopped after {elapsed:.1f} s{' (interrupted)' if stop.stopped else ''}.")
    for pid, s in sorted(fwd.items()):
        _say(f"port {pid}: forwarded rx {s['rx']} tx {s['tx']} dropped {s['dropped']} "
             f"({s['rx'] / elapsed / 1e6:.3f} Mpps rx)")
    if res is None or "error" in res:
        print(f"{PROG}: error: VM1 gave no result: {res}", file=sys.stderr)
        return 1
    summary = _summary(res, fwd, snmp0, snmp1, udp, wire is not None)
    _print_summary(summary)
    if a.json:
        _say(json.dumps(summary))
    return 0


def _summary(res: dict, fwd: dict, snmp0: dict, snmp1: dict, udp: dict | None, vf: bool) -> dict:
    secs = max(res["seconds"], 1e-9)
    out = {
        "topology": "vf-namespace" if vf else "ring-loopback",
        "seconds": res["seconds"],
        "vm1_sent": res["sent"], "vm1_icmp_sent": res["icmp_sent"], "vm1_udp_sent": res["udp_sent"],
        "vm2_forwarded": {str(pid): s for pid, s in sorted(fwd.items())},
        "duplicates": res["duplicates"], "bad": res["bad"], "other": res["other"],
    }
    if vf:
        d = {k: snmp1.get(k, 0) - snmp0.get(k, 0) for k in ("Icmp.InEchos", "Icmp.OutEchoReps")}
        arrived = d["Icmp.InEchos"] + (udp or {}).get("unique", 0)
        out.update(
            ns_icmp_echos_in=d["Icmp.InEchos"], ns_udp_received=(udp or {}).get("unique", 0),
            ns_udp_flows=(udp or {}).get("flows", {}),
            to_far_end=arrived, to_far_end_lost=res["sent"] - arrived,
            from_far_end_sent=d["Icmp.OutEchoReps"], back_to_vm1=res["replies"],
            from_far_end_lost=d["Icmp.OutEchoReps"] - res["replies"],
            round_trip_lost=res["icmp_sent"] - res["replies"],
        )
    else:
        far = fwd.get(1, {"tx": 0})["tx"]
        out.update(to_far_end=far, to_far_end_lost=res["sent"] - far, from_far_end_sent=far,
                   back_to_vm1=res["looped"], from_far_end_lost=far - res["looped"],
                   round_trip_lost=res["sent"] - res["looped"])
    out["mpps_to_far_end"] = round(out["to_far_end"] / secs / 1e6, 4)
    out["mpps_back"] = round(out["back_to_vm1"] / secs / 1e6, 4)
    out["loss"] = out["to_far_end_lost"] + out["from_far_end_lost"]
    return out


def _print_summary(s: dict) -> None:
    secs = s["seconds"]
    _say(f"Summary ({s['topology']}, {secs:.2f} s of traffic):")
    if s["topology"] == "vf-namespace":
        _say(f"  VM1 -> namespace : VM1 sent {s['vm1_sent']} ({s['vm1_icmp_sent']} ICMP echo, "
             f"{s['vm1_udp_sent']} UDP); arrived {s['to_far_end']} ({s['ns_icmp_echos_in']} echo requests, "
             f"{s['ns_udp_received']} UDP datagrams {s['ns_udp_flows']}); lost {s['to_far_end_lost']} "
             f"({_pct(s['to_far_end_lost'], s['vm1_sent'])}); {s['mpps_to_far_end']:.4f} Mpps")
        _say(f"  namespace -> VM1 : kernel sent {s['from_far_end_sent']} echo replies; VM1 received "
             f"{s['back_to_vm1']}; lost {s['from_far_end_lost']} "
             f"({_pct(s['from_far_end_lost'], s['from_far_end_sent'])}); {s['mpps_back']:.4f} Mpps")
        _say(f"  round trip       : {s['vm1_icmp_sent']} echo requests, {s['back_to_vm1']} replies, "
             f"loss {_pct(s['round_trip_lost'], s['vm1_icmp_sent'])}")
    else:
        _say(f"  VM1 -> net_ring0 : VM1 sent {s['vm1_sent']}; net_ring0 took {s['to_far_end']}; lost "
             f"{s['to_far_end_lost']} ({_pct(s['to_far_end_lost'], s['vm1_sent'])}); "
             f"{s['mpps_to_far_end']:.4f} Mpps")
        _say(f"  net_ring0 -> VM1 : looped back {s['from_far_end_sent']}; VM1 received {s['back_to_vm1']} "
             f"intact; lost {s['from_far_end_lost']} ({_pct(s['from_far_end_lost'], s['from_far_end_sent'])}); "
             f"{s['mpps_back']:.4f} Mpps")
    _say(f"  VM1 also saw: {s['duplicates']} duplicates, {s['bad']} damaged, {s['other']} other frames; "
         f"total loss {s['loss']}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    eal, app_argv = eal_init(argv)
    return run_demo(eal, app_argv)


if __name__ == "__main__":
    sys.exit(main())
