"""Find kernel modules and their load order in an extracted linux-image package.

Debian's linux-image packages ship no modules.dep (depmod runs at install), so
dependencies come from each module's own `.modinfo` `depends=` field, the same
data modpost writes for depmod.
"""
from __future__ import annotations

import io
import lzma
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile


def _norm(name: str) -> str:
    return name.replace("-", "_")


def ko_name(path: Path) -> str:
    """Module name of a .ko/.ko.xz file: basename without suffixes, '-' -> '_'."""
    return _norm(path.name.split(".ko")[0])


def ko_bytes(path: Path) -> bytes:
    """The uncompressed module (busybox insmod wants plain ELF)."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        raise NotImplementedError(f"{path.name}: zstd modules are not supported")
    if path.name.endswith(".gz"):
        import gzip
        return gzip.decompress(data)
    return data


def modinfo(data: bytes) -> dict[str, list[str]]:
    """The .modinfo key=value pairs of a module (keys may repeat)."""
    sec = ELFFile(io.BytesIO(data)).get_section_by_name(".modinfo")
    info: dict[str, list[str]] = {}
    if sec is None:
        return info
    for item in sec.data().split(b"\0"):
        if b"=" in item:
            k, v = item.decode(errors="replace").split("=", 1)
            info.setdefault(k, []).append(v)
    return info


@dataclass
class Module:
    """A loadable module: name, uncompressed bytes, direct dependencies."""

    name: str
    data: bytes
    depends: list[str]


class KernelModules:
    """The module tree /lib/modules/VERSION of an extracted kernel package."""

    def __init__(self, moddir: Path) -> None:
        self.moddir = moddir
        self.version = moddir.name
        self.files: dict[str, Path] = {ko_name(p): p for p in moddir.rglob("*.ko*")}
        builtin = moddir / "modules.builtin"
        self.builtin = {ko_name(Path(line)) for line in
                        (builtin.read_text().split() if builtin.exists() else [])}

    def resolve(self, wanted: list[str], optional: frozenset[str] = frozenset()
                ) -> tuple[list[Module], list[str]]:
        """Modules to load for WANTED, dependencies first.

        Built-in modules are skipped. A wanted name that is neither built in nor
        a module raises, unless it is in OPTIONAL (then it is reported in the
        second list, "absent").
        """
        order: list[Module] = []
        done: set[str] = set()
        absent: list[str] = []

        def visit(name: str, chain: tuple[str, ...]) -> None:
            name = _norm(name)
            if name in done or name in self.builtin:
                return
            if name in chain:
                raise ValueError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
            path = self.files.get(name)
            if path is None:
                if name in optional and not chain:
                    absent.append(name)
                    return
                raise FileNotFoundError(f"module {name} not in {self.moddir} "
                                        f"(needed by {chain[-1] if chain else 'request'})")
            data = ko_bytes(path)
            deps = [d for d in modinfo(data).get("depends", [""])[0].split(",") if d]
            for d in deps:
                visit(d, chain + (name,))
            done.add(name)
            order.append(Module(name, data, deps))

        for w in wanted:
            visit(w, ())
        return order, absent
