"""VM1: one QEMU (TCG) process running a guest image over a vhost-user socket.

Recipes and pitfalls: TCG only; `vectors=0` on virtio-net-pci where MSI-X
crashes (QEMU 7.2 + TCG + vhost-user, see `qemu_binary.MSIX_FROM`), so a
multi-queue NIC needs a QEMU with MSI-X (10.0); RAM is a shared memfd; with a
vIOMMU the NIC sits on a pcie-root-port with `iommu_platform=on,ats=on`.
Only the PID started here is ever killed.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from pmd.units import parse_size

from .image import GuestImage
from .qemu_binary import QEMU, Qemu, QemuMissing, system_qemu
from .qmp import Qmp, QmpError

IOMMUS = (None, "intel", "virtio")


class QemuError(RuntimeError):
    """QEMU failed, exited, or the console did not show what was awaited."""


class Vm1:
    """A QEMU VM1 over a vhost-user socket; use as a context manager.

    Files in WORKDIR (a new /tmp/vm1-* kept afterwards if not given):
    `console.log` (ttyS0), `qemu.stderr`, `qmp.sock`.
    """

    def __init__(self, image: GuestImage, socket: str | Path | None = None, *,
                 workdir: str | Path | None = None, server: bool = False,
                 net: bool = True, iommu: str | None = None, strict: bool = True,
                 mac: str = "52:54:00:00:00:01", ip: str | None = None,
                 peer: str | None = None, peer_mac: str | None = None,
                 initrd: str | Path | None = None, mem: str = "256M", maxmem: str | None = None,
                 incoming: str | None = None, guest_timeout: int | None = None,
                 append: str = "", extra_args: list[str] | None = None,
                 interactive: bool = False, qemu: Qemu | str = QEMU, queues: int = 1,
                 packed: bool = False) -> None:
        """Configure (nothing runs before `start`).

        socket/server: the vhost-user socket; QEMU is the chardev server
        (`server=on,wait=off`) when SERVER, else it connects as a client.
        net=False: no NIC at all. iommu: None, "intel" or "virtio" ("virtio"
        needs the 6.12 image); strict adds `iommu.strict=1`. ip/peer/peer_mac/
        guest_timeout become `vm1.ip=`... on the kernel command line. initrd
        defaults to the image's base (use `image.with_scenario`). incoming:
        a migration URI (`unix:/path`) for a destination VM. maxmem: room for
        memory hotplug (`-m MEM,slots=4,maxmem=MAXMEM`: pc-dimms can be added
        through QMP). append: more kernel parameters; extra_args: more QEMU arguments.  qemu: a
        `Qemu` (`tools.guest.qemu_binary.find_qemu("10.0")`) or a binary on
        $PATH.  queues: queue pairs of the NIC (`queues=N` on the netdev,
        `mq=on` and 2N+2 MSI-X vectors on the device; more than one needs a
        QEMU with MSI-X, `Qemu.msix`).  packed: `packed=on` on the NIC (packed
        virtqueues, when the back-end offers VIRTIO_F_RING_PACKED).
        """
        if iommu not in IOMMUS:
            raise ValueError(f"iommu must be one of {IOMMUS}, not {iommu!r}")
        if not isinstance(qemu, Qemu):
            try:
                qemu = system_qemu(qemu)
            except QemuMissing:
                qemu = Qemu(Path(qemu), "")  # start() says it is missing
        if queues < 1:
            raise ValueError(f"queues must be at least 1, not {queues}")
        if queues > 1 and not qemu.msix:
            raise ValueError(f"queues={queues}: a multi-queue NIC needs MSI-X, which QEMU {qemu.version} "
                             "cannot use with vhost-user under TCG (QEMU 10.0 can)")
        if net and socket is None:
            raise ValueError("a vhost-user socket is needed unless net=False")
        self._config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.image, self.socket, self.server, self.net = image, socket, server, net
        self.iommu, self.strict, self.mac, self.mem, self.maxmem = iommu, strict, mac, mem, maxmem
        self.initrd = Path(initrd) if initrd else image.initrd
        self.incoming, self.interactive, self.qemu, self.queues = incoming, interactive, qemu, queues
        self.packed = packed
        self.extra_args = list(extra_args or [])
        params = {"vm1.ip": ip, "vm1.peer": peer, "vm1.peer_mac": peer_mac,
                  "vm1.timeout": guest_timeout}
        self.append = " ".join(["console=ttyS0 panic=-1 quiet"]
                               + [f"{k}={v}" for k, v in params.items() if v is not None]
                               + self._iommu_cmdline() + ([append] if append else []))
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="vm1-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.console_path = self.workdir / "console.log"
        self.stderr_path = self.workdir / "qemu.stderr"
        self.qmp_path = self.workdir / "qmp.sock"
        self._qmp_dir: Path | None = None
        if len(str(self.qmp_path)) > 100:  # sun_path limit
            self._qmp_dir = Path(tempfile.mkdtemp(prefix="vm1q-", dir="/tmp"))
            self.qmp_path = self._qmp_dir / "qmp.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self._qmp: Qmp | None = None
        self._console = ""
        self._console_bytes = 0
        self._cursor = 0

    def replace(self, **changes: Any) -> Vm1:
        """A new, unstarted Vm1 with this one's settings except CHANGES
        (e.g. the destination of a migration: `incoming=`, `workdir=`, `socket=`)."""
        cfg = {**self._config, **changes}
        return Vm1(cfg.pop("image"), cfg.pop("socket"), **cfg)

    def _iommu_cmdline(self) -> list[str]:
        strict = ["iommu.strict=1" if self.strict else "iommu.strict=0"]
        if self.iommu == "intel":
            return ["intel_iommu=on", *strict]
        if self.iommu == "virtio":
            return strict
        return []

    def command(self) -> list[str]:
        """The QEMU command line."""
        mem = self.mem
        cmd = [*self.qemu.argv(), "-name", "vm1", "-machine", "q35,accel=tcg", "-cpu", "max",
               "-smp", "1", "-m", f"{mem},slots=4,maxmem={self.maxmem}" if self.maxmem else mem,
               "-nodefaults", "-no-user-config",
               "-display", "none", "-no-reboot",
               "-object", f"memory-backend-memfd,id=mem,size={mem},share=on",
               "-numa", "node,memdev=mem",
               "-kernel", str(self.image.kernel), "-initrd", str(self.initrd),
               "-append", self.append,
               "-qmp", f"unix:{self.qmp_path},server=on,wait=off", "-monitor", "none"]
        if self.interactive:
            cmd += ["-chardev", f"stdio,id=ser0,signal=off,logfile={self.console_path}"]
        else:
            cmd += ["-chardev", f"file,id=ser0,path={self.console_path}"]
        cmd += ["-serial", "chardev:ser0"]
        if self.iommu == "intel":
            cmd += ["-device", "intel-iommu,intremap=on,device-iotlb=on"]
        elif self.iommu == "virtio":
            cmd += ["-device", "virtio-iommu-pci"]
        if self.net:
            chardev = f"socket,id=chr0,path={self.socket}"
            if self.server:
                chardev += ",server=on,wait=off"
            netdev = "vhost-user,id=net0,chardev=chr0"
            nic = f"virtio-net-pci,netdev=net0,mac={self.mac}"
            if self.queues > 1:
                netdev += f",queues={self.queues}"
                nic += f",mq=on,vectors={2 * self.queues + 2}"
            elif not self.qemu.msix:
                nic += ",vectors=0"
            if self.packed:
                nic += ",packed=on"
            if self.iommu:
                cmd += ["-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1"]
                nic += ",bus=rp1,iommu_platform=on,ats=on"
            cmd += ["-chardev", chardev, "-netdev", netdev, "-device", nic]
        if self.incoming:
            cmd += ["-incoming", self.incoming]
        return cmd + self.extra_args

    # -- life cycle ---------------------------------------------------------

    def start(self) -> Vm1:
        """Launch QEMU and connect QMP; raise QemuError (with stderr) if it dies."""
        if self.proc is not None:
            raise QemuError("VM1 already started")
        if not self.qemu.version or shutil.which(self.qemu.binary) is None:
            raise QemuError(f"{self.qemu.binary} not found (tools/setup installs qemu-system-x86)")
        for p in (self.console_path, self.qmp_path):
            p.unlink(missing_ok=True)
        self.console_path.touch()
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.command(), stdout=err, stderr=err, env=self.qemu.env(),
                stdin=None if self.interactive else subprocess.DEVNULL,
                start_new_session=not self.interactive)
        self._qmp = Qmp(self.qmp_path)
        # As the chardev server, QEMU's vhost-user netdev blocks its start-up
        # (QMP included) until the back-end connects: then connect lazily.
        if not (self.net and self.server):
            self._connect_qmp()
        return self

    @property
    def pid(self) -> int | None:
        """QEMU's PID (None before start)."""
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        """QEMU's exit status, None while it runs (or before start)."""
        return self.proc.poll() if self.proc else None

    def wait(self, timeout: float) -> int:
        """Wait for QEMU to exit by itself (e.g. after the guest's poweroff)."""
        assert self.proc is not None, "not started"
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as e:
            raise QemuError(f"QEMU still running after {timeout}s\n{self._tails()}") from e

    def kill(self) -> None:
        """SIGKILL the QEMU we started (by PID) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self._close_qmp()

    def stop(self, timeout: float = 10.0) -> None:
        """QMP `quit` (if QMP is up), then SIGKILL if QEMU is still there after TIMEOUT."""
        if (self.proc is not None and self.proc.poll() is None and self._qmp is not None
                and self._qmp.sock is not None):
            try:
                self._qmp.execute("quit")
            except (QmpError, OSError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        if self._qmp_dir is not None:
            shutil.rmtree(self._qmp_dir, ignore_errors=True)

    def _close_qmp(self) -> None:
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None

    def __enter__(self) -> Vm1:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- console ------------------------------------------------------------

    def console(self) -> str:
        """Everything the guest wrote on ttyS0 so far."""
        try:
            with open(self.console_path, "rb") as f:
                f.seek(self._console_bytes)
                new = f.read()
        except FileNotFoundError:
            return self._console
        self._console_bytes += len(new)
        self._console += new.decode(errors="surrogateescape")
        return self._console

    def stderr(self) -> str:
        """QEMU's stderr (and stdout) so far."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _tails(self) -> str:
        return (f"--- console tail ({self.console_path}) ---\n{self.console()[-3000:]}\n"
                f"--- QEMU stderr ({self.stderr_path}) ---\n{self.stderr()[-2000:]}")

    def wait_console(self, pattern: str | re.Pattern[str], timeout: float,
                     from_start: bool = False) -> re.Match[str]:
        """Wait until PATTERN appears on the console; return the match.

        Searches from the end of the previous match (a cursor), or from the
        beginning with FROM_START. Raises QemuError with the console tail and
        QEMU's stderr on timeout or if QEMU exits first.
        """
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            exited = self.returncode is not None
            m = rx.search(self.console(), 0 if from_start else self._cursor)
            if m:
                self._cursor = m.end()
                return m
            if exited:
                raise QemuError(f"QEMU exited ({self.returncode}) before the console "
                                f"showed {rx.pattern!r}\n{self._tails()}")
            if time.monotonic() > deadline:
                raise QemuError(f"no {rx.pattern!r} on the console within {timeout}s\n"
                                f"{self._tails()}")
            time.sleep(0.05)

    # -- QMP ------------------------------------------------------------------

    def _connect_qmp(self, timeout: float = 60.0) -> None:
        assert self._qmp is not None
        try:
            self._qmp.connect(timeout=timeout, alive=lambda: self.returncode is None)
        except QmpError as e:
            raise QemuError(f"no QMP from QEMU: {e}\n{self._tails()}") from e

    def qmp(self, command: str, **args: Any) -> Any:
        """Execute a QMP command; its "return" value (raises QemuError on error).

        With `server=True` the first call waits (up to 60 s) for QEMU to finish
        starting, i.e. for the back-end to connect to the vhost-user socket.
        """
        if self._qmp is None:
            raise QemuError("QMP not connected (VM1 not started or stopped)")
        if self._qmp.sock is None:
            self._connect_qmp()
        try:
            return self._qmp.execute(command, **args)
        except (QmpError, OSError) as e:
            raise QemuError(f"{e}\n{self._tails()}") from e

    @property
    def qmp_events(self) -> list[dict[str, Any]]:
        """QMP events received so far (seen while waiting for replies)."""
        return self._qmp.events if self._qmp else []

    @property
    def mem_bytes(self) -> int:
        """Guest RAM size in bytes (from ``mem``: a number with an optional K/M/G suffix)."""
        return parse_size(self.mem)

    def dump_ram(self, path: str | Path) -> Path:
        """Write guest-physical memory [0, mem) to PATH (QMP ``pmemsave``);
        the VM should be paused for a consistent picture."""
        self.qmp("pmemsave", val=0, size=self.mem_bytes, filename=str(path))
        return Path(path)

    def migrate(self, uri: str, timeout: float = 120.0, poll: float = 0.1) -> dict[str, Any]:
        """QMP `migrate` to URI, poll `query-migrate` until completed/failed/cancelled;
        return the last query-migrate (status, total-time, downtime, ram...)."""
        self.qmp("migrate", uri=uri)
        deadline = time.monotonic() + timeout
        while True:
            info = self.qmp("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                return info
            if time.monotonic() > deadline:
                raise QemuError(f"migration not finished after {timeout}s: {info}")
            time.sleep(poll)
