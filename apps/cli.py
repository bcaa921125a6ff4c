"""Small helpers shared by the command-line programs."""
from __future__ import annotations

import argparse
import os
import sys

from pmd.fwd.config import MAX_IDLE_WAIT_NS, FwdConfig


def silence_stdout() -> None:
    """Point stdout at /dev/null after its reader went away (BrokenPipeError,
    e.g. piped into ``head``), so clean-up output cannot fail again and the
    program still shuts down in order, without a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def int_in(low: int, high: int | None = None):
    """An argparse ``type``: an integer (any base) in ``[low, high]``."""
    def parse(text: str) -> int:
        try:
            n = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if n < low or (high is not None and n > high):
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {n}" if high is None
                                             else f"must be {low}..{high}, got {n}")
        return n
    return parse


def add_idle_options(p: argparse.ArgumentParser) -> None:
    """What a forwarding lcore does when it finds nothing: ``--no-interrupts``,
    ``--idle-polls N``, ``--idle-wait NS`` (``FwdConfig``)."""
    p.add_argument("--no-interrupts", action="store_true",
                   help="pure polling: never fall back to sleeping on rx notifications")
    p.add_argument("--idle-polls", type=int_in(1), default=FwdConfig.idle_polls, metavar="N",
                   help=f"empty passes before an lcore sleeps until woken (default {FwdConfig.idle_polls})")
    p.add_argument("--idle-wait", type=int_in(0, MAX_IDLE_WAIT_NS), default=FwdConfig.idle_wait_ns, metavar="NS",
                   help="spin this long after a pass that found nothing, before polling again"
                        f" (default {FwdConfig.idle_wait_ns}; 0: back to back)")
