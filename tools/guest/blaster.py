"""`udpblast`, the guest's fast UDP sender (udpblast.c), built on the host.

The guest image has only busybox and nc.openbsd (one process per datagram,
~10/s under TCG), so the VM1 bench ships a static C sender in its scenario:

    from tools.guest.blaster import udpblast
    initrd = image.with_scenario(script, files={"/bin/udpblast": udpblast()})

Compiled once with `gcc -static -O2` and cached by source hash under the
guest cache dir (`default_cache_dir()/bin/udpblast-<hash>`).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from .image import default_cache_dir

SOURCE = Path(__file__).resolve().parent / "udpblast.c"
GCC = "gcc"
NO_GCC = ("gcc not found: the guest's UDP sender (tools/guest/udpblast.c) is compiled on the host "
          "(install build-essential: tools/setup does)")


class BuildError(RuntimeError):
    """udpblast could not be compiled; the message says why."""


def udpblast(cache_dir: Path | None = None) -> bytes:
    """The static udpblast binary (x86-64 Linux), compiled on first use."""
    src = SOURCE.read_bytes()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    out = cache_dir / "bin" / f"udpblast-{hashlib.sha256(src).hexdigest()[:16]}"
    if out.exists():
        return out.read_bytes()
    if shutil.which(GCC) is None:
        raise BuildError(NO_GCC)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    try:
        p = subprocess.run([GCC, "-static", "-O2", "-s", "-Wall", "-o", str(tmp), str(SOURCE)],
                           check=False, capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            # the usual cause: no static libc (libc6-dev, pulled by build-essential)
            raise BuildError(f"gcc -static failed on {SOURCE}:\n{p.stderr.strip()}")
        os.replace(tmp, out)  # atomic: a concurrent build writes the same bytes
    finally:
        tmp.unlink(missing_ok=True)
    return out.read_bytes()
