"""A progress line for slow control-path steps (kernel compiles): nothing if
the step is quick (cache hit), else one line when it has taken a moment and
one with its duration when it ends."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

QUIET_S = 1.0  # a step shorter than this prints nothing


@contextmanager
def progress(what: str, quiet_s: float = QUIET_S) -> Iterator[None]:
    """Log ``"<what> ..."`` once the block has run ``quiet_s`` seconds, then
    ``"<what>: done in X s"`` (``"interrupted"`` if it raised)."""
    t0 = time.monotonic()
    announced = threading.Event()

    def announce() -> None:
        announced.set()
        log.info("%s ...", what)

    timer = threading.Timer(quiet_s, announce)
    timer.daemon = True
    timer.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        timer.cancel()
        if announced.is_set():
            log.info("%s: %s in %.1f s", what, "done" if ok else "interrupted", time.monotonic() - t0)
