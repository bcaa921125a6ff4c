"""The import rules of the README's Architecture section, enforced.

An ``ast`` scan of every module under ``pmd/``: each top-level part of the
framework may import only the parts listed for it below (plus itself), the
protocol layer stays free of Numba, and nothing under ``pmd/`` imports the
apps or tools.  Imports under ``if TYPE_CHECKING:`` count too: an
annotation is a dependency as well.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PMD = Path(ROOT) / "pmd"

BASE = {"pmd.atomics", "pmd.atomics_py", "pmd.syscalls", "pmd.units", "pmd.shm", "pmd.signals", "pmd.rates",
        "pmd.log", "pmd.progress", "pmd.grace", "pmd.placement", "pmd.cpuload", "pmd.byref", "pmd.standin"}
DRIVER = BASE | {"pmd.ethdev", "pmd.burst", "pmd.mbuf", "pmd.csum", "pmd.log"}

# part -> the framework parts it may import (itself always allowed); a part
# not listed here fails the test until it is given a place.
ALLOWED: dict[str, set[str]] = {
    # base: memory ordering, syscalls from kernels, units, shared memory
    "pmd": {"pmd.units"},
    "pmd.atomics": set(),
    "pmd.atomics_py": set(),
    "pmd.syscalls": set(),
    "pmd.units": set(),
    "pmd.shm": set(),
    "pmd.signals": set(),
    "pmd.rates": set(),
    "pmd.log": set(),
    "pmd.progress": {"pmd.log"},
    "pmd.grace": {"pmd.atomics", "pmd.syscalls"},
    "pmd.placement": set(),
    "pmd.cpuload": set(),
    "pmd.byref": set(),
    "pmd.standin": {"pmd.atomics", "pmd.atomics_py", "pmd.syscalls"},
    "pmd.csum": BASE,
    # the neutral layers: virtio layout, guest memory, ports, mbufs, lcores
    "pmd.virtio": BASE,
    "pmd.guestmem": BASE,
    "pmd.sizebins": BASE,
    "pmd.ethdev": BASE | {"pmd.sizebins"},
    "pmd.burst": BASE | {"pmd.ethdev", "pmd.sizebins"},
    "pmd.mbuf": BASE,
    "pmd.lcore": BASE,
    # the vhost-user protocol: no device, no memory implementation, no Numba
    "pmd.vhost_user": {"pmd.shm", "pmd.virtio"},
    # the IOTLB message's layout for compiled code, both sides of the protocol
    "pmd.iotlb_wire": BASE | {"pmd.vhost_user"},
    # drivers: the framework below them, never each other
    "pmd.null_pmd": DRIVER,
    "pmd.ring_pmd": DRIVER,
    # what both VF drivers share: a netdev, its port ops, kernel-shared rings
    "pmd.netdev": BASE,
    "pmd.ringarea": BASE,
    "pmd.netdev_port": DRIVER | {"pmd.netdev"},
    "pmd.vf_pmd": DRIVER | {"pmd.netdev", "pmd.netdev_port", "pmd.ringarea"},
    "pmd.xdp_pmd": DRIVER | {"pmd.netdev", "pmd.netdev_port", "pmd.ringarea"},
    "pmd.vhostpci_pmd": DRIVER | {"pmd.guestmem", "pmd.vhost_user", "pmd.iotlb_wire", "pmd.virtio"},
    "pmd.virtio_user_pmd": DRIVER | {"pmd.guestmem", "pmd.vhost_user", "pmd.iotlb_wire", "pmd.virtio"},
    # above the drivers: the vdev bus (loads them by name), forwarding, EAL
    "pmd.vdev": {"pmd.ethdev"},
    "pmd.fwd": DRIVER | {"pmd.lcore", "pmd.vdev"},
    "pmd.eal": BASE | {"pmd.ethdev", "pmd.mbuf", "pmd.vdev"},
    "pmd.telemetry": BASE | {"pmd.ethdev", "pmd.eal", "pmd.xstats"},
    "pmd.xstats": BASE | {"pmd.ethdev", "pmd.sizebins"},
    "pmd.metrics": BASE | {"pmd.ethdev", "pmd.xstats"},
}

# Whole packages that must not be imported at all by a part.
FORBIDDEN_THIRD_PARTY = {"pmd.vhost_user": {"numba", "numpy"}, "pmd.vdev": {"numba"}}


def _part(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "pmd" else parts[0]


def _module_name(path: Path) -> list[str]:
    parts = list(path.relative_to(PMD.parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                full = ".".join(base + ([node.module] if node.module else []))
            else:
                full = node.module or ""
            if node.module is None:  # from . import x: x is a module
                out += [(node.lineno, f"{full}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, full))
    return out


def _violations() -> list[str]:
    bad = []
    for path in sorted(PMD.rglob("*.py")):
        src = _part(".".join(_module_name(path)))
        allowed = ALLOWED.get(src)
        if allowed is None:
            bad.append(f"{path.relative_to(ROOT)}: part {src} has no place in the import rules")
            continue
        for line, target in _imports(path):
            dst = _part(target)
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            if dst in ("apps", "tools", "tests"):
                bad.append(f"{where} (pmd/ never imports the apps, tools or tests)")
            elif dst.startswith("pmd") and dst != src and dst not in allowed:
                bad.append(f"{where} ({src} may import only {sorted(allowed) or 'nothing of pmd'})")
            elif dst in FORBIDDEN_THIRD_PARTY.get(src, ()):
                bad.append(f"{where} ({src} stays free of {dst})")
    return bad


def test_import_rules_hold():
    bad = _violations()
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source, target", [
    ("from ..vhostpci_pmd.window import Window\n", "pmd/vhost_user/x.py"),
    ("from ..fwd.common import LC_STOP\n", "pmd/lcore/x.py"),
    ("from .vhostpci_pmd import driver\n", "pmd/ethdev.py"),
    ("import numba\n", "pmd/vhost_user/x.py"),
    ("from ..ring_pmd.ring import ring_put\n", "pmd/null_pmd/x.py"),
])
def test_import_rules_catch_a_break(tmp_path, monkeypatch, source, target):
    """The scan itself: each of these lines, planted in a copy of the
    package, is reported."""
    import shutil

    import tests.test_architecture as arch

    copy = tmp_path / "pmd"
    shutil.copytree(PMD, copy, ignore=shutil.ignore_patterns("__pycache__"))
    planted = tmp_path / target
    planted.parent.mkdir(parents=True, exist_ok=True)
    with planted.open("a") as f:
        f.write("\n" + source)
    monkeypatch.setattr(arch, "PMD", copy)
    monkeypatch.setattr(arch, "ROOT", str(tmp_path))
    bad = arch._violations()
    assert any(target in b for b in bad), bad
