"""The one forwarding loop every lcore runs (testpmd's run_pkt_fwd_on_lcore).

Compiled once per tuple-of-stream types (so per combination of port
drivers); the mode is a run-time switch, so ``set fwd`` never recompiles.
Each pass polls every stream once, then publishes a quiescent point (the
epoch) that the control thread waits on before unmapping memory.
"""
from __future__ import annotations

from numba import njit

from ..atomics import cpu_pause, load_acquire, store_release
from ..byref import ref_of, refs_of
from ..lcore.control import LC_EPOCH, LC_POLLS, LC_STOP
from ..syscalls import monotonic_ns
from .common import CFG_BURST, CFG_IDLE_POLLS, CFG_IDLE_WAIT_NS, CFG_MODE, CFG_TX_FIRST, EXIT_IDLE, EXIT_STOPPED
from .unroll import poll_streams, tx_first_streams


@njit(nogil=True, cache=True, _nrt=False)
def _wait(ns):
    """Spin ``ns`` nanoseconds, politely (PAUSE)."""
    until = monotonic_ns() + ns
    while monotonic_ns() < until:
        cpu_pause()


@njit(nogil=True, cache=True, _nrt=False)
def fwd_loop(streams, ctx, ctl):
    """Forward on ``streams`` until ``ctl[LC_STOP]`` is set (returns
    EXIT_STOPPED) or, when cfg[CFG_IDLE_POLLS] > 0, until that many passes
    in a row found nothing (returns EXIT_IDLE).

    A pass that found nothing waits cfg[CFG_IDLE_WAIT_NS] before the next.
    Every poll of an empty shared-memory ring reads the line its producer
    (VM1's driver, on another CPU) is writing and takes it from that CPU's
    cache: polled back to back, the lcore slows the producer down (DPDK's
    virtio-user sent ~5% fewer 64 B packets a second to a port polled back
    to back than to one waiting 1 us).  Waiting about a burst's time also
    lets the next burst come fuller.

    The streams and the context are passed down by reference
    (``pmd/byref.py``): the ports' states are stored once, here, not
    copied into every call of every pass."""
    refs = refs_of(streams)
    cref = ref_of(ctx)
    mode = cref.cfg[CFG_MODE]
    burst = cref.cfg[CFG_BURST]
    idle_limit = cref.cfg[CFG_IDLE_POLLS]
    idle_wait = cref.cfg[CFG_IDLE_WAIT_NS]
    for _ in range(cref.cfg[CFG_TX_FIRST]):
        tx_first_streams(refs, cref, burst)
    epoch = ctl[LC_EPOCH]
    polls = ctl[LC_POLLS]
    idle = 0
    while load_acquire(ctl, LC_STOP) == 0:
        work = poll_streams(refs, cref, mode, burst)
        epoch += 1
        polls += 1
        store_release(ctl, LC_POLLS, polls)
        store_release(ctl, LC_EPOCH, epoch)
        if work == 0:
            idle += 1
            if idle_limit > 0 and idle >= idle_limit:
                return EXIT_IDLE
            if idle_wait > 0:
                _wait(idle_wait)
        else:
            idle = 0
    return EXIT_STOPPED
