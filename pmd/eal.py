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
from collections.abc import Callable, Set
from dataclasses import dataclass, field

from .ethdev import DevargError, VdevSpec
from .log import LogLevelError, parse_spec, resolve_levels
from .log import configure as configure_logging
from .log import help_text as log_help_text
from .mbuf import configure_memory
from .vdev import parse_vdev

MAX_LCORE = 128  # as DPDK's default RTE_MAX_LCORE
_MAX_ID = 8192  # bound on any id in a list (Linux's largest NR_CPUS)

# DPDK EAL options that mean nothing here: accepted (so a pasted command line
# works) with one notice line each.  name -> (takes a value, why).
_NO_PCI = "no PCI bus here: ports are --vdev devices"
_NO_EFFECT: dict[str, tuple[bool, str]] = {
    "-n": (True, "memory channels are not used"),
    "-r": (True, "memory ranks are not used"),
    "--socket-mem": (True, "one NUMA-agnostic mbuf pool (size it with the app's --total-num-mbufs)"),
    "--socket-limit": (True, "one NUMA-agnostic mbuf pool"),
    "-a": (True, _NO_PCI), "--allow": (True, _NO_PCI), "-w": (True, _NO_PCI), "--pci-whitelist": (True, _NO_PCI),
    "-b": (True, _NO_PCI), "--block": (True, _NO_PCI), "--pci-blacklist": (True, _NO_PCI),
    "--no-pci": (False, _NO_PCI), "--vfio-intr": (True, _NO_PCI), "--vfio-vf-token": (True, _NO_PCI),
    "--create-uio-dev": (False, _NO_PCI),
    "-d": (True, "drivers are built in (--vdev); shared driver objects are not loaded"),
    "-s": (True, "no service cores"), "-S": (True, "no service cores"),
    "--mbuf-pool-ops-name": (True, "one mbuf pool implementation"),
    "--iova-mode": (True, "buffers are addressed by virtual address (IOVA as VA)"),
    "--syslog": (True, "logs go to stderr"),
    "--trace": (True, "no trace points"), "--trace-dir": (True, "no trace points"),
    "--trace-bufsz": (True, "no trace points"), "--trace-mode": (True, "no trace points"),
    "--base-virtaddr": (True, "no multi-process address space to align"),
    "--force-max-simd-bitwidth": (True, "Numba picks the SIMD width for this CPU"),
    "--vmware-tsc-map": (False, "no TSC use"), "--no-hpet": (False, "no HPET use"),
    "--in-memory": (False, "already in memory: no runtime files besides the telemetry socket"),
    "--no-shconf": (False, "no shared config files"),
    "--legacy-mem": (False, "memory is allocated once at startup"),
    "--single-file-segments": (False, "no hugetlbfs segment files"),
    "--match-allocations": (False, "memory is allocated once at startup"),
    "--huge-unlink": (False, "no hugetlbfs files"), "--huge-worker-stack": (False, "lcore stacks are Python threads'"),
    "--telemetry": (False, "telemetry is on by default"),
}
# Options whose value is optional (only as --opt=VALUE).
_OPTIONAL_VALUE = {"--huge-unlink", "--huge-worker-stack"}
_CORE_OPTIONS = {"-c", "-l", "--lcores"}
_WITH_VALUE = _CORE_OPTIONS | {opt for opt, (v, _) in _NO_EFFECT.items() if v} | {
    "--main-lcore", "--master-lcore", "--vdev", "--log-level", "--file-prefix", "-m", "--huge-dir",
    "--proc-type", "--metrics",
}
_FLAGS = {opt for opt, (v, _) in _NO_EFFECT.items() if not v} | {
    "--no-huge", "--no-telemetry", "-h", "--help", "-v", "--version",
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
    log_levels: list[str] = field(default_factory=list)  # --log-level values, in order
    file_prefix: str = "vhostpci"
    no_huge: bool = False  # --no-huge: plain 4 KiB pages for the mbuf pool
    memory_mb: int | None = None  # -m: cap on the mbuf pool's memory
    huge_dir: str | None = None  # --huge-dir: back the mbuf pool with a hugetlbfs file here
    telemetry: bool = True  # --no-telemetry turns the socket off
    metrics: tuple[str, int] | None = None  # --metrics [HOST:]PORT: Prometheus endpoint (pmd/metrics.py)
    show_help: bool = False  # -h/--help
    show_version: bool = False  # --version (print and exit)
    print_version: bool = False  # -v (print at startup, go on)
    notices: list[str] = field(default_factory=list)  # one line per option that has no effect here

    @property
    def log_level(self) -> str:
        """The last ``--log-level`` given (``info`` without one)."""
        return self.log_levels[-1] if self.log_levels else "info"

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
    """Accept DPDK's ``LEVEL``, ``PATTERN:LEVEL``, ``REGEX,LEVEL`` (or ``help``)."""
    if text == "help":
        return text
    try:
        parse_spec(text)
    except LogLevelError as e:
        raise EalError(str(e)) from None
    return text


def _check_memory(opt: str, text: str) -> int:
    if not _NUMBER.fullmatch(text) or int(text) < 1:
        raise EalError(f"{opt} {text!r}: expected a size in MB (a positive integer)")
    return int(text)


def _check_huge_dir(text: str) -> str:
    if not os.path.isdir(text):
        raise EalError(f"--huge-dir {text!r}: no such directory")
    return text


def _check_file_prefix(text: str) -> str:
    if not text or "/" in text:
        raise EalError(f"file prefix {text!r}: must be non-empty and contain no '/'")
    return text


METRICS_HOST = "127.0.0.1"  # --metrics PORT alone: loopback only


def _check_metrics(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = METRICS_HOST
    elif not host:
        raise EalError(f"--metrics {text!r}: empty host (give PORT alone for {METRICS_HOST})")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port.isdigit() or int(port) > 65535:
        raise EalError(f"--metrics {text!r}: expected [HOST:]PORT with PORT in 0..65535")
    return host, int(port)


def _split_option(arg: str) -> tuple[str, str | None]:
    """``--opt=v`` -> ("--opt", "v"); ``-l0`` -> ("-l", "0"); else (arg, None)."""
    if arg.startswith("--"):
        name, eq, value = arg.partition("=")
        return name, value if eq else None
    if arg[:2] in _SHORT_WITH_VALUE and len(arg) > 2:
        return arg[:2], arg[2:]
    return arg, None


# ---- the command line -------------------------------------------------

def _eal_part(argv: list[str]) -> list[str]:
    return argv[: argv.index("--")] if "--" in argv else argv


def parse_eal_args(argv: list[str], available_cpus: Set[int] | None = None) -> tuple[EalConfig, list[str]]:
    """Parse EAL options; ``argv`` excludes the program name.

    Returns ``(config, app_args)`` where ``app_args`` is everything after the
    first ``--``.  Without ``--`` every argument must be an EAL option.  An
    option's value is the rest of the token (``-l0``, ``--vdev=...``) or the
    next argument unless that starts with '-' (then write ``--opt=-x``).
    ``--vdev`` and ``--log-level`` accumulate; other repeated options keep
    the last value.  DPDK options that mean nothing here are accepted, each
    adding a line to ``config.notices``; ``--proc-type=secondary`` is an
    error (a vhostpci process owns its ports).  With ``-h``/``--help`` or
    ``--version`` nothing else is checked.  Raises EalError naming the
    offending token.
    """
    eal_part = _eal_part(argv)
    if any(a in ("-h", "--help", "--version") for a in eal_part):
        config = EalConfig(lcores={}, main_lcore=0, show_help="-h" in eal_part or "--help" in eal_part,
                           show_version="--version" in eal_part)
        return config, list(argv[len(eal_part) + 1:])
    available = _cpus_or_default(available_cpus)
    lcores: dict[int, int] | None = None
    core_option: str | None = None
    main_option: tuple[str, str] | None = None
    config = EalConfig(lcores={}, main_lcore=0)
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
        if opt in _FLAGS:
            if value is not None and opt not in _OPTIONAL_VALUE:
                raise EalError(f"option {opt!r} takes no value (got {arg!r})")
        elif opt in _WITH_VALUE:
            if value is None:
                if i == len(argv) or argv[i].startswith("-"):
                    raise EalError(f"option {opt!r} requires a value")
                value = argv[i]
                i += 1
        else:
            raise EalError(f"unknown EAL option {opt!r} (-h lists them)")

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
            if any(v.name == spec.name for v in config.vdevs):
                raise EalError(f"vdev {spec.name!r} given twice (in --vdev {value!r})")
            config.vdevs.append(spec)
        elif opt == "--log-level":
            config.log_levels.append(_check_log_level(value))
        elif opt == "--file-prefix":
            config.file_prefix = _check_file_prefix(value)
        elif opt == "-m":
            config.memory_mb = _check_memory(opt, value)
        elif opt == "--huge-dir":
            config.huge_dir = _check_huge_dir(value)
        elif opt == "--no-huge":
            config.no_huge = True
        elif opt == "--no-telemetry":
            config.telemetry = False
        elif opt == "--metrics":
            config.metrics = _check_metrics(value)
        elif opt == "-v":
            config.print_version = True
        elif opt == "--proc-type":
            if value not in ("primary", "auto", "secondary"):
                raise EalError(f"--proc-type {value!r}: expected primary, secondary or auto")
            if value == "secondary":
                raise EalError("--proc-type secondary: not supported (each vhostpci process owns its ports;"
                               " attach to a running one through its telemetry socket)")
        else:
            notice = f"{opt}: no effect here ({_NO_EFFECT[opt][1]})"
            if notice not in config.notices:
                config.notices.append(notice)

    if config.no_huge and config.huge_dir:
        raise EalError(f"--no-huge conflicts with --huge-dir {config.huge_dir!r}: give one of them")
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
    config.lcores, config.main_lcore = lcores, main_lcore
    return config, app_args


def version() -> str:
    """The installed vhostpci version (the source tree's when not installed)."""
    try:
        from importlib.metadata import version as dist_version

        return dist_version("vhostpci")
    except Exception:
        return "0.1.0"


def eal_init(argv: list[str], available_cpus: Set[int] | None = None, prog: str = "vhostpci",
             app_help: Callable[[], str] | None = None) -> tuple[EalConfig, list[str]]:
    """``parse_eal_args`` for a program's main, then what DPDK's
    rte_eal_init does process-wide: logging per ``--log-level`` and the
    mbuf memory options.  A bad option: one ``EAL: error: ...`` line on
    stderr, exit status 2.  ``-h``: EAL usage (then ``app_help()``), exit 0;
    ``--version``: the version, exit 0; ``--log-level help``: the log types,
    exit 0.  Options with no effect here print one ``EAL:`` notice each."""
    try:
        config, app_args = parse_eal_args(argv, available_cpus)
        if config.show_help:
            print(usage(prog))
            if app_help is not None:
                print(app_help())
            raise SystemExit(0)
        if config.show_version:
            print(f"{prog} (vhostpci {version()})")
            raise SystemExit(0)
        if "help" in config.log_levels:
            print(log_help_text(resolve_levels([v for v in config.log_levels if v != "help"])))
            raise SystemExit(0)
        configure_logging(config.log_levels)
        configure_memory(no_huge=config.no_huge, huge_dir=config.huge_dir, limit_mb=config.memory_mb)
    except EalError as e:
        msg = " ".join(str(e).splitlines())
        print(f"EAL: error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None
    if config.print_version:
        print(f"EAL: RTE Version: 'vhostpci {version()}'", file=sys.stderr)
    for notice in config.notices:
        print(f"EAL: {notice}", file=sys.stderr)
    return config, app_args


def usage(prog: str) -> str:
    """``-h``: the EAL options, laid out as DPDK's usage."""
    return f"""
Usage: {prog} [EAL options] -- [application options]

EAL common options:
  -c COREMASK         Hexadecimal bitmask of cores to run on
  -l CORELIST         List of cores to run on
                      The argument format is <c1>[-c2][,c3[-c4],...]
                      where c1, c2, etc are core indexes between 0 and {MAX_LCORE}
  --lcores COREMAP    Map lcore set to physical cpu set
                      The argument format is '<lcores[@cpus]>[<,lcores[@cpus]>...]'
                      lcores and cpus lists are grouped by '(' and ')'
                      (an lcore runs on the first cpu of its set)
  --main-lcore ID     Core ID that is used as main (the control thread)
  --vdev              Add a virtual device (the only kind of device here).
                      The argument format is <driver><id>[,key=val,...]
                      (ex: --vdev=net_vhost_pci0,path=/tmp/vp.sock)
  -m MB               Memory to allocate for the mbuf pool (an upper bound)
  --log-level=<level> Set the log level of every type
  --log-level=<type-match>:<level>
                      Set a specific log level (glob on the type name)
  --log-level=<type-regex>,<level>
                      Set a specific log level (regex on the type name)
  --log-level=help    Show log types and levels
  -v                  Display version information on startup
  --version           Display the version and exit
  -h, --help          This help
  --telemetry         Enable telemetry support (on by default)
  --no-telemetry      Disable telemetry support
  --metrics [HOST:]PORT
                      Serve every port's stats and xstats for Prometheus on
                      http://HOST:PORT/metrics (HOST: 127.0.0.1 by default;
                      off by default)

EAL Linux options:
  --file-prefix       Prefix of the runtime directory (the telemetry socket's)
  --huge-dir          Directory where hugetlbfs is mounted: the mbuf pool is
                      a file there (needs free hugepages)
  --no-huge           Plain 4 KiB pages for the mbuf pool (default: transparent
                      huge pages where the kernel allows)

Accepted for DPDK compatibility, with a notice that they have no effect here:
  {_wrap(sorted(_NO_EFFECT), 74)}
Not supported: --proc-type=secondary."""


def _wrap(words: list[str], width: int) -> str:
    lines, line = [], ""
    for w in words:
        if line and len(line) + len(w) + 1 > width:
            lines.append(line)
            line = ""
        line = f"{line} {w}" if line else w
    return "\n  ".join([*lines, line])
