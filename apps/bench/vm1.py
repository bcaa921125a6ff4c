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

One boot per (round, IOMMU mode, variant) runs every size: the guest's
static ``udpblast`` (tools/guest/blaster.py) sends for ``seconds`` per size
as fast as it can (a blocking socket: a full send buffer paces it).  Rate =
datagrams the namespace's socket received / the guest's sending time; loss
= 1 - received / datagrams that left the guest's stack for its NIC (sent
minus the qdisc's drops, Udp SndbufErrors).  Variants alternate (order reversed every other round); the
ratio is the median of per-round ours / DPDK (TCG makes both slow and the
machine is noisy: the ratio is what counts).
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

from apps.wire import VethWire, wire_unavailable

from . import dpdk
from .common import BenchError, Result, default_cpu, median, signals_deferred
from .vhost import NOT_FOUND, OURS_VM1_TIMEOUT_S, ROOT, DpdkSide, FwdProcess, _Env

SIZES = (64, 1024)  # UDP payload bytes
IOMMUS = ("none", "intel-strict")
NS_IP, VM1_IP, VM1_MAC = "10.9.0.1", "10.9.0.2", "52:54:00:00:00:01"
PORT = 9100
BOOT_TIMEOUT = 240.0  # TCG boot on a loaded 2-core machine: 5-15 s alone, much more when shared
VF_ARGS = "qdisc_bypass=1"  # + the frame count, spelled per driver below; the same for both
FRAMES = 2048
VARIANTS = ("ours", "dpdk")
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

# The guest: udpblast per size; eth0's tx counter is read after a pause so
# that what sat in the qdisc when the sender stopped is counted as sent.
# IPv6 off: no router solicitations or MLD reports among the counted frames.
GUEST = r'''
chmod 755 /udpblast
echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6 2>/dev/null
sleep 1
for _s in {sizes}; do
    _t0=$(nstat tx_packets); _e0=$(snmp Udp SndbufErrors)
    _r=$(/udpblast "$VM1_PEER" {port} "$_s" {seconds})
    sleep 1
    marker "blast size=$_s $_r eth_tx=$(($(nstat tx_packets) - _t0)) sndbuf_errors=$(($(snmp Udp SndbufErrors) - _e0))"
done
'''
BLAST = re.compile(r"VM1: blast size=(\d+) sent=(\d+) bytes=(\d+) usec=(\d+) errors=(\d+) eth_tx=(\d+) "
                   r"sndbuf_errors=(\d+)")


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

    def __init__(self, sock: str, iface: str, cpu: int, log_path: str, max_seconds: float) -> None:
        super().__init__(f"net_vhost_pci0,path={sock},iommu_support=1", "io", 64, cpu, log_path, max_seconds)
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


class NsCounter:
    """The namespace's UDP receiver on PORT, a process pinned to ``cpu``."""

    def __init__(self, ns: str, cpu: int) -> None:
        self.argv = ["ip", "netns", "exec", ns, "taskset", "-c", str(cpu), sys.executable, "-c", NS_COUNTER,
                     str(PORT)]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise BenchError(f"the namespace's receiver did not start (exit code {self.proc.poll()})")

    def result(self) -> dict[int, int]:
        """Stop it; datagrams received per payload length."""
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}

    def close(self) -> None:
        p = self.proc
        if p is not None:
            if p.poll() is None:
                p.kill()
            p.wait()
            if p.stdout:
                p.stdout.close()


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
class _Bench:
    def __init__(self, env: _Env, wire: VethWire, image, blaster: bytes, sizes: tuple[int, ...]) -> None:
        self.env, self.wire, self.image, self.sizes = env, wire, image, sizes
        script = GUEST.format(sizes=" ".join(map(str, sizes)), port=PORT, seconds=env.seconds)
        self.initrd = image.with_scenario(script, files={"udpblast": blaster}, dest_dir=Path(env.dir))
        self.peer_mac = wire.peer_mac()

    def boot(self, iommu: str, variant: str, say: Callable[[str], None]) -> dict[int, Sample]:
        """Boot VM1 against ``variant``'s VM2; every size's Sample."""
        # imported here: the other benches need not load the guest tools
        from tools.guest import Vm1

        env = self.env
        sock, prefix = env.fresh(f"{iommu[:5]}{variant}")
        n = prefix.rsplit("-", 1)[-1]
        per_size = env.seconds + 5  # sending, the pause, the marker
        if variant == "ours":
            vm2 = OursVm2(sock, self.wire.host, env.vm2_cpu, os.path.join(env.dir, f"vm2-{n}.log"),
                          OURS_VM1_TIMEOUT_S + BOOT_TIMEOUT + per_size * len(self.sizes) + 60)
        else:
            vm2 = DpdkVm2(sock, self.wire.host, env.vm2_cpu, prefix + "-vm2")
        counter = NsCounter(self.wire.ns or "", env.vm2_cpu)
        vm = Vm1(self.image, sock, workdir=os.path.join(env.dir, f"vm1-{n}"), initrd=self.initrd, mac=VM1_MAC,
                 ip=f"{VM1_IP}/24", peer=NS_IP, peer_mac=self.peer_mac, iommu="intel" if iommu != "none" else None,
                 strict=True, guest_timeout=int(BOOT_TIMEOUT + per_size * len(self.sizes) + 60))
        stack = contextlib.ExitStack()
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
            say(f"    VM1 up in {time.monotonic() - t0:.1f} s, sending")
            blasts = {}
            for _ in self.sizes:
                vm2.check()
                g = vm.wait_console(BLAST, per_size + 60).groups()
                blasts[int(g[0])] = [int(x) for x in g[1:]]
            vm.wait_console(r"VM1: done", 60)
            vm2.check()
            received = counter.result()
        finally:
            with signals_deferred():
                stack.close()
        out = {}
        for size in self.sizes:
            sent, _bytes, usec, _errors, eth_tx, sndbuf = blasts[size]
            got = received.get(size, 0)
            s = Sample(sent, sndbuf, eth_tx, got, usec / 1e6)
            s.pps = got / s.seconds if s.seconds else 0.0
            s.mbps = got * size * 8 / s.seconds / 1e6 if s.seconds else 0.0
            s.loss = 1 - got / (sent - sndbuf) if sent > sndbuf else 0.0
            out[size] = s
        return out


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


def missing() -> str | None:
    """Why the bench cannot run at all here (then it prints only this), or None."""
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not found (tools/setup installs qemu-system-x86): the VM1 bench did not run"
    why = wire_unavailable()
    if why is not None:
        return f"the VM1 bench needs a veth and a namespace ({why}): not run"
    return None


def _prepare(sizes: tuple[int, ...]):
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


def run(seconds: float = 5.0, rounds: int = 3, sizes: tuple[int, ...] = SIZES, cpu: int | None = None,
        iommus: tuple[str, ...] = IOMMUS,
        progress: Callable[[str], None] | None = None) -> tuple[list[Vm1Result], list[str]]:
    """Boot VM1 ``rounds`` times per IOMMU mode against ours and DPDK
    (alternating); returns the results and notes (what did not run and why)."""
    say = progress or (lambda msg: None)
    why = missing()
    if why is not None:
        return [], [why]
    image, blaster = _prepare(sizes)
    notes: list[str] = []
    variants = list(VARIANTS)
    if dpdk.testpmd_path() is None:
        notes.append(NOT_FOUND + "; measuring ours only")
        variants = ["ours"]
    env = _Env(default_cpu() if cpu is None else cpu, seconds, 0.0)
    tag = os.getpid() % 10_000_000
    wire = VethWire(f"vbm{tag}h", f"vbm{tag}n", f"vhostpci-bench-vm1-{tag}")
    runs: dict[tuple[str, int, str], list[Sample | None]] = {}
    errors: dict[tuple[str, int, str], list[str]] = {}
    try:
        try:
            wire.create()
            wire.peer_ip("addr", "add", f"{NS_IP}/24", "dev", wire.peer)
            wire.peer_ip("link", "set", "lo", "up")
            # no ARP towards the guest: a permanent entry (the guest has one for the namespace too)
            wire.peer_ip("neigh", "add", VM1_IP, "lladdr", VM1_MAC, "dev", wire.peer, "nud", "permanent")
        except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
            detail = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) and e.stderr else e
            raise BenchError(f"cannot create the veth {wire.host}/{wire.peer} and namespace {wire.ns}: {detail}") \
                from None
        bench = _Bench(env, wire, image, blaster, sizes)
        say(f"guest {image.version}, VM2 on CPU {env.vm2_cpu}, QEMU on CPU {env.vm1_cpu}; "
            f"sizes {list(sizes)} B, {seconds:g} s each")
        for r in range(rounds):
            for iommu in iommus:
                # A failed boot is tried again next round (unlike the other benches' runs): a boot
                # is at the mercy of TCG timing and of a VM2 that must compile first.
                for v in (variants if r % 2 == 0 else variants[::-1]):
                    say(f"round {r + 1}/{rounds} iommu {iommu:<12} {LABELS[v]}")
                    t0 = time.monotonic()
                    try:
                        got: dict[int, Sample] | None = bench.boot(iommu, v, say)
                    except Exception as e:  # noqa: BLE001 - one failed boot is reported, the rest go on
                        got = None
                        for s in sizes:
                            errors.setdefault((iommu, s, v), []).append(f"{LABELS[v]}, iommu {iommu}: {e}")
                        say(f"    failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
                    for s in sizes:
                        runs.setdefault((iommu, s, v), []).append(got[s] if got else None)
                        if got:
                            x = got[s]
                            say(f"    {s:>5} B: {x.pps / 1e3:8.2f} kpps {x.mbps:8.2f} Mbit/s in {x.seconds:.1f} s: sent "
                                f"{x.sent} (qdisc drops {x.sndbuf_errors}, eth0 tx {x.eth_tx}), received "
                                f"{x.received}, loss {x.loss:.1%}")
                    say(f"    ({time.monotonic() - t0:.1f} s)")
    finally:
        with signals_deferred():  # no Ctrl-C / SIGTERM half-way through: it ends the bench after this
            wire.delete()
            env.close()
    return _results(runs, errors, iommus, sizes, seconds), notes
