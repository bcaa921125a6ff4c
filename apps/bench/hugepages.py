"""Hugepages for a bench run, made and undone by the bench.

DPDK's users run it on hugepages: a hugetlbfs mount and pages reserved with
``nr_hugepages``.  ``Hugepages`` adds ``pages`` 2 MiB pages to the kernel's
pool and mounts a private hugetlbfs; ``close()`` unmounts it (removing every
file a process left there) and takes the added pages back.  Both steps are
relative (``+pages`` / ``-pages``), so another user of the pool keeps what it
set meanwhile.  Where it cannot be done (not root, no hugetlbfs, the kernel
cannot find the pages) ``HugepagesUnavailable`` says why and nothing is left.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile

PAGE_KB = 2048
SYSFS = f"/sys/kernel/mm/hugepages/hugepages-{PAGE_KB}kB"


class HugepagesUnavailable(RuntimeError):
    """Hugepages cannot be set up here; the message says why."""


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip())


def _write_int(path: str, value: int) -> None:
    with open(path, "w") as f:
        f.write(f"{value}\n")


def _has_hugetlbfs() -> bool:
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1:] == ["hugetlbfs"] for line in f)
    except OSError:
        return False


def is_mounted(path: str) -> bool:
    """True if ``path`` is a mount point in /proc/mounts."""
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == real for line in f if len(line.split()) > 1)


class Hugepages:
    """``pages`` more 2 MiB hugepages and a private hugetlbfs mount under
    ``parent`` (``dir``); ``close()`` undoes both, whatever happened."""

    def __init__(self, pages: int, parent: str | None = None) -> None:
        self.pages = pages
        self.dir: str | None = None
        self._added = 0
        self._mounted = False
        try:
            self._setup(parent)
        except BaseException:
            self.close()
            raise

    def _setup(self, parent: str | None) -> None:
        nr = os.path.join(SYSFS, "nr_hugepages")
        if os.geteuid() != 0:
            raise HugepagesUnavailable("hugepages: not root (mounting hugetlbfs and setting nr_hugepages need it)")
        if not _has_hugetlbfs() or not os.path.exists(nr):
            raise HugepagesUnavailable(f"hugepages: this kernel has no hugetlbfs with {PAGE_KB} kB pages")
        free_before = _read_int(os.path.join(SYSFS, "free_hugepages"))
        before = _read_int(nr)
        try:
            _write_int(nr, before + self.pages)
        except OSError as e:
            raise HugepagesUnavailable(f"hugepages: cannot set {nr}: {e.strerror}") from None
        self._added = _read_int(nr) - before
        got = _read_int(os.path.join(SYSFS, "free_hugepages")) - free_before
        if self._added < self.pages or got < self.pages:
            raise HugepagesUnavailable(f"hugepages: the kernel gave {max(got, 0)} of {self.pages} {PAGE_KB} kB pages "
                                       "(memory too fragmented or too small)")
        self.dir = tempfile.mkdtemp(prefix="huge-", dir=parent)
        out = subprocess.run(["mount", "-t", "hugetlbfs", "-o", f"pagesize={PAGE_KB}K", "nodev", self.dir],
                             capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            raise HugepagesUnavailable(f"hugepages: mount -t hugetlbfs failed: {out.stderr.strip()}")
        self._mounted = True

    def close(self) -> None:
        """Unmount (lazily if a process still maps a file: its pages go back
        when it ends), remove the directory, give the added pages back."""
        if self._mounted and self.dir is not None:
            out = subprocess.run(["umount", self.dir], capture_output=True, timeout=10)
            if out.returncode != 0:
                subprocess.run(["umount", "-l", self.dir], capture_output=True, timeout=10)
            self._mounted = False
        if self.dir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self.dir)
            self.dir = None
        if self._added:
            nr = os.path.join(SYSFS, "nr_hugepages")
            with contextlib.suppress(OSError):
                _write_int(nr, max(_read_int(nr) - self._added, 0))
            self._added = 0

    def __enter__(self) -> Hugepages:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
