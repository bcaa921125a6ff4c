"""tools.guest.qemu_binary: Debian's QEMU and bookworm-backports' 10.0 side by side."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.util import qemu_or_skip
from tools.guest import GuestImage, Vm1
from tools.guest.cache import MANIFEST, default_cache_dir
from tools.guest.qemu_binary import Qemu, find_qemu

ROOT = Path(__file__).resolve().parents[2]


def test_backports_qemu_is_private_and_cached():
    q = qemu_or_skip("10.0")
    assert q.series == "10.0" and q.label == "qemu-10.0" and q.msix
    if q.moduledir is None:  # the system's own QEMU is 10.0: nothing to fetch
        pytest.skip(f"the system QEMU is {q.version}")
    root = q.binary.parents[2]
    assert root.parent == default_cache_dir() / "qemu" and root.name.startswith("10.0-")
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["version"] == q.version and "bpo12" in manifest["debian_version"]
    assert not q.binary.is_relative_to("/usr")  # nothing installed system-wide
    assert find_qemu("10.0") == q  # cached: the same directory, no second fetch
    out = subprocess.run([*q.argv(), "--version"], env=q.env(), capture_output=True, text=True, check=True)
    assert f"version {q.version}" in out.stdout
    assert q.env()["QEMU_MODULE_DIR"] == str(q.moduledir) and q.argv()[1:] == ["-L", str(q.datadirs[0])]


def test_debian_qemu_is_the_system_one():
    q = qemu_or_skip("7.2")
    assert q.series == "7.2" and not q.msix and q.argv() == [str(q.binary)] and q.env() is None


def test_vhostpci_vm1_qemu_prints_it():
    qemu_or_skip("10.0")
    p = subprocess.run([sys.executable, "-m", "tools.guest", "qemu", "10.0"], cwd=ROOT, check=False, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "version 10.0." in p.stdout and "msix yes" in p.stdout
    p = subprocess.run([sys.executable, "-m", "tools.guest", "qemu", "x.y"], cwd=ROOT, check=False, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert p.returncode == 1 and "MAJOR.MINOR" in p.stderr


def _vm(tmp_path: Path, qemu: Qemu, **kw) -> Vm1:
    img = GuestImage(kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd.img", version="x")
    return Vm1(img, tmp_path / "vp.sock", workdir=tmp_path, qemu=qemu, **kw)


def test_command_line_per_qemu(tmp_path):
    q72 = Qemu(Path("/usr/bin/qemu-system-x86_64"), "7.2.22")
    q10 = Qemu(Path("/c/q/usr/bin/qemu-system-x86_64"), "10.0.2", datadirs=(Path("/c/q/usr/share/qemu"),),
               moduledir=Path("/c/q/usr/lib/x86_64-linux-gnu/qemu"))
    old = " ".join(_vm(tmp_path, q72).command())
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,vectors=0" in old  # INTx: 7.2 + MSI-X crashes
    new = _vm(tmp_path, q10).command()
    assert new[:3] == ["/c/q/usr/bin/qemu-system-x86_64", "-L", "/c/q/usr/share/qemu"]
    assert "vectors" not in " ".join(new)  # MSI-X
    mq = " ".join(_vm(tmp_path, q10, queues=2).command())
    assert "vhost-user,id=net0,chardev=chr0,queues=2" in mq and "mq=on,vectors=6" in mq
    with pytest.raises(ValueError, match="MSI-X"):
        _vm(tmp_path, q72, queues=2)
    assert _vm(tmp_path, q10).replace(workdir=tmp_path / "dst").qemu == q10  # a migration target: same QEMU
