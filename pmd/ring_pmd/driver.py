"""net_ring driver: devargs ``size=`` (ring slots, power of two) and ``peer=``."""
from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
from numba import njit

from ..burst import register_burst
from ..ethdev import (
    ST_IBYTES, ST_IPACKETS, ST_OBYTES, ST_OPACKETS, ST_OERRORS,
    NoWireSettings, PortDriver, PortError, new_stats, parse_int, register_driver,
)
from ..mbuf import free_bulk
from .ring import new_rings, ring_dequeue, ring_enqueue


class RingState(NamedTuple):
    stats: np.ndarray  # (nq, N_STATS) int64
    rx_slots: np.ndarray  # (nq, size) int32
    rx_ctl: np.ndarray  # (nq, 16) int64
    tx_slots: np.ndarray
    tx_ctl: np.ndarray
    port_id: int


@njit(nogil=True, cache=True, _nrt=False)
def ring_rx(st, q, pool, bufs, nb):
    n = ring_dequeue(st.rx_slots[q], st.rx_ctl[q], bufs, nb)
    nbytes = 0
    for k in range(n):
        i = bufs[k]
        pool.port[i] = st.port_id
        nbytes += pool.data_len[i]
    st.stats[q, ST_IPACKETS] += n
    st.stats[q, ST_IBYTES] += nbytes
    return n


@njit(nogil=True, cache=True, _nrt=False)
def ring_tx(st, q, pool, bufs, nb):
    n = ring_enqueue(st.tx_slots[q], st.tx_ctl[q], bufs, nb)
    nbytes = 0
    for k in range(n):
        nbytes += pool.data_len[bufs[k]]
    st.stats[q, ST_OPACKETS] += n
    st.stats[q, ST_OBYTES] += nbytes
    st.stats[q, ST_OERRORS] += nb - n
    return n


register_burst(RingState, ring_rx, ring_tx)


def _ring_size(text: str) -> int:
    size = parse_int(text)
    if size < 2 or size & (size - 1):
        raise ValueError(f"size must be a power of two >= 2, got {size}")
    return size


def _peer_name(text: str) -> str:
    if not re.fullmatch(r"net_ring\d+", text):
        raise ValueError(f"peer must name another net_ring port, e.g. net_ring1, got {text!r}")
    return text


@register_driver
class RingDriver(NoWireSettings, PortDriver):
    prefix = "net_ring"
    link_settable = True
    devargs = {"size": _ring_size, "peer": _peer_name}
    devarg_defaults = {"size": 1024, "peer": ""}
    desc_devargs = ("size", "size")

    # Live ring ports by name, so a peer declared later can find its partner.
    _by_name: dict[str, "RingDriver"] = {}

    def __init__(self, name: str, args: dict) -> None:
        super().__init__(name, args)
        if args["peer"] == name:
            raise PortError(f"{name}: peer cannot be the port itself")
        self._stats = new_stats(1)
        self.rx_slots, self.rx_ctl = new_rings(1, args["size"])
        RingDriver._by_name[name] = self

    def configure(self, nb_rxq: int, nb_txq: int) -> None:
        if nb_rxq != nb_txq:
            raise PortError(f"{self.name}: needs as many rx as tx queues ({nb_rxq} != {nb_txq})")
        super().configure(nb_rxq, nb_txq)
        self.rx_slots, self.rx_ctl = new_rings(nb_rxq, self.args["size"])
        self._stats = new_stats(nb_rxq)

    def _peer(self) -> "RingDriver | None":
        peer = self.args["peer"] or next(
            (n for n, d in RingDriver._by_name.items() if d.args["peer"] == self.name), ""
        )
        return RingDriver._by_name.get(peer) if peer else None

    def start(self) -> None:
        self.kernel_state()  # validates the peer now, so errors show at port start

    def close(self) -> None:
        if RingDriver._by_name.get(self.name) is self:
            del RingDriver._by_name[self.name]

    def drain(self, pool) -> int:
        """Free what waits in this port's rx rings (the peer's tx side)."""
        return int(_drain_rings(self.rx_slots, self.rx_ctl, pool))

    def kernel_state(self) -> RingState:
        """Built on demand: a peer attached after this port started is
        joined the next time forwarding starts."""
        peer = self._peer()
        if peer is None:
            if self.args["peer"]:
                raise PortError(f"{self.name}: peer {self.args['peer']} does not exist")
            tx_slots, tx_ctl = self.rx_slots, self.rx_ctl  # loopback
        else:
            if peer.nb_rxq != self.nb_txq:
                raise PortError(f"{self.name}: peer {peer.name} has {peer.nb_rxq} queues, we have {self.nb_txq}")
            tx_slots, tx_ctl = peer.rx_slots, peer.rx_ctl
        return RingState(self._stats, self.rx_slots, self.rx_ctl, tx_slots, tx_ctl, self.port_id)

    def stats_array(self) -> np.ndarray:
        return self._stats

    def mac(self) -> bytes:
        return bytes([0x02, 0, 0, 0, 0x52, int(self.name[len(self.prefix):]) & 0xFF])

    def info(self) -> dict:
        peer = self._peer()
        return {"peer": peer.name if peer else "(loopback)", "ring size": self.args["size"]}


@njit(nogil=True, cache=True)
def _drain_rings(slots, ctl, pool):
    bufs = np.empty(64, np.int32)
    total = 0
    for q in range(slots.shape[0]):
        while True:
            n = ring_dequeue(slots[q], ctl[q], bufs, 64)
            if n == 0:
                break
            free_bulk(pool, bufs, n)
            total += n
    return total
