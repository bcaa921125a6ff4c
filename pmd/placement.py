"""Where control threads run: DPDK's rule for its control threads.

A control thread (a port's vhost-user negotiation and IOTLB service) must
never be starved by a busy-polling lcore sharing its CPU: VM1's vCPU waits
for each IOTLB reply.  So, as DPDK does, control threads run on the CPUs
the process may use minus those of the worker lcores, or on the main
lcore's CPU when no other is left.  ``LcoreManager`` sets this when the
lcores are laid out, and the workers' CPUs with it (``set_poller_cpus``:
a port whose control thread has no CPU free of pollers lends its IOTLB
work to its lcore, ``control_shares_pollers``); a control thread calls
``pin_control_thread`` first thing (Linux affinity is per thread).

A control thread also runs at a higher priority (``CONTROL_NICE``): where
VM1's vCPU threads share its CPU (on two CPUs: one for the lcore, one for
everything else), a message VM1 waits for must not queue behind a vCPU's
time slice.  It sleeps in ``poll`` between messages, so it takes little.
Measured behind a strict guest IOMMU: an UPDATE served in 19 us instead of
31, an INVALIDATE in 49 instead of 75 (wall time, busy machine).  Without
the privilege (CAP_SYS_NICE) it says so once and runs at the default.
Its timer slack is 1 us (CONTROL_TIMER_SLACK_NS): a grace period sleeps a
few microseconds between looks, which Linux would otherwise stretch to 50.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading

log = logging.getLogger("vhostpci.lcore")

_control_cpus: frozenset[int] | None = None  # None: no lcore layout yet, threads stay where they are
_poller_cpus: frozenset[int] = frozenset()  # the worker lcores' CPUs (none: no layout yet)
CONTROL_NICE = -10
# a grace period's short sleeps (pmd/grace.py) must end when asked, not up
# to the default 50 us later
CONTROL_TIMER_SLACK_NS = 1000
PR_SET_TIMERSLACK, PR_GET_TIMERSLACK = 29, 30
_libc = ctypes.CDLL(None, use_errno=True)
_nice_refused = False


def set_control_cpus(cpus: set[int] | frozenset[int] | None) -> None:
    """Control threads started from now on run on ``cpus`` (None: anywhere)."""
    global _control_cpus
    _control_cpus = frozenset(cpus) if cpus else None


def set_poller_cpus(cpus: set[int] | frozenset[int]) -> None:
    """The CPUs worker lcores poll on (``LcoreManager``)."""
    global _poller_cpus
    _poller_cpus = frozenset(cpus)


def control_shares_pollers() -> bool:
    """True when every CPU control threads may run on also runs a polling
    lcore (one CPU for all, or the layout says so): a control thread there
    waits for the scheduler to preempt a poller before it runs."""
    cpus = _control_cpus if _control_cpus is not None else frozenset(os.sched_getaffinity(0))
    return bool(_poller_cpus) and cpus <= _poller_cpus


def control_cpus_for(worker_cpus: set[int], main_cpu: int | None) -> set[int]:
    """DPDK's rule: the process's CPUs minus the workers', else the main
    lcore's CPU (else all of them)."""
    allowed = os.sched_getaffinity(0)
    rest = allowed - worker_cpus
    if rest:
        return rest
    return {main_cpu} if main_cpu in allowed else allowed


def control_cpus() -> frozenset[int] | None:
    return _control_cpus


def pin_control_thread() -> None:
    """Move the calling thread to the control CPUs (a no-op without a layout)."""
    cpus = _control_cpus
    if cpus is None:
        return
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as e:  # a CPU gone offline, a cgroup change: run where we are, but say so
        log.warning("control thread: cannot run on CPUs %s: %s", sorted(cpus), e)
    _raise_priority()
    set_timer_slack(CONTROL_TIMER_SLACK_NS)


def set_timer_slack(ns: int) -> int:
    """Set the calling thread's timer slack (Linux: per thread; default 50
    us); returns the one it had."""
    old = _libc.prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)
    _libc.prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0)
    return old


def _raise_priority() -> None:
    """The calling thread at CONTROL_NICE (Linux: nice is per thread), unless it runs higher already."""
    global _nice_refused
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) > CONTROL_NICE:
            os.setpriority(os.PRIO_PROCESS, tid, CONTROL_NICE)
    except OSError as e:
        if not _nice_refused:
            _nice_refused = True
            log.warning("control threads run at the default priority (nice %d refused: %s)", CONTROL_NICE, e)
