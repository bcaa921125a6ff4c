"""Who reads VM1's socket for IOTLB messages: the control thread, or the
lcore that polls the port's queue 0, which it lends the socket to.

Behind a strict vIOMMU every packet costs VM1 an INVALIDATE its vCPU waits
for and an UPDATE its main thread waits for.  Served by the control
thread, each message wakes that thread -- on a CPU VM1's own threads need --
and its revocation interrupts the polling lcore's CPU to flush the TLB
there.  The lcore is awake anyway: served between two of its bursts
(``iotlb_serve.lcore_serve``, the same compiled ``serve``), a message wakes
nobody, the grace period does not wait for that lcore (none of its vrings
is inside a read section then; other lcores are waited for as always), and
the revocation flushes the lcore's own TLB.

One reader at a time, by one word (``ctl[PORT_IOTLB_OWNER]``):

- OWN_CONTROL: the control thread reads the socket (its session's Python
  path, or its own compiled service);
- OWN_LENT: the control thread waits elsewhere (``lend_wait``: on its other
  fds) and the lcore may take the socket, with a CAS to OWN_SERVING;
- OWN_SERVING: the lcore is inside ``serve``; it stores OWN_LENT after;
- OWN_RETURNED: the lcore met what only the control thread handles
  (another request, an UPDATE that is not the plain case, an error), or is
  about to sleep (fallback interrupts): ``give_back`` stored it and wrote the
  control thread's wake eventfd.

The control thread takes the socket back (``take_back``) before it does
anything else: LENT or RETURNED become OWN_CONTROL at once, SERVING after the
lcore's batch.  Only then does its session read or close the socket, or
touch the window's grants, so each has one writer at a time.

Liveness: the lcore stamps ``ctl[PORT_IOTLB_BEAT]`` on each burst of queue 0
while the control thread has named the socket (``PORT_IOTLB_FD`` >= 0, an
IOMMU session).  The control thread lends only to a fresh stamp, and takes
the socket back when the stamp gets older than BEAT_STALE_NS (the lcore
stopped or went elsewhere), looking every TICK_NS; a sleeping lcore gives
it back before it sleeps.

When (``LendPolicy``): with ``iotlb_lcore=1`` whenever the lcore stamps;
with ``auto`` (the default) while every CPU the control thread may use also
runs a polling lcore (``placement.control_shares_pollers``: there each
message would wait for the scheduler to preempt a poller), or while the
front-end sends its messages in runs (queued back to back, one reply each:
from LEND_RUN messages a run on average, until it falls under KEEP_RUN);
looked at every POLICY_S, the control thread serving until the first look.
A front-end that waits for each reply before it sends on (QEMU: the vCPU
for its INVALIDATEs, the main thread for its UPDATEs) is served best on the
control thread's CPU, where such a front-end's threads run too (control
threads go where no lcore polls): each message is a hand-off on one CPU,
while an ack from the lcore's CPU wakes the front-end's, halted meanwhile.
Measured behind a real strict-IOMMU guest, 64 B: 13.4 kpps against 10.5
served by the lcore, when each revocation there was still a TLB shootdown
to the lcore's CPU (~21 us); the lcore now makes those revocations itself
(``iotlb_revoke``, ``iotlb_serve.py``), and the control thread's INVALIDATE
takes ~16 us instead of ~32.  A run instead is taken by the lcore in one
pass, each revocation flushing only its own TLB: our virtio-user's
``iommu=transient`` moved 0.66 Mpps against 0.51.

Cost on the data path: two loads per burst of queue 0 without an IOMMU
session (this word, and the stand-in's for a revocation handed over); with
one, a clock read per burst, and a ``recv`` (peek) per burst while queue 0
is idle or the last look found messages, else every BUSY_LOOK_NS.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from numba import njit

from ..atomics import compare_exchange, cpu_pause, load_acquire, store_release
from ..placement import control_shares_pollers
from ..syscalls import WAIT_OTHER, eventfd_signal, monotonic_ns, sleep_us, wait_first
from .state import PORT_IOTLB_BEAT, PORT_IOTLB_FD, PORT_IOTLB_LOOKED, PORT_IOTLB_OWNER, PORT_WAKE_FD

log = logging.getLogger("vhostpci.iotlb")

OWN_CONTROL, OWN_LENT, OWN_SERVING, OWN_RETURNED = 0, 1, 2, 3
BUSY_LOOK_NS = 20_000  # a busy lcore looks at the socket this often (idle: every burst)
TICK_NS = 2_000_000  # a lending control thread looks at the stamp this often ...
BEAT_STALE_NS = 4_000_000  # ... and takes the socket back once it is this old
# auto: lend from this many messages a run on average, stop under that one
# (QEMU's average is ~1: two of its threads seldom send at the same moment)
LEND_RUN, KEEP_RUN = 1.5, 1.25
MIN_RUNS = 20  # runs a look needs to decide (fewer: no change)
POLICY_S = 0.5  # auto: how often the runs are looked at
# lend_wait's answers
LEND_OTHER, LEND_RETURNED, LEND_TIMEOUT, LEND_STALE = range(4)


# ------------------------------------------------------------------ the lcore
@njit(nogil=True, cache=True, inline="always", _nrt=False)
def may_serve(ctl, idle):
    """The lcore of queue 0, between bursts (``idle``: its last one found
    nothing): stamp, and take the socket if it is lent and due for a look;
    True when it holds it (OWN_SERVING: ``serve``, then ``served``)."""
    if ctl[PORT_IOTLB_FD] < 0:
        return False
    now = monotonic_ns()
    ctl[PORT_IOTLB_BEAT] = now
    if load_acquire(ctl, PORT_IOTLB_OWNER) != OWN_LENT:
        return False
    if not idle and now - ctl[PORT_IOTLB_LOOKED] < BUSY_LOOK_NS:
        return False
    ctl[PORT_IOTLB_LOOKED] = now
    return compare_exchange(ctl, PORT_IOTLB_OWNER, OWN_LENT, OWN_SERVING)


@njit(nogil=True, cache=True, _nrt=False)
def give_back(ctl, held):
    """The lcore holding the socket as ``held`` (OWN_SERVING, or OWN_LENT
    before it sleeps) returns it and wakes the control thread; the stamp
    is cleared so the socket is not lent again until the lcore polls."""
    ctl[PORT_IOTLB_BEAT] = 0
    if compare_exchange(ctl, PORT_IOTLB_OWNER, held, OWN_RETURNED):
        fd = ctl[PORT_WAKE_FD]
        if fd >= 0:
            eventfd_signal(fd)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def served(ctl, n, needs_control):
    """After ``serve`` took ``n`` messages: the socket is lent again (and
    looked at on the next burst if it had some: VM1 sends them in runs, each
    waiting for the last one's ack), or given back when what is at its head
    needs the control thread."""
    if n > 0:
        ctl[PORT_IOTLB_LOOKED] = 0
    if needs_control:
        give_back(ctl, OWN_SERVING)
    else:
        store_release(ctl, PORT_IOTLB_OWNER, OWN_LENT)


# ------------------------------------------------------- the control thread
@njit(nogil=True, cache=True, inline="always", _nrt=False)
def beat_stale(ctl, now):
    """The lcore has not stamped for BEAT_STALE_NS (or never): it is not
    polling, so nothing is lent to it."""
    return now - load_acquire(ctl, PORT_IOTLB_BEAT) > BEAT_STALE_NS


@njit(nogil=True, cache=True)
def take_back(ctl):
    """The control thread owns the socket when this returns (an lcore
    serving finishes its batch first)."""
    while True:
        own = load_acquire(ctl, PORT_IOTLB_OWNER)
        if own == OWN_CONTROL:
            return
        if own == OWN_RETURNED:  # only the control thread moves it on from there
            store_release(ctl, PORT_IOTLB_OWNER, OWN_CONTROL)
            return
        if own == OWN_LENT and compare_exchange(ctl, PORT_IOTLB_OWNER, OWN_LENT, OWN_CONTROL):
            return
        for _ in range(64):
            cpu_pause()
        sleep_us(2)


@njit(nogil=True, cache=True)
def lend_wait(pfds, nfds, wait_ns, ctl):
    """Lend the socket to the lcore and wait in ``poll`` on ``pfds`` rows
    1..nfds-1 (row 0 is not looked at: fd -1) until one is readable
    (LEND_OTHER; the lcore's give-back writes one, LEND_RETURNED), the
    lcore's stamp is stale (LEND_STALE: also when it is at the start; then
    nothing was lent) or ``wait_ns`` passed (LEND_TIMEOUT).  The socket is
    the control thread's again when it returns."""
    now = monotonic_ns()
    if beat_stale(ctl, now):
        return LEND_STALE
    deadline = now + wait_ns
    store_release(ctl, PORT_IOTLB_OWNER, OWN_LENT)
    why = LEND_TIMEOUT
    while True:
        own = load_acquire(ctl, PORT_IOTLB_OWNER)
        if own == OWN_RETURNED:
            why = LEND_RETURNED
            break
        now = monotonic_ns()
        if now >= deadline:
            break
        if own == OWN_LENT and beat_stale(ctl, now):
            why = LEND_STALE  # (a serving lcore is alive, whatever its stamp)
            break
        if wait_first(pfds, nfds, min(deadline, now + TICK_NS)) == WAIT_OTHER:
            why = LEND_RETURNED if load_acquire(ctl, PORT_IOTLB_OWNER) == OWN_RETURNED else LEND_OTHER
            break
    take_back(ctl)
    return why


class LendPolicy:
    """Whether the control thread lends the socket now (see the module
    docstring), by the ``iotlb_lcore`` devarg: never (False), whenever the
    lcore stamps (True), or (``"auto"``) while the control thread shares
    every CPU it may use with polling lcores or the front-end sends runs of
    messages.  Control thread only."""

    def __init__(self, mode: bool | str, name: str = "",
                 shares_pollers: Callable[[], bool] = control_shares_pollers) -> None:
        self.mode = mode
        self.name = name
        self.shares_pollers = shares_pollers
        self.lending = mode is True  # auto: the control thread serves until a look says otherwise
        self._next = 0.0
        self._last: tuple[int, int] | None = None  # (messages, runs) at the last look

    def now(self, messages: int, runs: int) -> bool:
        """Lend now?  ``messages`` and ``runs``: the port's totals so far,
        served by either thread (``iotlb_serve``'s counters)."""
        if self.mode != "auto":
            return self.lending
        t = time.monotonic()
        if t < self._next:
            return self.lending
        self._next = t + POLICY_S
        last, self._last = self._last, (messages, runs)
        per_run = None
        if last is not None and runs - last[1] >= MIN_RUNS:
            per_run = (messages - last[0]) / (runs - last[1])
        if self.shares_pollers():
            lend, why = True, "the control thread's CPUs all run polling lcores"
        elif per_run is None:
            return self.lending
        else:
            lend, why = per_run >= (KEEP_RUN if self.lending else LEND_RUN), f"{per_run:.2f} messages a run"
        if lend != self.lending:
            self.lending = lend
            log.info("%s: VM1's IOTLB messages now served by the %s (%s)", self.name,
                     "polling lcore" if lend else "control thread", why)
        return self.lending
