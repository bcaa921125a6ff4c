"""An lcore's control words: one int64 array per lcore, shared by the
thread that runs its loop and the control thread.

Each word sits on its own cache line where two threads write; the loop
reads ``LC_STOP`` with an acquire load and publishes ``LC_EPOCH`` once per
pass (a quiescent point; ``pmd/grace.py`` says which words a grace period
reads: LC_EPOCH, LC_SLEEPING, LC_RUNNING).
"""
from __future__ import annotations

from ..grace import LC_EPOCH, LC_RUNNING, LC_SLEEPING  # noqa: F401  (the grace-period words)

LC_STOP = 0  # set by the control thread; the loop exits when it sees it
LC_POLLS = 16  # passes so far (published with the epoch)
# Fallback interrupts (pmd/fwd/power.py), written by the lcore only:
LC_SLEEPS = 25  # times it went to sleep
LC_WAKEUPS = 26  # times a notification (not a timeout) woke it
N_LC = 32
