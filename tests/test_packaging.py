"""The package as a user installs it: a wheel built from the source tree,
installed into a fresh venv, its console scripts run from there (not from
this checkout), the non-Python files the tools need shipped with it."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import ROOT

# what goes into the wheel: the packages, the metadata, the README it names and the license
SOURCES = ("pmd", "apps", "tools", "pyproject.toml", "README.md", "LICENSE")


def _why_no_build() -> str | None:
    for mod in ("setuptools", "wheel"):  # --no-build-isolation: the backend comes from here, not from PyPI
        if importlib.util.find_spec(mod) is None:
            return f"{mod} not installed (tools/setup installs it with the test extras)"
    return None


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    why = _why_no_build()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    src.mkdir()
    for name in SOURCES:
        path = Path(ROOT) / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "-w", str(tmp / "dist"), str(src)], check=True, env=env, timeout=300)
    wheel = next((tmp / "dist").glob("vhostpci-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    # the dependencies (numba, numpy, ...) from this interpreter's site-packages, as a plain
    # path entry: its .pth files (the checkout's editable install among them) are not run
    site = Path(subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([py, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)], check=True,
                   env=env, timeout=300)
    return venv


def run(venv: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["VIRTUAL_ENV"] = str(venv)
    return subprocess.run(argv, cwd=venv, env=env, capture_output=True, text=True, timeout=timeout)


def test_installed_wheel_runs_from_the_venv(venv):
    py = str(venv / "bin" / "python")
    where = run(venv, py, "-c", "import apps, pmd, tools; print(pmd.__file__, apps.__file__, tools.__file__)")
    assert where.returncode == 0, where.stderr
    assert all(p.startswith(str(venv)) for p in where.stdout.split()), where.stdout  # not this checkout
    from pmd.eal import version
    out = run(venv, str(venv / "bin" / "vhostpci-fwd"), "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"vhostpci-fwd (vhostpci {version()})", out
    out = run(venv, str(venv / "bin" / "vhostpci-testpmd"), "-h")
    assert out.returncode == 0 and "EAL common options" in out.stdout and "--forward-mode" in out.stdout, out
    out = run(venv, str(venv / "bin" / "vhostpci-cpu-layout"), "--json", "--interval", "0.05")
    assert out.returncode == 0 and '"cpus"' in out.stdout.replace(" ", ""), out
    for script in ("vhostpci-bench", "vhostpci-pmdinfo", "vhostpci-vm1"):
        out = run(venv, str(venv / "bin" / script), "--help")
        assert out.returncode == 0 and "usage" in out.stdout.lower(), (script, out)


def test_non_python_files_are_shipped(venv):
    """tools.guest builds udpblast.c into the guest image (vhostpci-bench vm1)."""
    out = run(venv, str(venv / "bin" / "python"), "-c",
              "from tools.guest.blaster import SOURCE; print(SOURCE, SOURCE.stat().st_size)")
    assert out.returncode == 0, out.stderr
    path, size = out.stdout.split()
    assert path.startswith(str(venv)) and int(size) == (Path(ROOT) / "tools" / "guest" / "udpblast.c").stat().st_size


def test_license_in_metadata(venv):
    """pyproject's license reaches the installed metadata, the LICENSE text the dist-info."""
    out = run(venv, str(venv / "bin" / "python"), "-c",
              "import importlib.metadata as m; d = m.distribution('vhostpci'); print(d.metadata['License']);"
              " print(next(f.locate() for f in d.files if f.name == 'LICENSE'))")
    assert out.returncode == 0, out.stderr
    license_id, path = out.stdout.split()
    assert license_id == "BSD-3-Clause" and path.startswith(str(venv)), out.stdout
    assert Path(path).read_text() == (Path(ROOT) / "LICENSE").read_text()
