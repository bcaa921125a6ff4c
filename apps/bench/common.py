"""Helpers shared by the bench scenarios: CPUs, the in-process forwarding
runtime, medians, and the A/B machinery of the side-by-side benches
(``vhost``, ``vf``): one measured run, alternating rounds, result rows."""
from __future__ import annotations

import contextlib
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pmd.fwd.runtime import Forwarding
from pmd.lcore import LcoreManager

FLOW_TIMEOUT_S = 20.0  # from the last side's start to the first packet at the receiver


def default_cpu() -> int:
    """The CPU our measured lcore runs on unless ``--cpu`` says otherwise: the last one."""
    return max(os.sched_getaffinity(0))


def other_cpu(cpu: int) -> int:
    """A CPU other than ``cpu`` for the peer process (``cpu`` itself on a 1-CPU machine)."""
    return next((c for c in sorted(os.sched_getaffinity(0)) if c != cpu), cpu)


def forwarding(cpu: int, nb_mbufs: int = 16384) -> Forwarding:
    """A runtime with one forwarding lcore (lcore 1) pinned to ``cpu``."""
    return Forwarding(LcoreManager({0: cpu, 1: cpu}, 0), nb_mbufs)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


# ------------------------------------------------------------ A/B benches
class BenchError(RuntimeError):
    """One run could not be measured; the message says why."""


@dataclass
class Result:
    """One row of a side-by-side bench: our variant against a reference."""
    scenario: str  # e.g. "a", "b", "c" (vhost), "tx", "rx" (vf)
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


class Mpps(float):
    """A measured rate in Mpps and what the sides noted about its window
    (``note``: e.g. how often our lcore found nothing to do)."""
    note = ""


class CounterMeter:
    """The receive rate of a packet counter between ``begin()`` and ``end()``."""

    _t0 = 0.0
    _n0 = 0

    def packets(self) -> int:
        raise NotImplementedError

    def begin(self) -> None:
        self._n0, self._t0 = self.packets(), time.perf_counter()

    def end(self) -> float:
        n, t = self.packets(), time.perf_counter()
        return (n - self._n0) / (t - self._t0) / 1e6


@contextlib.contextmanager
def signals_deferred(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
    """Run a cleanup block without being cut short by Ctrl-C or SIGTERM: a
    signal arriving meanwhile is recorded, and its previous handler runs
    once the block is done (so the bench still ends, after cleaning up).
    Replacing the Python handlers works whichever thread the kernel picks
    (a signal mask would hold only the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in signums}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if got:
            h = old[got[0]]
            if callable(h):
                h(got[0], None)
            elif h == signal.SIG_DFL:
                os.kill(os.getpid(), got[0])


def measure(first, second_factory: Callable[[], Any] | None, meter_of: Callable[[Any, Any], Any],
            warmup: float, seconds: float) -> float:
    """Start ``first``, then the side ``second_factory`` makes (if any); wait
    for traffic at the receiver (``meter_of(first, second)``), warm up,
    measure Mpps; both sides are closed on every exit path.  A side with a
    ``check()`` is checked while waiting and after the window (still alive:
    the window measured a running process); a second side's
    ``flow_timeout`` bounds the wait for the first packet.  A side with
    ``window_begin()`` / ``window_note()`` is told when the window opens
    and closes: the notes come back in the result's ``note``."""
    stack = contextlib.ExitStack()
    try:
        stack.callback(first.close)
        first.start()
        second = None
        if second_factory is not None:
            second = second_factory()
            stack.callback(second.close)
            second.start()
        sides = [s for s in (first, second) if s is not None and hasattr(s, "check")]
        meter = meter_of(first, second)
        timeout = getattr(second, "flow_timeout", FLOW_TIMEOUT_S)
        deadline = time.monotonic() + timeout
        while meter.packets() == 0:
            for s in sides:
                s.check()
            if time.monotonic() > deadline:
                raise BenchError(f"no packet reached the receiver within {timeout:.0f} s")
            time.sleep(0.05)
        time.sleep(warmup)
        noting = [s for s in (first, second) if s is not None and hasattr(s, "window_note")]
        meter.begin()
        for s in noting:
            s.window_begin()
        time.sleep(seconds)
        mpps = Mpps(meter.end())
        mpps.note = "; ".join(s.window_note() for s in noting)
        for s in sides:
            s.check()
        return mpps
    finally:
        with signals_deferred():
            stack.close()


def alternate(rounds: int, sizes: Iterable[int], scenarios: Iterable[str], *,
              variants: Callable[[str], list[str]], pairs: Callable[[str], list[tuple[str, str]]],
              label: Callable[[str, str], str], what: Callable[[str], str],
              run_one: Callable[[str, str, int], float],
              say: Callable[[str], None]) -> list[Result]:
    """Run every variant of every scenario and size ``rounds`` times, the
    variants alternating within a round (order reversed every other round:
    the machine's speed level drifts); a variant that failed once is not
    retried.  One Result per (scenario, size, (ours, ref) pair): medians
    and the median of the per-round ratio ours / ref."""
    sizes, scenarios = list(sizes), list(scenarios)
    runs: dict[tuple[str, int, str], list[float | None]] = {}
    errors: dict[tuple[str, int, str], list[str]] = {}
    for r in range(rounds):
        for size in sizes:
            for sc in scenarios:
                vs = variants(sc)
                for v in (vs if r % 2 == 0 else vs[::-1]):
                    key = (sc, size, v)
                    if key in runs and None in runs[key]:
                        runs[key].append(None)  # failed before: do not retry every round
                        continue
                    t0 = time.monotonic()
                    try:
                        mpps: float | None = run_one(sc, v, size)
                        note = getattr(mpps, "note", "")
                        say(f"round {r + 1}/{rounds} {sc} {size:>4} B {label(sc, v):<16} {mpps:8.3f} Mpps"
                            f"  ({time.monotonic() - t0:.1f} s)" + (f"  {note}" if note else ""))
                    except Exception as e:  # noqa: BLE001 - any failure of one run is reported, the rest go on
                        mpps = None
                        msg = f"{sc} {size} B {label(sc, v)}: {e}"
                        errors.setdefault(key, []).append(msg)
                        say(f"round {r + 1}/{rounds} {msg}")
                    runs.setdefault(key, []).append(mpps)
    results = []
    for sc in scenarios:
        for size in sizes:
            for ours, ref in pairs(sc):
                o = runs.get((sc, size, ours), [])
                f = runs.get((sc, size, ref), [])
                ratios = [a / b for a, b in zip(o, f) if a is not None and b]
                o_ok = [x for x in o if x is not None]
                f_ok = [x for x in f if x is not None]
                results.append(Result(
                    sc, what(sc), size, label(sc, ours), label(sc, ref),
                    median(o_ok) if o_ok else None, median(f_ok) if f_ok else None,
                    median(ratios) if ratios else None, o_ok, f_ok, ratios,
                    errors.get((sc, size, ours), []) + (errors.get((sc, size, ref), []) if ref != ours else []),
                ))
    return results
