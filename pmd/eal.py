"""EAL command line: DPDK-style options that pick lcores, vdevs and logging.

    prog -l 0-1 --main-lcore 0 --vdev net_ring0 --vdev net_ring1,peer=net_ring0 -- -i

Everything before ``--`` is an EAL option; everything after it belongs to the
application and is returned untouched.  Parsing is hand-written: argparse
would print usage and exit on its own, while here every mistake is one
EalError whose message names the offending token.

Lcore options follow DPDK's ``-c`` / ``-l`` / ``--lcores`` (at most one of
them); without any, every CPU this process may run on becomes an lcore.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Set
from dataclasses import dataclass, field

from .ethdev import DevargError, VdevSpec
from .vdev import parse_vdev

MAX_LCORE = 128  # as DPDK's default RTE_MAX_LCORE
_MAX_ID = 8192  # bound on any id in a list (Linux's largest NR_CPUS)

# DPDK's log levels, 1 (emergency) .. 8 (debug), with the syslog short forms.
_LOG_LEVELS = {
    "emergency": 1, "emerg": 1, "alert": 2, "critical": 3, "crit": 3,
    "error": 4, "err": 4, "warning": 5, "warn": 5, "notice": 6, "info": 7, "debug": 8,
}

# Options that take no value, accepted for DPDK compatibility and ignored.
_IGNORED_FLAGS = {"--no-pci", "--no-huge", "--in-memory"}
# Options that take a value, accepted for DPDK compatibility and ignored
# (memory is not hugepage-backed here, so sizes and channels mean nothing).
_IGNORED_WITH_VALUE = {"-m", "--socket-mem", "-n"}
_CORE_OPTIONS = {"-c", "-l", "--lcores"}
_WITH_VALUE = _CORE_OPTIONS | _IGNORED_WITH_VALUE | {
    "--main-lcore", "--master-lcore", "--vdev", "--log-level", "--file-prefix",
}
_SHORT_WITH_VALUE = {opt for opt in _WITH_VALUE if not opt.startswith("--")}

_NUMBER = re.compile(r"[0-9]+")


class EalError(Exception):
    """A bad EAL option; the one-line message names the offending token."""


@dataclass
class EalConfig:
    """The result of EAL option parsing."""

    lcores: dict[int, int]  # lcore id -> cpu id, ordered by lcore id
    main_lcore: int
    vdevs: list[VdevSpec] = field(default_factory=list)  # command-line order
    log_level: str = "info"
    file_prefix: str = "vhostpci"

    @property
    def worker_lcores(self) -> list[int]:
        """Every lcore except the main one, sorted."""
        return sorted(lc for lc in self.lcores if lc != self.main_lcore)


# ---- lcore sets --------------------------------------------------------

def _cpus_or_default(available_cpus: Set[int] | None) -> Set[int]:
    return os.sched_getaffinity(0) if available_cpus is None else available_cpus


def format_cpuset(cpus: Set[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``"0-2,5"``."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _check_cpus(label: str, text: str, cpus: list[int], available_cpus: Set[int]) -> None:
    for cpu in sorted(set(cpus)):
        if cpu not in available_cpus:
            raise EalError(
                f"{label} {text!r}: cpu {cpu} does not exist on this machine"
                f" (available: {format_cpuset(available_cpus) or 'none'})"
            )


def _check_lcores(label: str, text: str, lcores: dict[int, int], available_cpus: Set[int]) -> dict[int, int]:
    """Reject unknown cpus and out-of-range lcore ids; order by lcore id."""
    _check_cpus(label, text, list(lcores.values()), available_cpus)
    for lcore in sorted(lcores):
        if lcore >= MAX_LCORE:
            raise EalError(f"{label} {text!r}: lcore {lcore} is out of range (max {MAX_LCORE - 1})")
    return dict(sorted(lcores.items()))


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``( )``."""
    elements: list[str] = []
    depth = start = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
            if depth > 1:
                raise EalError(f"lcore list {text!r}: nested '(' is not allowed")
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise EalError(f"lcore list {text!r}: unbalanced ')'")
        elif ch == "," and depth == 0:
            elements.append(text[start:i])
            start = i + 1
    if depth:
        raise EalError(f"lcore list {text!r}: unbalanced '('")
    elements.append(text[start:])
    return elements


def _parse_set(token: str, text: str) -> list[int]:
    """``N``, ``N-M`` or ``(N,N-M,...)`` -> the ids in written order."""
    is_group = token.startswith("(") and token.endswith(")")
    ids: list[int] = []
    for part in token[1:-1].split(",") if is_group else [token]:
        lo, dash, hi = part.partition("-")
        if not part:
            raise EalError(f"lcore list {text!r}: empty element in {token!r}")
        if not _NUMBER.fullmatch(lo) or (dash and not _NUMBER.fullmatch(hi)):
            what = "malformed range" if dash else "not a number:"
            raise EalError(f"lcore list {text!r}: {what} {part!r}")
        first = int(lo)
        last = int(hi) if dash else first
        if first > last:
            raise EalError(f"lcore list {text!r}: descending range {part!r}")
        if last >= _MAX_ID:
            raise EalError(f"lcore list {text!r}: {part!r} is out of range (max {_MAX_ID - 1})")
        ids.extend(range(first, last + 1))
    return ids


def parse_corelist(text: str, available_cpus: Set[int] | None = None) -> dict[int, int]:
    """Parse a ``-l`` / ``--lcores`` value into ``{lcore id: cpu id}``.

    Elements are comma-separated, each ``LCORES`` or ``LCORES@CPUS`` where a
    set is ``N``, ``N-M`` or a group ``(N,N-M,...)``: ``0-3,5``, ``0@0,1@1``,
    ``(1,2)@0``, ``2-3@1``.  Without ``@`` an lcore runs on the cpu of the same
    number.  Unlike DPDK, an lcore is pinned to one cpu: for ``LCORES@(cpus)``
    it is the lowest-numbered (first) cpu of the set, though every cpu of the
    set must exist.  A repeated lcore id is an error.
    """
    available = _cpus_or_default(available_cpus)
    text = text.strip()
    if not text:
        raise EalError(f"lcore list {text!r}: empty")
    lcores: dict[int, int] = {}
    for element in _split_top_level(text):
        if not element:
            raise EalError(f"lcore list {text!r}: empty element")
        lcore_part, at, cpu_part = element.partition("@")
        if not lcore_part or (at and not cpu_part) or "@" in cpu_part:
            raise EalError(f"lcore list {text!r}: malformed element {element!r}")
        cpus = _parse_set(cpu_part, text) if at else None
        if cpus:
            _check_cpus("lcore list", text, cpus, available)
        for lcore in _parse_set(lcore_part, text):
            if lcore in lcores:
                raise EalError(f"lcore list {text!r}: lcore {lcore} given twice")
            lcores[lcore] = min(cpus) if cpus else lcore
    return _check_lcores("lcore list", text, lcores, available)


def parse_coremask(text: str, available_cpus: Set[int] | None = None) -> dict[int, int]:
    """Parse a ``-c`` hex mask (``0x`` optional): bit i is lcore i on cpu i."""
    available = _cpus_or_default(available_cpus)
    digits = text.strip()
    if digits[:2].lower() == "0x":
        digits = digits[2:]
    if not digits:
        raise EalError(f"empty core mask {text!r}")
    if not all(ch in "0123456789abcdefABCDEF" for ch in digits):
        raise EalError(f"core mask {text!r}: not a hexadecimal number")
    mask = int(digits, 16)
    if mask == 0:
        raise EalError(f"empty core mask {text!r}")
    lcores = {i: i for i in range(mask.bit_length()) if mask >> i & 1}
    return _check_lcores("core mask", text, lcores, available)


# ---- other option values ----------------------------------------------

def _check_log_level(text: str) -> str:
    """Accept ``LEVEL`` or ``PATTERN:LEVEL``; LEVEL is a name or 1-8."""
    pattern, colon, level = text.rpartition(":")
    if colon and not pattern:
        raise EalError(f"log level {text!r}: empty pattern before ':'")
    if level.lower() in _LOG_LEVELS or (_NUMBER.fullmatch(level) and 1 <= int(level) <= 8):
        return text
    names = "/".join(("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"))
    raise EalError(f"log level {text!r}: unknown level {level!r} (expected {names} or 1-8)")


def _check_file_prefix(text: str) -> str:
    if not text or "/" in text:
        raise EalError(f"file prefix {text!r}: must be non-empty and contain no '/'")
    return text


def _split_option(arg: str) -> tuple[str, str | None]:
    """``--opt=v`` -> ("--opt", "v"); ``-l0`` -> ("-l", "0"); else (arg, None)."""
    if arg.startswith("--"):
        name, eq, value = arg.partition("=")
        return name, value if eq else None
    if arg[:2] in _SHORT_WITH_VALUE and len(arg) > 2:
        return arg[:2], arg[2:]
    return arg, None


# ---- the command line -------------------------------------------------

def parse_eal_args(argv: list[str], available_cpus: Set[int] | None = None) -> tuple[EalConfig, list[str]]:
    """Parse EAL options; ``argv`` excludes the program name.

    Returns ``(config, app_args)`` where ``app_args`` is everything after the
    first ``--``.  Without ``--`` every argument must be an EAL option.  An
    option's value is the rest of the token (``-l0``, ``--vdev=...``) or the
    next argument unless that starts with '-' (then write ``--opt=-x``).
    Repeated options other than ``--vdev`` keep the last value.  ``-m``,
    ``-n``, ``--socket-mem``, ``--no-pci``, ``--no-huge`` and ``--in-memory``
    are accepted for DPDK compatibility and ignored.
    Raises EalError naming the offending token.
    """
    available = _cpus_or_default(available_cpus)
    lcores: dict[int, int] | None = None
    core_option: str | None = None
    main_option: tuple[str, str] | None = None
    vdevs: list[VdevSpec] = []
    log_level, file_prefix = "info", "vhostpci"
    app_args: list[str] = []

    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            app_args = list(argv[i:])
            break
        if not arg.startswith("-") or arg == "-":
            raise EalError(f"unexpected argument {arg!r} (application options go after '--')")
        opt, value = _split_option(arg)
        if opt in _IGNORED_FLAGS:
            if value is not None:
                raise EalError(f"option {opt!r} takes no value (got {arg!r})")
            continue
        if opt not in _WITH_VALUE:
            raise EalError(f"unknown EAL option {opt!r}")
        if value is None:
            if i == len(argv) or argv[i].startswith("-"):
                raise EalError(f"option {opt!r} requires a value")
            value = argv[i]
            i += 1

        if opt in _CORE_OPTIONS:
            if core_option is not None:
                raise EalError(f"{opt} {value!r} conflicts with {core_option}: give only one of -c, -l/--lcores")
            core_option = f"{opt} {value!r}"
            lcores = parse_coremask(value, available) if opt == "-c" else parse_corelist(value, available)
        elif opt in ("--main-lcore", "--master-lcore"):
            main_option = (opt, value)
        elif opt == "--vdev":
            try:
                spec = parse_vdev(value)
            except DevargError as e:
                raise EalError(str(e)) from None
            if any(v.name == spec.name for v in vdevs):
                raise EalError(f"vdev {spec.name!r} given twice (in --vdev {value!r})")
            vdevs.append(spec)
        elif opt == "--log-level":
            log_level = _check_log_level(value)
        elif opt == "--file-prefix":
            file_prefix = _check_file_prefix(value)
        # else: one of _IGNORED_WITH_VALUE

    if lcores is None:
        if not available:
            raise EalError("no cpus available for lcores")
        lcores = {cpu: cpu for cpu in sorted(available)}
    main_lcore = min(lcores)
    if main_option is not None:
        opt, value = main_option
        if not _NUMBER.fullmatch(value):
            raise EalError(f"{opt} {value!r}: not an lcore id")
        main_lcore = int(value)
        if main_lcore not in lcores:
            raise EalError(f"{opt} {value!r}: lcore {main_lcore} is not in the lcore set ({format_cpuset(set(lcores))})")
    config = EalConfig(lcores=lcores, main_lcore=main_lcore, vdevs=vdevs, log_level=log_level, file_prefix=file_prefix)
    return config, app_args


def eal_init(argv: list[str], available_cpus: Set[int] | None = None) -> tuple[EalConfig, list[str]]:
    """``parse_eal_args`` for a program's main: on a bad option, print one
    ``EAL: error: ...`` line to stderr and exit with status 2."""
    try:
        return parse_eal_args(argv, available_cpus)
    except EalError as e:
        msg = " ".join(str(e).splitlines())
        print(f"EAL: error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None
