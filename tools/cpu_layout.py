"""CPU layout: cores, sockets, SMT siblings, NUMA nodes and load, and what an
EAL core mask or lcore list would use (DPDK's usertools/cpu_layout.py, plus).

    vhostpci-cpu-layout                 # table of every online CPU
    vhostpci-cpu-layout -c 0x3          # which CPUs that mask uses, with warnings
    vhostpci-cpu-layout -l 0@0,1@0 --json

Topology comes from sysfs (``/sys/devices/system/cpu/cpuN/topology`` and
``/sys/devices/system/node/nodeN/cpulist``); a file that is missing (containers,
non-Linux kernels) leaves its field unknown (None) instead of failing.  Load is
``psutil.cpu_percent(percpu=True)`` over a short interval.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pmd.eal import EalError, format_cpuset, parse_corelist, parse_coremask

SYSFS = Path("/sys/devices/system")
LOAD_INTERVAL_S = 0.2

_CPU_DIR = re.compile(r"cpu(\d+)$")
_NODE_DIR = re.compile(r"node(\d+)$")


@dataclass
class CpuInfo:
    """One logical CPU; a field is None when the kernel does not say."""

    cpu: int
    core_id: int | None
    socket: int | None
    siblings: list[int]  # SMT threads of the same core, this cpu included
    numa_node: int | None
    load: float | None  # percent busy over the sampling interval
    allowed: bool  # in this process's affinity mask


@dataclass
class LcoreUse:
    lcore: int
    cpu: int
    core_id: int | None
    socket: int | None
    numa_node: int | None


@dataclass
class MaskUsage:
    """What a core mask or lcore list would run on."""

    text: str
    lcores: list[LcoreUse]
    cpus: list[int]
    warnings: list[str] = field(default_factory=list)


# ---- sysfs -------------------------------------------------------------

def parse_cpulist(text: str) -> list[int]:
    """Kernel cpulist format: ``0-3,8,10-11`` -> [0, 1, 2, 3, 8, 10, 11]."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _numbered(directory: Path, pattern: re.Pattern[str]) -> list[int]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(int(m.group(1)) for m in map(pattern.match, names) if m)


def online_cpus(sysfs: Path = SYSFS) -> list[int]:
    """Online CPUs per sysfs, else every CPU the OS counts."""
    text = _read(sysfs / "cpu" / "online")
    if text:
        try:
            return parse_cpulist(text)
        except ValueError:
            pass
    listed = _numbered(sysfs / "cpu", _CPU_DIR)
    return listed or list(range(os.cpu_count() or 1))


def numa_nodes(sysfs: Path = SYSFS) -> dict[int, list[int]]:
    """NUMA node -> its CPUs; empty when the kernel has no node directory."""
    nodes: dict[int, list[int]] = {}
    for node in _numbered(sysfs / "node", _NODE_DIR):
        text = _read(sysfs / "node" / f"node{node}" / "cpulist")
        if text is not None:
            try:
                nodes[node] = parse_cpulist(text)
            except ValueError:
                continue
    return nodes


def cpu_loads(interval: float = LOAD_INTERVAL_S) -> list[float]:
    """Percent busy per CPU (index = cpu number) over ``interval`` seconds."""
    import psutil

    return list(psutil.cpu_percent(percpu=True, interval=interval))


def read_topology(sysfs: Path = SYSFS, loads: list[float] | None = None,
                  interval: float = LOAD_INTERVAL_S) -> list[CpuInfo]:
    """Every online CPU with its core, socket, siblings, node and load.

    ``loads`` skips the psutil sample (pass [] for no load at all)."""
    if loads is None:
        try:
            loads = cpu_loads(interval)
        except Exception:  # psutil missing or /proc unreadable: load unknown
            loads = []
    node_of = {cpu: node for node, cpus in numa_nodes(sysfs).items() for cpu in cpus}
    try:
        affinity = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        affinity = None
    out = []
    for cpu in online_cpus(sysfs):
        topo = sysfs / "cpu" / f"cpu{cpu}" / "topology"
        siblings_text = _read(topo / "thread_siblings_list")
        try:
            siblings = parse_cpulist(siblings_text) if siblings_text else [cpu]
        except ValueError:
            siblings = [cpu]
        out.append(CpuInfo(
            cpu=cpu,
            core_id=_read_int(topo / "core_id"),
            socket=_read_int(topo / "physical_package_id"),
            siblings=siblings,
            numa_node=node_of.get(cpu),
            load=float(loads[cpu]) if cpu < len(loads) else None,
            allowed=affinity is None or cpu in affinity,
        ))
    return out


# ---- masks -------------------------------------------------------------

def parse_lcores(text: str, kind: str, topology: list[CpuInfo]) -> dict[int, int]:
    """``kind`` "mask" (``-c``) or "list" (``-l``) -> {lcore: cpu}; raises EalError.

    CPUs are checked against the online set, not this process's affinity, so
    a layout can be planned for CPUs this shell may not use (a warning says so)."""
    online = {c.cpu for c in topology}
    if kind == "mask":
        return parse_coremask(text, available_cpus=online)
    return parse_corelist(text, available_cpus=online)


def mask_usage(text: str, lcores: dict[int, int], topology: list[CpuInfo]) -> MaskUsage:
    """Where each lcore runs, with warnings for shared CPUs and SMT siblings."""
    by_cpu = {c.cpu: c for c in topology}
    uses = []
    for lcore, cpu in sorted(lcores.items()):
        info = by_cpu.get(cpu)
        uses.append(LcoreUse(lcore, cpu, info and info.core_id, info and info.socket, info and info.numa_node))
    warnings: list[str] = []

    on_cpu: dict[int, list[int]] = {}
    for u in uses:
        on_cpu.setdefault(u.cpu, []).append(u.lcore)
    for cpu, lcs in sorted(on_cpu.items()):
        if len(lcs) > 1:
            warnings.append(f"lcores {_ids(lcs)} share cpu {cpu}: they will time-slice, not run in parallel")

    # Distinct CPUs that are SMT threads of one physical core.
    seen_cores: dict[tuple, list[int]] = {}
    for cpu in sorted(on_cpu):
        info = by_cpu.get(cpu)
        if info is None or len(info.siblings) < 2:
            continue
        seen_cores.setdefault(tuple(sorted(info.siblings)), []).append(cpu)
    for siblings, cpus in seen_cores.items():
        if len(cpus) > 1:
            lcs = sorted(lc for cpu in cpus for lc in on_cpu[cpu])
            warnings.append(
                f"lcores {_ids(lcs)} run on cpus {_ids(cpus)}, SMT siblings of one core"
                f" (core {by_cpu[cpus[0]].core_id}, socket {by_cpu[cpus[0]].socket}): they share its execution units"
            )

    sockets = sorted({u.socket for u in uses if u.socket is not None})
    if len(sockets) > 1:
        warnings.append(f"lcores span sockets {_ids(sockets)}: traffic between them crosses the interconnect")
    outside = sorted(cpu for cpu in on_cpu if cpu in by_cpu and not by_cpu[cpu].allowed)
    if outside:
        warnings.append(f"cpus {_ids(outside)} are not in this process's affinity mask")
    return MaskUsage(text=text, lcores=uses, cpus=sorted(on_cpu), warnings=warnings)


def _ids(ids) -> str:
    return ",".join(map(str, ids))


# ---- output ------------------------------------------------------------

def _fmt(value) -> str:
    return "-" if value is None else str(value)


def format_topology(topology: list[CpuInfo]) -> str:
    cores = sorted({c.core_id for c in topology if c.core_id is not None})
    sockets = sorted({c.socket for c in topology if c.socket is not None})
    nodes = sorted({c.numa_node for c in topology if c.numa_node is not None})
    lines = [
        f"cpus    = {format_cpuset({c.cpu for c in topology})}",
        f"cores   = {cores or 'unknown'}",
        f"sockets = {sockets or 'unknown'}",
        f"nodes   = {nodes or 'unknown'}",
        "",
        f"{'cpu':>4} {'core':>5} {'socket':>6} {'node':>5} {'siblings':<10} {'load%':>6}  allowed",
    ]
    for c in topology:
        load = "-" if c.load is None else f"{c.load:.1f}"
        lines.append(
            f"{c.cpu:>4} {_fmt(c.core_id):>5} {_fmt(c.socket):>6} {_fmt(c.numa_node):>5}"
            f" {format_cpuset(set(c.siblings)):<10} {load:>6}  {'yes' if c.allowed else 'no'}"
        )
    if cores and sockets:
        # DPDK's grid: one row per core, one column per socket, the cpus in each cell.
        lines += ["", "core".ljust(10) + "".join(f"socket {s}".ljust(14) for s in sockets)]
        for core in cores:
            cells = []
            for s in sockets:
                cpus = [c.cpu for c in topology if c.core_id == core and c.socket == s]
                cells.append((str(cpus) if cpus else "").ljust(14))
            lines.append(f"core {core}".ljust(10) + "".join(cells))
    return "\n".join(lines)


def format_usage(usage: MaskUsage) -> str:
    lines = ["", f"{usage.text}: {len(usage.lcores)} lcores on cpus {format_cpuset(set(usage.cpus))}",
             f"{'lcore':>6} {'cpu':>4} {'core':>5} {'socket':>6} {'node':>5}"]
    for u in usage.lcores:
        lines.append(f"{u.lcore:>6} {u.cpu:>4} {_fmt(u.core_id):>5} {_fmt(u.socket):>6} {_fmt(u.numa_node):>5}")
    lines += [f"warning: {w}" for w in usage.warnings]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vhostpci-cpu-layout", description=__doc__.split("\n\n")[0])
    which = ap.add_mutually_exclusive_group()
    which.add_argument("-c", "--mask", metavar="MASK", help="EAL hex core mask, e.g. 0x3")
    which.add_argument("-l", "--lcores", metavar="LIST", help="EAL lcore list, e.g. 0-1 or 0@0,1@0")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--interval", type=float, default=LOAD_INTERVAL_S, metavar="S",
                    help=f"load sampling interval in seconds (default {LOAD_INTERVAL_S})")
    args = ap.parse_args(argv)

    topology = read_topology(interval=args.interval)
    usage = None
    if args.mask is not None or args.lcores is not None:
        kind, text = ("mask", args.mask) if args.mask is not None else ("list", args.lcores)
        try:
            lcores = parse_lcores(text, kind, topology)
        except EalError as e:
            print(f"{ap.prog}: error: {e}", file=sys.stderr)
            return 2
        usage = mask_usage(text, lcores, topology)

    if args.json:
        doc = {"cpus": [asdict(c) for c in topology], "numa_nodes": numa_nodes()}
        if usage is not None:
            doc["usage"] = asdict(usage)
        print(json.dumps(doc, indent=2))
    else:
        print(format_topology(topology))
        if usage is not None:
            print(format_usage(usage))
    return 0


if __name__ == "__main__":
    sys.exit(main())
