"""Shared fixtures: a forwarding runtime on this machine's CPUs, always closed."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pmd.fwd.runtime import Forwarding  # noqa: E402
from pmd.lcore import LcoreManager  # noqa: E402

CPUS = sorted(os.sched_getaffinity(0))
WORKER_CPU = CPUS[-1]


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI time limit, someone stopping the run) ends the run as
    ^C does: the running test's fixtures still remove the namespaces,
    processes and mounts it made.  Python's default would exit at once and
    leave them behind."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)


@pytest.fixture
def fwd():
    """A Forwarding with one worker lcore (lcore 1 on the last CPU)."""
    fw = Forwarding(LcoreManager({0: CPUS[0], 1: WORKER_CPU}, 0), nb_mbufs=4096)
    yield fw
    fw.close()
