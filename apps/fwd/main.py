"""vhostpci-fwd: forward between ports until SIGINT (or ``--duration``),
printing one stats line per port every ``--stats-period`` seconds.

    vhostpci-fwd -l 0-1 --vdev net_ring0 --vdev net_ring1 -- --tx-first --duration 5
"""
from __future__ import annotations

import argparse
import sys
import time

from apps.cli import add_idle_options
from pmd.eal import EalConfig, eal_init, format_cpuset
from pmd.ethdev import PortError, format_mac
from pmd.fwd.common import MODE_NAMES
from pmd.fwd.runtime import FwdError, forwarding_from_eal
from pmd.rates import RateTracker
from pmd.metrics import MetricsError, MetricsServer, start_metrics
from pmd.signals import StopSignals
from pmd.telemetry import start_telemetry


class _ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like EAL errors
        print(f"vhostpci-fwd: error: {message}", file=sys.stderr)
        raise SystemExit(2)


MIN_RATE_WINDOW_S = 0.1  # below this, a rate says more about timer noise than traffic


def _parser() -> argparse.ArgumentParser:
    p = _ArgParser(prog="vhostpci-fwd", description="Forward packets between ports.",
                   usage="vhostpci-fwd [EAL options] -- [options]")
    p.add_argument("--forward-mode", default="io", choices=MODE_NAMES)
    p.add_argument("--nb-cores", type=int, default=0, help="forwarding lcores (default: all workers)")
    p.add_argument("--burst", type=int, default=32)
    p.add_argument("--txpkts", type=int, default=64)
    p.add_argument("--tx-first", action="store_true", help="send one burst on each port first")
    p.add_argument("--stats-period", type=float, default=1.0, help="seconds between stats lines (0: none)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: run until SIGINT)")
    p.add_argument("--total-num-mbufs", type=int, default=16384)
    add_idle_options(p)
    return p


def parse_app_args(argv: list[str]) -> argparse.Namespace:
    return _parser().parse_args(argv)


def format_line(port_id: int, name: str, st: dict, rx_pps: float, tx_pps: float) -> str:
    return (
        f"port {port_id} {name:<16} rx {rx_pps / 1e6:7.3f} Mpps  tx {tx_pps / 1e6:7.3f} Mpps  "
        f"ipackets {st['ipackets']}  opackets {st['opackets']}  imissed {st['imissed']}  "
        f"ierrors {st['ierrors']}  oerrors {st['oerrors']}"
    )


def _fail(message: str, status: int = 2) -> int:
    """One line on stderr; 2 for bad input (options, devargs), 1 when a port cannot start."""
    print(f"vhostpci-fwd: error: {message}", file=sys.stderr)
    return status


def _summary(fwd: dict[int, dict[str, int]], elapsed: float) -> list[str]:
    lines = [f"Stopped after {elapsed:.1f} s."]
    for pid, s in sorted(fwd.items()):
        rate = (f"{s['rx'] / elapsed / 1e6:.3f} Mpps rx" if elapsed >= MIN_RATE_WINDOW_S
                else "too short for a rate")
        lines.append(f"port {pid}: forwarded rx {s['rx']} tx {s['tx']} dropped {s['dropped']} ({rate})")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    eal, app_argv = eal_init(argv, prog="vhostpci-fwd", app_help=lambda: _parser().format_help())
    if not eal.vdevs:  # no ports given: the VM-to-VM demo (its own options)
        from .demo import run_demo
        return run_demo(eal, app_argv)
    args = parse_app_args(app_argv)
    workers = len(eal.worker_lcores)
    if not workers:  # checked before any port exists
        return _fail(f"no worker lcore to forward on: lcores {format_cpuset(set(eal.lcores))} are all the main"
                     " lcore (give at least two, e.g. -l 0-1)")
    if args.nb_cores > workers:
        return _fail(f"--nb-cores={args.nb_cores}: only {workers} worker lcores (give the EAL more, e.g. -l)")
    if args.nb_cores < 0:
        return _fail(f"--nb-cores must be >= 0 (0: every worker lcore), got {args.nb_cores}")
    try:
        metrics = start_metrics(eal.metrics)  # before any port: an address in use starts nothing
    except MetricsError as e:
        return _fail(str(e), 1)
    try:
        return _forward(eal, args, workers, metrics)
    finally:
        if metrics is not None:
            metrics.close()


def _forward(eal: EalConfig, args: argparse.Namespace, workers: int, metrics: MetricsServer | None) -> int:
    with StopSignals() as stop:
        try:
            with stop.interruptible():
                fw = forwarding_from_eal(eal, args.total_num_mbufs)
        except ValueError as e:  # DevargError too
            return _fail(str(e))
        except PortError as e:
            return _fail(str(e), 1)
        except KeyboardInterrupt:
            print("Interrupted before forwarding started.")
            return 130
        telemetry = start_telemetry(eal, lambda: fw.ports)
        if metrics is not None:
            metrics.ports = lambda: fw.ports
        try:
            fw.config.mode = args.forward_mode
            fw.config.burst = args.burst
            fw.config.txpkts = args.txpkts
            fw.config.nb_cores = args.nb_cores or workers
            fw.config.interrupts = not args.no_interrupts
            fw.config.idle_polls = args.idle_polls
            fw.config.idle_wait_ns = args.idle_wait
            for pid, port in fw.ports.items():
                print(f"Port {pid}: {port.name} MAC {format_mac(port.mac())}", flush=True)
            try:
                with stop.interruptible():  # a cold start compiles for seconds: Ctrl-C must still work
                    fw.start(tx_first=args.tx_first)
            except KeyboardInterrupt:
                print("Interrupted before forwarding started.")
                return 130
            t0 = time.monotonic()
            rates = RateTracker()
            for pid, port in fw.ports.items():  # rate baseline at start
                rates.rates(pid, port.stats().totals)
            period = args.stats_period if args.stats_period > 0 else None
            while not stop.stopped:
                left = args.duration - (time.monotonic() - t0) if args.duration else None
                if left is not None and left <= 0:
                    break
                wait = min(x for x in (period, left, 3600.0) if x is not None)
                if stop.wait(wait) or period is None:
                    continue
                for pid, port in fw.ports.items():
                    st = port.stats().totals
                    rx_pps, _, tx_pps, _ = rates.rates(pid, st)
                    print(format_line(pid, port.name, st, rx_pps, tx_pps), flush=True)
            elapsed = time.monotonic() - t0
            print("\n".join(_summary(fw.stop(), elapsed)))
            return 0
        except (FwdError, PortError, ValueError) as e:
            return _fail(str(e))
        finally:
            if telemetry is not None:
                telemetry.close()
            fw.close()
