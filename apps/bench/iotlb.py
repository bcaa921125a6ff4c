"""``vhostpci-bench iotlb``: IOTLB message latency, measured from the front-end.

VM2 is our vhost-pci port in a forwarding runtime (rxonly, one lcore); VM1
is our virtio-user port with ``iommu=demand`` (buffer pages granted only
when the port asks), driven from this process.  Three figures, each a
p50/p99 over ``samples`` in microseconds:

- ``update``: an IOTLB UPDATE of one 4 KiB page, sent with NEED_REPLY, until
  its ack arrives (the page is then mapped in VM2's window);
- ``invalidate``: the INVALIDATE of that page until its ack (the page is
  then unmapped, after every burst inside the window left it);

  ``--live N`` times both among N other live grants (a lazy vIOMMU's
  state, see ``iotlb_peer.py``);

  both sent by a front-end in its own process (``iotlb_peer.py``), as
  QEMU's are: in this process it would share the interpreter lock with
  VM2's control thread, and the figure would be that lock's;
- ``miss``: a packet posted in a page VM2 may not read yet, until VM2 has
  received it: VM2's lcore parks, its control thread sends the MISS, VM1's
  control thread answers with an UPDATE, VM2 retries (the whole round trip);
- ``wake``: what waking a sleeping thread costs on this machine
  (``wake.py``): one message there and back between two threads that sleep
  until it comes, placed as VM2's control thread and lcore are (two CPUs or
  one), before the port starts.  The figures above are made of such
  wake-ups: a front-end sleeps until each ack; a MISS wakes VM1's control
  thread, whose UPDATE wakes VM2's, before the packet moves.

Placements (``--placement``): ``split`` puts VM2's control thread and its
polling lcore on different CPUs; ``shared`` puts both on one CPU (a poller
that did not yield would starve the control thread: the port yields its
CPU while it is parked on a miss).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from pmd.burst import tx_burst
from pmd.ethdev import ST_IPACKETS, Port
from pmd.fwd.runtime import Forwarding
from pmd.lcore import LcoreManager
from pmd.mbuf import alloc_bulk, create_pool, free_bulk, mbuf_offset
from pmd.placement import CONTROL_TIMER_SLACK_NS, set_control_cpus, set_timer_slack
from pmd.syscalls import monotonic_ns, sleep_us
from pmd.vdev import parse_vdev

from . import wake

PLACEMENTS = ("split", "shared")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MEASURES = ("update", "invalidate", "miss", "wake")


@dataclass
class LatencyResult:
    placement: str
    measure: str
    p50_us: float
    p99_us: float
    samples: int
    runs_us: list[float] = field(default_factory=list)


@njit(nogil=True, cache=True)
def _send_one(st, pool, size):
    bufs = np.empty(1, np.int32)
    if not alloc_bulk(pool, bufs, 1):
        return -1
    off = mbuf_offset(pool, bufs[0])
    for k in range(size):
        pool.data[off + k] = 0x11
    pool.data_len[bufs[0]] = size
    sent = tx_burst(st, 0, pool, bufs, 1)
    if sent < 1:
        free_bulk(pool, bufs, 1)
    return sent


@njit(nogil=True, cache=True)
def _wait_received(stats, above, timeout_ns):
    """Wait until the port's queue 0 received more than ``above`` packets;
    False after ``timeout_ns``.  Compiled, looking every ~10 us (with this
    thread's timer slack at 1 us): a Python loop's sleeps would add tens of
    microseconds to what is measured."""
    t0 = monotonic_ns()
    while stats[0, ST_IPACKETS] <= above:
        if monotonic_ns() - t0 > timeout_ns:
            return False
        sleep_us(10)
    return True


def _pct(xs: list[float]) -> tuple[float, float]:
    a = np.array(xs) * 1e6
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _wait(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(20e-6)
    return True


def _peer_update_invalidate(path: str, samples: int, live: int) -> tuple[list[float], list[float]]:
    """UPDATE and INVALIDATE round trips timed by ``iotlb_peer`` in a child process."""
    p = subprocess.run([sys.executable, "-m", "apps.bench.iotlb_peer", path, str(samples), "--live", str(live)],
                       capture_output=True,
                       text=True, timeout=120, cwd=_ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                           filter(None, (_ROOT, os.environ.get("PYTHONPATH"))))})
    if p.returncode != 0:
        raise RuntimeError(f"the IOTLB front-end process failed (exit {p.returncode}): {p.stderr[-2000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return out["update"], out["invalidate"]


def measure(placement: str, samples: int = 200, cpus: tuple[int, int] | None = None,
            live: int = 0) -> list[LatencyResult]:
    """One placement's three figures."""
    avail = sorted(os.sched_getaffinity(0))
    vm2_cpu = avail[-1] if cpus is None else cpus[1]
    ctl_cpu = (avail[0] if cpus is None else cpus[0]) if placement == "split" else vm2_cpu
    wakes = wake.round_trips(ctl_cpu, vm2_cpu, samples)  # before the lcore polls vm2_cpu
    d = tempfile.mkdtemp(prefix="iotlb", dir="/tmp")
    path = os.path.join(d, "vp.sock")
    fw = Forwarding(LcoreManager({0: ctl_cpu, 1: vm2_cpu}, 0), nb_mbufs=1024)
    set_control_cpus({ctl_cpu})  # the placement measured, not DPDK's rule (control threads off the workers' CPUs)
    vm1 = None
    try:
        fw.config.mode = "rxonly"
        vp = fw.attach_port(f"net_vhost_pci0,path={path}")
        vp.start()
        fw.start()
        ups, invs = _peer_update_invalidate(path, samples, live)
        vm1 = Port(1, parse_vdev(f"net_virtio_user1,path={path},iommu=demand"))
        vm1.start()
        drv = vm1.driver
        if not drv.wait_link(True, 30.0):
            raise RuntimeError("VM1 never connected")
        pool = create_pool(256)
        st = vm1.kernel_state()
        place = drv.places[1]  # VM1's transmit ring: the port reads its buffers

        def revoke_tx_area(s):
            s.iotlb_invalidate(place.buf, place.buf_end - place.buf)

        misses = []
        rx = vp.driver.stats_array()  # live counters: queue 0's ipackets
        slack = set_timer_slack(CONTROL_TIMER_SLACK_NS)  # this thread's short sleeps in _wait_received end when asked
        try:
            for _ in range(samples):
                drv.run_in_control(revoke_tx_area)
                time.sleep(0.002)  # VM1's control thread back in its compiled wait: a MISS, not that call's tail
                got = int(rx[0, ST_IPACKETS])
                t0 = time.perf_counter()
                if _send_one(st, pool, 64) != 1:
                    _wait(lambda: _send_one(st, pool, 64) == 1, 5.0)
                if not _wait_received(rx, got, 5_000_000_000):
                    raise RuntimeError("VM2 did not receive a packet within 5 s")
                misses.append(time.perf_counter() - t0)
        finally:
            set_timer_slack(slack)
        out = []
        for name, xs in zip(MEASURES, (ups, invs, misses, wakes)):
            p50, p99 = _pct(xs)
            out.append(LatencyResult(placement, name, round(p50, 1), round(p99, 1), len(xs)))
        return out
    finally:
        if vm1 is not None:
            vm1.close()
        fw.close()
        shutil.rmtree(d, ignore_errors=True)


def run(samples: int = 200, placements: tuple[str, ...] = PLACEMENTS, rounds: int = 1,
        live: int = 0) -> list[LatencyResult]:
    """Every placement, ``rounds`` times alternating; medians of the per-round p50/p99."""
    per: dict[tuple[str, str], list[LatencyResult]] = {}
    for _ in range(rounds):
        for placement in placements:
            for r in measure(placement, samples, live=live):
                per.setdefault((placement, r.measure), []).append(r)
    out = []
    for (placement, name), rs in per.items():
        out.append(LatencyResult(placement, name, float(np.median([r.p50_us for r in rs])),
                                 float(np.median([r.p99_us for r in rs])), sum(r.samples for r in rs),
                                 [r.p50_us for r in rs]))
    return out
