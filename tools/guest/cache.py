"""The guest cache: directories built once per key, safe across processes.

Everything tools/guest fetches or builds (guest images, QEMU from
bookworm-backports) lives under `default_cache_dir()`, one directory per
key holding a `manifest.json`.  A directory is built in a temporary sibling
and renamed into place under a lock, so a concurrent user either waits or
finds it complete; unused ones are pruned after a day.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

MANIFEST = "manifest.json"


def default_cache_dir() -> Path:
    """$VHOSTPCI_CACHE_DIR/guest, else ~/.cache/vhostpci/guest."""
    env = os.environ.get("VHOSTPCI_CACHE_DIR")
    return Path(env) / "guest" if env else Path.home() / ".cache" / "vhostpci" / "guest"


@contextmanager
def locked(lockfile: Path) -> Iterator[None]:
    """Hold an exclusive flock on LOCKFILE (created with its directory)."""
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    with open(lockfile, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def complete(path: Path) -> bool:
    """Whether PATH is a finished cache entry (it has its manifest)."""
    return (path / MANIFEST).exists()


def build_once(final: Path, build: Callable[[Path, Path], None]) -> bool:
    """Make FINAL unless it is complete: ``build(scratch, out)`` must create
    directory OUT with a manifest; it is then renamed to FINAL.  Returns True
    if this call built it.  The scratch directory is removed in any case."""
    if complete(final):
        os.utime(final)  # "recently used", for prune
        return False
    with locked(final.parent.parent / "locks" / final.parent.name / final.name):
        if complete(final):
            return False
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=final.parent.parent))
        try:
            out = tmp / "out"
            build(tmp, out)
            if not complete(out):
                raise RuntimeError(f"building {final.name} left no {MANIFEST}")
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(out, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return True


def newest(parent: Path, prefix: str) -> Path | None:
    """The most recently used complete PARENT/PREFIX* entry, if any."""
    dirs = [d for d in parent.glob(f"{prefix}*") if complete(d)]
    return max(dirs, key=lambda d: d.stat().st_mtime) if dirs else None


def prune(parent: Path, prefix: str, keep: Path, age: float = 86400.0) -> None:
    """Remove other PARENT/PREFIX* entries unused for AGE seconds (older
    package versions or builder sources); ones another process just used stay."""
    now = time.time()
    for d in parent.glob(f"{prefix}*"):
        if d != keep and now - d.stat().st_mtime > age:
            shutil.rmtree(d, ignore_errors=True)
