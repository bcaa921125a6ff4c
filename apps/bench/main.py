"""vhostpci-bench SCENARIO [options]: print throughput figures.

Scenarios: ``framework`` (framework overhead on one lcore), ``vhost`` (our
vhost-pci port against DPDK's vhost PMD, and the cost of VM1's IOMMU), ``vf``
(our VF ports against DPDK's af_packet and af_xdp PMDs on a veth pair: tx,
rx, and VM1 -> vhost-pci -> VF), ``vm1`` (a real QEMU guest sending through our app vs through DPDK testpmd into a
namespace, and the namespace's datagrams delivered to the guest, with and
without a strict or lazy vIOMMU), ``iotlb`` (IOTLB message latency, p50/p99
in microseconds, measured from the front-end), ``xdp-steps`` (ns per packet
by step of the AF_XDP port's tx burst).  ``--json`` prints
machine-readable output; ``--plot FILE.png`` (vhost, vf, vm1; needs
matplotlib) draws ours beside DPDK per cell with the per-round spread.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import asdict

from . import framework, iotlb, plot, vf, vhost, vm1, xdp_steps


class _ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        print(f"vhostpci-bench: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _print_table(results: list[framework.Result]) -> None:
    print(f"{'scenario':<18} {'size':>5} {'Mpps':>8} {'ns/pkt':>8} {'Gbit/s':>8}  runs (Mpps)")
    for r in results:
        runs = " ".join(f"{x:.2f}" for x in r.mpps_runs)
        print(f"{r.scenario:<18} {r.size:>5} {r.mpps_median:>8.2f} {r.ns_per_packet:>8.1f} {r.gbps:>8.2f}  {runs}")


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _print_vhost_table(results: list[vhost.Result], notes: list[str]) -> None:  # vhost and vf
    for note in notes:
        print(note)
    if not results:
        return
    print(f"{'scenario':<3} {'size':>5} {'ours':<15} {'ours Mpps':>9} {'ref':<15} {'ref Mpps':>9} {'ratio':>6}  "
          "per-round ratios")
    shown = set()
    for r in results:
        if r.scenario not in shown:
            shown.add(r.scenario)
            print(f"# {r.scenario}: {r.what}")
        ratios = " ".join(f"{x:.2f}" for x in r.ratio_runs)
        print(f"{r.scenario:<3} {r.size:>5} {r.ours:<15} {_fmt(r.ours_mpps):>9} {r.ref:<15} {_fmt(r.ref_mpps):>9} "
              f"{_fmt(r.ratio):>6}  {ratios}")
        for e in r.errors:
            print(f"    not measured: {e}")


def _print_vm1_table(results: list[vm1.Vm1Result], notes: list[str]) -> None:
    """kpps rather than Mpps: under TCG the guest sends tens of thousands per second."""
    for note in notes:
        print(note)
    if not results:
        return
    print(f"# {results[0].ours} vs {results[0].ref}: guest UDP -> namespace socket, kpps received "
          "(loss: 1 - received / sent by the guest's stack)")
    print(f"{'iommu':<13} {'size':>5} {'ours kpps':>9} {'loss':>6} {'DPDK kpps':>9} {'loss':>6} {'ratio':>6}  "
          "per-round ratios")
    k = (lambda x: None if x is None else x * 1e3)
    pct = (lambda x: "-" if x is None else f"{x:.1%}")
    for r in results:
        ratios = " ".join(f"{x:.2f}" for x in r.ratio_runs)
        print(f"{r.scenario:<13} {r.size:>5} {_fmt(k(r.ours_mpps)):>9} {pct(r.ours_loss):>6} "
              f"{_fmt(k(r.ref_mpps)):>9} {pct(r.ref_loss):>6} {_fmt(r.ratio):>6}  {ratios}")
        for e in r.errors:
            print(f"    not measured: {e.splitlines()[0]}")


def _print_delivery_table(results: list[vm1.DeliveryResult]) -> None:
    """Delivered / sent in %: what a lossy back-end (an IOTLB miss dropping packets) shows."""
    if not results:
        return
    r0 = results[0]
    print(f"# {r0.ours} vs {r0.ref}: namespace -> guest socket, {r0.count} x {vm1.DELIVERY_SIZE} B per rate, "
          "% delivered (guest Udp InDatagrams / sent)")
    print(f"{'iommu':<13} {'pps':>5} {'ours %':>7} {'DPDK %':>7}  per-round ours | DPDK")
    for r in results:
        runs = " ".join(f"{x:.1f}" for x in r.ours_runs) + " | " + " ".join(f"{x:.1f}" for x in r.ref_runs)
        print(f"{r.iommu:<13} {r.rate:>5} {_fmt(r.ours_delivered_pct, '.1f'):>7} "
              f"{_fmt(r.ref_delivered_pct, '.1f'):>7}  {runs}")
        csum = sum(s["csum_errors"] for s in r.ours_samples + r.ref_samples)
        if csum:
            print(f"    UDP checksum errors in the guest: {csum} (see --json)")
        for e in r.errors:
            print(f"    not measured: {e.splitlines()[0]}")


def _payloads(text: str) -> tuple[int, ...]:
    return _int_list(text, 16, 1472, "UDP payload sizes")  # 1472: one frame at MTU 1500


def _choices(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    """A comma-separated subset of ``allowed`` (an argparse type's body)."""
    out = tuple(x for x in text.split(",") if x)
    if not out or any(x not in allowed for x in out):
        raise argparse.ArgumentTypeError(f"{what} are {','.join(allowed)}, got {text!r}")
    return out


def _iommus(text: str) -> tuple[str, ...]:
    return _choices(text, vm1.IOMMUS, "IOMMU modes")


def _whats(text: str) -> tuple[str, ...]:
    return _choices(text, vm1.WHATS, "measurements")


def _rates(text: str) -> tuple[int, ...]:
    return _int_list(text, 1, 100_000, "rates (datagrams/s)")


def _int_list(text: str, lo: int, hi: int, what: str) -> tuple[int, ...]:
    """Comma-separated integers, each in lo..hi (an argparse type)."""
    try:
        out = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: expected integers like {lo},{hi}, got {text!r}") from None
    if not out or any(not lo <= s <= hi for s in out):
        raise argparse.ArgumentTypeError(f"{what} must be {lo}..{hi}, got {text!r}")
    return out


def _sizes(text: str) -> tuple[int, ...]:
    return _int_list(text, 60, 1518, "sizes")


def _scenarios(text: str) -> tuple[str, ...]:
    out = tuple(x for x in text.replace(",", "") if x)
    if not out or any(x not in vhost.SCENARIOS for x in out):
        raise argparse.ArgumentTypeError(f"scenarios are letters of {''.join(vhost.SCENARIOS)}, got {text!r}")
    return out


def _directions(text: str) -> tuple[str, ...]:
    return _choices(text, vf.DIRECTIONS, "directions")


def _kinds(text: str) -> tuple[str, ...]:
    return _choices(text, vf.KINDS, "kinds")


def _common(sub: argparse.ArgumentParser, seconds: float, rounds: int) -> None:
    sub.add_argument("--seconds", type=float, default=seconds, help="length of one measured window")
    sub.add_argument("--rounds", type=int, default=rounds, help="alternating runs per scenario (median reported)")
    sub.add_argument("--cpu", type=int, default=None, help="CPU for the measured lcore (default: the last one)")
    sub.add_argument("--json", action="store_true")
    sub.set_defaults(plot=None)


def _plot_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--plot", metavar="FILE.png", default=None,
                     help="also draw ours beside DPDK per cell, with the per-round spread (needs matplotlib)")


def _write_plot(path: str | None, panels: list[plot.Panel]) -> int:
    """Draw the bench's panels into PATH (if asked); the exit status."""
    if path is None:
        return 0
    try:
        plot.save(path, panels)
    except plot.PlotError as e:
        print(f"vhostpci-bench: error: {e}", file=sys.stderr)
        return 1
    print(f"vhostpci-bench: plot written to {path}", file=sys.stderr)
    return 0


QUICK_COUNT = 1000  # vm1 --quick: delivery datagrams per rate (2 s at 500 pps)


def _raise_interrupt(signum, frame):  # SIGTERM ends the bench through its cleanup paths, like Ctrl-C
    raise KeyboardInterrupt


def _run_vm1(args: argparse.Namespace) -> int:
    if args.quick:
        args.seconds, args.rounds, args.size, args.count = 2.0, 1, args.size[:1], min(args.count, QUICK_COUNT)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        report = vm1.run(args.seconds, args.rounds, args.size, args.cpu, args.iommu,
                         lambda msg: print(msg, file=sys.stderr, flush=True), what=args.what, rates=args.rates,
                         count=args.count, iotlb_lcore=args.iotlb_lcore, iotlb_revoke=args.iotlb_revoke)
    except KeyboardInterrupt:
        print("vhostpci-bench: interrupted", file=sys.stderr)
        return 130
    except vm1.BenchError as e:  # no gcc, no guest image, no veth
        print(f"vhostpci-bench: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        for note in report.notes:
            print(note, file=sys.stderr)
        print(json.dumps({"scenario": "vm1", "what": list(args.what), "seconds": args.seconds, "rounds": args.rounds,
                          "sizes": list(args.size), "iommu": list(args.iommu), "rates": list(args.rates),
                          "count": args.count, "iotlb_lcore": args.iotlb_lcore,
                          "iotlb_revoke": args.iotlb_revoke, "notes": report.notes,
                          "results": [asdict(r) for r in report.throughput],
                          "delivery": [asdict(r) for r in report.delivery]}, indent=2))
    else:
        _print_vm1_table(report.throughput, report.notes)
        _print_delivery_table(report.delivery)
    return _write_plot(args.plot, [
        plot.throughput_panel(report.throughput, "guest UDP -> namespace socket (vm1)", "kpps", 1e3),
        plot.delivery_panel(report.delivery, "namespace -> guest socket (vm1)")])


def _warmup_quick(p: argparse.ArgumentParser) -> None:
    """--warmup and --quick of the packet benches (vhost, vf)."""
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of traffic before the measured window")
    p.add_argument("--quick", action="store_true", help="short run: --seconds 0.5 --rounds 1 --warmup 0.3")


def _run_xdp_steps(args: argparse.Namespace) -> int:
    if args.quick:
        args.rounds, args.bursts = 1, 2000
    results, notes = xdp_steps.run(args.size, args.rounds, args.bursts, args.cpu)
    if args.json:
        print(json.dumps({"scenario": "xdp-steps", "notes": notes, "results": [asdict(r) for r in results]},
                         indent=2))
        return 0
    for note in notes:
        print(note)
    if results:
        print(f"{'path':<9} {'size':>5} " + " ".join(f"{s:>13}" for s in xdp_steps.STEPS) + "  (ns per packet)")
    for r in results:
        print(f"{r.path:<9} {r.size:>5} " + " ".join(f"{r.ns_per_packet[s]:>13.1f}" for s in xdp_steps.STEPS))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = _ArgParser(prog="vhostpci-bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="scenario", required=True)
    fw = sub.add_parser("framework", help="io forwarding overhead: net_null and net_ring on one lcore")
    _common(fw, 2.0, 3)
    fw.add_argument("--size", type=int, default=64)
    vh = sub.add_parser("vhost", help="our vhost-pci port vs DPDK's vhost PMD; cost of VM1's IOMMU modes")
    _common(vh, 2.0, 5)
    vh.add_argument("--size", type=_sizes, default=vhost.SIZES, help="packet sizes, comma-separated (64,1518)")
    _warmup_quick(vh)
    _plot_option(vh)
    vh.add_argument("--scenarios", type=_scenarios, default=vhost.SCENARIOS, help="subset of abc (default: all)")
    vh.add_argument("--queues", type=int, choices=range(1, 9), default=1, metavar="N",
                    help="N > 1: a row with N queue pairs on both sides of a and b (one lcore each side)")
    vfp = sub.add_parser("vf", help="our VF ports vs DPDK's af_packet and af_xdp PMDs on a veth pair (needs root)")
    _common(vfp, 2.0, 5)
    vfp.add_argument("--size", type=_sizes, default=vf.SIZES,
                     help="frame sizes with FCS, comma-separated (64,1518; veth frames are 4 B shorter)")
    _warmup_quick(vfp)
    _plot_option(vfp)
    vfp.add_argument("--directions", type=_directions, default=vf.DIRECTIONS, help="subset of tx,rx,vm1 (default: all)")
    vfp.add_argument("--kinds", type=_kinds, default=vf.KINDS,
                     help="subset of packet (AF_PACKET),xdp (AF_XDP) (default: both)")
    v1 = sub.add_parser("vm1", help="real VM1 (QEMU TCG) <-> namespace through our app vs DPDK testpmd (root)")
    _common(v1, 5.0, 3)
    v1.add_argument("--size", type=_payloads, default=vm1.SIZES,
                    help="UDP payload sizes, comma-separated (64,1024); all sent in each boot")
    v1.add_argument("--iommu", type=_iommus, default=vm1.IOMMUS,
                    help="subset of none,intel-strict,intel-lazy (default: all)")
    v1.add_argument("--what", type=_whats, default=vm1.WHATS,
                    help="subset of throughput (guest -> namespace),delivery (namespace -> guest); default both, "
                    "in one boot")
    v1.add_argument("--rates", type=_rates, default=vm1.RATES,
                    help="delivery: datagrams/s from the namespace, comma-separated (500,5000)")
    v1.add_argument("--count", type=int, default=vm1.COUNT, help=f"delivery: datagrams per rate ({vm1.COUNT})")
    v1.add_argument("--iotlb-lcore", choices=("auto", "1", "0"), default="auto",
                    help="our port's iotlb_lcore devarg: who serves VM1's IOTLB messages (auto; 1: the polling "
                    "lcore; 0: the control thread, on VM1's CPU here)")
    v1.add_argument("--iotlb-revoke", choices=("auto", "control"), default="auto",
                    help="our port's iotlb_revoke devarg: who revokes the pages of the INVALIDATEs the control "
                    "thread serves (auto: the polling lcore, through a stand-in process; control)")
    v1.add_argument("--quick", action="store_true",
                    help=f"short run: --seconds 2 --rounds 1, first size only, --count {QUICK_COUNT}")
    _plot_option(v1)
    io = sub.add_parser("iotlb", help="IOTLB UPDATE, INVALIDATE and MISS round-trip latency, p50/p99 in us")
    io.add_argument("--samples", type=int, default=200, help="messages per figure and placement")
    io.add_argument("--rounds", type=int, default=1, help="alternating runs of the placements (median reported)")
    io.add_argument("--placement", type=lambda t: _choices(t, iotlb.PLACEMENTS, "placements"),
                    default=iotlb.PLACEMENTS, help="subset of split,shared (VM2's control thread and lcore)")
    io.add_argument("--live", type=int, default=0,
                    help="time UPDATE/INVALIDATE among this many other live grants (a lazy vIOMMU keeps ~30000)")
    io.add_argument("--json", action="store_true")
    io.set_defaults(cpu=None)
    xs = sub.add_parser("xdp-steps", help="ns per packet by step of net_vf_xdp's tx burst on a veth (needs root)")
    xs.add_argument("--size", type=_sizes, default=(64, 1518), help="frame sizes with FCS, comma-separated")
    xs.add_argument("--rounds", type=int, default=3, help="alternating runs of the two paths (median reported)")
    xs.add_argument("--bursts", type=int, default=20000, help="bursts of 32 per run")
    xs.add_argument("--cpu", type=int, default=None, help="CPU to run on (default: the last one)")
    xs.add_argument("--quick", action="store_true", help="short run: --rounds 1 --bursts 2000")
    xs.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.cpu is not None and args.cpu not in os.sched_getaffinity(0):
        p.error(f"--cpu {args.cpu}: not a CPU this process may use")
    if args.scenario == "iotlb" and args.live < 0:
        p.error(f"--live {args.live}: a number of grants, 0 or more")
    if args.scenario == "vm1" and args.count < 1:
        p.error(f"--count {args.count}: at least one datagram per rate")
    if getattr(args, "plot", None) is not None:  # before minutes of measuring, not after
        try:
            plot.require()
        except plot.PlotError as e:
            p.error(str(e))
        if not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
            p.error(f"--plot {args.plot}: no such directory")
    if args.scenario == "xdp-steps":
        return _run_xdp_steps(args)
    if args.scenario == "framework":
        results = framework.run(args.seconds, args.rounds, args.size, args.cpu)
        if args.json:
            print(json.dumps({"scenario": "framework", "results": [asdict(r) for r in results]}, indent=2))
        else:
            _print_table(results)
    elif args.scenario == "vm1":
        return _run_vm1(args)
    elif args.scenario == "iotlb":
        lresults = iotlb.run(args.samples, args.placement, args.rounds, args.live)
        if args.json:
            print(json.dumps({"scenario": "iotlb", "samples": args.samples, "rounds": args.rounds, "live": args.live,
                              "results": [asdict(r) for r in lresults]}, indent=2))
        else:
            print(f"{'placement':<9} {'message':<11} {'p50 us':>9} {'p99 us':>9}  per-round p50")
            for r in lresults:
                runs = " ".join(f"{x:.1f}" for x in r.runs_us)
                print(f"{r.placement:<9} {r.measure:<11} {r.p50_us:>9.1f} {r.p99_us:>9.1f}  {runs}")
    else:  # vhost, vf: ours vs DPDK side by side
        if args.quick:
            args.seconds, args.rounds, args.warmup = 0.5, 1, 0.3
        signal.signal(signal.SIGTERM, _raise_interrupt)
        progress = (lambda msg: print(msg, file=sys.stderr, flush=True))
        try:
            if args.scenario == "vhost":
                vresults, notes = vhost.run(args.seconds, args.rounds, args.size, args.cpu, args.warmup,
                                            args.scenarios, progress, args.queues)
            else:
                vresults, notes = vf.run(args.seconds, args.rounds, args.size, args.cpu, args.warmup,
                                         args.directions, progress, args.kinds)
        except KeyboardInterrupt:
            print("vhostpci-bench: interrupted", file=sys.stderr)
            return 130
        except vf.BenchError as e:  # the bench could not be set up (e.g. the veth pair)
            print(f"vhostpci-bench: error: {e}", file=sys.stderr)
            return 1
        if args.json:
            for note in notes:
                print(note, file=sys.stderr)
            print(json.dumps({"scenario": args.scenario, "seconds": args.seconds, "rounds": args.rounds,
                              "warmup": args.warmup, "notes": notes,
                              "results": [asdict(r) for r in vresults]}, indent=2))
        else:
            _print_vhost_table(vresults, notes)
        return _write_plot(args.plot, [plot.throughput_panel(vresults, f"{args.scenario} bench")])
    return 0
