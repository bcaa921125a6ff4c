"""Our VF ports against DPDK's, side by side in one run, on a veth pair:
``net_vf`` (AF_PACKET TPACKET_V3 rx / V2 tx rings) vs DPDK's
``net_af_packet``, and ``net_vf_xdp`` (AF_XDP) vs DPDK's ``net_af_xdp``.

The wire: a veth pair ``vbf<pid>a`` (A, the measured side's netdev) <->
``vbf<pid>b`` (B), both in the root namespace, both up, default MTU, no
addresses, IPv6 off (no chatter); removed on every exit path.

- ``tx``: the measured side transmits on A (txonly, one lcore on ``--cpu``):
  our port in this process vs DPDK testpmd.  The rate is
  counted at B by the kernel (``/sys/class/net/B/statistics/rx_packets``,
  read twice ``seconds`` apart): one meter for both.
- ``rx``: a generator (DPDK testpmd net_af_xdp txonly on B, on the other
  CPU; our own net_vf_xdp in a ``vhostpci-fwd`` process when DPDK is
  absent) sends into B; the measured side receives on A in rxonly: ours
  (rate from the port's ipackets) vs DPDK (testpmd's Rx-pps).  The same
  generator for every variant; what it offered (A's kernel rx counter over
  the window) is noted.  On a veth the kernel's receive work (XDP program,
  copy into the UMEM or the packet ring) runs in the generator's softirq,
  on its CPU: the receivers differ by what they do with the rings.

Sizes are Ethernet frame sizes counted with the FCS, as on a wire (64..1518
for MTU 1500); a veth carries no FCS, so frames are ``size - 4`` bytes
(1518 -> 1514, a full MTU-1500 frame).  AF_PACKET: both drivers use
PACKET_QDISC_BYPASS on (DPDK's default), 2048 tx frames.  AF_XDP: both use
queue 0, 2048-entry rings, native XDP on the veth (copy mode: a veth has no
zero-copy), each its own program (DPDK's is libxdp's).

- ``vm1``: VM1 -> VM2 -> VF: a VM1 (DPDK testpmd virtio-user txonly on the
  other CPU; our net_virtio_user when DPDK is absent) sends into VM2, which
  forwards (io) from its vhost-user port out of an AF_XDP port on A; counted
  at B by the kernel.  VM2 is ours (net_vhost_pci + net_vf_xdp: the mbuf
  pool is the UMEM, one copy from VM1's buffer into the frame the kernel
  sends; and again with ``umem=own``: two copies) or DPDK testpmd
  (net_vhost + net_af_xdp, whose UMEM is its mempool: one copy too).

The variants of a direction alternate within each round, order reversed
every other round; ratio = median of the per-round ratios: ours / DPDK for
each kind, net_vf_xdp / net_vf (what AF_XDP buys over AF_PACKET), and for
``vm1`` one copy / DPDK and one copy / two copies.  The machine jumps
between speed levels: absolute figures alone mean little.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from apps.wire import VethWire, wire_unavailable

from . import dpdk
from .common import (
    BenchError,
    CounterMeter,
    Result,
    alternate,
    default_cpu,
    measure,
    signals_deferred,
)
from .common import forwarding
from .vhost import NOT_FOUND, OURS_VM1_TIMEOUT_S, DpdkSide, FwdProcess, OursPort, OursVm1, _dpdk_vu, _Env

DIRECTIONS = ("tx", "rx", "vm1")
KINDS = ("packet", "xdp")  # AF_PACKET, AF_XDP
SIZES = (64, 1518)
FCS = 4  # counted in the sizes, not carried by a veth
QDISC_BYPASS = 1
FRAMECOUNT = 2048  # tx ring frames: ours' default, given to DPDK too (its default is 512)
RING_SIZE = 2048  # AF_XDP ring entries: ours' default, DPDK's too
NEEDS_ROOT = "the VF bench needs root (a veth pair, AF_PACKET and AF_XDP sockets): not run"
# variant -> (kind, ours?)
VARIANTS = {"vf": ("packet", True), "af_packet": ("packet", False), "vf_xdp": ("xdp", True),
            "af_xdp": ("xdp", False)}
LABELS = {"vf": "net_vf", "af_packet": "DPDK af_packet", "vf_xdp": "net_vf_xdp", "af_xdp": "DPDK af_xdp"}
# the vm1 direction: VM2's variants (AF_XDP only)
CHAIN_VARIANTS = ("one_copy", "two_copies", "dpdk_chain")
CHAIN_LABELS = {"one_copy": "vhost-pci+xdp", "two_copies": "umem=own", "dpdk_chain": "DPDK vhost+af_xdp"}


class VethPair(VethWire):
    """``a`` <-> ``b`` in the root namespace, both up."""

    def __init__(self) -> None:
        tag = os.getpid()
        super().__init__(f"vbf{tag}a", f"vbf{tag}b")

    @property
    def a(self) -> str:
        return self.host

    @property
    def b(self) -> str:
        return self.peer

    def mtu(self) -> int:
        return int(Path(f"/sys/class/net/{self.a}/mtu").read_text())


class IfaceCounter(CounterMeter):
    """A kernel interface counter (``/sys/class/net/IFACE/statistics/COUNTER``) as a meter."""

    def __init__(self, iface: str, counter: str = "rx_packets") -> None:
        self.path = f"/sys/class/net/{iface}/statistics/{counter}"

    def packets(self) -> int:
        with open(self.path) as f:
            return int(f.read())


class _Offered:
    """The receiver's meter, with the generator's offered load (kernel rx
    counter of A) read over the same window."""

    def __init__(self, meter, a: str) -> None:
        self.meter, self.kernel = meter, IfaceCounter(a)
        self.offered = 0.0

    def packets(self) -> int:
        return self.meter.packets()

    def begin(self) -> None:
        self.kernel.begin()
        self.meter.begin()

    def end(self) -> float:
        mpps = self.meter.end()
        self.offered = self.kernel.end()
        return mpps


class AfPacketSide(DpdkSide):
    """testpmd with net_af_packet.  DPDK 22.11 joins every af_packet socket
    to the PACKET_FANOUT group ``(pid ^ ifindex) & 0xffff``: two testpmd
    processes on the two veth ends (consecutive pids, consecutive ifindexes)
    often get the same id, and the kernel refuses the second (EINVAL: a
    group is bound to one device).  A new process has a new pid: retried."""

    TRIES = 4

    def __init__(self, iface: str, mode: str, frame: int, cpu: int, prefix: str) -> None:
        self.args = (f"net_af_packet0,iface={iface},qdisc_bypass={QDISC_BYPASS},framecnt={FRAMECOUNT}",
                     mode, frame, cpu, prefix)
        super().__init__(*self.args)

    def start(self) -> None:
        for attempt in range(self.TRIES):
            try:
                return super().start()
            except dpdk.DpdkError as e:
                if "PACKET_FANOUT" not in str(e) or attempt == self.TRIES - 1:
                    raise
                self.tp.close()
                self.tp = dpdk.Testpmd(*self.args)


class AfXdpSide(DpdkSide):
    """testpmd with net_af_xdp on queue 0 of ``iface``."""

    def __init__(self, iface: str, mode: str, frame: int, cpu: int, prefix: str) -> None:
        super().__init__(f"net_af_xdp0,iface={iface},start_queue=0,queue_count=1", mode, frame, cpu, prefix)


class OursChain(OursPort):
    """VM2 in this process: net_vhost_pci (port 0) and net_vf_xdp on
    ``iface`` (port 1), io forwarding on one lcore pinned to ``cpu``."""

    def __init__(self, path: str, iface: str, umem: str, cpu: int) -> None:
        super().__init__(f"net_vf_xdp1,iface={iface},ring_size={RING_SIZE},umem={umem}", "io", 0, cpu)
        self.path = path

    def start(self) -> None:
        self.fw = forwarding(self.cpu)
        self.fw.attach_port(f"net_vhost_pci0,path={self.path},iommu_support=0").start()
        self.port = self.fw.attach_port(self.vdev)
        self.port.start()
        self.fw.config.mode = "io"
        self.fw.config.burst = 32
        self.fw.config.interrupts = False
        self.fw.start()


class _Bench:
    def __init__(self, env: _Env, veth: VethPair, have_dpdk: bool) -> None:
        self.env, self.veth, self.have_dpdk = env, veth, have_dpdk
        self.offered: dict[tuple[int, str], list[float]] = {}

    def ours(self, iface: str, mode: str, frame: int, cpu: int, kind: str = "packet") -> OursPort:
        if kind == "xdp":
            return OursPort(f"net_vf_xdp0,iface={iface},ring_size={RING_SIZE}", mode, frame, cpu)
        return OursPort(f"net_vf0,iface={iface},qdisc_bypass={QDISC_BYPASS},framecount={FRAMECOUNT}",
                        mode, frame, cpu)

    def dpdk(self, iface: str, mode: str, frame: int, cpu: int, prefix: str, kind: str = "packet") -> DpdkSide:
        if kind == "xdp":
            return AfXdpSide(iface, mode, frame, cpu, prefix)
        return AfPacketSide(iface, mode, frame, cpu, prefix)

    def generator(self, frame: int, prefix: str, n: str):
        """txonly on B through AF_XDP (the fastest sender on a veth), on the
        other CPU: DPDK when present, else our port in a subprocess."""
        env = self.env
        if self.have_dpdk:
            return self.dpdk(self.veth.b, "txonly", frame, env.vm1_cpu, prefix + "-gen", "xdp")
        vdev = f"net_vf_xdp0,iface={self.veth.b},ring_size={RING_SIZE}"
        return FwdProcess(vdev, "txonly", frame, env.vm1_cpu, os.path.join(env.dir, f"gen{n}.log"),
                          OURS_VM1_TIMEOUT_S + env.warmup + env.seconds + 30)

    def chain(self, variant: str, frame: int) -> float:
        """VM1 -> VM2 (vhost-user port, io, AF_XDP port on A) -> B."""
        env, a = self.env, self.veth.a
        path, prefix = env.fresh("vm1" + variant[:3])
        if variant == "dpdk_chain":
            vm2 = DpdkSide(f"net_af_xdp0,iface={a},start_queue=0,queue_count=1", "io", frame, env.vm2_cpu,
                           prefix + "-vm2", ("--vdev", f"net_vhost0,iface={path},client=0"))
        else:
            vm2 = OursChain(path, a, "pool" if variant == "one_copy" else "own", env.vm2_cpu)
        if self.have_dpdk:
            def vm1():
                return _dpdk_vu(env, path, prefix, "txonly", frame, "split")  # no hugepages: as the rest of this bench
        else:
            def vm1():
                return OursVm1(path, "off", frame, env.vm1_cpu, os.path.join(env.dir, f"vm1-{prefix}.log"),
                               OURS_VM1_TIMEOUT_S + env.warmup + env.seconds + 30)
        return _measure(env, vm2, vm1, lambda s, g: IfaceCounter(self.veth.b))

    def run_one(self, direction: str, variant: str, size: int) -> float:
        env, a = self.env, self.veth.a
        frame = size - FCS
        if direction == "vm1":
            return self.chain(variant, frame)
        _, prefix = env.fresh(direction + variant)
        kind, ours = VARIANTS[variant]
        mode = "txonly" if direction == "tx" else "rxonly"
        if ours:
            side = self.ours(a, mode, frame, env.vm2_cpu, kind)
        else:
            side = self.dpdk(a, mode, frame, env.vm2_cpu, prefix + "-" + variant, kind)
        if direction == "tx":
            return _measure(env, side, None, lambda s, g: IfaceCounter(self.veth.b))
        meters: list[_Offered] = []

        def meter_of(s, g) -> _Offered:
            meters.append(_Offered(s, a))
            return meters[-1]

        mpps = _measure(env, side, lambda: self.generator(frame, prefix, prefix.rsplit("-", 1)[-1]), meter_of)
        self.offered.setdefault((size, variant), []).append(meters[-1].offered)
        return mpps


def _measure(env: _Env, side, generator_factory, meter_of) -> float:
    return measure(side, generator_factory, meter_of, env.warmup, env.seconds)


WHAT = {
    "tx": "measured side txonly on veth A -> kernel rx counter of B",
    "rx": "generator txonly on veth B -> measured side rxonly on A",
    "vm1": "VM1 txonly -> VM2 io (vhost-user port -> AF_XDP port on A) -> kernel rx counter of B",
}


def _label(direction: str, variant: str) -> str:
    return CHAIN_LABELS[variant] if direction == "vm1" else LABELS[variant]


def _variants(direction: str, kinds: tuple[str, ...], have_dpdk: bool) -> list[str]:
    if direction == "vm1":
        return [v for v in CHAIN_VARIANTS if "xdp" in kinds and (v != "dpdk_chain" or have_dpdk)]
    return [v for v, (kind, ours) in VARIANTS.items() if kind in kinds and (ours or have_dpdk)]


def _pairs(direction: str, kinds: tuple[str, ...]) -> list[tuple[str, str]]:
    """(ours, reference) pairs a ratio is reported for."""
    if direction == "vm1":
        return [("one_copy", "dpdk_chain"), ("one_copy", "two_copies")] if "xdp" in kinds else []
    out = [pair for pair, kind in ((("vf", "af_packet"), "packet"), (("vf_xdp", "af_xdp"), "xdp")) if kind in kinds]
    return out + ([("vf_xdp", "vf")] if set(KINDS) <= set(kinds) else [])


def run(seconds: float = 2.0, rounds: int = 5, sizes: tuple[int, ...] = SIZES, cpu: int | None = None,
        warmup: float = 1.0, directions: tuple[str, ...] = DIRECTIONS,
        progress: Callable[[str], None] | None = None,
        kinds: tuple[str, ...] = KINDS) -> tuple[list[Result], list[str]]:
    """Run both directions ``rounds`` times, every variant of ``kinds``
    (packet: AF_PACKET, xdp: AF_XDP) alternating; returns the results and
    notes (what was skipped and why, the generator's load)."""
    say = progress or (lambda msg: None)
    why = wire_unavailable()
    if why is not None:
        return [], [NEEDS_ROOT if why == "not root" else f"the VF bench cannot run: {why}"]
    notes: list[str] = []
    have_dpdk = dpdk.testpmd_path() is not None
    if not have_dpdk:
        notes.append(NOT_FOUND + "; measuring ours only")
    env = _Env(default_cpu() if cpu is None else cpu, seconds, warmup)
    veth = VethPair()
    try:
        try:
            veth.create()
        except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
            detail = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) and e.stderr else e
            raise BenchError(f"cannot create the veth pair {veth.a}/{veth.b}: {detail}") from None
        mtu = veth.mtu()
        too_big = [s for s in sizes if s - FCS > mtu + 14]
        if too_big:
            notes.append(f"sizes {too_big} do not fit MTU {mtu} of {veth.a}: not run")
            sizes = tuple(s for s in sizes if s not in too_big)
        bench = _Bench(env, veth, have_dpdk)
        gen = "DPDK testpmd af_xdp" if have_dpdk else "our net_vf_xdp (vhostpci-fwd)"
        vm1 = "DPDK testpmd virtio-user" if have_dpdk else "our net_virtio_user (vhostpci-fwd)"
        what = {"tx": WHAT["tx"], "rx": f"{WHAT['rx']} (generator: {gen})", "vm1": f"{WHAT['vm1']} (VM1: {vm1})"}
        directions = tuple(d for d in directions if _variants(d, kinds, have_dpdk))
        say(f"veth {veth.a} <-> {veth.b}, measured side on CPU {env.vm2_cpu}, "
            f"generator on CPU {env.vm1_cpu}; frames are size-{FCS} B (no FCS on a veth)")
        results = alternate(rounds, sizes, directions, variants=lambda d: _variants(d, kinds, have_dpdk),
                            pairs=lambda d: [p for p in _pairs(d, kinds) if set(p) <= set(_variants(d, kinds,
                                                                                                   have_dpdk))],
                            label=_label, what=what.__getitem__, run_one=bench.run_one, say=say)
        variants = _variants("rx", kinds, have_dpdk)
        if "rx" in directions:
            for size in sizes:
                loads = [f"{_label('rx', v)} {min(x):.3f}-{max(x):.3f}"
                         for v in variants if (x := bench.offered.get((size, v)))]
                if loads:
                    notes.append(f"rx {size} B: offered by the generator (Mpps, kernel rx counter of "
                                 f"{veth.a}) while receiving with " + ", ".join(loads))
    finally:
        with signals_deferred():  # no Ctrl-C / SIGTERM half-way through: it ends the bench after this
            veth.delete()
            env.close()
    return results, notes
