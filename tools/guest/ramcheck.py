"""Did a migration carry VM1's RAM over whole?  Compare source and destination.

After QMP ``migrate`` completes, the source is stopped (postmigrate) and a
destination started with ``-S`` stays paused: neither guest runs, nothing
else writes their RAM (the vhost-user back-end has stopped the source's rings
and has not started the destination's), so the two must be byte-identical.
A page that differs is one the migration lost: its last write on the source
never reached the destination, whoever made it (the guest's CPU, or the
back-end whose dirty log should have said so).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .qemu import Vm1

PAGE = 4096
_CHUNK = 4096  # pages compared at a time (16 MiB)


def lost_pages(src: Vm1, dst: Vm1, workdir: str | Path) -> list[int]:
    """Guest-physical addresses of the pages whose content differs between
    the stopped SRC and the paused DST (dumps in WORKDIR, removed after)."""
    workdir = Path(workdir)
    a_path, b_path = workdir / "src.ram", workdir / "dst.ram"
    try:
        src.dump_ram(a_path)
        dst.dump_ram(b_path)
        a = np.memmap(a_path, np.uint8, "r")
        b = np.memmap(b_path, np.uint8, "r")
        if a.size != b.size or a.size % PAGE:
            raise ValueError(f"RAM dumps of {a.size} and {b.size} bytes cannot be compared page by page")
        pages = a.size // PAGE
        lost: list[int] = []
        for first in range(0, pages, _CHUNK):
            n = min(_CHUNK, pages - first)
            sa = a[first * PAGE:(first + n) * PAGE].reshape(n, PAGE)
            sb = b[first * PAGE:(first + n) * PAGE].reshape(n, PAGE)
            lost.extend((first + int(p)) * PAGE for p in np.nonzero((sa != sb).any(axis=1))[0])
        del a, b
        return lost
    finally:
        a_path.unlink(missing_ok=True)
        b_path.unlink(missing_ok=True)
