"""pmdinfo: the native code Numba emitted for each driver's and engine's kernels.

    vhostpci-pmdinfo --warm               # compile every kernel, then report
    vhostpci-pmdinfo --json --filter ring

For every Numba dispatcher under ``pmd`` that has compiled overloads, read its
ELF object with pyelftools (FUNC symbols and their sizes) and classify the
instructions of each symbol from the assembly text: SSE (legacy-encoded xmm),
AVX / AVX2 (VEX ``v`` mnemonics on xmm/ymm), AVX-512 (zmm or mask registers),
and whether any packed (multi-lane) arithmetic is present ("vectorized").

Where the object comes from: a freshly compiled library keeps it (kernels are
``cache=True``, so object caching is on); one loaded from Numba's disk cache
hands its object to the JIT and keeps none, so it is read back from the cache
file; failing both it is re-emitted from the library's optimized LLVM module.
"""
from __future__ import annotations

import argparse
import importlib
import io
import json
import pkgutil
import re
import sys
import warnings
from dataclasses import asdict, dataclass, field

from apps.cli import silence_stdout

# Kernels named first (drivers, the forwarding loop, mbufs); discovery adds the rest.
KNOWN_KERNELS = [
    ("pmd.null_pmd.driver", "null_rx"),
    ("pmd.null_pmd.driver", "null_tx"),
    ("pmd.ring_pmd.driver", "ring_rx"),
    ("pmd.ring_pmd.driver", "ring_tx"),
    ("pmd.fwd.loop", "fwd_loop"),
    ("pmd.mbuf", "alloc_bulk"),
    ("pmd.mbuf", "free_bulk"),
]


@dataclass
class SymbolInfo:
    symbol: str  # mangled, as in .symtab
    name: str  # roughly demangled: dotted path plus a wrapper note
    size: int  # bytes, from the ELF symbol
    simd: list[str]  # instruction-set families used: SSE, AVX, AVX2, AVX-512
    vector_insns: int  # instructions on xmm/ymm/zmm/k registers
    packed_insns: int  # of those, packed (multi-lane) arithmetic or logic
    scalar_insns: int  # everything else
    vectorized: bool  # packed_insns > 0


@dataclass
class OverloadInfo:
    kernel: str  # module.function
    signature: str
    source: str  # where the object came from: compiled / cache / re-emitted
    object_size: int
    symbols: list[SymbolInfo] = field(default_factory=list)

    @property
    def main(self) -> SymbolInfo | None:
        """The kernel's own symbol (not a cpython/cfunc wrapper or helper)."""
        return next((s for s in self.symbols if s.name == self.kernel), None)


# ---- finding kernels ---------------------------------------------------

def _is_dispatcher(obj) -> bool:
    from numba.core.registry import CPUDispatcher

    return isinstance(obj, CPUDispatcher)


def discover(package: str = "pmd") -> list[tuple[str, object]]:
    """(``module.function``, dispatcher) for the known kernels, then every other
    CPUDispatcher defined in a module under ``package``; import errors skip a module."""
    found: dict[int, tuple[str, object]] = {}
    for modname, attr in KNOWN_KERNELS:
        try:
            disp = getattr(importlib.import_module(modname), attr)
        except (ImportError, AttributeError):
            continue
        found.setdefault(id(disp), (f"{modname}.{attr}", disp))
    pkg = importlib.import_module(package)
    modules = [package] + [m.name for m in pkgutil.walk_packages(pkg.__path__, package + ".", onerror=lambda _: None)]
    for modname in modules:
        try:
            mod = importlib.import_module(modname)
        except Exception:
            continue
        for attr, obj in sorted(vars(mod).items()):
            if _is_dispatcher(obj) and getattr(obj.py_func, "__module__", None) == modname:
                found.setdefault(id(obj), (f"{modname}.{obj.py_func.__qualname__}", obj))
    return list(found.values())


# ---- warming -----------------------------------------------------------

def warm() -> None:
    """Compile (or load from cache) the drivers' bursts, the mbuf helpers and
    one ``fwd_loop`` per driver pairing, without launching any lcore."""
    import numpy as np

    from pmd.fwd.common import N_FS
    from pmd.lcore.control import LC_STOP, N_LC
    from pmd.fwd.loop import fwd_loop
    from pmd.fwd.runtime import Forwarding
    from pmd.lcore import LcoreManager

    for vdevs in (["net_null0", "net_null1"], ["net_ring0", "net_ring1,peer=net_ring0"]):
        fw = Forwarding(LcoreManager({0: 0, 1: 0}, 0), nb_mbufs=256)
        try:
            for vdev in vdevs:
                fw.start_port(fw.attach_port(vdev).port_id)
            bufs = np.zeros(32, np.int32)
            for port in fw.ports.values():
                st = port.kernel_state()
                rx, tx = _bursts(port)
                n = rx(st, 0, fw.pool, bufs, 8)
                tx(st, 0, fw.pool, bufs, n)
                port.driver.drain(fw.pool)
            fw.streams = fw.layout()
            fs = np.zeros((len(fw.streams), N_FS), np.int64)
            for lcore in sorted({s.lcore for s in fw.streams}):
                ctl = np.zeros(N_LC, np.int64)
                ctl[LC_STOP] = 1  # returns at once: this only compiles
                fwd_loop(fw._lcore_streams(lcore), fw._ctx(fs, fw._cfg(False)), ctl)
        finally:
            fw.close()


def _bursts(port):
    """A port's rx/tx kernels, from the module that defines its state type."""
    mod = sys.modules[type(port.kernel_state()).__module__]
    prefix = port.driver.prefix.removeprefix("net_")
    return getattr(mod, f"{prefix}_rx"), getattr(mod, f"{prefix}_tx")


# ---- objects and symbols -----------------------------------------------

def _object_code(disp, sig, library) -> tuple[bytes, str]:
    try:
        obj = library._get_compiled_object()
        if obj:
            return bytes(obj), "compiled"
    except (ValueError, RuntimeError):
        pass
    cache = getattr(disp, "_cache", None)
    if cache is not None and hasattr(cache, "_cache_file"):
        try:
            key = cache._index_key(sig, library.codegen)
            state = _find_object_state(cache._cache_file.load(key))
            if state is not None:
                return bytes(state[2][0]), "cache"
        except Exception:
            pass
    return bytes(library.codegen._tm.emit_object(_llvm_module(library))), "re-emitted"


def _find_object_state(data):
    """The ``(name, 'object', (object, bitcode))`` tuple inside a cache entry."""
    if isinstance(data, tuple) and len(data) == 3 and data[1] == "object":
        return data
    if isinstance(data, (tuple, list)):
        for item in data:
            found = _find_object_state(item)
            if found is not None:
                return found
    return None


def _llvm_module(library):
    """The optimized module: the final one when compiled here, else the
    shared (linkable) module a cache load keeps."""
    final = library._final_module
    if any(not f.is_declaration for f in final.functions):
        return final
    return library._shared_module


def _asm(library) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(library.codegen._tm.emit_assembly(_llvm_module(library)))


def elf_functions(obj: bytes) -> dict[str, int]:
    """FUNC symbols defined in the object's .symtab -> size in bytes."""
    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(obj))
    symtab = elf.get_section_by_name(".symtab")
    if symtab is None:
        return {}
    return {
        s.name: s["st_size"]
        for s in symtab.iter_symbols()
        if s["st_info"]["type"] == "STT_FUNC" and s["st_shndx"] != "SHN_UNDEF"
    }


_HEX_ESCAPE = re.compile(r"_([0-9a-f]{2})")


def demangle(symbol: str) -> str:
    """Numba's Itanium-style names, roughly: ``_ZN3pmd4mbuf10alloc_bulkB2v8...``
    -> ``pmd.mbuf.alloc_bulk``; wrappers get a suffix."""
    wrapper = ""
    name = symbol
    if name.startswith("cfunc."):
        name, wrapper = name[len("cfunc."):], " [cfunc wrapper]"
    if not name.startswith("_ZN"):
        return symbol
    parts, i = [], 3
    while i < len(name) and name[i].isdigit():
        j = i
        while name[j].isdigit():
            j += 1
        n = int(name[i:j])
        parts.append(name[j:j + n])
        i = j + n
    if parts and parts[0] == "cpython":
        parts, wrapper = parts[1:], " [cpython wrapper]"
    dotted = ".".join(_HEX_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), p) for p in parts)
    return (dotted or symbol) + wrapper


# ---- instruction classes -----------------------------------------------

_VREG = re.compile(r"%([xyz])mm\d+")
_KREG = re.compile(r"%k[0-7]\b")
# Scalar SIMD: one lane of an FP op, or a GPR<->xmm move.
_SCALAR_SIMD = re.compile(r"^v?(\w*s[sdh]|movd|movq|cvt\w*s[sd]2\w*|cvt\w*2s[sd]\w*|u?comis[sd]|pextr[bwdq]|pinsr[bwdq])$")
# Pure data movement: no lanes computed (struct copies, spills, zeroing loads).
_MOVE = re.compile(r"^v?(mov(aps|apd|ups|upd|dqa|dqu|dqa32|dqa64|dqu8|dqu16|dqu32|dqu64|hps|lps|hpd|lpd|ntdq|ntps|ntpd)|lddqu)$")
_AVX2_INT = re.compile(r"^v(p|perm[dq]|inserti128|extracti128|broadcasti128|gather|pgather)")


def classify_asm(lines: list[str]) -> dict:
    """Families and counts over one function's instruction lines."""
    families: set[str] = set()
    vector = packed = scalar = 0
    for line in lines:
        mnemonic, *rest = line.split(None, 1)
        operands = rest[0] if rest else ""
        widths = set(_VREG.findall(operands))
        kregs = bool(_KREG.search(operands)) or mnemonic.startswith("k")
        if not widths and not kregs:
            scalar += 1
            continue
        vector += 1
        if "z" in widths or kregs:
            families.add("AVX-512")
        elif mnemonic.startswith("v"):
            families.add("AVX2" if "y" in widths and _AVX2_INT.match(mnemonic) else "AVX")
        else:
            families.add("SSE")
        if _SCALAR_SIMD.match(mnemonic) or _MOVE.match(mnemonic) or kregs and not widths:
            continue
        regs = re.findall(r"%[xyz]mm\d+", operands)
        if re.match(r"^v?p?xor(ps|pd)?$", mnemonic) and len(set(regs)) == 1:
            continue  # zeroing idiom
        packed += 1
    order = ["SSE", "AVX", "AVX2", "AVX-512"]
    return {"simd": [f for f in order if f in families], "vector_insns": vector,
            "packed_insns": packed, "scalar_insns": scalar}


def split_asm(asm: str) -> dict[str, list[str]]:
    """Assembly text -> {function label: its instruction lines}."""
    funcs: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in asm.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace() and line.endswith(":"):
            label = line[:-1].strip('"')
            if not label.startswith(".L"):
                current = funcs.setdefault(label, [])
            continue
        text = line.strip()
        if text.startswith(".size") or text.startswith(".Lfunc_end"):
            current = None if text.startswith(".size") else current
            continue
        if current is not None and not text.startswith("."):
            current.append(text)
    return funcs


# ---- the report --------------------------------------------------------

def inspect(kernels: list[tuple[str, object]] | None = None, filt: str | None = None) -> list[OverloadInfo]:
    """One OverloadInfo per compiled overload of every kernel."""
    out = []
    for kernel, disp in kernels if kernels is not None else discover():
        if filt and filt not in kernel:
            continue
        for sig in list(disp.signatures):
            library = disp.overloads[sig].library
            obj, source = _object_code(disp, sig, library)
            funcs = split_asm(_asm(library))
            info = OverloadInfo(kernel, str(sig), source, len(obj))
            for symbol, size in elf_functions(obj).items():
                stats = classify_asm(funcs.get(symbol, []))
                info.symbols.append(SymbolInfo(symbol, demangle(symbol), size, vectorized=stats["packed_insns"] > 0, **stats))
            info.symbols.sort(key=lambda s: (s.name != kernel, s.name))
            out.append(info)
    return out


def _short(sig: str, width: int = 60) -> str:
    return sig if len(sig) <= width else sig[: width - 3] + "..."


def format_table(report: list[OverloadInfo]) -> str:
    lines = [f"{'symbol':<44} {'bytes':>6}  {'simd':<16} {'vec/packed/scalar':>17}  vectorized"]
    for ov in report:
        lines.append(f"{ov.kernel}  {_short(ov.signature)}  (object {ov.object_size} B, {ov.source})")
        for s in ov.symbols:
            name = s.name if len(s.name) <= 42 else s.name[:39] + "..."
            counts = f"{s.vector_insns}/{s.packed_insns}/{s.scalar_insns}"
            lines.append(f"  {name:<42} {s.size:>6}  {','.join(s.simd) or '-':<16} {counts:>17}  {'yes' if s.vectorized else 'no'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vhostpci-pmdinfo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--warm", action="store_true", help="compile every kernel first (no traffic, no lcores)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--filter", metavar="SUBSTR", help="only kernels whose module.function contains SUBSTR")
    args = ap.parse_args(argv)

    if args.warm:
        warm()
    report = inspect(filt=args.filter)
    try:
        _print_report(report, args)
    except BrokenPipeError:  # piped into head: not an error
        silence_stdout()
    return 0


def _print_report(report, args) -> None:
    if args.json:
        print(json.dumps([dict(asdict(ov), main=ov.main and ov.main.symbol) for ov in report], indent=2))
    elif not report:
        what = f" matching {args.filter!r}" if args.filter else ""
        print(f"no compiled kernels{what} in this process; run with --warm to compile them first")
    else:
        print(format_table(report))


if __name__ == "__main__":
    sys.exit(main())
