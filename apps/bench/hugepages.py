"""Hugepages for a bench run, made and undone by the bench.

DPDK's users run it on hugepages: a hugetlbfs mount and pages reserved with
``nr_hugepages``.  ``Hugepages`` adds ``pages`` 2 MiB pages to the kernel's
pool and mounts a private hugetlbfs; ``close()`` unmounts it (removing every
file a process left there) and takes the added pages back.  Both steps are
relative (``+pages`` / ``-pages``), so another user of the pool keeps what it
set meanwhile.  Where it cannot be done (not root, no hugetlbfs, the kernel
cannot find the pages) ``HugepagesUnavailable`` says why and nothing is left.

A run killed with SIGKILL cannot undo anything.  So each set-up leaves a
record (``RECORDS``: its process, the mount, the pages it added) that
``close()`` removes, and every set-up first reclaims what the records of
dead processes still hold: the mount goes, the pages go back, and it says
so (a warning).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import tempfile

PAGE_KB = 2048
SYSFS = f"/sys/kernel/mm/hugepages/hugepages-{PAGE_KB}kB"
RECORDS = "/run/vhostpci-hugepages"  # one JSON file per live set-up (tmpfs: gone with the pages at reboot)

log = logging.getLogger("vhostpci.bench")


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


def _started(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _umount(path: str) -> None:
    """Unmount ``path``, lazily if a process still maps a file there."""
    out = subprocess.run(["umount", path], capture_output=True, timeout=10)
    if out.returncode != 0:
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=10)


def _give_back(pages: int) -> None:
    nr = os.path.join(SYSFS, "nr_hugepages")
    with contextlib.suppress(OSError):
        _write_int(nr, max(_read_int(nr) - pages, 0))


def reclaim_leftovers(records: str = RECORDS) -> int:
    """Undo the set-ups whose process is gone (killed before its
    ``close()``); returns how many."""
    n = 0
    for name in sorted(os.listdir(records)) if os.path.isdir(records) else []:
        path = os.path.join(records, name)
        try:
            with open(path) as f:
                rec = json.load(f)
            pid, started, mount, pages = int(rec["pid"]), rec["started"], str(rec["dir"]), int(rec["pages"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours: left alone
        if _started(pid) == started:
            continue  # its process lives: its close() undoes it
        if is_mounted(mount):
            _umount(mount)
        with contextlib.suppress(OSError):
            os.rmdir(mount)
        _give_back(pages)
        with contextlib.suppress(OSError):
            os.unlink(path)
        log.warning("hugepages: removed what a killed run (pid %d) left: the mount %s and %d pages", pid, mount,
                    pages)
        n += 1
    return n


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
        self._record: str | None = None
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
        reclaim_leftovers()
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
        self._write_record()
        out = subprocess.run(["mount", "-t", "hugetlbfs", "-o", f"pagesize={PAGE_KB}K", "nodev", self.dir],
                             capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            raise HugepagesUnavailable(f"hugepages: mount -t hugetlbfs failed: {out.stderr.strip()}")
        self._mounted = True

    def _write_record(self) -> None:
        """What a later set-up needs to undo this one should this process be killed."""
        os.makedirs(RECORDS, exist_ok=True)
        path = os.path.join(RECORDS, f"{os.getpid()}-{os.path.basename(self.dir or '')}.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "started": _started(os.getpid()), "dir": self.dir,
                       "pages": self._added}, f)
        os.replace(tmp, path)
        self._record = path

    def close(self) -> None:
        """Unmount (lazily if a process still maps a file: its pages go back
        when it ends), remove the directory, give the added pages back."""
        if self._mounted and self.dir is not None:
            _umount(self.dir)
            self._mounted = False
        if self.dir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self.dir)
            self.dir = None
        if self._added:
            _give_back(self._added)
            self._added = 0
        if self._record is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._record)
            self._record = None

    def __enter__(self) -> Hugepages:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
