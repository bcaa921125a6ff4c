"""net_vf driver: devargs ``iface=`` (required), ``queues=`` (rx queues, one
AF_PACKET socket each, spread by PACKET_FANOUT hash; as many tx queues),
``blocksize=`` / ``blocks=`` (TPACKET_V3 rx ring per queue), ``framecount=``
(tx ring frames per queue), ``qdisc_bypass=0|1``.

Sockets and rings exist only while the port is started: ``start`` opens them
all (or none: any failure closes what was opened and raises a PortError
naming the interface and the cause), ``stop`` closes them, which also drops
the promiscuous membership.
"""
from __future__ import annotations

import mmap
import socket

import numpy as np

from .. import netdev as nd
from ..ethdev import (
    ST_IMISSED,
    PortError,
    int_in_range,
    new_stats,
    parse_bool,
    parse_int,
    register_driver,
)
from ..netdev_port import NetdevPortDriver
from ..ringarea import RingArea
from . import layout as L
from . import netdev
from . import notify  # noqa: F401  (registers the fallback-interrupt kernels)
from .burst import VfState

MAX_QUEUES = 16


def _blocksize(text: str) -> int:
    n = parse_int(text)
    if n < mmap.PAGESIZE or n % mmap.PAGESIZE or n & (n - 1) or n > 1 << 26:
        raise ValueError(f"blocksize must be a power of two from {mmap.PAGESIZE} to 64 MiB, got {n}")
    return n




def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p <<= 1
    return p


@register_driver
class VfDriver(NetdevPortDriver):
    prefix = "net_vf"
    devargs = {"iface": nd.iface_devarg, "queues": int_in_range("queues", 1, MAX_QUEUES), "blocksize": _blocksize,
               "blocks": int_in_range("blocks", 2, 4096), "framecount": int_in_range("framecount", 16, 1 << 20),
               "qdisc_bypass": parse_bool}
    devarg_defaults = {"iface": "", "queues": 1, "blocksize": 1 << 16, "blocks": 256, "framecount": 2048,
                       "qdisc_bypass": False}
    desc_devargs = (None, "framecount")  # rx is a ring of blocks (blocks=, blocksize=)

    def __init__(self, name: str, args: dict) -> None:
        super().__init__(name, args)
        self.nb_rxq = self.nb_txq = args["queues"]
        self._stats = new_stats(args["queues"])
        self._xstats = np.zeros((args["queues"], L.N_X), np.int64)
        self._rx_socks: list[socket.socket] = []
        self._tx_socks: list[socket.socket] = []
        self._areas: list[RingArea] = []
        self._promisc = False
        self._mtu = 0

    def configure(self, nb_rxq: int, nb_txq: int) -> None:
        if self._state is not None:
            raise PortError(f"{self.name}: stop the port before configuring it")
        if not (1 <= nb_rxq <= MAX_QUEUES and 1 <= nb_txq <= MAX_QUEUES):
            raise PortError(f"{self.name}: queues must be 1..{MAX_QUEUES} ({nb_rxq} rx / {nb_txq} tx asked)")
        super().configure(nb_rxq, nb_txq)
        nq = max(nb_rxq, nb_txq)
        self._stats = new_stats(nq)
        self._xstats = np.zeros((nq, L.N_X), np.int64)

    # ---- start / stop ----------------------------------------------------
    def start(self) -> None:
        if self._state is not None:
            return
        self._check_netdev()
        a = self.args
        try:
            self._mtu = nd.mtu(self.iface)
            max_frame = self._mtu + L.ETH_HLEN
            frame_size = max(2048, _pow2_at_least(L.T2_DATA + max_frame))
            per_block = max(mmap.PAGESIZE // frame_size, 1)
            frame_nr = -(-a["framecount"] // per_block) * per_block
            rx_area = RingArea(self.nb_rxq, a["blocksize"] * a["blocks"])
            self._areas.append(rx_area)
            tx_area = RingArea(self.nb_txq, frame_size * frame_nr)
            self._areas.append(tx_area)
            fanout = "new" if self.nb_rxq > 1 else None
            for q in range(self.nb_rxq):
                self._rx_socks.append(netdev.rx_socket(self.iface, a["blocksize"], a["blocks"], fanout))
                rx_area.map(q, self._rx_socks[q].fileno())
                if fanout == "new":  # the others join the group the kernel made for the first
                    fanout = netdev.fanout_id(self._rx_socks[0])
            netdev.set_promisc(self._rx_socks[0], self.iface, True)
            self._promisc = True
            for q in range(self.nb_txq):
                self._tx_socks.append(netdev.tx_socket(self.iface, frame_size, frame_nr, a["qdisc_bypass"]))
                tx_area.map(q, self._tx_socks[q].fileno())
        except PermissionError as e:
            self._release()
            raise PortError(f"{self.name}: cannot open an AF_PACKET socket on {self.iface}: permission denied "
                            f"(needs root or CAP_NET_RAW): {e}") from None
        except OSError as e:
            self._release()
            if not nd.exists(self.iface):
                raise PortError(f"{self.name}: interface {self.iface} does not exist") from None
            raise PortError(f"{self.name}: cannot set up AF_PACKET rings on {self.iface}: {e}") from None
        except BaseException:
            self._release()
            raise
        rx8, tx8 = rx_area.array, tx_area.array
        self._state = VfState(
            stats=self._stats, xstats=self._xstats,
            rx8=rx8, rx16=rx8.view(np.uint16), rx32=rx8.view(np.uint32),
            rx_cur=np.zeros((self.nb_rxq, L.N_CUR), np.int64),
            tx8=tx8, tx32=tx8.view(np.uint32),
            tx_cur=np.zeros((self.nb_txq, L.N_CUR), np.int64),
            tx_fds=np.array([s.fileno() for s in self._tx_socks], np.int64),
            block_size=a["blocksize"], block_nr=a["blocks"], frame_size=frame_size, frame_nr=frame_nr,
            max_frame=max_frame, port_id=self.port_id,
        )

    def _release(self) -> None:
        """Close every socket and unmap every ring (idempotent)."""
        self._state = None
        if self._promisc and self._rx_socks:
            try:
                netdev.set_promisc(self._rx_socks[0], self.iface, False)
            except OSError:  # the interface is gone: the membership went with it
                pass
            self._promisc = False
        for q, s in enumerate(self._rx_socks):
            self._collect_drops(s, q)
        for area in self._areas:
            area.close()
        self._areas = []
        for s in self._rx_socks + self._tx_socks:
            s.close()
        self._rx_socks, self._tx_socks = [], []

    # ---- counters ----------------------------------------------------------
    def _collect_drops(self, sock: socket.socket, q: int) -> None:
        try:
            self._stats[q, ST_IMISSED] += netdev.rx_drops(sock)
        except OSError:
            pass

    def stats_array(self) -> np.ndarray:
        # imissed comes from the kernel (ring full drops); only this thread writes it
        for q, s in enumerate(self._rx_socks):
            self._collect_drops(s, q)
        return self._stats

    def xstats(self) -> dict[str, int]:
        totals = self._xstats.sum(axis=0)
        return {name: int(totals[k]) for k, name in enumerate(L.X_NAMES)}

    def intr_fds(self, queue: int) -> list[int]:
        """Rx queue ``queue``'s AF_PACKET socket: readable once the kernel
        hands a block over (``notify.py``); [] while the port is stopped."""
        socks = self._rx_socks
        return [socks[queue].fileno()] if queue < len(socks) else []

    def info(self) -> dict:
        a = self.args
        return {"iface": self.iface, "mtu": self._mtu or "?", "rx ring": f"{a['blocks']} x {a['blocksize']} B blocks",
                "tx ring": f"{a['framecount']} frames", "qdisc bypass": a["qdisc_bypass"]}

