"""Build and cache a guest: a Debian kernel plus a busybox initramfs.

`build_image("6.1")` gives bookworm's current kernel, `build_image("6.12")`
bookworm-backports' (the first with CONFIG_VIRTIO_IOMMU). The initramfs holds
busybox-static with its applet links, `nc.openbsd` (busybox's nc has no UDP)
and `ethtool` (queue pairs, per-queue counters) with the few shared libraries
they need, the virtio-net / virtio-iommu / AHCI
modules in load order, and the generic /init of `init_script`. Scenarios are a
second small archive appended to the cached base (`GuestImage.with_scenario`).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from elftools.elf.elffile import ELFFile

from . import cpio
from .apt import AptError, PrivateApt, compare_versions, extract
from .cache import build_once, default_cache_dir, newest, prune
from .init_script import INIT
from .modules import KernelModules

KERNELS = ("6.1", "6.12")
#: Modules loaded at boot, in this order (plus their dependencies first).
#: The AHCI stack: SeaBIOS leaves an AHCI DMA address the intel vIOMMU never
#: maps, which breaks migration until the guest's driver resets the controller.
WANTED_MODULES = ["scsi_common", "scsi_mod", "libata", "libahci", "ahci",
                  "virtio_pci", "virtio_iommu", "virtio_net"]
OPTIONAL_MODULES = frozenset({"virtio_iommu"})  # not in 6.1 (CONFIG_VIRTIO_IOMMU off)
#: Dynamic programs beside busybox: guest path -> (package, path in it).
#: nc.openbsd: busybox's nc has no UDP; ethtool: queue pairs (-L) and
#: per-queue counters (-S) of a multi-queue virtio-net.
PROGRAMS = {"usr/bin/nc.openbsd": ("netcat-openbsd", "bin/nc.openbsd"),
            "usr/sbin/ethtool": ("ethtool", "sbin/ethtool")}
#: Where their shared libraries come from.
LIB_PACKAGES = ["libbsd0", "libmd0", "libmnl0", "libc6"]
USER_PACKAGES = ["busybox-static", *sorted({pkg for pkg, _ in PROGRAMS.values()}), *LIB_PACKAGES]
LIBDIR = "lib/x86_64-linux-gnu"
INTERP = "ld-linux-x86-64.so.2"


class ImageError(RuntimeError):
    """The guest image could not be built."""


def _source_hash() -> str:
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in ("image.py", "init_script.py", "cpio.py", "modules.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class GuestImage:
    """A cached guest: kernel, base initrd, and what went into them."""

    kernel: Path
    initrd: Path
    version: str                     #: the kernel release (`uname -r`)
    series: str = ""                 #: "6.1" or "6.12"
    packages: dict[str, str] = field(default_factory=dict)  #: package -> version
    modules: tuple[str, ...] = ()    #: modules /init loads, in order

    def with_scenario(self, script: str, files: dict[str, bytes] | None = None,
                      dest_dir: Path | None = None) -> Path:
        """An initrd = the base + an archive with /scenario.sh and FILES.

        SCRIPT is sourced by /init (in a subshell) with the helpers of
        `init_script.HELPERS`; FILES maps guest paths ("/data/x") to contents.
        The file is named after its content, so reuse is free; DEST_DIR
        defaults to a `scenarios/` folder beside the base initrd.
        """
        extra = cpio.Archive()
        extra.add_file("scenario.sh", script.encode(), 0o755)
        for path, data in (files or {}).items():
            extra.add_file(path, data, 0o755 if data.startswith(b"#!") else 0o644)
        blob = extra.to_gzip()
        digest = hashlib.sha256(self.initrd.name.encode() + str(self.initrd.parent).encode()
                                + blob).hexdigest()[:16]
        dest_dir = Path(dest_dir) if dest_dir else self.initrd.parent / "scenarios"
        dest_dir.mkdir(parents=True, exist_ok=True)
        out = dest_dir / f"initrd-{digest}.img"
        if not out.exists():
            tmp = out.with_name(f".{out.name}.{os.getpid()}")
            with open(tmp, "wb") as f:
                f.write(self.initrd.read_bytes())
                f.write(blob)
            os.replace(tmp, out)
        return out

    @classmethod
    def load(cls, image_dir: Path) -> GuestImage:
        """The image stored in IMAGE_DIR (its manifest.json)."""
        m = json.loads((image_dir / "manifest.json").read_text())
        return cls(kernel=image_dir / "vmlinuz", initrd=image_dir / "initrd.img",
                   version=m["version"], series=m["series"], packages=m["packages"],
                   modules=tuple(m["modules"]))


def _resolve_kernel(apt: PrivateApt, series: str) -> tuple[str, str]:
    """(package, version) of the newest linux-image-SERIES.*-amd64 the metapackage names."""
    pat = re.compile(rf"linux-image-{re.escape(series)}[.-]\S*-amd64 \(= ([^)]+)\)")
    best: tuple[str, str] | None = None
    for st in apt.versions("linux-image-amd64"):
        m = pat.search(st.get("Depends", ""))
        if m:
            pkg = m.group(0).split()[0]
            if best is None or compare_versions(m.group(1), best[1]) > 0:
                best = (pkg, m.group(1))
    if best is None:
        raise ImageError(f"no linux-image-amd64 in the Debian lists depends on a {series} kernel")
    return best


def _log(msg: str) -> None:
    print(f"tools.guest: {msg}", file=sys.stderr, flush=True)


def build_image(kernel: str = "6.1", cache_dir: Path | None = None) -> GuestImage:
    """The guest for KERNEL ("6.1" or "6.12"), built once and cached.

    The cache key is the versions of every package used plus a hash of this
    builder's source; package lists are refreshed at most every 12 h. Offline,
    with no lists, the newest cached image of the series is used. Safe to call
    from concurrent processes (locks + build in a temp dir + atomic rename).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, not {kernel!r}")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    apt = PrivateApt(cache_dir / "apt")
    with apt.locked():
        try:
            apt.update()
        except AptError as e:
            if not apt.has_lists():
                cached = _newest_cached(cache_dir, kernel)
                if cached:
                    _log(f"apt-get update failed, using cached {cached.initrd.parent}")
                    return cached
                raise ImageError(f"cannot build the {kernel} guest: {e}") from e
            _log(f"apt-get update failed, using the lists we have: {e}")
        kpkg, kver = _resolve_kernel(apt, kernel)
        pins = {kpkg: kver, **apt.candidates(USER_PACKAGES)}
    key = hashlib.sha256(json.dumps([sorted(pins.items()), _source_hash()]).encode()
                         ).hexdigest()[:16]
    final = cache_dir / "images" / f"{kernel}-{key}"

    def build(scratch: Path, out: Path) -> None:
        _log(f"building the {kernel} guest ({kpkg} {kver}) in {scratch}")
        with apt.locked():
            debs = apt.download(pins, scratch / "debs")
        _build(kernel, pins, debs, scratch / "x", out)

    if build_once(final, build):
        _log(f"guest {kernel} cached in {final}")
        prune(cache_dir / "images", f"{kernel}-", keep=final)
    return GuestImage.load(final)


def _newest_cached(cache_dir: Path, kernel: str) -> GuestImage | None:
    found = newest(cache_dir / "images", f"{kernel}-")
    return GuestImage.load(found) if found else None


def _build(kernel: str, pins: dict[str, str], debs: dict[str, Path], xdir: Path,
           out: Path) -> None:
    roots: dict[str, Path] = {}
    for pkg, deb in debs.items():
        roots[pkg] = xdir / pkg
        extract(deb, roots[pkg])
    kpkg = next(p for p in pins if p.startswith("linux-image-"))
    kroot = roots[kpkg]
    vmlinuz = next((kroot / "boot").glob("vmlinuz-*"))
    moddir = next((kroot / "lib" / "modules").iterdir())
    mods, absent = KernelModules(moddir).resolve(WANTED_MODULES, OPTIONAL_MODULES)

    ar = cpio.Archive()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run",
              "root", "etc", "lib/modules", LIBDIR, "lib64"):
        ar.add_dir(d)
    ar.add_chardev("dev/console", 5, 1)
    ar.add_chardev("dev/null", 1, 3, 0o666)
    _add_busybox(ar, roots["busybox-static"] / "bin" / "busybox")
    _add_programs(ar, roots)
    for m in mods:
        ar.add_file(f"lib/modules/{m.name}.ko", m.data)
    ar.add_file("etc/modules.load", "".join(f"{m.name}\n" for m in mods).encode())
    release = {"series": kernel, "version": moddir.name, "packages": pins,
               "modules": [m.name for m in mods], "absent_modules": absent}
    ar.add_file("etc/vhostpci-guest.json", json.dumps(release, indent=1).encode())
    ar.add_file("init", INIT.encode(), 0o755)

    out.mkdir()
    shutil.copyfile(vmlinuz, out / "vmlinuz")
    (out / "initrd.img").write_bytes(ar.to_gzip())
    (out / "manifest.json").write_text(json.dumps(release, indent=1) + "\n")


def _applets(busybox: Path) -> list[str]:
    """Applet paths ("usr/bin/awk") of a busybox binary (run on the host)."""
    p = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True)
    if p.returncode != 0:
        raise ImageError(f"{busybox} --list-full failed: {p.stderr.strip()}")
    return p.stdout.split()


def _add_busybox(ar: cpio.Archive, busybox: Path) -> None:
    ar.add_file("bin/busybox", busybox.read_bytes(), 0o755)
    for path in _applets(busybox):
        if path.strip("/") in ("bin/busybox", "init", "linuxrc"):
            continue
        depth = path.strip("/").count("/")
        ar.add_symlink(path, "../" * depth + "bin/busybox")


def _needed(data: bytes) -> tuple[list[str], str | None]:
    """DT_NEEDED sonames and the interpreter of an ELF file."""
    elf = ELFFile(io.BytesIO(data))
    dyn = elf.get_section_by_name(".dynamic")
    needed = [t.needed for t in dyn.iter_tags() if t.entry.d_tag == "DT_NEEDED"] if dyn else []
    interp = elf.get_section_by_name(".interp")
    return needed, interp.data().rstrip(b"\0").decode() if interp else None


def _add_programs(ar: cpio.Archive, roots: dict[str, Path]) -> None:
    """The PROGRAMS plus the shared libraries they need (from LIB_PACKAGES)."""
    libs: dict[str, Path] = {}
    for pkg in LIB_PACKAGES:
        for p in roots[pkg].rglob("*.so*"):
            libs.setdefault(p.name, p)
    todo, done = [INTERP], set()
    for dest, (pkg, src) in PROGRAMS.items():
        data = (roots[pkg] / src).read_bytes()
        ar.add_file(dest, data, 0o755)
        todo += _needed(data)[0]
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        if name not in libs:
            raise ImageError(f"{' / '.join(PROGRAMS)} need {name}, not found in {list(libs)[:20]}...")
        data = libs[name].resolve().read_bytes()
        ar.add_file(f"{LIBDIR}/{name}", data, 0o755)
        todo += _needed(data)[0]
    ar.add_symlink(f"lib64/{INTERP}", f"../{LIBDIR}/{INTERP}")
