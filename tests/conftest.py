"""Shared fixtures: a forwarding runtime on this machine's CPUs, always closed."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pmd.fwd.runtime import Forwarding  # noqa: E402
from pmd.lcore import LcoreManager  # noqa: E402

CPUS = sorted(os.sched_getaffinity(0))
WORKER_CPU = CPUS[-1]


@pytest.fixture
def fwd():
    """A Forwarding with one worker lcore (lcore 1 on the last CPU)."""
    fw = Forwarding(LcoreManager({0: CPUS[0], 1: WORKER_CPU}, 0), nb_mbufs=4096)
    yield fw
    fw.close()
