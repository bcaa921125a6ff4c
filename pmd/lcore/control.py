"""An lcore's control words: one int64 array per lcore, shared by the
thread that runs its loop and the control thread.

Each word sits on its own cache line where two threads write; the loop
reads ``LC_STOP`` with an acquire load and publishes ``LC_EPOCH`` once per
pass (a quiescent point, see ``LcoreManager.wait_quiescent``).
"""
from __future__ import annotations

LC_STOP = 0  # set by the control thread; the loop exits when it sees it
LC_EPOCH = 8  # bumped by the loop once per pass: a quiescent point
LC_POLLS = 16  # passes so far (published with the epoch)
# Fallback interrupts (pmd/fwd/power.py), written by the lcore only:
LC_SLEEPING = 24  # 1 while the lcore sleeps in epoll: it then counts as quiescent
LC_SLEEPS = 25  # times it went to sleep
LC_WAKEUPS = 26  # times a notification (not a timeout) woke it
N_LC = 32
