"""Ethdev-style ports: a driver registry keyed by vdev name, and port ops.

Every driver fills the same small interface (configure / start / stop /
close / link / MAC / kernel state), so apps never care which driver is behind
a port.  Per-queue counters live in a numpy array that the driver's kernels
write (one writer per queue) and Python reads; clearing takes a baseline
instead of zeroing, so it never races with a running lcore.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, NamedTuple

import numpy as np

from .grace import GraceSet
from .sizebins import N_SIZE_BINS

# Columns of a driver's stats array (one row per queue).
ST_IPACKETS, ST_IBYTES, ST_OPACKETS, ST_OBYTES, ST_IMISSED, ST_IERRORS, ST_OERRORS, ST_RX_NOMBUF = range(8)
N_STATS = 8
STAT_NAMES = ("ipackets", "ibytes", "opackets", "obytes", "imissed", "ierrors", "oerrors", "rx_nombuf")
# Then the size bins (pmd/sizebins.py), rx and tx: the burst API fills them, not the driver.
ST_RX_SIZE = N_STATS
ST_TX_SIZE = N_STATS + N_SIZE_BINS
N_STAT_COLS = N_STATS + 2 * N_SIZE_BINS


class PortError(Exception):
    """A port operation failed; the message says which port and why."""


class DevargError(ValueError):
    """A vdev string or one of its devargs is invalid; the message names it."""


def new_stats(nb_queues: int) -> np.ndarray:
    """A zeroed per-queue counter array for a driver's kernels."""
    return np.zeros((max(nb_queues, 1), N_STAT_COLS), np.int64)


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
    # (nb_queues, N_SIZE_BINS) packets per size bin (pmd/sizebins.py), received and sent
    rx_sizes: np.ndarray = field(default_factory=lambda: np.zeros((0, N_SIZE_BINS), np.int64))
    tx_sizes: np.ndarray = field(default_factory=lambda: np.zeros((0, N_SIZE_BINS), np.int64))

    def __getattr__(self, name: str) -> int:
        try:
            return self.__dict__["totals"][name]
        except KeyError:
            raise AttributeError(name) from None


def parse_int(text: str) -> int:
    """Parse a devarg integer (decimal or 0x hex)."""
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError("expected an integer (decimal or 0x hex)") from None


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


_TRUE, _FALSE = ("1", "yes", "on", "true"), ("0", "no", "off", "false")


def parse_bool(text: str) -> bool:
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"expected 0 or 1, got {text!r}")


def one_of(*words: str, boolean: bool = False) -> Callable[[str], str | bool]:
    """A devarg parser for one of ``words`` (returned as given) or, with
    ``boolean``, a ``parse_bool`` value too ("auto" beside on and off)."""
    choices = " or ".join((*words, "0", "1") if boolean else words)

    def parse(text: str) -> str | bool:
        if text in words:
            return text
        if boolean and (text in _TRUE or text in _FALSE):
            return parse_bool(text)
        raise ValueError(f"expected {choices}, got {text!r}")
    return parse


class PortDriver(ABC):
    """One port's driver instance.  Subclasses set ``prefix`` and ``devargs``.

    ``devargs`` maps each accepted key to a parser that raises ValueError on
    bad text; defaults come from ``devarg_defaults``.
    """

    prefix: ClassVar[str]
    devargs: ClassVar[dict[str, Callable[[str], Any]]] = {}
    devarg_defaults: ClassVar[dict[str, Any]] = {}
    # The devargs holding the rx / tx ring sizes in descriptors (testpmd's
    # rxd/txd), or None where the peer sets them (vhost-user rings).
    desc_devargs: ClassVar[tuple[str | None, str | None]] = (None, None)

    def __init__(self, name: str, args: dict[str, Any]) -> None:
        self.name = name
        self.args = args
        self.nb_rxq = 1
        self.nb_txq = 1
        self.port_id = 0  # set by Port before start; kernels tag mbufs with it
        # Set by the forwarding runtime while lcores poll this port: them, for
        # a grace period (``wait(timeout)``, or pmd/grace.py from a kernel).
        self.quiesce_lcores: GraceSet | None = None

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
        """Driver-specific lines for ``show port info`` (and telemetry's
        ``/vhostpci/info``)."""
        return {}

    def mtu(self) -> int:
        return 1500

    def set_mtu(self, mtu: int) -> None:
        """Apply ``mtu`` (testpmd's ``port config mtu``); drivers that cannot
        keep this default."""
        raise PortError(f"{self.name}: MTU is not settable (operation not supported by {self.prefix})")

    def set_link(self, up: bool) -> None:
        """Bring the link up/down administratively (``set link-up|link-down``)."""
        raise PortError(f"{self.name}: link state is not settable (operation not supported by {self.prefix})")

    def xstats(self) -> dict[str, int]:
        """Driver-specific counters (``show port xstats``), totals over queues."""
        return {}

    def intr_fds(self, queue: int) -> list[int]:
        """Fds that become readable when rx queue ``queue`` has work once its
        interrupt kernel armed it (fallback interrupts, ``pmd.burst.intr_arm``).
        Fetched before every sleep; [] (the default: no notifications, or
        none right now) keeps the lcore polling."""
        return []

    def use_pool(self, pool) -> None:
        """The mbuf pool the port's bursts will be given (the mempool of
        DPDK's rx_queue_setup), told before start; a driver may build on its
        memory (an AF_XDP UMEM).  Drivers that need not know keep this default."""

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


class NoWireSettings:
    """Mixin for a port with no wire (net_ring, net_null): ``port config mtu``
    and, where ``link_settable``, ``set link-up|link-down`` change settings the
    port keeps and reports (``show port info``, telemetry), as DPDK's ethdev
    keeps them for these vdevs. Nothing else follows from them, as in DPDK:
    a ring carries any frame length, and a link-down ring still passes packets."""

    name: str
    prefix: ClassVar[str]
    link_settable: ClassVar[bool] = False  # DPDK's net_ring sets its link state, net_null cannot
    _mtu = 1500
    _link_up = True

    def mtu(self) -> int:
        return self._mtu

    def set_mtu(self, mtu: int) -> None:
        self._mtu = mtu

    def link(self) -> LinkStatus:
        return LinkStatus(up=self._link_up, speed_mbps=10000)

    def set_link(self, up: bool) -> None:
        if not self.link_settable:
            super().set_link(up)  # type: ignore[misc]  # PortDriver's: not supported
        self._link_up = up


_DRIVERS: dict[str, type[PortDriver]] = {}


def register_driver(cls: type[PortDriver]) -> type[PortDriver]:
    """Class decorator: make ``cls`` the driver for vdev names ``<prefix><N>``."""
    _DRIVERS[cls.prefix] = cls
    return cls


def registered_drivers() -> dict[str, type[PortDriver]]:
    """The drivers registered so far, keyed by vdev prefix (``pmd.vdev``
    loads the built-in ones)."""
    return dict(_DRIVERS)


@dataclass
class VdevSpec:
    """A parsed ``--vdev 'name,key=val,...'`` string."""

    name: str
    driver: type[PortDriver]
    args: dict[str, Any] = field(default_factory=dict)
    text: str = ""


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
        self.xstats_baseline: dict[str, int] = {}  # driver xstats at the last clear (pmd/xstats.py)
        self.mac_override: bytes | None = None  # testpmd's mac_addr set
        self._pool = None  # the app's mbuf pool (use_pool)

    def configure(self, nb_rxq: int, nb_txq: int) -> None:
        if self.started:
            raise PortError(f"port {self.port_id} ({self.name}) must be stopped to configure")
        self.driver.configure(nb_rxq, nb_txq)

    def use_pool(self, pool) -> None:
        """Tell the driver which mbuf pool its bursts will be given (kept across ``reset``)."""
        self._pool = pool
        self.driver.use_pool(pool)

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
        """The MAC address forwarding engines use (``mac_addr set`` overrides the driver's)."""
        return self.mac_override or self.driver.mac()

    def reset(self) -> None:
        """testpmd's ``port reset``: close the driver instance and make a fresh
        one from the same devargs (stopped, counters from zero)."""
        if self.started:
            raise PortError(f"port {self.port_id} ({self.name}) must be stopped to reset")
        if not self.closed:
            self.driver.close()
        self.driver = self.spec.driver(self.spec.name, self.spec.args)
        self.driver.port_id = self.port_id
        if self._pool is not None:
            self.driver.use_pool(self._pool)
        self.closed = False
        self._baseline = None
        self.xstats_baseline = {}

    def link(self) -> LinkStatus:
        return self.driver.link()

    def stats(self) -> PortStats:
        """Counters since the last ``clear_stats``."""
        raw = self.driver.stats_array().copy()
        if self._baseline is not None and self._baseline.shape == raw.shape:
            raw -= self._baseline
        per_queue = [dict(zip(STAT_NAMES, map(int, row))) for row in raw]
        totals = dict(zip(STAT_NAMES, map(int, raw.sum(axis=0))))
        if raw.shape[1] < N_STAT_COLS:  # a driver with its own, narrower array: no bins
            raw = np.zeros((len(raw), N_STAT_COLS), np.int64)
        return PortStats(totals=totals, per_queue=per_queue, rx_sizes=raw[:, ST_RX_SIZE:ST_TX_SIZE],
                         tx_sizes=raw[:, ST_TX_SIZE:N_STAT_COLS])

    def clear_stats(self) -> None:
        self._baseline = self.driver.stats_array().copy()


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02X}" for b in mac)
