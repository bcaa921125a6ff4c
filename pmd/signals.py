"""Stop on SIGINT/SIGTERM without deadlocks.

A signal handler runs in the main thread between bytecodes, possibly while
that thread holds a lock; calling ``threading.Event.set()`` from it can then
deadlock on the Event's own (non-reentrant) lock.  So the handler here only
records the signal, and waiting is done in short sleeps that check it.
"""
from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

_SLICE_S = 0.05


class StopSignals:
    """Context manager: while active, SIGINT/SIGTERM are recorded, not raised."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self._signals = signals
        self._old: dict[int, object] = {}
        self.received: list[int] = []
        self._raise = False

    def __enter__(self) -> "StopSignals":
        for s in self._signals:
            self._old[s] = signal.signal(s, self._record)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def _record(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        if self._raise:
            raise KeyboardInterrupt

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """Within: a signal (or one already received) raises KeyboardInterrupt
        at once, for long Python work with no wait loop to check ``stopped``
        (a kernel compile).  Safe there: that code holds no lock a handler
        could need."""
        if self.received:
            raise KeyboardInterrupt
        self._raise = True
        try:
            yield
        finally:
            self._raise = False

    @property
    def stopped(self) -> bool:
        return bool(self.received)

    def wait(self, timeout: float | None) -> bool:
        """Sleep up to ``timeout`` seconds (None: forever) or until a signal
        arrives; returns True when one has."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.received:
            left = _SLICE_S if deadline is None else min(_SLICE_S, deadline - time.monotonic())
            if left <= 0:
                break
            time.sleep(left)
        return self.stopped
