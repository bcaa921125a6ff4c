"""Ethdev-style ports: a driver registry keyed by vdev name, and port ops.

Every driver fills the same small interface (configure / start / stop /
close / link / MAC / kernel state), so apps never care which driver is behind
a port.  Per-queue counters live in a numpy array that the driver's kernels
write (one writer per queue) and Python reads; clearing takes a baseline
instead of zeroing, so it never races with a running lcore.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, NamedTuple

import numpy as np

# Columns of a driver's stats array (one row per queue).
ST_IPACKETS, ST_IBYTES, ST_OPACKETS, ST_OBYTES, ST_IMISSED, ST_IERRORS, ST_OERRORS, ST_RX_NOMBUF = range(8)
N_STATS = 8
STAT_NAMES = ("ipackets", "ibytes", "opackets", "obytes", "imissed", "ierrors", "oerrors", "rx_nombuf")


class PortError(Exception):
    """A port operation failed; the message says which port and why."""


class DevargError(ValueError):
    """A vdev string or one of its devargs is invalid; the message names it."""


def new_stats(nb_queues: int) -> np.ndarray:
    """A zeroed per-queue counter array for a driver's kernels."""
    return np.zeros((max(nb_queues, 1), N_STATS), np.int64)


@dataclass
class LinkStatus:
    up: bool
    speed_mbps: int = 0
    full_duplex: bool = True

    def __str__(self) -> str:
        return f"{'up' if self.up else 'down'} {self.speed_mbps} Mbps {'full' if self.full_duplex else 'half'}-duplex"


@dataclass
class PortStats:
    """Totals and per-queue rows of a port's counters."""

    totals: dict[str, int]
    per_queue: list[dict[str, int]]

    def __getattr__(self, name: str) -> int:
        try:
            return self.__dict__["totals"][name]
        except KeyError:
            raise AttributeError(name) from None


def parse_int(text: str) -> int:
    """Parse a devarg integer (decimal or 0x hex)."""
    return int(text, 0)


def parse_path(text: str) -> str:
    """A devarg naming a file (a unix socket): non-empty."""
    if not text:
        raise ValueError("empty path")
    return text


def int_in_range(name: str, lo: int, hi: int) -> Callable[[str], int]:
    """A devarg parser for an integer ``name`` in ``lo..hi``."""
    def parse(text: str) -> int:
        n = parse_int(text)
        if not lo <= n <= hi:
            raise ValueError(f"{name} must be {lo}..{hi}, got {n}")
        return n
    return parse


def parse_bool(text: str) -> bool:
    if text in ("1", "yes", "on", "true"):
        return True
    if text in ("0", "no", "off", "false"):
        return False
    raise ValueError(f"expected 0 or 1, got {text!r}")


class PortDriver(ABC):
    """One port's driver instance.  Subclasses set ``prefix`` and ``devargs``.

    ``devargs`` maps each accepted key to a parser that raises ValueError on
    bad text; defaults come from ``devarg_defaults``.
    """

    prefix: ClassVar[str]
    devargs: ClassVar[dict[str, Callable[[str], Any]]] = {}
    devarg_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, name: str, args: dict[str, Any]) -> None:
        self.name = name
        self.args = args
        self.nb_rxq = 1
        self.nb_txq = 1
        self.port_id = 0  # set by Port before start; kernels tag mbufs with it
        # Set by the forwarding runtime while lcores poll this port: returns once
        # each of them passed a quiescent point (TimeoutError after the timeout).
        self.quiesce_hook: Callable[[float], None] | None = None

    # ---- ops -----------------------------------------------------------
    def configure(self, nb_rxq: int, nb_txq: int) -> None:
        """Set the number of queues (only while stopped)."""
        self.nb_rxq, self.nb_txq = nb_rxq, nb_txq

    @abstractmethod
    def start(self) -> None:
        """Allocate queues and make ``kernel_state()`` valid."""

    def stop(self) -> None:
        """Stop the device; the kernel state must no longer be polled."""

    def close(self) -> None:
        """Release every resource (fds, mappings, sockets)."""

    @abstractmethod
    def kernel_state(self) -> NamedTuple:
        """The NamedTuple that this driver's rx/tx burst kernels take."""

    @abstractmethod
    def stats_array(self) -> np.ndarray:
        """The live (nb_queues, N_STATS) int64 counters."""

    @abstractmethod
    def mac(self) -> bytes:
        """The port's MAC address (6 bytes)."""

    def link(self) -> LinkStatus:
        return LinkStatus(up=True, speed_mbps=10000)

    def info(self) -> dict[str, Any]:
        """Driver-specific lines for ``show port info``."""
        return {}

    def xstats(self) -> dict[str, int]:
        """Driver-specific counters (``show port xstats``), totals over queues."""
        return {}

    def drain(self, pool) -> int:
        """Free buffers the device still holds (e.g. queued in a ring) after
        stop; returns how many.  Drivers that hold none keep this default."""
        return 0


class DevargQueuePairs:
    """Mixin for drivers whose queue pairs are fixed by the ``queues=`` devarg
    (the peer negotiates them): configure() accepts only that count."""

    name: str
    args: dict[str, Any]

    def configure(self, nb_rxq: int, nb_txq: int) -> None:
        n = self.args["queues"]
        if (nb_rxq, nb_txq) != (n, n):
            raise PortError(f"{self.name}: has {n} queue pairs (devarg queues=); {nb_rxq} rx / {nb_txq} tx asked")


_DRIVERS: dict[str, type[PortDriver]] = {}


def register_driver(cls: type[PortDriver]) -> type[PortDriver]:
    """Class decorator: make ``cls`` the driver for vdev names ``<prefix><N>``."""
    _DRIVERS[cls.prefix] = cls
    return cls


def drivers() -> dict[str, type[PortDriver]]:
    """All registered drivers, keyed by vdev prefix."""
    _load_builtin_drivers()
    return dict(_DRIVERS)


def _load_builtin_drivers() -> None:
    # Imported for their register_driver side effect.
    from . import null_pmd, ring_pmd  # noqa: F401
    from .vhostpci_pmd import driver as _vhost_pci  # noqa: F401
    from .virtio_user_pmd import driver as _virtio_user  # noqa: F401
    from .vf_pmd import driver as _vf  # noqa: F401
    from .xdp_pmd import driver as _vf_xdp  # noqa: F401


_VDEV_NAME = re.compile(r"^([a-z_]+?)(\d+)$")


@dataclass
class VdevSpec:
    """A parsed ``--vdev 'name,key=val,...'`` string."""

    name: str
    driver: type[PortDriver]
    args: dict[str, Any] = field(default_factory=dict)
    text: str = ""


def parse_vdev(text: str) -> VdevSpec:
    """Parse and validate a vdev string against the driver registry.

    Raises DevargError naming the bad token: a malformed string, an unknown
    driver, an unknown devarg, or a devarg value its parser rejects.
    """
    parts = text.split(",")
    name = parts[0].strip()
    if not name:
        raise DevargError(f"malformed vdev {text!r}: empty device name")
    m = _VDEV_NAME.match(name)
    if not m:
        raise DevargError(f"malformed vdev name {name!r}: expected <driver><N>, e.g. net_ring0")
    known = drivers()
    cls = known.get(m.group(1))
    if cls is None:
        raise DevargError(f"unknown driver {m.group(1)!r} in vdev {name!r} (known: {', '.join(sorted(known))})")
    args = dict(cls.devarg_defaults)
    for kv in parts[1:]:
        key, sep, value = kv.partition("=")
        key = key.strip()
        if not sep or not key:
            raise DevargError(f"malformed devarg {kv!r} in vdev {name!r}: expected key=value")
        if key not in cls.devargs:
            allowed = ", ".join(sorted(cls.devargs)) or "none"
            raise DevargError(f"unknown devarg {key!r} for {name} (allowed: {allowed})")
        try:
            args[key] = cls.devargs[key](value)
        except ValueError as e:
            raise DevargError(f"bad value for devarg {key}={value!r} of {name}: {e}") from None
    return VdevSpec(name=name, driver=cls, args=args, text=text)


class Port:
    """An ethdev port: a driver instance plus the app-facing state machine."""

    def __init__(self, port_id: int, spec: VdevSpec) -> None:
        self.port_id = port_id
        self.spec = spec
        self.name = spec.name
        self.driver: PortDriver = spec.driver(spec.name, spec.args)
        self.driver.port_id = port_id
        self.started = False
        self.closed = False
        self._baseline: np.ndarray | None = None

    def configure(self, nb_rxq: int, nb_txq: int) -> None:
        if self.started:
            raise PortError(f"port {self.port_id} ({self.name}) must be stopped to configure")
        self.driver.configure(nb_rxq, nb_txq)

    def start(self) -> None:
        if self.closed:
            raise PortError(f"port {self.port_id} ({self.name}) is closed")
        if not self.started:
            self.driver.start()
            self.started = True

    def stop(self) -> None:
        if self.started:
            self.driver.stop()
            self.started = False

    def close(self) -> None:
        self.stop()
        if not self.closed:
            self.driver.close()
            self.closed = True

    @property
    def nb_rxq(self) -> int:
        return self.driver.nb_rxq

    @property
    def nb_txq(self) -> int:
        return self.driver.nb_txq

    def kernel_state(self) -> NamedTuple:
        return self.driver.kernel_state()

    def mac(self) -> bytes:
        return self.driver.mac()

    def link(self) -> LinkStatus:
        return self.driver.link()

    def stats(self) -> PortStats:
        """Counters since the last ``clear_stats``."""
        raw = self.driver.stats_array().copy()
        if self._baseline is not None and self._baseline.shape == raw.shape:
            raw -= self._baseline
        per_queue = [dict(zip(STAT_NAMES, map(int, row))) for row in raw]
        totals = dict(zip(STAT_NAMES, map(int, raw.sum(axis=0))))
        return PortStats(totals=totals, per_queue=per_queue)

    def clear_stats(self) -> None:
        self._baseline = self.driver.stats_array().copy()


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02X}" for b in mac)
