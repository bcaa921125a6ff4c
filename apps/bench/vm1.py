"""A real VM1 (QEMU TCG + Linux guest) sending UDP through VM2 into a
namespace: our app against DPDK testpmd (vhost PMD + af_packet), side by
side in one run, without and with a strict intel vIOMMU.

    guest udpblast -> eth0 (virtio-net) -> vhost-user SOCK -> VM2 io fwd
        -> veth host end -> veth peer 10.9.0.1 in a namespace -> UDP socket

VM2 is either ours (``vhostpci-fwd`` with ``net_vhost_pci0,path=SOCK`` +
``net_vf0,iface=VETH``) or DPDK (``dpdk-testpmd`` with
``net_vhost0,iface=SOCK,iommu-support=1`` + ``net_af_packet0,iface=VETH``):
both one process, main and forwarding lcore on ``--cpu``, polling, io mode,
AF_PACKET qdisc bypass and 2048 tx frames.  QEMU is pinned to the other
CPU; the namespace's receiver (Python, ``apps.vm1.ns_receiver``) runs on
VM2's CPU, so its cost never slows the guest, the bottleneck under TCG.

One boot per (round, IOMMU mode, variant) runs every rate, then every size: the guest's
static ``udpblast`` (tools/guest/blaster.py) sends for ``seconds`` per size
as fast as it can (a blocking socket: a full send buffer paces it).  Rate =
datagrams the namespace's socket received / the guest's sending time; loss
= 1 - received / datagrams that left the guest's stack for its NIC (sent
minus the qdisc's drops, Udp SndbufErrors).  Between the guest's markers
around its sending, the bench also watches VM1's CPU (``cpuwindow.py``):
the share of it left idle and the wake-up interrupts it received (per
datagram received): what VM1's QEMU threads waited for VM2.  Variants alternate (order reversed every other round); the
ratio is the median of per-round ours / DPDK (TCG makes both slow and the
machine is noisy: the ratio is what counts).

Delivery, the other direction (VM2 -> VM1), in the same boot before the
throughput part:

    namespace sender -> veth peer -> VM2 io fwd -> vhost-user -> guest rx ring
        -> the guest's UDP socket (busybox nc.openbsd)

per rate, the namespace sends ``count`` datagrams of DELIVERY_SIZE bytes
at that fixed rate; the guest counts what its socket read (Udp
InDatagrams), checksum errors (a torn or stale page fails the UDP
checksum) and socket overflows (RcvbufErrors, made unlikely by a deep
buffer).  Delivered = read / sent, in %.  The namespace's veth end
computes full checksums (tx offload off, see _full_checksums).  DPDK's vhost back-end
delivered ~43% under a strict intel-iommu in one run (an IOTLB miss drops
the packet); ours parks it until the IOTLB answers.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from apps.wire import VethWire, reclaim_leftovers, wire_unavailable

from . import dpdk
from .common import BenchError, Result, default_cpu, median, signals_deferred
from .cpuwindow import CpuWindow
from .vhost import NOT_FOUND, ROOT, DpdkSide, FwdProcess, _Env

SIZES = (64, 1024)  # UDP payload bytes
IOMMUS = ("none", "intel-strict", "intel-lazy")  # lazy: iommu.strict=0, Linux's default
WHATS = ("throughput", "delivery")  # guest -> namespace, namespace -> guest
RATES = (500, 5000)  # delivery: datagrams per second from the namespace
COUNT = 3000  # delivery: datagrams per rate
DELIVERY_SIZE = 64  # delivery: UDP payload bytes
NS_IP, VM1_IP, VM1_MAC = "10.9.0.1", "10.9.0.2", "52:54:00:00:00:01"
PORT = 9100
DELIVERY_PORT = 9200  # the guest's receiver for the first rate; +1 per rate (a fresh nc each)
BOOT_TIMEOUT = 240.0  # TCG boot on a loaded 2-core machine: 5-15 s alone, much more when shared
VF_ARGS = "qdisc_bypass=1"  # + the frame count, spelled per driver below; the same for both
FRAMES = 2048
VARIANTS = ("ours", "dpdk")
WIRE_NS = "vhostpci-bench-vm1-"  # + the bench's pid: its namespace (its veth: vbm<pid>h / vbm<pid>n)
LABELS = {"ours": "vhost-pci+net_vf", "dpdk": "DPDK vhost+af_packet"}

# In the namespace: count datagrams per payload length (one length per size).
NS_COUNTER = r'''
import json, sys
from apps.vm1.ns_receiver import receive
seen = {}
def take(data):
    seen[len(data)] = seen.get(len(data), 0) + 1
receive(int(sys.argv[1]), take)
print(json.dumps(seen), flush=True)
'''

# In the namespace: send COUNT datagrams of SIZE bytes at RATE to DST:PORT from
# one socket (one source port: the guest's nc only accepts its first peer),
# on a schedule (late datagrams go at once: the count and the mean rate hold).
NS_SENDER = r'''
import json, socket, sys, time
dst, port, count, rate, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
sock, data, sent, t0 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), b"x" * size, 0, time.monotonic()
for i in range(count):
    ahead = t0 + i / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
    try:
        sock.sendto(data, (dst, port))
        sent += 1
    except OSError:  # ENOBUFS: not sent, never retried (the figure is delivered / sent)
        pass
print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0}), flush=True)
'''

# The guest, before either part: IPv6 off (no router solicitations or MLD
# reports among the counted frames); a deep socket buffer so that nc, slow
# under TCG, does not turn a burst into RcvbufErrors (delivery measures the
# path into the guest, not nc's pace).
GUEST_HEAD = r'''
chmod 755 /udpblast
echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6 2>/dev/null
echo 33554432 > /proc/sys/net/core/rmem_max
echo 33554432 > /proc/sys/net/core/rmem_default
sleep 1
'''

# Throughput: udpblast per size; eth0's tx counter is read after a pause so
# that what sat in the qdisc when the sender stopped is counted as sent.
GUEST_THROUGHPUT = r'''
for _s in {sizes}; do
    _t0=$(nstat tx_packets); _e0=$(snmp Udp SndbufErrors)
    marker "blast start size=$_s"
    _r=$(/udpblast "$VM1_PEER" {port} "$_s" {seconds})
    marker "blast end size=$_s"
    sleep 1
    marker "blast size=$_s $_r eth_tx=$(($(nstat tx_packets) - _t0)) sndbuf_errors=$(($(snmp Udp SndbufErrors) - _e0))"
done
'''

# Delivery: per rate a fresh nc on its own port; "ready" once it is bound
# (the host then starts the sender).  The guest stops counting when every
# datagram was read, or once the sender should be done (+3 s for its start)
# and nothing new came for 2 s (lost datagrams never come), at most +60 s.
# Time from /proc/uptime in 1/100 s ("1" prefixed: no octal "08").
GUEST_DELIVERY = r'''
_cs() {{ read _u _x < /proc/uptime; echo $(( ${{_u%.*}} * 100 + 1${{_u#*.}} - 100 )); }}
_p={port}
for _r in {rates}; do
    udp_recv "$_p" /dev/null
    _h=$(printf ':%04X ' "$_p"); _n=0
    while ! grep -q "$_h" /proc/net/udp && [ "$_n" -lt 100 ]; do usleep 100000; _n=$((_n + 1)); done
    _d0=$(snmp Udp InDatagrams); _c0=$(snmp Udp InCsumErrors); _b0=$(snmp Udp RcvbufErrors); _x0=$(nstat rx_packets)
    marker "delivery ready rate=$_r port=$_p"
    _t0=$(_cs); _min=$((_t0 + {count} * 100 / _r + 300)); _last=-1; _tl=$_t0
    while :; do
        usleep 250000
        _d=$(($(snmp Udp InDatagrams) - _d0)); _t=$(_cs)
        [ "$_d" -ge {count} ] && break
        if [ "$_d" != "$_last" ]; then _last=$_d; _tl=$_t; fi
        [ "$_t" -ge "$_min" ] && [ $((_t - _tl)) -ge 200 ] && break
        [ "$_t" -ge $((_min + 6000)) ] && break
    done
    marker "delivery rate=$_r received=$_d csum_errors=$(($(snmp Udp InCsumErrors) - _c0))" \
        "rcvbuf_errors=$(($(snmp Udp RcvbufErrors) - _b0)) eth_rx=$(($(nstat rx_packets) - _x0))"
    kill "$UDP_RECV_PID"
    _p=$((_p + 1))
done
'''
BLAST_START = re.compile(r"VM1: blast start size=\d+")
BLAST_END = re.compile(r"VM1: blast end size=\d+")
BLAST = re.compile(r"VM1: blast size=(\d+) sent=(\d+) bytes=(\d+) usec=(\d+) errors=(\d+) eth_tx=(\d+) "
                   r"sndbuf_errors=(\d+)")
DELIVERY_READY = re.compile(r"VM1: delivery ready rate=(\d+) port=(\d+)")
DELIVERED = re.compile(r"VM1: delivery rate=(\d+) received=(\d+) csum_errors=(\d+) rcvbuf_errors=(\d+) "
                       r"eth_rx=(\d+)")


@dataclass
class Sample:
    """One size of one boot."""
    sent: int  # datagrams udpblast's send() accepted
    sndbuf_errors: int  # of those, dropped in the guest before its NIC (qdisc full: Udp SndbufErrors)
    eth_tx: int  # frames the guest's eth0 handed to the device (tx_packets; a few may not be ours)
    received: int  # datagrams the namespace's socket got
    seconds: float  # the guest's sending time
    pps: float = 0.0
    mbps: float = 0.0  # UDP payload Mbit/s received
    loss: float = 0.0  # 1 - received / (sent - sndbuf_errors): lost between the guest's NIC and the socket
    vm1_cpu_idle: float | None = None  # share of VM1's CPU left idle while the guest sent (cpuwindow.py)
    vm1_wake_ipis: int | None = None  # wake-up interrupts VM1's CPU received meanwhile


@dataclass
class Delivery:
    """One rate of one boot: namespace -> guest."""
    rate: int  # datagrams per second the namespace aimed at
    sent: int  # datagrams the namespace's socket accepted
    seconds: float  # the namespace's sending time
    received: int  # datagrams the guest's socket read (Udp InDatagrams)
    csum_errors: int  # UDP checksum failures in the guest (Udp InCsumErrors)
    rcvbuf_errors: int  # the guest's socket full (Udp RcvbufErrors): reached the guest, not counted as delivered
    eth_rx: int  # frames eth0 took from its rx ring (rx_packets; a few may not be ours)
    delivered_pct: float = 0.0  # 100 * received / sent


@dataclass
class DeliveryResult:
    """One row of the delivery table: a rate in one IOMMU mode, ours against DPDK."""
    iommu: str
    what: str  # one line saying what is measured
    rate: int
    count: int
    ours: str  # label of our variant
    ref: str
    ours_delivered_pct: float | None  # median over rounds (None: not measured)
    ref_delivered_pct: float | None
    ours_runs: list[float] = field(default_factory=list)  # delivered % per round
    ref_runs: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ours_samples: list[dict] = field(default_factory=list)
    ref_samples: list[dict] = field(default_factory=list)


@dataclass
class Vm1Result(Result):
    """A Result (Mpps at the namespace) plus losses and every run's figures."""
    ours_loss: float | None = None  # median over runs
    ref_loss: float | None = None
    ours_samples: list[dict] = field(default_factory=list)
    ref_samples: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------ sides
class OursVm2(FwdProcess):
    """VM2 = ``vhostpci-fwd``: net_vhost_pci0 (server on ``sock``) <-io-> net_vf0 on ``iface``."""

    what = "VM2"
    # until it forwards: a cold Numba cache compiles the forwarding kernels
    # first, 2-3 minutes on a busy 2-core machine (any change to pmd/ makes it cold)
    flow_timeout = 420.0

    def __init__(self, sock: str, iface: str, cpu: int, log_path: str, max_seconds: float,
                 iotlb_lcore: str = "auto", iotlb_revoke: str = "auto") -> None:
        super().__init__(f"net_vhost_pci0,path={sock},iommu_support=1,iotlb_lcore={iotlb_lcore},"
                         f"iotlb_revoke={iotlb_revoke}", "io", 64, cpu, log_path, max_seconds)
        at = self.argv.index("--")
        self.argv[at:at] = ["--vdev", f"net_vf0,iface={iface},{VF_ARGS},framecount={FRAMES}"]
        # The socket exists before the kernels are compiled (ports start first): its first
        # stats line, a second after forwarding started, is the sign it forwards (ready()).
        self.argv[self.argv.index("--stats-period=0")] = "--stats-period=1"

    def ready(self, timeout: float) -> None:
        """Wait until it forwards (a cold Numba cache compiles for tens of seconds first)."""
        deadline = time.monotonic() + timeout
        while not re.search(r"^port 0 ", Path(self.log_path).read_text(errors="replace"), re.MULTILINE):
            self.check()
            if time.monotonic() > deadline:
                raise BenchError(f"vhostpci-fwd (VM2) not forwarding within {timeout:.0f} s: {self._tail()}")
            time.sleep(0.1)


class DpdkVm2(DpdkSide):
    """VM2 = ``dpdk-testpmd``: net_vhost0 (server on ``sock``) <-io-> net_af_packet0 on ``iface``;
    forwarding once started (``start`` returned)."""

    def __init__(self, sock: str, iface: str, cpu: int, prefix: str) -> None:
        super().__init__(f"net_vhost0,iface={sock},client=0,iommu-support=1", "io", 64, cpu, prefix,
                         ("--vdev", f"net_af_packet0,iface={iface},{VF_ARGS},framecnt={FRAMES}"))

    def ready(self, timeout: float) -> None:
        """Nothing to wait for: testpmd forwards once ``start`` answered."""


def _wait_socket(side, sock: str, timeout: float) -> None:
    """Wait until VM2 listens on ``sock`` (QEMU connects as a client: it must exist first;
    it should, once VM2 forwards)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(sock):
        side.check()
        if time.monotonic() > deadline:
            raise BenchError(f"VM2 did not create {sock} within {timeout:.0f} s")
        time.sleep(0.05)


class NsProcess:
    """A stdlib Python ``script`` with ``args`` in namespace ``ns``, pinned to ``cpu``; killed by ``close``."""

    def __init__(self, ns: str, cpu: int, script: str, *args: str) -> None:
        self.argv = ["ip", "netns", "exec", ns, "taskset", "-c", str(cpu), sys.executable, "-c", script, *args]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)

    def report(self, timeout: float, stop: bool = False) -> dict:
        """Its last stdout line, a JSON object, once it exited (after SIGTERM with ``stop``)."""
        assert self.proc is not None
        if stop:
            self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"the namespace's process gave no report within {timeout:.0f} s") from None
        lines = out.strip().splitlines()
        if not lines:
            raise BenchError(f"the namespace's process exited ({self.proc.returncode}) without a report")
        return json.loads(lines[-1])

    def close(self) -> None:
        p = self.proc
        if p is not None:
            if p.poll() is None:
                p.kill()
            p.wait()
            if p.stdout:
                p.stdout.close()


class NsCounter(NsProcess):
    """The namespace's UDP receiver on PORT."""

    def __init__(self, ns: str, cpu: int) -> None:
        super().__init__(ns, cpu, NS_COUNTER, str(PORT))

    def start(self) -> None:
        super().start()
        assert self.proc is not None and self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise BenchError(f"the namespace's receiver did not start (exit code {self.proc.poll()})")

    def result(self) -> dict[int, int]:
        """Stop it; datagrams received per payload length."""
        return {int(k): v for k, v in self.report(30, stop=True).items()}


@contextlib.contextmanager
def _pinned(cpu: int) -> Iterator[None]:
    """This thread on ``cpu`` meanwhile: a process it starts inherits the mask (QEMU)."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


# ------------------------------------------------------------------ a boot
@dataclass
class Plan:
    """What one boot measures: throughput ``sizes`` (none: skipped), then delivery ``rates`` (none: skipped)."""
    sizes: tuple[int, ...]
    rates: tuple[int, ...]
    count: int  # delivery datagrams per rate

    def seconds(self, send_seconds: float) -> float:
        """A bound on the guest's scenario time (its markers, not the boot)."""
        return sum(send_seconds + 5 for _ in self.sizes) + sum(self.count / r + 70 for r in self.rates)


@dataclass
class Boot:
    """What one boot measured; ``error`` says why the rest was not."""
    samples: dict[int, Sample]  # per payload size
    deliveries: dict[int, Delivery]  # per rate
    error: str | None = None


class _Bench:
    def __init__(self, env: _Env, wire: VethWire, image, blaster: bytes, plan: Plan, iotlb_lcore: str,
                 iotlb_revoke: str) -> None:
        self.env, self.wire, self.image, self.plan = env, wire, image, plan
        self.iotlb_lcore = iotlb_lcore  # our port's devargs: who serves VM1's IOTLB messages ...
        self.iotlb_revoke = iotlb_revoke  # ... and who revokes the control thread's INVALIDATEs
        # Delivery first: a guest that hangs in the throughput part (seen with ours under a
        # strict IOMMU) still yields delivery figures, and its rx mappings start cold.
        script = GUEST_HEAD
        if plan.rates:
            script += GUEST_DELIVERY.format(rates=" ".join(map(str, plan.rates)), port=DELIVERY_PORT,
                                            count=plan.count)
        if plan.sizes:
            script += GUEST_THROUGHPUT.format(sizes=" ".join(map(str, plan.sizes)), port=PORT, seconds=env.seconds)
        self.initrd = image.with_scenario(script, files={"udpblast": blaster}, dest_dir=Path(env.dir))
        self.peer_mac = wire.peer_mac()

    def boot(self, iommu: str, variant: str, say: Callable[[str], None]) -> Boot:
        """Boot VM1 against ``variant``'s VM2; every rate's Delivery, then every size's Sample
        (what was measured before a failure is kept)."""
        # imported here: the other benches need not load the guest tools
        from tools.guest import Vm1

        env, plan = self.env, self.plan
        sock, prefix = env.fresh(f"{iommu[:5]}{variant}")
        n = prefix.rsplit("-", 1)[-1]
        per_size = env.seconds + 5  # sending, the pause, the marker
        scenario_s = plan.seconds(env.seconds)
        if variant == "ours":
            vm2 = OursVm2(sock, self.wire.host, env.vm2_cpu, os.path.join(env.dir, f"vm2-{n}.log"),
                          OursVm2.flow_timeout + BOOT_TIMEOUT + scenario_s + 60, self.iotlb_lcore, self.iotlb_revoke)
        else:
            vm2 = DpdkVm2(sock, self.wire.host, env.vm2_cpu, prefix + "-vm2")
        counter = NsCounter(self.wire.ns or "", env.vm2_cpu)
        vm = Vm1(self.image, sock, workdir=os.path.join(env.dir, f"vm1-{n}"), initrd=self.initrd, mac=VM1_MAC,
                 ip=f"{VM1_IP}/24", peer=NS_IP, peer_mac=self.peer_mac, iommu="intel" if iommu != "none" else None,
                 strict=iommu != "intel-lazy", guest_timeout=int(BOOT_TIMEOUT + scenario_s + 60))
        stack = contextlib.ExitStack()
        got = Boot({}, {})
        try:
            stack.callback(vm2.close)
            vm2.start()
            vm2.ready(vm2.flow_timeout)
            _wait_socket(vm2, sock, 10.0)
            stack.callback(counter.close)
            counter.start()
            stack.callback(vm.stop)
            t0 = time.monotonic()
            with _pinned(env.vm1_cpu):
                vm.start()
            m = vm.wait_console(r"VM1: eth0 (up|missing)", BOOT_TIMEOUT)
            if m.group(1) == "missing":
                raise BenchError("the guest has no eth0 (virtio-net did not come up)")
            say(f"    VM1 up in {time.monotonic() - t0:.1f} s")
            for _ in plan.rates:
                d = self._deliver(vm, vm2, stack)
                got.deliveries[d.rate] = d
            blasts, cpu_use = {}, {}
            for _ in plan.sizes:
                vm2.check()
                vm.wait_console(BLAST_START, per_size + 60)
                window = CpuWindow(env.vm1_cpu)
                vm.wait_console(BLAST_END, per_size + 60)
                use = window.close()
                g = vm.wait_console(BLAST, 60).groups()
                blasts[int(g[0])], cpu_use[int(g[0])] = [int(x) for x in g[1:]], use
            vm.wait_console(r"VM1: done", 60)
            vm2.check()
            received = counter.result()
        except Exception as e:  # noqa: BLE001 - reported with what was measured before it
            got.error = str(e) or type(e).__name__
            return got
        finally:
            with signals_deferred():
                stack.close()
        for size in plan.sizes:
            sent, _bytes, usec, _errors, eth_tx, sndbuf = blasts[size]
            rcvd = received.get(size, 0)
            x = Sample(sent, sndbuf, eth_tx, rcvd, usec / 1e6)
            x.pps = rcvd / x.seconds if x.seconds else 0.0
            x.mbps = rcvd * size * 8 / x.seconds / 1e6 if x.seconds else 0.0
            x.loss = 1 - rcvd / (sent - sndbuf) if sent > sndbuf else 0.0
            if size in cpu_use:
                x.vm1_cpu_idle, x.vm1_wake_ipis = cpu_use[size].idle, cpu_use[size].wake_ipis
            got.samples[size] = x
        return got

    def _deliver(self, vm, vm2, stack: contextlib.ExitStack) -> Delivery:
        """One rate: once the guest's receiver is bound, the namespace sends; the guest's counts."""
        count = self.plan.count
        vm2.check()
        rate, port = (int(x) for x in vm.wait_console(DELIVERY_READY, 60).groups())
        sender = NsProcess(self.wire.ns or "", self.env.vm2_cpu, NS_SENDER, VM1_IP, str(port), str(count),
                           str(rate), str(DELIVERY_SIZE))
        stack.callback(sender.close)
        sender.start()
        sent = sender.report(count / rate + 60)
        g = [int(x) for x in vm.wait_console(DELIVERED, count / rate + 90).groups()]
        if g[0] != rate:
            raise BenchError(f"the guest reported rate {g[0]}, expected {rate}")
        d = Delivery(rate, sent["sent"], sent["seconds"], *g[1:])
        d.delivered_pct = 100 * d.received / d.sent if d.sent else 0.0
        return d


# ------------------------------------------------------------------ runs
def _results(runs: dict[tuple[str, int, str], list[Sample | None]], errors: dict[tuple[str, int, str], list[str]],
             iommus: tuple[str, ...], sizes: tuple[int, ...], seconds: float) -> list[Vm1Result]:
    out = []
    for iommu in iommus:
        for size in sizes:
            o, f = runs.get((iommu, size, "ours"), []), runs.get((iommu, size, "dpdk"), [])
            o_ok, f_ok = [s for s in o if s is not None], [s for s in f if s is not None]
            ratios = [a.pps / b.pps for a, b in zip(o, f) if a is not None and b is not None and b.pps]
            out.append(Vm1Result(
                iommu, f"VM1 guest udpblast {size} B payloads, {seconds:g} s -> namespace socket "
                f"(iommu {iommu})", size, LABELS["ours"], LABELS["dpdk"],
                median([s.pps / 1e6 for s in o_ok]) if o_ok else None,
                median([s.pps / 1e6 for s in f_ok]) if f_ok else None,
                median(ratios) if ratios else None,
                [s.pps / 1e6 for s in o_ok], [s.pps / 1e6 for s in f_ok], ratios,
                errors.get((iommu, size, "ours"), []) + errors.get((iommu, size, "dpdk"), []),
                median([s.loss for s in o_ok]) if o_ok else None,
                median([s.loss for s in f_ok]) if f_ok else None,
                [asdict(s) for s in o_ok], [asdict(s) for s in f_ok]))
    return out


def _delivery_results(runs: dict[tuple[str, int, str], list[Delivery | None]],
                      errors: dict[tuple[str, int, str], list[str]], iommus: tuple[str, ...],
                      rates: tuple[int, ...], count: int) -> list[DeliveryResult]:
    out = []
    for iommu in iommus:
        for rate in rates:
            o = [d for d in runs.get((iommu, rate, "ours"), []) if d is not None]
            f = [d for d in runs.get((iommu, rate, "dpdk"), []) if d is not None]
            out.append(DeliveryResult(
                iommu, f"namespace -> VM1 guest socket, {count} x {DELIVERY_SIZE} B at {rate} pps "
                f"(iommu {iommu})", rate, count, LABELS["ours"], LABELS["dpdk"],
                median([d.delivered_pct for d in o]) if o else None,
                median([d.delivered_pct for d in f]) if f else None,
                [d.delivered_pct for d in o], [d.delivered_pct for d in f],
                errors.get((iommu, rate, "ours"), []) + errors.get((iommu, rate, "dpdk"), []),
                [asdict(d) for d in o], [asdict(d) for d in f]))
    return out


def missing() -> str | None:
    """Why the bench cannot run at all here (then it prints only this), or None."""
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not found (tools/setup installs qemu-system-x86): the VM1 bench did not run"
    why = wire_unavailable()
    if why is not None:
        return f"the VM1 bench needs a veth and a namespace ({why}): not run"
    return None


def _prepare():
    """The guest image and udpblast (BenchError when either cannot be had)."""
    from tools.guest import ImageError, build_image
    from tools.guest.blaster import BuildError, udpblast

    try:
        blaster = udpblast()
    except BuildError as e:
        raise BenchError(str(e)) from None
    try:
        return build_image("6.1"), blaster
    except ImageError as e:
        raise BenchError(f"cannot build the VM1 guest: {e}") from None


@dataclass
class Vm1Report:
    """What ``run`` measured: throughput rows (guest -> namespace), delivery rows (namespace -> guest),
    and notes (what did not run and why)."""
    throughput: list[Vm1Result]
    delivery: list[DeliveryResult]
    notes: list[str]


def _full_checksums(wire: VethWire, notes: list[str]) -> None:
    """The namespace's veth end computes its UDP checksums (tx offload off).  With the
    offload on, its frames carry a partial checksum (CHECKSUM_PARTIAL) that our net_vf
    completes (TP_STATUS_CSUMNOTREADY) but DPDK's af_packet forwards as is: the guest
    drops every one as a checksum error (0% delivered, measured), which would hide
    what delivery is about, the vhost back-end's IOTLB handling."""
    if shutil.which("ethtool") is None:
        notes.append("ethtool not found: the namespace's checksums are left to offload; DPDK's af_packet "
                     "forwards them partial, the guest counts those as checksum errors")
        return
    subprocess.run(["ip", "netns", "exec", wire.ns or "", "ethtool", "-K", wire.peer, "tx", "off"], check=True,
                   capture_output=True, text=True, timeout=30)


def _cpu_note(x: Sample) -> str:
    """VM1's CPU while the guest sent, for the progress line."""
    if x.vm1_cpu_idle is None:
        return ""
    per = f" ({x.vm1_wake_ipis / x.received:.2f} a packet)" if x.received else ""
    return f"; VM1's CPU idle {x.vm1_cpu_idle:.0%}, woken by {x.vm1_wake_ipis} IPIs{per}"


def _say_run(say: Callable[[str], None], got: Boot) -> None:
    """One boot's figures, as progress."""
    for r, d in got.deliveries.items():
        say(f"    {r:>5} pps: delivered {d.received}/{d.sent} = {d.delivered_pct:.1f}% in {d.seconds:.1f} s "
            f"(eth0 rx {d.eth_rx}, csum errors {d.csum_errors}, rcvbuf errors {d.rcvbuf_errors})")
    for s, x in got.samples.items():
        say(f"    {s:>5} B: {x.pps / 1e3:8.2f} kpps {x.mbps:8.2f} Mbit/s in {x.seconds:.1f} s: sent "
            f"{x.sent} (qdisc drops {x.sndbuf_errors}, eth0 tx {x.eth_tx}), received "
            f"{x.received}, loss {x.loss:.1%}{_cpu_note(x)}")
    if got.error:
        say(f"    failed: {got.error.splitlines()[0]}")


def run(seconds: float = 5.0, rounds: int = 3, sizes: tuple[int, ...] = SIZES, cpu: int | None = None,
        iommus: tuple[str, ...] = IOMMUS, progress: Callable[[str], None] | None = None, *,
        what: tuple[str, ...] = WHATS, rates: tuple[int, ...] = RATES, count: int = COUNT,
        iotlb_lcore: str = "auto", iotlb_revoke: str = "auto") -> Vm1Report:
    """Boot VM1 ``rounds`` times per IOMMU mode against ours and DPDK
    (alternating); each boot measures ``what`` of throughput (per size) and
    delivery (per rate, ``count`` datagrams).  ``iotlb_lcore`` and
    ``iotlb_revoke`` are our port's devargs of those names."""
    say = progress or (lambda msg: None)
    why = missing()
    if why is not None:
        return Vm1Report([], [], [why])
    plan = Plan(sizes if "throughput" in what else (), rates if "delivery" in what else (), count)
    image, blaster = _prepare()
    notes: list[str] = []
    variants = list(VARIANTS)
    if dpdk.testpmd_path() is None:
        notes.append(NOT_FOUND + "; measuring ours only")
        variants = ["ours"]
    env = _Env(default_cpu() if cpu is None else cpu, seconds, 0.0)
    for ns in reclaim_leftovers(WIRE_NS, "vbm{}h"):
        notes.append(f"removed namespace {ns} and its veth: a bench run that was killed left them")
    tag = os.getpid()
    wire = VethWire(f"vbm{tag}h", f"vbm{tag}n", f"{WIRE_NS}{tag}")
    runs: dict[tuple[str, int, str], list[Sample | None]] = {}
    delivered: dict[tuple[str, int, str], list[Delivery | None]] = {}
    errors: dict[tuple[str, int, str], list[str]] = {}  # (iommu, size, variant)
    d_errors: dict[tuple[str, int, str], list[str]] = {}  # (iommu, rate, variant)
    try:
        try:
            wire.create()
            wire.peer_ip("addr", "add", f"{NS_IP}/24", "dev", wire.peer)
            wire.peer_ip("link", "set", "lo", "up")
            # no ARP towards the guest: a permanent entry (the guest has one for the namespace too)
            wire.peer_ip("neigh", "add", VM1_IP, "lladdr", VM1_MAC, "dev", wire.peer, "nud", "permanent")
            if plan.rates:
                _full_checksums(wire, notes)
        except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
            detail = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) and e.stderr else e
            raise BenchError(f"cannot create the veth {wire.host}/{wire.peer} and namespace {wire.ns}: {detail}") \
                from None
        bench = _Bench(env, wire, image, blaster, plan, iotlb_lcore, iotlb_revoke)
        say(f"guest {image.version}, VM2 on CPU {env.vm2_cpu} (iotlb_lcore={iotlb_lcore}, "
            f"iotlb_revoke={iotlb_revoke}), QEMU on CPU {env.vm1_cpu}; "
            + (f"throughput: sizes {list(plan.sizes)} B, {seconds:g} s each" if plan.sizes else "")
            + ("; " if plan.sizes and plan.rates else "")
            + (f"delivery: {count} datagrams at {list(plan.rates)} pps" if plan.rates else ""))
        for r in range(rounds):
            for iommu in iommus:
                # A failed boot is tried again next round (unlike the other benches' runs): a boot
                # is at the mercy of TCG timing and of a VM2 that must compile first.
                for v in (variants if r % 2 == 0 else variants[::-1]):
                    say(f"round {r + 1}/{rounds} iommu {iommu:<12} {LABELS[v]}")
                    t0 = time.monotonic()
                    got = bench.boot(iommu, v, say)
                    msg = f"{LABELS[v]}, iommu {iommu}: {got.error}"
                    for s in plan.sizes:
                        runs.setdefault((iommu, s, v), []).append(got.samples.get(s))
                        if s not in got.samples:
                            errors.setdefault((iommu, s, v), []).append(msg)
                    for x in plan.rates:
                        delivered.setdefault((iommu, x, v), []).append(got.deliveries.get(x))
                        if x not in got.deliveries:
                            d_errors.setdefault((iommu, x, v), []).append(msg)
                    _say_run(say, got)
                    say(f"    ({time.monotonic() - t0:.1f} s)")
    finally:
        with signals_deferred():  # no Ctrl-C / SIGTERM half-way through: it ends the bench after this
            wire.delete()
            env.close()
    return Vm1Report(_results(runs, errors, iommus, plan.sizes, seconds),
                     _delivery_results(delivered, d_errors, iommus, plan.rates, count), notes)
