"""vhostpci poll-mode framework: EAL options, ethdev-style ports, mbufs, lcores.

Importing this package points Numba's on-disk cache at a directory keyed on a
hash of every kernel source file here.  Numba keys a cached kernel only on its
own file, so editing an imported module (an intrinsic, a driver's burst
function, an engine) would otherwise silently run stale machine code.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

_PKG_DIR = Path(__file__).resolve().parent


def _source_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(_PKG_DIR.rglob("*.py")):
        h.update(str(path.relative_to(_PKG_DIR)).encode())
        h.update(path.read_bytes())
    try:
        from importlib.metadata import version

        h.update(version("numba").encode())
    except Exception:  # pragma: no cover - numba missing is reported on import
        pass
    return h.hexdigest()[:16]


def _configure_numba_cache() -> None:
    if os.environ.get("VHOSTPCI_NUMBA_CACHE_KEYED") == "0":
        return
    base = os.environ.get("VHOSTPCI_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vhostpci"
    )
    cache_dir = os.path.join(base, "numba-" + _source_digest())
    os.environ["NUMBA_CACHE_DIR"] = cache_dir
    import numba

    numba.config.CACHE_DIR = cache_dir


_configure_numba_cache()
