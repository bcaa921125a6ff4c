"""Our vhost-pci port against DPDK's vhost PMD, side by side in one run.

Two processes, one forwarding lcore each, on two different CPUs: VM2 (the
vhost-user back-end) on ``--cpu``, VM1 (the front-end) on another CPU.

- ``a``: VM1 = DPDK testpmd virtio-user, txonly; VM2 rxonly = our
  net_vhost_pci (in this process) vs DPDK testpmd net_vhost.  Same generator
  command line for both.
- ``b``: the reverse: VM2 txonly (ours vs DPDK vhost) into VM1 = DPDK
  virtio-user, rxonly.

  Each of ``a`` and ``b`` has two rows.  ``best``: DPDK as its users run it,
  every DPDK process on hugepages (a private hugetlbfs mount and
  ``nr_hugepages``, made and undone by the bench), so VM1's memory is on
  hugepages too (the fds our port maps), our mbuf pool as well, and the
  virtio-user offering the best ring options both back-ends negotiate
  (``best_ring_args``).  ``split``: the earlier comparison, ``--no-huge``, a
  split ring without IN_ORDER.  A machine without hugepages says so and runs
  the ``best`` row on plain pages.  With ``queues`` N > 1 a third row,
  ``Nq``: the ``best`` options with N queue pairs on both sides, still one
  lcore each side polling all of them (this machine has two CPUs, one per
  side: the row shows what polling more queues costs or gains, not scaling
  across cores).
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
from collections.abc import Callable
from typing import Any

from pmd.ethdev import Port

from pmd.mbuf import configure_memory
from pmd.vhostpci_pmd.device import BASE_FEATURES
from pmd.virtio.features import VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED, has

from . import dpdk
from .common import (
    FLOW_TIMEOUT_S,
    BenchError,
    CounterMeter,
    Result,
    alternate,
    default_cpu,
    forwarding,
    measure,
    other_cpu,
    signals_deferred,
)
from .hugepages import Hugepages, HugepagesUnavailable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIOS = ("a", "b", "c")
SIZES = (64, 1518)
NOT_FOUND = f"DPDK {dpdk.TESTPMD} not found (install dpdk-dev: tools/setup does)"
# DPDK's virtio-user: the same command line against both back-ends.  The
# ``split`` row: the earlier comparison (split ring, no IN_ORDER, no hugepages).
VIRTIO_USER_SPLIT = "queue_size=256,mrg_rxbuf=0,in_order=0,packed_vq=0"
VIRTIO_USER_EAL = ("--single-file-segments",)  # else: "Too many memory regions"
ROWS = ("best", "split")
# Hugepages for one run: two DPDK processes (-m 256: 128 pages each) and our pool
HUGEPAGES = 320


def best_ring_args(offered: int = BASE_FEATURES) -> str:
    """DPDK virtio-user devargs with the best ring options our back-end
    (offering ``offered``) and DPDK's both negotiate: packed and IN_ORDER
    where ours offers them; mrg_rxbuf off (one buffer per packet, DPDK's
    fastest receive path)."""
    packed = int(has(offered, VIRTIO_F_RING_PACKED))
    in_order = int(has(offered, VIRTIO_F_IN_ORDER))
    return f"queue_size=256,mrg_rxbuf=0,in_order={in_order},packed_vq={packed}"
ISOLATION_MODES = ("off", "buffers", "transient")
OURS_VM1_TIMEOUT_S = 120.0  # the same when VM1 is ours: its kernels may need compiling first (cache cold)


# ------------------------------------------------------------------ sides
class OursPort(CounterMeter):
    """A port of ours (``vdev``) forwarding in ``mode`` in this process, one
    lcore pinned to ``cpu``, interrupts off; as a receiver it meters its own
    ``ipackets``."""

    def __init__(self, vdev: str, mode: str, size: int, cpu: int, huge_dir: str | None = None) -> None:
        self.vdev = vdev
        self.mode, self.size, self.cpu = mode, size, cpu
        self.huge_dir = huge_dir  # the mbuf pool in a hugetlbfs file there (DPDK's --huge-dir)
        self.fw = None
        self.port: Port | None = None

    def start(self) -> None:
        configure_memory(huge_dir=self.huge_dir)
        try:
            self.fw = forwarding(self.cpu)
        finally:
            configure_memory()
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

    def _totals(self) -> dict[str, int]:
        assert self.fw is not None
        out: dict[str, int] = {}
        for per_port in self.fw.fwd_stats().values():
            for k, n in per_port.items():
                out[k] = out.get(k, 0) + n
        return out

    def window_begin(self) -> None:
        self._window0 = self._totals()

    def window_note(self) -> str:
        """How much of the window the peer set the pace: receiving, the
        share of polls that found the ring empty; sending, the share of
        frames made that found it full.  A high share means our lcore had
        time to spare, and the rate is the peer's."""
        t = self._totals()
        d = {k: n - self._window0.get(k, 0) for k, n in t.items()}
        if self.mode == "rxonly":
            polls = d["rx_bursts"] + d["rx_empty"]
            return f"ours: {100 * d['rx_empty'] / max(polls, 1):.0f}% of polls empty"
        made = d["tx"] + d["dropped"]
        return f"ours: {100 * d['dropped'] / max(made, 1):.0f}% of frames found the ring full"

    def close(self) -> None:
        if self.fw is not None:
            self.fw.close()


class OursVm2(OursPort):
    """Our net_vhost_pci port forwarding in this process, lcore pinned to ``cpu``."""

    def __init__(self, path: str, mode: str, size: int, cpu: int, iommu_support: bool,
                 huge_dir: str | None = None, queues: int = 1) -> None:
        super().__init__(f"net_vhost_pci0,path={path},iommu_support={int(iommu_support)},queues={queues}", mode,
                         size, cpu, huge_dir)


class DpdkSide:
    """A dpdk-testpmd process (vhost, virtio-user, af_packet...) forwarding in ``mode``;
    as a receiver it meters testpmd's own Rx-pps."""

    def __init__(self, vdev: str, mode: str, size: int, cpu: int, prefix: str, eal_extra: tuple[str, ...] = (),
                 huge_dir: str | None = None, queues: int = 1):
        self.tp = dpdk.Testpmd(vdev, mode, size, cpu, prefix, eal_extra=eal_extra, huge_dir=huge_dir, queues=queues)

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


class FwdProcess:
    """A ``vhostpci-fwd`` process: our port ``vdev`` forwarding in ``mode``
    (one lcore on ``cpu``, interrupts off), output to ``log_path``."""

    flow_timeout = OURS_VM1_TIMEOUT_S
    what = "generator"  # its role, in error messages

    def __init__(self, vdev: str, mode: str, size: int, cpu: int, log_path: str, max_seconds: float) -> None:
        # --duration: a backstop should this process outlive the bench (SIGKILLed); close() ends it first
        self.argv = [sys.executable, "-m", "apps.fwd", "--lcores", f"0@{cpu},1@{cpu}", "--vdev", vdev, "--",
                     f"--forward-mode={mode}", f"--txpkts={size}", "--stats-period=0", "--no-interrupts",
                     f"--duration={max_seconds:.0f}"]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"vhostpci-fwd ({self.what}) exited with {self.proc.returncode}: {self._tail()}")

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


class OursVm1(FwdProcess):
    """Our net_virtio_user port as VM1: a ``vhostpci-fwd`` process (txonly)."""

    what = "VM1"

    def __init__(self, path: str, iommu: str, size: int, cpu: int, log_path: str, max_seconds: float) -> None:
        super().__init__(f"net_virtio_user0,path={path},iommu={iommu}", "txonly", size, cpu, log_path, max_seconds)


# ------------------------------------------------------------------ runs
class _Env:
    """Per-bench state: the private socket directory, CPUs, DPDK prefixes."""

    def __init__(self, cpu: int, seconds: float, warmup: float, queues: int = 1) -> None:
        self.queues = queues  # queue pairs of the ``Nq`` row (1: no such row)
        self.vm2_cpu = cpu
        self.vm1_cpu = other_cpu(cpu)
        self.seconds, self.warmup = seconds, warmup
        self.dir = tempfile.mkdtemp(prefix="vhostpci-bench-")
        self._n = 0
        self.huge: Hugepages | None = None
        self.best_args = best_ring_args()

    def setup_hugepages(self) -> str:
        """Mount a private hugetlbfs and add pages for the ``best`` row; a
        note saying what runs (or why it runs on plain pages)."""
        try:
            self.huge = Hugepages(HUGEPAGES, parent=self.dir)
        except HugepagesUnavailable as e:
            return f"{e}: the best row runs with --no-huge as well"
        return (f"best row: DPDK's processes, VM1's memory and our mbuf pool on {HUGEPAGES} hugepages "
                f"(2 MiB, hugetlbfs); DPDK virtio-user {self.best_args}; split row: --no-huge, {VIRTIO_USER_SPLIT}")

    def huge_dir(self, row: str) -> str | None:
        return self.huge.dir if row != "split" and self.huge is not None else None

    def vu_args(self, row: str) -> str:
        if row == "split":
            return VIRTIO_USER_SPLIT
        return self.best_args + (f",queues={self.queues}" if row == self.mq_row else "")

    def row_queues(self, row: str) -> int:
        return self.queues if row == self.mq_row else 1

    @property
    def mq_row(self) -> str:
        return f"{self.queues}q"

    def rows(self) -> list[str]:
        return [*ROWS, self.mq_row] if self.queues > 1 else list(ROWS)

    def fresh(self, what: str) -> tuple[str, str]:
        """A new socket path and DPDK file prefix (removing any leftover socket)."""
        self._n += 1
        path = os.path.join(self.dir, f"{what}{self._n}.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return path, f"vhostpci-bench-{os.getpid()}-{self._n}"

    def close(self) -> None:
        with signals_deferred():
            if self.huge is not None:
                self.huge.close()
                self.huge = None
            shutil.rmtree(self.dir, ignore_errors=True)


def _measure(env: _Env, vm2, vm1_factory: Callable[[], Any], meter_of: Callable[[Any, Any], Any]) -> float:
    """Start VM2, then VM1; wait for traffic at the receiver, warm up, measure Mpps."""
    return measure(vm2, vm1_factory, meter_of, env.warmup, env.seconds)


def _dpdk_vu(env: _Env, path: str, prefix: str, mode: str, size: int, row: str) -> DpdkSide:
    return DpdkSide(f"net_virtio_user0,path={path},{env.vu_args(row)}", mode, size, env.vm1_cpu,
                    prefix + "-vu", VIRTIO_USER_EAL, huge_dir=env.huge_dir(row), queues=env.row_queues(row))


def _dpdk_vhost(env: _Env, path: str, prefix: str, mode: str, size: int, row: str) -> DpdkSide:
    queues = env.row_queues(row)
    return DpdkSide(f"net_vhost0,iface={path},client=0,queues={queues}", mode, size, env.vm2_cpu, prefix + "-vh",
                    huge_dir=env.huge_dir(row), queues=queues)


def _split_variant(variant: str) -> tuple[str, str]:
    """"ours-split" -> ("ours", "split"); "dpdk" -> ("dpdk", "best")."""
    side, _, row = variant.partition("-")
    return side, row or "best"


def _variant(env: _Env, scenario: str, variant: str, size: int) -> float:
    """One measured run of ``variant`` ("ours", "dpdk", "ours-split", "dpdk-split" or an iommu mode)."""
    path, prefix = env.fresh(scenario + variant[:4] + variant[5:7])
    if scenario in ("a", "b"):
        side, row = _split_variant(variant)
        vm2_mode, vm1_mode = ("rxonly", "txonly") if scenario == "a" else ("txonly", "rxonly")
        if side == "ours":  # DPDK's virtio-user does not grant IOTLB entries: no IOMMU, like DPDK's vhost
            vm2 = OursVm2(path, vm2_mode, size, env.vm2_cpu, iommu_support=False, huge_dir=env.huge_dir(row),
                          queues=env.row_queues(row))
        else:
            vm2 = _dpdk_vhost(env, path, prefix, vm2_mode, size, row)
        meter = (lambda v2, v1: v2) if scenario == "a" else (lambda v2, v1: v1)
        return _measure(env, vm2, lambda: _dpdk_vu(env, path, prefix, vm1_mode, size, row), meter)
    vm2 = OursVm2(path, "rxonly", size, env.vm2_cpu, iommu_support=True)
    log = os.path.join(env.dir, f"vm1-{variant}.log")
    limit = OURS_VM1_TIMEOUT_S + env.warmup + env.seconds + 30
    return _measure(env, vm2, lambda: OursVm1(path, variant, size, env.vm1_cpu, log, limit), lambda v2, v1: v2)


WHAT = {
    "a": "VM1 DPDK virtio-user txonly -> VM2 rxonly (vhost dequeue)",
    "b": "VM2 txonly -> VM1 DPDK virtio-user rxonly (vhost enqueue)",
    "c": "VM1 our virtio-user txonly -> VM2 our vhost-pci rxonly: iommu mode vs off",
}


def _pairs(scenario: str, rows: list[str]) -> list[tuple[str, str]]:
    """(ours, reference) variant pairs of a scenario: one result row each."""
    if scenario == "c":
        return [(m, "off") for m in ISOLATION_MODES]
    return [("ours", "dpdk") if row == "best" else (f"ours-{row}", f"dpdk-{row}") for row in rows]


def _variants(scenario: str, rows: list[str]) -> list[str]:
    return list(ISOLATION_MODES) if scenario == "c" else [v for pair in _pairs(scenario, rows) for v in pair]


def _label(scenario: str, variant: str) -> str:
    if scenario == "c":
        return f"iommu={variant}"
    side, row = _split_variant(variant)
    name = "vhost-pci" if side == "ours" else "DPDK vhost"
    return name if row == "best" else f"{name} {row}"


def run(seconds: float = 2.0, rounds: int = 5, sizes: tuple[int, ...] = SIZES, cpu: int | None = None,
        warmup: float = 1.0, scenarios: tuple[str, ...] = SCENARIOS,
        progress: Callable[[str], None] | None = None, queues: int = 1) -> tuple[list[Result], list[str]]:
    """Run the scenarios ``rounds`` times, variants alternating; returns the
    results and notes (what was skipped and why).  ``progress`` gets one line
    per run.  ``queues`` > 1 adds the ``Nq`` row to ``a`` and ``b``."""
    say = progress or (lambda msg: None)
    notes: list[str] = []
    todo = list(scenarios)
    if dpdk.testpmd_path() is None and any(s in todo for s in ("a", "b")):
        notes.append(NOT_FOUND)
        todo = [s for s in todo if s not in ("a", "b")]
    env = _Env(default_cpu() if cpu is None else cpu, seconds, warmup, queues)
    rows = env.rows()
    try:
        if any(s in todo for s in ("a", "b")):
            notes.append(env.setup_hugepages())
        results = alternate(rounds, sizes, todo, variants=lambda sc: _variants(sc, rows),
                            pairs=lambda sc: _pairs(sc, rows), label=_label,
                            what=WHAT.__getitem__, run_one=lambda sc, v, size: _variant(env, sc, v, size), say=say)
    finally:
        env.close()
    return results, notes
