"""Small helpers shared by the command-line programs."""
from __future__ import annotations

import os
import sys


def silence_stdout() -> None:
    """Point stdout at /dev/null after its reader went away (BrokenPipeError,
    e.g. piped into ``head``), so clean-up output cannot fail again and the
    program still shuts down in order, without a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
