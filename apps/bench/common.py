"""Helpers shared by the bench scenarios: CPUs, the in-process forwarding
runtime, medians."""
from __future__ import annotations

import os
import statistics

from pmd.fwd.runtime import Forwarding
from pmd.lcore import LcoreManager


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
