"""Logging per component, driven by DPDK's ``--log-level`` forms.

Each component has a DPDK-style log type (``lib.vhost.config``), short
aliases a user may type (``vhost.config``), the prefix its lines carry
(``VHOST_CONFIG: ...``, as DPDK prints them) and the source modules whose
records belong to it.  A record is mapped by the module that emitted it
(so a logger shared by two drivers still lands in the right component),
and dropped unless its level reaches that component's level.

``--log-level`` values, applied in command-line order:

* ``LEVEL``: every component (DPDK's global level);
* ``PATTERN:LEVEL``: components whose type or an alias matches the glob;
* ``REGEX,LEVEL``: components whose type or an alias matches the regex;
* ``help``: print the components and their levels, then exit.

LEVEL is a name (``debug`` .. ``emergency``) or DPDK's number 1-8.
The default is ``info``: connections, negotiation summaries, warnings and
errors are shown; ``debug`` adds every vhost-user message.
"""
from __future__ import annotations

import fnmatch
import logging
import re
import sys
from dataclasses import dataclass
from typing import IO

NOTICE = 25  # DPDK's NOTICE sits between INFO and WARNING
logging.addLevelName(NOTICE, "NOTICE")

# DPDK's log levels, 1 (emergency) .. 8 (debug), with the syslog short forms.
DPDK_LEVELS = {
    "emergency": 1, "emerg": 1, "alert": 2, "critical": 3, "crit": 3,
    "error": 4, "err": 4, "warning": 5, "warn": 5, "notice": 6, "info": 7, "debug": 8,
}
_PY_LEVEL = {1: logging.CRITICAL, 2: logging.CRITICAL, 3: logging.CRITICAL, 4: logging.ERROR,
             5: logging.WARNING, 6: NOTICE, 7: logging.INFO, 8: logging.DEBUG}
_LEVEL_NAMES = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
DEFAULT_LEVEL = "info"


class LogLevelError(ValueError):
    """A bad ``--log-level`` value; the message names it."""


@dataclass(frozen=True)
class Component:
    logtype: str  # DPDK-style type name, as --log-level patterns see it
    prefix: str  # printed before each line
    modules: tuple[str, ...]  # dotted module prefixes whose records belong here
    aliases: tuple[str, ...] = ()


COMPONENTS: tuple[Component, ...] = (
    Component("lib.eal", "EAL", ("pmd.eal", "pmd.shm", "pmd.mbuf", "pmd.signals", "pmd.syscalls", "pmd.log"),
              ("eal",)),
    Component("lib.lcore", "LCORE", ("pmd.lcore",), ("lcore",)),
    Component("lib.vhost.config", "VHOST_CONFIG",
              ("pmd.vhost_user.backend", "pmd.vhost_user.server", "pmd.vhost_user.codec", "pmd.vhost_user.device",
               "pmd.vhost_user.messages", "pmd.vhost_user.errors"), ("vhost.config",)),
    Component("pmd.net.vhost_pci", "VHOST_PCI", ("pmd.vhostpci_pmd",), ("vhost_pci", "vhostpci.port")),
    Component("pmd.net.vhost_pci.window", "VHOSTPCI_WINDOW",
              ("pmd.guestmem", "pmd.vhostpci_pmd.iotlb"),
              ("vhostpci.window", "vhostpci.iotlb")),
    Component("pmd.net.virtio_user", "VIRTIO_USER", ("pmd.virtio_user_pmd", "pmd.vhost_user.frontend"),
              ("virtio_user",)),
    Component("pmd.net.vf", "VF", ("pmd.vf_pmd",), ("vf",)),
    Component("pmd.net.ring", "RING", ("pmd.ring_pmd",), ("ring",)),
    Component("pmd.net.null", "NULL", ("pmd.null_pmd",), ("null",)),
    Component("app.fwd", "FWD", ("pmd.fwd", "pmd.progress", "pmd.vdev", "apps"), ("fwd", "testpmd")),
    Component("lib.telemetry", "TELEMETRY", ("pmd.telemetry",), ("telemetry",)),
)
# Loggers whose records we route; everything below them inherits our level.
_ROOT_LOGGERS = ("pmd", "apps", "vhostpci")


def parse_level(text: str) -> int:
    """A DPDK level name or number 1-8 -> that number (LogLevelError if bad)."""
    n = DPDK_LEVELS.get(text.lower())
    if n is None and text.isdigit() and 1 <= int(text) <= 8:
        n = int(text)
    if n is None:
        raise LogLevelError(f"unknown level {text!r} (expected {'/'.join(_LEVEL_NAMES)} or 1-8)")
    return n


def parse_spec(text: str) -> tuple[str, str | None, int]:
    """``LEVEL`` / ``PATTERN:LEVEL`` / ``REGEX,LEVEL`` -> (kind, pattern, level).

    ``kind`` is "global", "glob" or "regex".  Raises LogLevelError naming
    ``text``.
    """
    try:
        if "," in text:
            pattern, _, level = text.rpartition(",")
            kind = "regex"
            try:
                re.compile(pattern)
            except re.error as e:
                raise LogLevelError(f"bad regex {pattern!r}: {e}") from None
        elif ":" in text:
            pattern, _, level = text.rpartition(":")
            kind = "glob"
        else:
            return "global", None, parse_level(text)
        if not pattern:
            raise LogLevelError("empty pattern")
        return kind, pattern, parse_level(level)
    except LogLevelError as e:
        raise LogLevelError(f"log level {text!r}: {e}") from None


def _matches(comp: Component, kind: str, pattern: str) -> bool:
    names = (comp.logtype, *comp.aliases)
    if kind == "glob":
        return any(fnmatch.fnmatchcase(n, pattern) for n in names)
    return any(re.search(pattern, n) for n in names)


def resolve_levels(specs: list[str]) -> dict[str, int]:
    """Apply ``--log-level`` values in order: logtype -> DPDK level (1-8)."""
    default = DPDK_LEVELS[DEFAULT_LEVEL]
    levels = {c.logtype: default for c in COMPONENTS}
    for text in specs:
        kind, pattern, level = parse_spec(text)
        for comp in COMPONENTS:
            if kind == "global" or _matches(comp, kind, pattern):
                levels[comp.logtype] = level
    return levels


def _module_of(record: logging.LogRecord) -> str:
    """Dotted module that emitted ``record``, from its file path (so a logger
    name shared by several modules still tells them apart)."""
    path = record.pathname.replace("\\", "/")
    for top in ("pmd", "apps"):
        i = path.rfind(f"/{top}/")
        if i >= 0:
            return path[i + 1:].removesuffix(".py").replace("/", ".")
    return record.name


def component_of(module: str) -> Component | None:
    """The component whose longest module prefix covers ``module``."""
    best: tuple[int, Component | None] = (-1, None)
    for comp in COMPONENTS:
        for m in comp.modules:
            if (module == m or module.startswith(m + ".")) and len(m) > best[0]:
                best = (len(m), comp)
    return best[1]


class _ComponentFilter(logging.Filter):
    """Passes a record when it reaches its component's level; adds ``prefix``."""

    def __init__(self, levels: dict[str, int]) -> None:
        super().__init__()
        self.levels = {k: _PY_LEVEL[v] for k, v in levels.items()}

    def filter(self, record: logging.LogRecord) -> bool:
        comp = component_of(_module_of(record))
        if comp is None:
            record.prefix = record.name
            return record.levelno >= logging.WARNING
        record.prefix = comp.prefix
        return record.levelno >= self.levels[comp.logtype]


_handler: logging.Handler | None = None


def configure(specs: list[str], stream: IO[str] | None = None) -> dict[str, int]:
    """Install the stderr handler and per-component levels (idempotent: a
    second call replaces the first).  Returns logtype -> DPDK level."""
    global _handler
    levels = resolve_levels(specs)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(prefix)s: %(message)s"))
    handler.addFilter(_ComponentFilter(levels))
    lowest = min(_PY_LEVEL[v] for v in levels.values())
    for name in _ROOT_LOGGERS:
        logger = logging.getLogger(name)
        if _handler is not None:
            logger.removeHandler(_handler)
        logger.addHandler(handler)
        logger.setLevel(lowest)
        logger.propagate = False
    _handler = handler
    return levels


def reset() -> None:
    """Remove what ``configure`` installed (records propagate as before)."""
    global _handler
    for name in _ROOT_LOGGERS:
        logger = logging.getLogger(name)
        if _handler is not None:
            logger.removeHandler(_handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    _handler = None


def set_all(level: int) -> None:
    """Set every component to DPDK level ``level`` (testpmd's ``set log``)."""
    configure([str(level)], _handler.stream if isinstance(_handler, logging.StreamHandler) else None)


def help_text(levels: dict[str, int] | None = None) -> str:
    """``--log-level help``: each log type, its aliases and current level."""
    levels = levels or resolve_levels([])
    by_number = {DPDK_LEVELS[n]: n for n in _LEVEL_NAMES}
    lines = ["Log types (--log-level TYPE-GLOB:LEVEL, TYPE-REGEX,LEVEL or LEVEL for all):"]
    for comp in COMPONENTS:
        aliases = f" (also {', '.join(comp.aliases)})" if comp.aliases else ""
        lines.append(f"  {comp.logtype:<28} {by_number.get(levels[comp.logtype], levels[comp.logtype]):<9}"
                     f" prefix {comp.prefix}{aliases}")
    lines.append("Levels: " + ", ".join(f"{n}={DPDK_LEVELS[n]}" for n in reversed(_LEVEL_NAMES)))
    return "\n".join(lines)
