"""Framework overhead: io forwarding on one lcore with no device behind the
ports (net_null -> net_null, and a net_ring pair looping packets).  This is
the ceiling every real driver is measured against."""
from __future__ import annotations

import time
from dataclasses import dataclass

from .common import default_cpu, forwarding, median

SCENARIOS = {
    "null->null io": (("net_null0,size={size}", "net_null1,size={size}"), False),
    "ring<->ring io": (("net_ring0", "net_ring1"), True),
}


@dataclass
class Result:
    scenario: str
    size: int
    mpps_median: float
    mpps_runs: list[float]
    ns_per_packet: float
    gbps: float


def _run_once(vdevs: tuple[str, ...], tx_first: bool, size: int, cpu: int, seconds: float) -> float:
    fw = forwarding(cpu)
    try:
        for v in vdevs:
            fw.attach_port(v.format(size=size)).start()
        fw.config.txpkts = size
        fw.config.burst = 32
        fw.start(tx_first=tx_first)
        t0 = time.perf_counter()
        time.sleep(seconds)
        stats = fw.stop()
        elapsed = time.perf_counter() - t0
        return sum(s["rx"] for s in stats.values()) / elapsed / 1e6
    finally:
        fw.close()


def run(seconds: float = 2.0, rounds: int = 3, size: int = 64, cpu: int | None = None) -> list[Result]:
    """Run each scenario ``rounds`` times, alternating, and return medians."""
    cpu = default_cpu() if cpu is None else cpu
    runs: dict[str, list[float]] = {name: [] for name in SCENARIOS}
    for name, (vdevs, tx_first) in SCENARIOS.items():  # warm-up: compile / load cache
        _run_once(vdevs, tx_first, size, cpu, 0.05)
    for _ in range(rounds):
        for name, (vdevs, tx_first) in SCENARIOS.items():
            runs[name].append(_run_once(vdevs, tx_first, size, cpu, seconds))
    out = []
    for name, mpps in runs.items():
        med = median(mpps)
        out.append(Result(name, size, med, mpps, 1e3 / med if med else float("inf"), med * size * 8 / 1e3))
    return out
