"""The forwarding runtime: ports, streams and lcores (testpmd's core).

Python does control only: it builds the stream layout, compiles and launches
one ``fwd_loop`` per forwarding lcore, and reads counters.  Both apps
(``vhostpci-testpmd`` and ``vhostpci-fwd``) and the benchmarks drive it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..ethdev import Port, PortError
from ..vdev import parse_vdev
from ..lcore import LcoreManager
from ..lcore.control import LC_STOP, N_LC
from .power import RxQueue, can_sleep, full_fence, power_fwd_loop, precompile
from ..mbuf import MbufPool, create_pool
from ..progress import progress
from .common import (
    CFG_BURST, CFG_IDLE_POLLS, CFG_IDLE_WAIT_NS, CFG_MODE, CFG_NB_FLOWS, CFG_TX_FIRST, FS_DROPPED,
    FS_RX, FS_RX_BURSTS, FS_RX_EMPTY, FS_RX_FULL, FS_TX, FS_TX_BURSTS, FS_TX_FULL, MAX_BURST, MODE_NAMES,
    REPLY_MODES, N_CFG, N_FS, FwdCtx, Stream,
)
from .config import FwdConfig
from .loop import fwd_loop
from .pktgen import udp_template

log = logging.getLogger("vhostpci.fwd")

STOP_TIMEOUT_S = 1.0


class FwdError(Exception):
    """A forwarding command cannot be done now; the message says why."""


@dataclass
class StreamInfo:
    sid: int
    lcore: int
    rx_port: int
    rxq: int
    tx_port: int
    txq: int


def peer_mac(port_id: int) -> bytes:
    """testpmd's default peer address for a port: 02:00:00:00:00:<port>."""
    return bytes([2, 0, 0, 0, 0, port_id & 0xFF])


class Forwarding:
    """Ports plus forwarding state; one instance per app."""

    def __init__(self, lcores: LcoreManager, nb_mbufs: int = 16384) -> None:
        self.lcores = lcores
        self.pool: MbufPool = create_pool(nb_mbufs)
        self.ports: dict[int, Port] = {}
        self.config = FwdConfig()
        self.running = False
        self.streams: list[StreamInfo] = []
        self._fs = np.zeros((0, N_FS), np.int64)
        self._fs_base = self._fs
        self._peer_macs: dict[int, bytes] = {}
        self._sleepy: set[int] = set()

    # ---- ports -------------------------------------------------------------
    def attach_port(self, vdev: str) -> Port:
        """Create a port from a vdev string (not started)."""
        spec = parse_vdev(vdev)
        if any(p.name == spec.name for p in self.ports.values()):
            raise PortError(f"port {spec.name} already exists")
        port_id = next(i for i in range(len(self.ports) + 1) if i not in self.ports)
        port = Port(port_id, spec)
        port.use_pool(self.pool)  # a driver may build on the pool's memory (AF_XDP: one copy)
        self.ports[port_id] = port
        return port

    def port(self, port_id: int) -> Port:
        try:
            return self.ports[port_id]
        except KeyError:
            ids = ", ".join(map(str, sorted(self.ports))) or "none"
            raise PortError(f"invalid port id {port_id} (ports: {ids})") from None

    def _require_stopped(self, what: str) -> None:
        if self.running:
            raise FwdError(f"{what}: stop forwarding first")

    def start_port(self, port_id: int) -> None:
        self._require_stopped("port start")
        self.port(port_id).start()

    def stop_port(self, port_id: int) -> None:
        self._require_stopped("port stop")
        port = self.port(port_id)
        port.stop()
        port.driver.drain(self.pool)

    def close_port(self, port_id: int) -> None:
        self._require_stopped("port close")
        self.stop_port(port_id)
        self.port(port_id).close()

    def detach_port(self, port_id: int) -> str:
        """Close and remove a port; returns its name."""
        self._require_stopped("port detach")
        port = self.port(port_id)
        if not port.closed:
            raise FwdError(f"port {port_id} must be closed before detach (port close {port_id})")
        del self.ports[port_id]
        return port.name

    def set_peer_mac(self, port_id: int, mac: bytes) -> None:
        self.port(port_id)
        self._peer_macs[port_id] = mac

    def peer_of(self, port_id: int) -> bytes:
        """Where mac/txonly send from ``port_id`` (``set eth-peer``, else the default)."""
        return self._peer_macs.get(port_id, peer_mac(port_id))

    # ---- streams -----------------------------------------------------------
    def fwd_ports(self) -> list[int]:
        """Started ports among the forwarding ports (``set portlist``, then
        the first ``set nbport`` of them)."""
        c = self.config
        ports = [pid for pid in (c.port_list or sorted(self.ports)) if pid in self.ports and self.ports[pid].started]
        return ports[: c.nb_ports] if c.nb_ports else ports

    def fwd_lcores(self) -> list[int]:
        return self.lcores.workers[: self.config.nb_cores]

    def layout(self) -> list[StreamInfo]:
        """Streams as testpmd's paired topology makes them: port 2k <-> 2k+1
        (a lone last port forwards to itself), one stream per rx queue,
        spread over the forwarding lcores in contiguous slices."""
        ports = self.fwd_ports()
        lcores = self.fwd_lcores()
        if not ports:
            raise FwdError("no started ports to forward on")
        if not lcores:
            raise FwdError("no worker lcores: give the EAL at least two (e.g. -l 0-1)")
        pairs = []
        for k, rx in enumerate(ports):
            if self.config.mode in REPLY_MODES:
                tx = rx
            elif k % 2 == 0:
                tx = ports[k + 1] if k + 1 < len(ports) else rx
            else:
                tx = ports[k - 1]
            for q in range(self.ports[rx].nb_rxq):
                pairs.append((rx, q, tx, q % self.ports[tx].nb_txq))
        n_l = min(len(lcores), len(pairs))
        streams = []
        for sid, (rx, rxq, tx, txq) in enumerate(pairs):
            streams.append(StreamInfo(sid, lcores[sid * n_l // len(pairs)], rx, rxq, tx, txq))
        return streams

    def _ctx(self, fs: np.ndarray, cfg: np.ndarray) -> FwdCtx:
        nports = max(self.ports) + 1
        macs = np.zeros((nports, 6), np.uint8)
        peers = np.zeros((nports, 6), np.uint8)
        for pid, p in self.ports.items():
            macs[pid] = np.frombuffer(p.mac(), np.uint8)
            peers[pid] = np.frombuffer(self.peer_of(pid), np.uint8)
        return FwdCtx(
            pool=self.pool,
            bufs=np.zeros(MAX_BURST, np.int32),
            cfg=cfg,
            macs=macs,
            peer_macs=peers,
            tmpl=udp_template(self.config.txpkts),
            fs=fs,
            flow=np.zeros(8, np.int64),
        )

    def _cfg(self, tx_first: bool | int, sleepy: bool = False) -> np.ndarray:
        """``sleepy``: the lcore may sleep, so its loop returns after
        idle_polls empty passes (else it polls until stopped)."""
        c = self.config
        cfg = np.zeros(N_CFG, np.int64)
        cfg[CFG_MODE] = MODE_NAMES.index(c.mode)
        cfg[CFG_BURST] = c.burst
        cfg[CFG_TX_FIRST] = int(tx_first)
        cfg[CFG_IDLE_POLLS] = c.idle_polls if sleepy else 0
        cfg[CFG_NB_FLOWS] = c.nb_flows
        cfg[CFG_IDLE_WAIT_NS] = c.idle_wait_ns
        return cfg

    def _lcore_streams(self, lcore: int) -> tuple:
        return tuple(
            Stream(
                self.ports[s.rx_port].kernel_state(), s.rxq,
                self.ports[s.tx_port].kernel_state(), s.txq, s.sid, s.tx_port,
            )
            for s in self.streams
            if s.lcore == lcore
        )

    def _lcore_rx_queues(self, lcore: int) -> list[RxQueue]:
        return [RxQueue(self.ports[s.rx_port].driver, s.rxq, self.ports[s.rx_port].kernel_state())
                for s in self.streams if s.lcore == lcore]

    def _kinds(self, lcore: int) -> str:
        return ", ".join(sorted({f"{self.ports[s.rx_port].driver.prefix} -> {self.ports[s.tx_port].driver.prefix}"
                                 for s in self.streams if s.lcore == lcore}))

    def sleepy_lcores(self) -> list[int]:
        """Forwarding lcores of the current run that may fall back to
        interrupts (every rx queue they poll can wake them)."""
        return sorted(self._sleepy)

    # ---- start / stop ------------------------------------------------------
    def start(self, tx_first: bool | int = False) -> None:
        """Compile (or load from cache) and launch one loop per forwarding
        lcore; ``tx_first``: txonly bursts each stream sends first (True: 1)."""
        if self.running:
            raise FwdError("packet forwarding already started")
        self.config.validate()
        self.streams = self.layout()
        self._fs = np.zeros((len(self.streams), N_FS), np.int64)
        self._fs_base = self._fs.copy()
        plan = []
        self._sleepy = set()
        full_fence()  # compiled before any control thread's wait_quiescent needs it
        for lcore in sorted({s.lcore for s in self.streams}):
            streams = self._lcore_streams(lcore)
            queues = self._lcore_rx_queues(lcore)
            sleepy = self.config.interrupts and can_sleep(queues)
            ctx = self._ctx(self._fs, self._cfg(tx_first, sleepy))
            # Compile in the control thread (errors surface here, lcores start
            # instantly): a call with the stop flag already set returns at once.
            dry = np.zeros(N_LC, np.int64)
            dry[LC_STOP] = 1
            with progress(f"lcore {lcore}: compiling forwarding kernels for {self._kinds(lcore)}"):
                fwd_loop(streams, ctx._replace(cfg=self._cfg(False)), dry)
                if sleepy:
                    precompile(queues, dry)
                    self._sleepy.add(lcore)
            plan.append((lcore, streams, ctx, queues, sleepy))
        self._set_quiesce_hooks()
        for lcore, streams, ctx, queues, sleepy in plan:
            ctl = self.lcores.ctl(lcore)
            if sleepy:
                self.lcores.remote_launch(lcore, power_fwd_loop, streams, ctx, ctl, queues,
                                          self.lcores.stop_fd(lcore))
            else:
                self.lcores.remote_launch(lcore, fwd_loop, streams, ctx, ctl)
        self.running = True
        log.info("forwarding started: mode %s, %d streams on lcores %s (interrupt fallback on %s)",
                 self.config.mode, len(self.streams), sorted({s.lcore for s in self.streams}),
                 sorted(self._sleepy) or "none")

    def stop(self) -> dict[int, dict[str, int]]:
        """Stop every forwarding lcore (within STOP_TIMEOUT_S); returns the
        per-port forward stats of this run."""
        if not self.running:
            raise FwdError("packet forwarding not started")
        used = sorted({s.lcore for s in self.streams})
        for lcore in used:
            self.lcores.stop(lcore)
        try:
            for lcore in used:
                self.lcores.wait(lcore, STOP_TIMEOUT_S)
        finally:
            self.running = False
            for port in self.ports.values():
                port.driver.quiesce_lcores = None
        return self.fwd_stats()

    def _set_quiesce_hooks(self) -> None:
        """Tell each port which lcores poll it, so its control thread can wait
        for them before unmapping what they might still touch."""
        users: dict[int, set[int]] = {}
        for s in self.streams:
            users.setdefault(s.rx_port, set()).add(s.lcore)
            users.setdefault(s.tx_port, set()).add(s.lcore)
        for pid, lcores in users.items():
            self.ports[pid].driver.quiesce_lcores = self.lcores.grace_set(sorted(lcores))

    def fwd_stats(self) -> dict[int, dict[str, int]]:
        """RX/TX/dropped (and non-empty / full bursts, empty rx polls) per port,
        summed over the streams of the current run."""
        fs = self._fs - self._fs_base
        keys = ("rx", "tx", "dropped", "rx_bursts", "rx_full", "rx_empty", "tx_bursts", "tx_full")
        out = {pid: dict.fromkeys(keys, 0) for pid in self.fwd_ports()}
        for s in self.streams:
            r = out.setdefault(s.rx_port, dict.fromkeys(keys, 0))
            r["rx"] += int(fs[s.sid, FS_RX])
            r["rx_bursts"] += int(fs[s.sid, FS_RX_BURSTS])
            r["rx_full"] += int(fs[s.sid, FS_RX_FULL])
            r["rx_empty"] += int(fs[s.sid, FS_RX_EMPTY])
            t = out.setdefault(s.tx_port, dict.fromkeys(keys, 0))
            t["tx"] += int(fs[s.sid, FS_TX])
            t["dropped"] += int(fs[s.sid, FS_DROPPED])
            t["tx_bursts"] += int(fs[s.sid, FS_TX_BURSTS])
            t["tx_full"] += int(fs[s.sid, FS_TX_FULL])
        return out

    def stream_stats(self) -> list[tuple[StreamInfo, int, int, int]]:
        fs = self._fs - self._fs_base
        return [(s, int(fs[s.sid, FS_RX]), int(fs[s.sid, FS_TX]), int(fs[s.sid, FS_DROPPED])) for s in self.streams]

    def clear_fwd_stats(self) -> None:
        self._fs_base = self._fs.copy()

    def close(self) -> None:
        """Stop forwarding and close every port."""
        if self.running:
            self.stop()
        for pid in list(self.ports):
            if not self.ports[pid].closed:
                self.close_port(pid)


def forwarding_from_eal(eal, nb_mbufs: int = 16384) -> Forwarding:
    """Build the runtime from parsed EAL options: lcores plus one started
    port per ``--vdev``, in command-line order (port ids 0, 1, ...)."""
    fw = Forwarding(LcoreManager(eal.lcores, eal.main_lcore), nb_mbufs)
    try:
        for spec in eal.vdevs:
            fw.attach_port(spec.text).start()
    except Exception:
        fw.close()
        raise
    return fw
