"""Which QEMU runs VM1: Debian's, or a newer one from bookworm-backports
fetched without installing it.

    find_qemu("7.2")    # the system's qemu-system-x86_64 (Debian 12: 7.2.x)
    find_qemu("10.0")   # bookworm-backports' 10.0.x, fetched once and cached

A series the system's binary has is that binary.  Otherwise `qemu-system-x86`,
`-common` and `-data` of the newest version of the series in
bookworm-backports are fetched with the guest builder's private apt
(`tools.guest.apt`: no root, nothing under /etc/apt or /var/lib/apt touched)
and unpacked with `dpkg-deb -x` into `default_cache_dir()/qemu/SERIES-VERSION/`.
That QEMU runs on bookworm's libraries (the ones Debian's qemu-system-x86
pulled in) with its own data directory first on the firmware path (`-L`),
its own modules (QEMU_MODULE_DIR), and bookworm's SeaBIOS and iPXE ROMs, which
Debian's QEMU finds through its built-in firmware path.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .apt import AptError, PrivateApt, compare_versions, extract
from .cache import MANIFEST, build_once, default_cache_dir, newest, prune

QEMU = "qemu-system-x86_64"
#: The series the tests run VM1 on: Debian 12's and bookworm-backports'.
SERIES = ("7.2", "10.0")
PACKAGES = ("qemu-system-x86", "qemu-system-common", "qemu-system-data")
#: virtio-net-pci with MSI-X under TCG with a vhost-user netdev: QEMU 7.2
#: segfaults at DRIVER_OK (it sets up KVM irqfds with no KVM); 10.0 works.
#: Versions in between were not tried: they get INTx (`vectors=0`) too.
MSIX_FROM = (10, 0)


class QemuMissing(RuntimeError):
    """No QEMU of the series asked for here, and it could not be fetched."""


@dataclass(frozen=True)
class Qemu:
    """A qemu-system-x86_64 and how to run it."""

    binary: Path
    version: str                      #: e.g. "10.0.2", from `--version`
    datadirs: tuple[Path, ...] = ()   #: `-L` directories, searched first
    moduledir: Path | None = None     #: QEMU_MODULE_DIR (a fetched QEMU's own modules)

    @property
    def series(self) -> str:
        """MAJOR.MINOR, e.g. "10.0"."""
        return ".".join(self.version.split(".")[:2])

    @property
    def label(self) -> str:
        """For test ids and messages: "qemu-10.0"."""
        return f"qemu-{self.series}"

    @property
    def msix(self) -> bool:
        """Whether virtio-net-pci may use MSI-X here (see MSIX_FROM)."""
        return _version_tuple(self.version) >= MSIX_FROM

    def argv(self) -> list[str]:
        """The binary and its `-L` options: the start of a command line."""
        return [str(self.binary), *(a for d in self.datadirs for a in ("-L", str(d)))]

    def env(self) -> dict[str, str] | None:
        """The environment to run it in (None: inherit unchanged)."""
        if self.moduledir is None:
            return None
        return {**os.environ, "QEMU_MODULE_DIR": str(self.moduledir)}


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:3])


def _run_version(argv: list[str], env: dict[str, str] | None) -> str:
    """The upstream version a QEMU reports ("7.2.22"); QemuMissing if it does not run."""
    try:
        p = subprocess.run([*argv, "--version"], check=False, capture_output=True, text=True, env=env, timeout=30)
    except OSError as e:
        raise QemuMissing(f"{argv[0]} does not run: {e}") from e
    m = re.search(r"version (\d+\.\d+\.\d+)", p.stdout)
    if p.returncode != 0 or not m:
        raise QemuMissing(f"{argv[0]} --version failed ({p.returncode}): {(p.stdout + p.stderr).strip()[-500:]}")
    return m.group(1)


def system_qemu(binary: str = QEMU) -> Qemu:
    """BINARY (a name on $PATH or a path) as it is; QemuMissing if absent."""
    path = shutil.which(binary)
    if path is None:
        raise QemuMissing(f"{binary} not found (tools/setup installs qemu-system-x86)")
    return Qemu(Path(path), _run_version([path], None))


def find_qemu(series: str | None = None, cache_dir: Path | None = None) -> Qemu:
    """The QEMU of SERIES ("7.2", "10.0"; None: the system's, whatever it is).

    The system's binary if it is of that series, else bookworm-backports'
    newest of the series, fetched on first use and cached.  Offline, the
    newest cached copy of the series.  Raises QemuMissing with the reason.
    """
    try:
        local = system_qemu()
    except QemuMissing:
        if series is None:
            raise
        local = None
    if series is None or (local is not None and local.series == series):
        assert local is not None
        return local
    if not re.fullmatch(r"\d+\.\d+", series):
        raise ValueError(f"a QEMU series is MAJOR.MINOR (e.g. 10.0), not {series!r}")
    if local is None:
        # SeaBIOS, iPXE and the libraries come with Debian's own QEMU
        raise QemuMissing(f"QEMU {series} from bookworm-backports runs on what Debian's "
                          f"qemu-system-x86 installs: {QEMU} not found (tools/setup installs it)")
    return _backports(series, Path(cache_dir) if cache_dir else default_cache_dir())


def _log(msg: str) -> None:
    print(f"tools.guest: {msg}", file=sys.stderr, flush=True)


def _newest_of(apt: PrivateApt, series: str) -> str | None:
    """The newest Debian version of qemu-system-x86 of SERIES in the lists."""
    best = None
    for st in apt.versions("qemu-system-x86"):
        v = st.get("Version", "")
        upstream = v.split(":", 1)[-1]
        if upstream.startswith(series + ".") and (best is None or compare_versions(v, best) > 0):
            best = v
    return best


def _load(root: Path, version: str | None = None) -> Qemu:
    """The QEMU unpacked in ROOT (version: from its manifest unless given)."""
    usr = root / "usr"
    if version is None:
        version = json.loads((root / MANIFEST).read_text())["version"]
    return Qemu(usr / "bin" / QEMU, version, datadirs=(usr / "share" / "qemu",),
                moduledir=usr / "lib" / "x86_64-linux-gnu" / "qemu")


def _backports(series: str, cache_dir: Path) -> Qemu:
    apt = PrivateApt(cache_dir / "apt")
    parent = cache_dir / "qemu"
    with apt.locked():
        try:
            apt.update()
            version = _newest_of(apt, series)
        except AptError as e:
            version, why = None, str(e)
        else:
            why = f"no qemu-system-x86 {series}.x in the Debian lists (bookworm, bookworm-backports)"
    if version is None:
        cached = newest(parent, f"{series}-")
        if cached is not None:
            _log(f"{why}; using the cached {cached}")
            return _load(cached)
        raise QemuMissing(f"QEMU {series}: {why}")
    final = parent / f"{series}-{re.sub(r'[^A-Za-z0-9.+-]', '_', version)}"

    def build(scratch: Path, out: Path) -> None:
        _log(f"fetching QEMU {version} from bookworm-backports into {final}")
        with apt.locked():
            debs = apt.download(dict.fromkeys(PACKAGES, version), scratch / "debs")
        for deb in debs.values():
            extract(deb, out)
        q = _load(out, version="")
        upstream = _run_version(q.argv(), q.env())
        (out / MANIFEST).write_text(json.dumps({"series": series, "debian_version": version,
                                                "version": upstream, "packages": sorted(PACKAGES)},
                                               indent=1) + "\n")

    try:
        if build_once(final, build):
            prune(parent, f"{series}-", keep=final)
    except (AptError, QemuMissing) as e:
        raise QemuMissing(f"QEMU {version}: {e}") from e
    return _load(final)

