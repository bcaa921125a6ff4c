"""vhostpci-bench SCENARIO [options]: print throughput figures.

Scenarios: ``framework`` (framework overhead on one lcore).  Later issues
add ``vhost``, ``vf`` and ``vm1``.  ``--json`` prints machine-readable output.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from . import framework


class _ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        print(f"vhostpci-bench: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _print_table(results: list[framework.Result]) -> None:
    print(f"{'scenario':<18} {'size':>5} {'Mpps':>8} {'ns/pkt':>8} {'Gbit/s':>8}  runs (Mpps)")
    for r in results:
        runs = " ".join(f"{x:.2f}" for x in r.mpps_runs)
        print(f"{r.scenario:<18} {r.size:>5} {r.mpps_median:>8.2f} {r.ns_per_packet:>8.1f} {r.gbps:>8.2f}  {runs}")


def main(argv: list[str] | None = None) -> int:
    p = _ArgParser(prog="vhostpci-bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="scenario", required=True)
    fw = sub.add_parser("framework", help="io forwarding overhead: net_null and net_ring on one lcore")
    fw.add_argument("--seconds", type=float, default=2.0, help="length of one run")
    fw.add_argument("--rounds", type=int, default=3, help="alternating runs per scenario (median reported)")
    fw.add_argument("--size", type=int, default=64)
    fw.add_argument("--cpu", type=int, default=None, help="CPU for the forwarding lcore (default: the last one)")
    fw.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.scenario == "framework":
        results = framework.run(args.seconds, args.rounds, args.size, args.cpu)
        if args.json:
            print(json.dumps({"scenario": "framework", "results": [asdict(r) for r in results]}, indent=2))
        else:
            _print_table(results)
    return 0
