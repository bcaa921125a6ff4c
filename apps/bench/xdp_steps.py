"""Where the time of net_vf_xdp's tx burst goes: ns per packet by step.

Bursts of 32 as txonly sends them, on queue 0 of a veth pair ``vbs<pid>a``
-> ``vbs<pid>b`` (root namespace, removed on every exit), from this process
pinned to ``cpu``.  Around each step of a burst the TSC is read
(``llvm.readcyclecounter``; its rate measured against the monotonic clock):

- ``alloc+header``: 32 mbufs from the pool, the frame's first 60 B written;
- ``reap``: completed frames back to the pool (``reap_completions``);
- ``post``: descriptors written, producer released (``tx_post``; on the copy
  path this includes copying each mbuf into a UMEM frame);
- ``wakeup``: the send() that makes the kernel transmit (``tx_wakeup``: in
  copy mode the kernel's whole transmit path runs inside it).

Two paths, alternating within each round: ``one copy`` (the mbufs come
from the port's UMEM pool: posted as they are) and ``copy`` (mbufs of
another pool: copied into frames).  Medians over rounds.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from apps.wire import VethWire, wire_unavailable
from pmd.atomics import memcpy
from pmd.ethdev import Port
from pmd.mbuf import alloc_bulk, create_pool, free_bulk, mbuf_offset
from pmd.vdev import parse_vdev
from pmd.xdp_pmd.burst import reap_completions, tx_post, tx_wakeup

STEPS = ("alloc+header", "reap", "post", "wakeup")
PATHS = ("one copy", "copy")
BURST = 32
HEADER = 60  # bytes txonly writes per frame (the rest is whatever the buffer held)
NEEDS_ROOT = "the xdp-steps bench needs root (a veth pair, an AF_XDP socket): not run"


@intrinsic
def _rdtsc(typingctx):
    sig = types.int64()

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])

    return sig, codegen


@njit(nogil=True)
def _tsc():
    return _rdtsc()


@njit(nogil=True)
def _bursts(st, pool, size, nbursts, ticks):
    """``nbursts`` bursts of BURST ``size`` B frames; TSC ticks per step
    added into ``ticks[:4]``; returns the frames the port took."""
    bufs = np.empty(BURST, np.int32)
    head = np.zeros(HEADER, np.uint8)
    head[:12] = 2
    head[12] = 8
    taken = 0
    for _ in range(nbursts):
        t0 = _rdtsc()
        if not alloc_bulk(pool, bufs, BURST):
            return taken
        for k in range(BURST):
            memcpy(pool.data, mbuf_offset(pool, bufs[k]), head, 0, HEADER)
            pool.data_len[bufs[k]] = size
        t1 = _rdtsc()
        reap_completions(st, 0)
        t2 = _rdtsc()
        n, queued = tx_post(st, 0, pool, bufs, BURST)
        t3 = _rdtsc()
        if queued > 0 or n < BURST:
            tx_wakeup(st, 0)
        t4 = _rdtsc()
        if n < BURST:
            free_bulk(pool, bufs[n:], BURST - n)
        ticks[0] += t1 - t0
        ticks[1] += t2 - t1
        ticks[2] += t3 - t2
        ticks[3] += t4 - t3
        taken += n
    return taken


@dataclass
class StepResult:
    path: str
    size: int
    ns_per_packet: dict[str, float]  # step -> median over rounds
    runs: dict[str, list[float]] = field(default_factory=dict)


def _tsc_ghz() -> float:
    a, t = _tsc(), time.perf_counter()
    time.sleep(0.2)
    return (_tsc() - a) / (time.perf_counter() - t) / 1e9


def run(sizes: tuple[int, ...] = (64, 1518), rounds: int = 3, bursts: int = 20000,
        cpu: int | None = None) -> tuple[list[StepResult], list[str]]:
    """Sizes with the FCS (a veth frame is 4 B shorter); returns the results and notes."""
    why = wire_unavailable()
    if why is not None:
        return [], [NEEDS_ROOT if why == "not root" else f"the xdp-steps bench cannot run: {why}"]
    cpu = max(os.sched_getaffinity(0)) if cpu is None else cpu
    old = os.sched_getaffinity(0)
    tag = os.getpid()
    wire = VethWire(f"vbs{tag}a", f"vbs{tag}b")
    runs: dict[tuple[str, int], dict[str, list[float]]] = {}
    try:
        os.sched_setaffinity(0, {cpu})
        wire.create()
        port = Port(0, parse_vdev(f"net_vf_xdp0,iface={wire.host}"))
        umem_pool, other = create_pool(16384), create_pool(4096)
        port.use_pool(umem_pool)
        port.start()
        try:
            st = port.kernel_state()
            ticks = np.zeros(4, np.int64)
            for pool in (umem_pool, other):  # compile, warm up
                _bursts(st, pool, 60, 100, ticks)
            ghz = _tsc_ghz()
            for r in range(rounds):
                for size in sizes:
                    order = list(zip(PATHS, (umem_pool, other)))
                    for path, pool in (order if r % 2 == 0 else order[::-1]):
                        ticks[:] = 0
                        n = _bursts(st, pool, size - 4, bursts, ticks)
                        row = runs.setdefault((path, size), {s: [] for s in STEPS})
                        for k, step in enumerate(STEPS):
                            row[step].append(float(ticks[k]) / max(n, 1) / ghz)
        finally:
            port.close()
    finally:
        wire.delete()
        os.sched_setaffinity(0, old)
    results = [StepResult(path, size, {s: statistics.median(v) for s, v in row.items()}, row)
               for (path, size), row in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0]))]
    return results, [f"CPU {cpu}, bursts of {BURST}, {bursts} bursts per run, TSC {ghz:.2f} GHz"]
