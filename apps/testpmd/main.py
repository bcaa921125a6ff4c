"""vhostpci-testpmd: EAL options, ``--``, then testpmd's application options.

    vhostpci-testpmd -l 0-1 --vdev net_ring0 --vdev net_ring1 -- -i
    vhostpci-testpmd -l 0-1 --vdev net_ring0 --vdev net_ring1 -- -a --tx-first --stats-period 1

Startup attaches every ``--vdev`` in order (port ids 0, 1, ...) and starts
it.  Then: with ``-i`` the ``testpmd>`` shell; with ``-a`` alone, forward
until SIGINT/SIGTERM; with neither, the shell on a terminal or commands
read from stdin otherwise.  ``--cmdline-file`` runs its commands first.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from typing import NoReturn

from apps.cli import add_idle_options, int_in, silence_stdout
from pmd.eal import EalConfig, eal_init, format_cpuset
from pmd.ethdev import PortError, format_mac
from pmd.fwd.common import MODE_NAMES
from pmd.fwd.config import FwdConfig
from pmd.fwd.runtime import Forwarding, FwdError, forwarding_from_eal
from pmd.metrics import MetricsError, MetricsServer, start_metrics
from pmd.signals import StopSignals
from pmd.telemetry import start_telemetry

from . import display
from .shell import TestpmdShell, make_shell

PROG = "vhostpci-testpmd"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


_positive = int_in(1)  # testpmd's counts: 1 or more


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="testpmd-style forwarding over vhostpci ports",
                usage=f"{PROG} [EAL options] -- [-i] [-a] [--tx-first] [options]")
    p.add_argument("-i", "--interactive", action="store_true", help="run the testpmd> shell")
    p.add_argument("-a", "--auto-start", action="store_true", help="start forwarding at startup")
    p.add_argument("--tx-first", action="store_true", help="send one burst on each port when starting")
    p.add_argument("--cmdline-file", metavar="FILE", help="run the commands in FILE first")
    p.add_argument("--stats-period", type=_positive, metavar="N", help="print port stats every N seconds")
    p.add_argument("--forward-mode", choices=MODE_NAMES, default="io", metavar="MODE",
                   help=f"forwarding mode ({', '.join(MODE_NAMES)})")
    p.add_argument("--nb-cores", type=_positive, default=1, metavar="N", help="forwarding lcores")
    p.add_argument("--burst", type=_positive, default=32, metavar="N", help="packets per burst")
    p.add_argument("--txpkts", type=_positive, default=64, metavar="N", help="txonly/flowgen frame size")
    p.add_argument("--total-num-mbufs", type=_positive, default=16384, metavar="N", help="mbuf pool size")
    add_idle_options(p)
    # testpmd options applied through the shell's own commands (see _apply_port_options)
    for opt in ("--rxq", "--txq", "--rxd", "--txd", "--nb-ports"):
        p.add_argument(opt, type=_positive, metavar="N", help=f"as testpmd's {opt}")
    p.add_argument("--eth-peer", action="append", default=[], metavar="P,MAC", help="peer MAC of port P")
    p.add_argument("--port-topology", choices=("paired",), default="paired", help="only paired here")
    p.add_argument("--record-burst-stats", action="store_true", help="RX/TX burst lines in forward stats")
    for opt in _NO_EFFECT_FLAGS:
        p.add_argument(opt, action="store_true", help=argparse.SUPPRESS)
    for opt in _NO_EFFECT_VALUES:
        p.add_argument(opt, metavar="X", help=argparse.SUPPRESS)
    return p


# testpmd options that mean nothing here: accepted with one notice line each.
_NO_EFFECT_FLAGS = ("--rss-ip", "--rss-udp", "--disable-rss", "--no-flush-rx", "--numa", "--no-numa",
                    "--no-lsc-interrupt", "--no-rmv-interrupt", "--enable-drop-en", "--disable-crc-strip")
_NO_EFFECT_VALUES = ("--mbcache", "--mbuf-size", "--max-pkt-len", "--txfreet", "--rxfreet", "--txrst",
                     "--rxpt", "--rxht", "--rxwt", "--txpt", "--txht", "--txwt", "--socket-num", "--port-numa-config",
                     "--ring-numa-config", "--pkt-filter-mode", "--tx-offloads", "--rx-offloads")


def _app_notices(args: argparse.Namespace) -> list[str]:
    out = []
    for opt in (*_NO_EFFECT_FLAGS, *_NO_EFFECT_VALUES):
        value = getattr(args, opt[2:].replace("-", "_"))
        if value not in (None, False):
            out.append(f"{PROG}: {opt}: no effect here (no such hardware setting)")
    return out


def _apply_port_options(shell: TestpmdShell, args: argparse.Namespace) -> None:
    """--rxq/--txq/--rxd/--txd/--nb-ports/--eth-peer/--record-burst-stats,
    through the shell commands that do the same (errors exit 2)."""
    cmds = []
    if args.rxq or args.txq or args.rxd or args.txd:
        cmds.append("port stop all")
        cmds += [f"port config all {k} {v}" for k, v in
                 (("rxq", args.rxq), ("txq", args.txq), ("rxd", args.rxd), ("txd", args.txd)) if v]
        cmds.append("port start all")
    if args.nb_ports:
        cmds.append(f"set nbport {args.nb_ports}")
    for peer in args.eth_peer:
        pid, _, mac = peer.partition(",")
        cmds.append(f"set eth-peer {pid} {mac}")
    if args.record_burst_stats:
        cmds.append("set record-burst-stats on")
    for cmd in cmds:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            shell.onecmd(cmd)
        bad = [ln for ln in out.getvalue().splitlines() if ln.startswith(("Error", "Bad arguments", "Invalid",
                                                                           "Please"))]
        if bad:
            _fail(f"{cmd}: {bad[0]}", 2)


def parse_app_args(argv: list[str]) -> argparse.Namespace:
    """Parse the options after ``--`` (exit 2 with one line on error)."""
    return _parser().parse_args(argv)


def _fail(message: str, status: int = 1) -> NoReturn:
    print(f"{PROG}: error: {' '.join(message.splitlines())}", file=sys.stderr)
    raise SystemExit(status)


def setup(argv: list[str]) -> tuple[Forwarding, argparse.Namespace, EalConfig, MetricsServer | None]:
    """EAL, app options, the ``--metrics`` endpoint (bound before any port
    exists: an address in use starts nothing), the forwarding runtime and
    every --vdev port started."""
    eal, app_argv = eal_init(argv, prog=PROG, app_help=lambda: _parser().format_help())
    args = parse_app_args(app_argv)
    workers = len(eal.worker_lcores)
    if not workers:
        _fail(f"no worker lcore to forward on: lcores {format_cpuset(set(eal.lcores))} are all the main lcore"
              " (give at least two, e.g. -l 0-1)", 2)
    if args.nb_cores > workers:
        _fail(f"--nb-cores={args.nb_cores}: only {workers} worker lcores (give the EAL more, e.g. -l)", 2)
    config = FwdConfig(mode=args.forward_mode, nb_cores=args.nb_cores, burst=args.burst, txpkts=args.txpkts,
                       interrupts=not args.no_interrupts, idle_polls=args.idle_polls, idle_wait_ns=args.idle_wait)
    try:
        config.validate()  # before any port exists: bad input starts nothing
    except ValueError as e:
        _fail(str(e), 2)
    try:
        metrics = start_metrics(eal.metrics)
    except MetricsError as e:
        _fail(str(e))
    try:
        fwd = forwarding_from_eal(eal, args.total_num_mbufs)
    except (PortError, FwdError, ValueError) as e:
        _close(metrics)
        _fail(str(e))
    except KeyboardInterrupt:
        _close(metrics)
        _fail("interrupted while setting up the ports", 130)
    if metrics is not None:
        metrics.ports = lambda: fwd.ports
    fwd.config = config
    try:
        for pid, port in fwd.ports.items():
            print(f"Configuring Port {pid} (socket 0)")
            print(f"Port {pid}: {format_mac(port.mac())}")
        print("Checking link statuses...\nDone")
    except BrokenPipeError:  # stdout's reader left already (| head -1): go on quietly
        silence_stdout()
    return fwd, args, eal, metrics


def _close(metrics: MetricsServer | None) -> None:
    if metrics is not None:
        metrics.close()


def run_until_signal(shell: TestpmdShell, period: int | None) -> None:
    """Forward until SIGINT/SIGTERM, printing all port stats every ``period`` s."""
    with StopSignals() as stop:
        if not period:
            print("Press Ctrl-C to quit (or send SIGTERM).")
        while not stop.wait(period or None):
            print("\nPort statistics ====================================")
            for port in shell.fwd.ports.values():
                if not port.closed:
                    print(display.nic_stats(port, shell.rates))
        print(f"\nSignal {stop.received[0]} received, preparing to exit...")


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    sys.stdout.reconfigure(line_buffering=True)
    argv = sys.argv[1:] if argv is None else argv
    fwd, args, eal, metrics = setup(argv)
    interactive = args.interactive or (not args.auto_start and not args.cmdline_file and sys.stdin.isatty())
    script_stdin = not interactive and not args.auto_start and not args.cmdline_file
    shell = make_shell(fwd, script_stdin)
    shell.log_specs = list(eal.log_levels)
    for notice in _app_notices(args):
        print(notice, file=sys.stderr)
    _apply_port_options(shell, args)
    telemetry = start_telemetry(eal, lambda: fwd.ports)
    try:
        if args.auto_start:
            if not shell.onecmd("start tx_first" if args.tx_first else "start") and not fwd.running:
                _fail("cannot start forwarding")
        if args.cmdline_file:
            try:
                with open(args.cmdline_file) as f:
                    lines = f.readlines()
            except OSError as e:
                _fail(f"--cmdline-file: {e}")
            print(f"Read CLI commands from {args.cmdline_file}")
            if shell.run_lines(lines):
                return 0
        if interactive:
            shell.run_interactive()
        elif script_stdin:
            shell.cmdloop()
        elif args.auto_start:
            run_until_signal(shell, args.stats_period)
        if not shell.finished:
            shell.do_quit("")
    except KeyboardInterrupt:
        print("\nInterrupted, exiting...")
        shell.shutdown()
    except BrokenPipeError:  # stdout's reader left: finish quietly
        silence_stdout()
    finally:
        if telemetry is not None:
            telemetry.close()
        _close(metrics)
        if fwd.running or any(not p.closed for p in fwd.ports.values()):
            shell.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
