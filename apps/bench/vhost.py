"""Our vhost-pci port against DPDK's vhost PMD, side by side in one run.

Two processes, one forwarding lcore each, on two different CPUs: VM2 (the
vhost-user back-end) on ``--cpu``, VM1 (the front-end) on another CPU.

- ``a``: VM1 = DPDK testpmd virtio-user, txonly; VM2 rxonly = our
  net_vhost_pci (in this process) vs DPDK testpmd net_vhost.  Same generator
  command line for both.
- ``b``: the reverse: VM2 txonly (ours vs DPDK vhost) into VM1 = DPDK
  virtio-user, rxonly.
- ``c``: VM1 = our net_virtio_user (vhostpci-fwd, txonly) with iommu=off,
  buffers, transient; VM2 = our net_vhost_pci rxonly: the cost of isolation.

The machine jumps between speed levels 3-4x apart, so variants alternate
within each round (order reversed every other round) and what counts is the
median of the per-round ratio (ours / DPDK; for ``c``, mode / iommu=off).
Rates are taken at the receiver over a steady window: after ``warmup``
seconds of traffic, counters read twice ``seconds`` apart (DPDK: testpmd's
own Rx-pps between two ``show port stats all``).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pmd.ethdev import Port

from . import dpdk
from .common import default_cpu, forwarding, median, other_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIOS = ("a", "b", "c")
SIZES = (64, 1518)
NOT_FOUND = f"DPDK {dpdk.TESTPMD} not found (install dpdk-dev: tools/setup does)"
# DPDK's virtio-user: the same command line against both back-ends; features
# our back-end does not offer yet are off, so both negotiate the same set.
VIRTIO_USER_ARGS = "queue_size=256,mrg_rxbuf=0,in_order=0,packed_vq=0"
VIRTIO_USER_EAL = ("--single-file-segments",)  # else: "Too many memory regions"
ISOLATION_MODES = ("off", "buffers", "transient")
FLOW_TIMEOUT_S = 20.0  # from VM1's start to the first packet at the receiver
OURS_VM1_TIMEOUT_S = 120.0  # the same when VM1 is ours: its kernels may need compiling first (cache cold)


class BenchError(RuntimeError):
    """One run could not be measured; the message says why."""


@dataclass
class Result:
    scenario: str  # "a", "b", "c"
    what: str  # one line saying what is measured
    size: int
    ours: str  # label of our variant
    ref: str  # label of the reference variant
    ours_mpps: float | None  # median over rounds (None: not measured)
    ref_mpps: float | None
    ratio: float | None  # median of the per-round ratio ours / ref
    ours_runs: list[float] = field(default_factory=list)
    ref_runs: list[float] = field(default_factory=list)
    ratio_runs: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ sides
class OursVm2:
    """Our net_vhost_pci port forwarding in this process, lcore pinned to ``cpu``."""

    def __init__(self, path: str, mode: str, size: int, cpu: int, iommu_support: bool) -> None:
        self.vdev = f"net_vhost_pci0,path={path},iommu_support={int(iommu_support)}"
        self.mode, self.size, self.cpu = mode, size, cpu
        self.fw = None
        self.port: Port | None = None
        self._t0 = self._n0 = 0.0

    def start(self) -> None:
        self.fw = forwarding(self.cpu)
        self.port = self.fw.attach_port(self.vdev)
        self.port.start()
        self.fw.config.mode = self.mode
        self.fw.config.txpkts = self.size
        self.fw.config.burst = 32
        self.fw.config.interrupts = False  # pure polling, like DPDK's testpmd
        self.fw.start()

    # the receiver's meter
    def packets(self) -> int:
        assert self.port is not None
        return self.port.stats().ipackets

    def begin(self) -> None:
        self._n0, self._t0 = self.packets(), time.perf_counter()

    def end(self) -> float:
        n, t = self.packets(), time.perf_counter()
        return (n - self._n0) / (t - self._t0) / 1e6

    def close(self) -> None:
        if self.fw is not None:
            self.fw.close()


class DpdkSide:
    """A dpdk-testpmd process (vhost or virtio-user) forwarding in ``mode``."""

    def __init__(self, vdev: str, mode: str, size: int, cpu: int, prefix: str, eal_extra: tuple[str, ...] = ()):
        self.tp = dpdk.Testpmd(vdev, mode, size, cpu, prefix, eal_extra=eal_extra)

    flow_timeout = FLOW_TIMEOUT_S

    def start(self) -> None:
        self.tp.start()
        self.tp.command("start")

    def check(self) -> None:
        p = self.tp.proc
        if p is not None and p.poll() is not None:
            raise BenchError(f"{dpdk.TESTPMD} ({self.tp.prefix}) exited with {p.returncode}:\n{self.tp.tail()}")

    def packets(self) -> int:
        return sum(s.rx_packets for s in self.tp.stats().values())

    def begin(self) -> None:
        self.tp.stats()  # testpmd's rate baseline

    def end(self) -> float:
        return sum(s.rx_pps for s in self.tp.stats().values()) / 1e6

    def close(self) -> None:
        self.tp.close()


class OursVm1:
    """Our net_virtio_user port as VM1: a ``vhostpci-fwd`` process (txonly)."""

    flow_timeout = OURS_VM1_TIMEOUT_S

    def __init__(self, path: str, iommu: str, size: int, cpu: int, log_path: str, max_seconds: float) -> None:
        # --duration: a backstop should this process outlive the bench (SIGKILLed); close() ends it first
        self.argv = [sys.executable, "-m", "apps.fwd", "--lcores", f"0@{cpu},1@{cpu}",
                     "--vdev", f"net_virtio_user0,path={path},iommu={iommu}", "--",
                     "--forward-mode=txonly", f"--txpkts={size}", "--stats-period=0", "--no-interrupts",
                     f"--duration={max_seconds:.0f}"]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"vhostpci-fwd (VM1) exited with {self.proc.returncode}: {self._tail()}")

    def _tail(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-5:])
        except OSError:
            return ""

    def close(self) -> None:
        p = self.proc
        if p is None:
            return
        for sig, wait in ((signal.SIGINT, 5.0), (signal.SIGKILL, 5.0)):
            if p.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(wait)
        p.wait()


# ------------------------------------------------------------------ runs
class _Env:
    """Per-bench state: the private socket directory, CPUs, DPDK prefixes."""

    def __init__(self, cpu: int, seconds: float, warmup: float) -> None:
        self.vm2_cpu = cpu
        self.vm1_cpu = other_cpu(cpu)
        self.seconds, self.warmup = seconds, warmup
        self.dir = tempfile.mkdtemp(prefix="vhostpci-bench-")
        self._n = 0

    def fresh(self, what: str) -> tuple[str, str]:
        """A new socket path and DPDK file prefix (removing any leftover socket)."""
        self._n += 1
        path = os.path.join(self.dir, f"{what}{self._n}.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return path, f"vhostpci-bench-{os.getpid()}-{self._n}"

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _measure(env: _Env, vm2, vm1_factory: Callable[[], Any], meter_of: Callable[[Any, Any], Any]) -> float:
    """Start VM2, then VM1; wait for traffic at the receiver, warm up, measure Mpps."""
    with contextlib.ExitStack() as stack:
        stack.callback(vm2.close)
        vm2.start()
        vm1 = vm1_factory()
        stack.callback(vm1.close)
        vm1.start()
        meter = meter_of(vm2, vm1)
        timeout = vm1.flow_timeout
        deadline = time.monotonic() + timeout
        while meter.packets() == 0:
            vm1.check()
            if time.monotonic() > deadline:
                raise BenchError(f"no packet reached the receiver within {timeout:.0f} s")
            time.sleep(0.05)
        time.sleep(env.warmup)
        meter.begin()
        time.sleep(env.seconds)
        mpps = meter.end()
        vm1.check()  # still alive: the window measured a running VM1
        return mpps


def _dpdk_vu(env: _Env, path: str, prefix: str, mode: str, size: int) -> DpdkSide:
    return DpdkSide(f"net_virtio_user0,path={path},{VIRTIO_USER_ARGS}", mode, size, env.vm1_cpu,
                    prefix + "-vu", VIRTIO_USER_EAL)


def _dpdk_vhost(env: _Env, path: str, prefix: str, mode: str, size: int) -> DpdkSide:
    return DpdkSide(f"net_vhost0,iface={path},client=0", mode, size, env.vm2_cpu, prefix + "-vh")


def _variant(env: _Env, scenario: str, variant: str, size: int) -> float:
    """One measured run of ``variant`` ("ours", "dpdk" or an iommu mode) of ``scenario``."""
    path, prefix = env.fresh(scenario + variant[:4])
    if scenario in ("a", "b"):
        vm2_mode, vm1_mode = ("rxonly", "txonly") if scenario == "a" else ("txonly", "rxonly")
        if variant == "ours":  # DPDK's virtio-user does not grant IOTLB entries: no IOMMU, like DPDK's vhost
            vm2 = OursVm2(path, vm2_mode, size, env.vm2_cpu, iommu_support=False)
        else:
            vm2 = _dpdk_vhost(env, path, prefix, vm2_mode, size)
        meter = (lambda v2, v1: v2) if scenario == "a" else (lambda v2, v1: v1)
        return _measure(env, vm2, lambda: _dpdk_vu(env, path, prefix, vm1_mode, size), meter)
    vm2 = OursVm2(path, "rxonly", size, env.vm2_cpu, iommu_support=True)
    log = os.path.join(env.dir, f"vm1-{variant}.log")
    limit = OURS_VM1_TIMEOUT_S + env.warmup + env.seconds + 30
    return _measure(env, vm2, lambda: OursVm1(path, variant, size, env.vm1_cpu, log, limit), lambda v2, v1: v2)


WHAT = {
    "a": "VM1 DPDK virtio-user txonly -> VM2 rxonly (vhost dequeue)",
    "b": "VM2 txonly -> VM1 DPDK virtio-user rxonly (vhost enqueue)",
    "c": "VM1 our virtio-user txonly -> VM2 our vhost-pci rxonly: iommu mode vs off",
}


def _pairs(scenario: str) -> list[tuple[str, str]]:
    """(ours, reference) variant pairs of a scenario: one result row each."""
    if scenario == "c":
        return [(m, "off") for m in ISOLATION_MODES]
    return [("ours", "dpdk")]


def _variants(scenario: str) -> list[str]:
    return list(ISOLATION_MODES) if scenario == "c" else ["ours", "dpdk"]


def _label(scenario: str, variant: str) -> str:
    if scenario == "c":
        return f"iommu={variant}"
    return "vhost-pci" if variant == "ours" else "DPDK vhost"


def run(seconds: float = 2.0, rounds: int = 5, sizes: tuple[int, ...] = SIZES, cpu: int | None = None,
        warmup: float = 1.0, scenarios: tuple[str, ...] = SCENARIOS,
        progress: Callable[[str], None] | None = None) -> tuple[list[Result], list[str]]:
    """Run the scenarios ``rounds`` times, variants alternating; returns the
    results and notes (what was skipped and why).  ``progress`` gets one line per run."""
    say = progress or (lambda msg: None)
    notes: list[str] = []
    todo = list(scenarios)
    if dpdk.testpmd_path() is None and any(s in todo for s in ("a", "b")):
        notes.append(NOT_FOUND)
        todo = [s for s in todo if s not in ("a", "b")]
    env = _Env(default_cpu() if cpu is None else cpu, seconds, warmup)
    runs: dict[tuple[str, int, str], list[float | None]] = {}
    errors: dict[tuple[str, int, str], list[str]] = {}
    try:
        for r in range(rounds):
            for size in sizes:
                for sc in todo:
                    variants = _variants(sc)
                    for v in (variants if r % 2 == 0 else variants[::-1]):
                        key = (sc, size, v)
                        if key in runs and None in runs[key]:
                            runs[key].append(None)  # failed before: do not retry every round
                            continue
                        t0 = time.monotonic()
                        try:
                            mpps: float | None = _variant(env, sc, v, size)
                            say(f"round {r + 1}/{rounds} {sc} {size:>4} B {_label(sc, v):<16} {mpps:8.3f} Mpps"
                                f"  ({time.monotonic() - t0:.1f} s)")
                        except Exception as e:  # noqa: BLE001 - any failure of one run is reported, the rest go on
                            mpps = None
                            msg = f"{sc} {size} B {_label(sc, v)}: {e}"
                            errors.setdefault(key, []).append(msg)
                            say(f"round {r + 1}/{rounds} {msg}")
                        runs.setdefault(key, []).append(mpps)
    finally:
        env.close()
    results = []
    for sc in todo:
        for size in sizes:
            for ours, ref in _pairs(sc):
                o = runs.get((sc, size, ours), [])
                f = runs.get((sc, size, ref), [])
                ratios = [a / b for a, b in zip(o, f) if a is not None and b]
                o_ok = [x for x in o if x is not None]
                f_ok = [x for x in f if x is not None]
                results.append(Result(
                    sc, WHAT[sc], size, _label(sc, ours), _label(sc, ref),
                    median(o_ok) if o_ok else None, median(f_ok) if f_ok else None,
                    median(ratios) if ratios else None, o_ok, f_ok, ratios,
                    errors.get((sc, size, ours), []) + (errors.get((sc, size, ref), []) if ref != ours else []),
                ))
    return results, notes
