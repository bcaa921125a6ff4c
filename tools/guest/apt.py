"""Download Debian packages with a private apt configuration (no root needed).

Nothing under /etc/apt or /var/lib/apt is read for sources or written: the
source list, package lists and download cache all live under one directory.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from contextlib import AbstractContextManager
from pathlib import Path

from .cache import locked

MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SOURCES = [
    f"{MIRROR} bookworm main",
    f"{MIRROR} bookworm-updates main",
    f"{SECURITY} bookworm-security main",
    f"{MIRROR} bookworm-backports main",
]
#: Lists younger than this are not refreshed.
MAX_LIST_AGE = 12 * 3600


class AptError(RuntimeError):
    """apt-get / apt-cache failed or a package could not be resolved."""


class PrivateApt:
    """apt-get and apt-cache on a private source list, lists dir and cache dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sources = root / "sources.list"
        self.lists = root / "lists"
        self.cache = root / "cache"

    def _setup(self) -> None:
        (self.lists / "partial").mkdir(parents=True, exist_ok=True)
        (self.cache / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        signed = f"[signed-by={KEYRING}] " if os.path.exists(KEYRING) else ""
        text = "".join(f"deb {signed}{s}\n" for s in SOURCES)
        if not self.sources.exists() or self.sources.read_text() != text:
            tmp = self.sources.with_suffix(f".{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, self.sources)

    def options(self) -> list[str]:
        """The `-o` options that make apt use only our directories."""
        opts = {
            "Dir::Etc::SourceList": str(self.sources),
            "Dir::Etc::SourceParts": "/dev/null",
            "Dir::State::Lists": str(self.lists),
            "Dir::Cache": str(self.cache),
            "Dir::Cache::pkgcache": "",
            "Dir::Cache::srcpkgcache": "",
            "Acquire::Languages": "none",
            "APT::Get::List-Cleanup": "false",
        }
        if os.geteuid() == 0:  # as root apt drops to _apt, which can't write our dirs
            opts["APT::Sandbox::User"] = "root"
        return [a for k, v in opts.items() for a in ("-o", f"{k}={v}")]

    def _run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        cmd = [tool, "-q", *self.options(), *args]
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                           env={**os.environ, "LC_ALL": "C"})
        if p.returncode != 0:
            raise AptError(f"{' '.join([tool, *args])} failed ({p.returncode}):\n"
                           f"{p.stderr.strip()[-2000:]}")
        return p.stdout

    def locked(self) -> AbstractContextManager[None]:
        """Serialize apt use of this directory across processes."""
        return locked(self.root / "lock")

    def has_lists(self) -> bool:
        """Whether package lists were downloaded before."""
        return any(self.lists.glob("*_Packages*"))

    def update(self, force: bool = False) -> None:
        """`apt-get update` unless the lists are fresh (call under `locked`)."""
        self._setup()
        stamp = self.root / "updated"
        if (not force and self.has_lists() and stamp.exists()
                and time.time() - stamp.stat().st_mtime < MAX_LIST_AGE):
            return
        self._run("apt-get", "update")
        stamp.touch()

    def versions(self, package: str) -> list[dict[str, str]]:
        """Every stanza apt knows for PACKAGE (fields Package, Version, Depends...)."""
        out = self._run("apt-cache", "show", package)
        stanzas = []
        for block in out.strip().split("\n\n"):
            fields: dict[str, str] = {}
            for m in re.finditer(r"^([\w-]+): ?(.*(?:\n .*)*)", block, re.MULTILINE):
                fields[m.group(1)] = m.group(2)
            if fields:
                stanzas.append(fields)
        return stanzas

    def candidates(self, packages: list[str]) -> dict[str, str]:
        """The versions `apt-get download PACKAGE...` would fetch."""
        out = self._run("apt-cache", "policy", *packages)
        found = dict(re.findall(r"^(\S+):\n\s+Installed: .*\n\s+Candidate: (\S+)", out, re.MULTILINE))
        missing = [p for p in packages if found.get(p, "(none)") == "(none)"]
        if missing:
            raise AptError(f"no candidate for {missing}")
        return {p: found[p] for p in packages}

    def download(self, pins: dict[str, str], dest: Path) -> dict[str, Path]:
        """Download PACKAGE=VERSION for each pin into DEST; return package -> .deb."""
        dest.mkdir(parents=True, exist_ok=True)
        self._run("apt-get", "download", *(f"{p}={v}" for p, v in pins.items()), cwd=dest)
        debs: dict[str, Path] = {}
        for deb in dest.glob("*.deb"):
            debs[deb.name.split("_", 1)[0]] = deb
        missing = set(pins) - set(debs)
        if missing:
            raise AptError(f"apt-get download left no .deb for {sorted(missing)}")
        return debs


def compare_versions(a: str, b: str) -> int:
    """Debian version order via dpkg: -1, 0 or 1."""
    if subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0:
        return -1
    return 0 if a == b else 1


def extract(deb: Path, dest: Path) -> None:
    """`dpkg-deb -x DEB DEST` (no root needed)."""
    dest.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if p.returncode != 0:
        raise AptError(f"dpkg-deb -x {deb.name} failed: {p.stderr.strip()}")
