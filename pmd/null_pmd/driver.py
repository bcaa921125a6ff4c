"""net_null driver: devargs ``size=`` (packet length) and ``copy=0|1``."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from ..atomics import memcpy
from ..burst import register_burst
from ..ethdev import (
    ST_IBYTES, ST_IPACKETS, ST_OBYTES, ST_OPACKETS, ST_RX_NOMBUF,
    NoWireSettings, PortDriver, new_stats, parse_bool, parse_int, register_driver,
)
from ..mbuf import alloc_bulk, free_bulk, mbuf_offset


class NullState(NamedTuple):
    stats: np.ndarray  # (nq, N_STATS) int64
    pkt: np.ndarray  # uint8[size]: the packet rx copies out when copy=1
    copy: bool
    port_id: int


@njit(nogil=True, cache=True, _nrt=False)
def null_rx(st, q, pool, bufs, nb):
    if not alloc_bulk(pool, bufs, nb):
        st.stats[q, ST_RX_NOMBUF] += nb
        return 0
    size = len(st.pkt)
    for k in range(nb):
        i = bufs[k]
        pool.data_len[i] = size
        pool.port[i] = st.port_id
        if st.copy:
            memcpy(pool.data, mbuf_offset(pool, i), st.pkt, 0, size)
    st.stats[q, ST_IPACKETS] += nb
    st.stats[q, ST_IBYTES] += nb * size
    return nb


@njit(nogil=True, cache=True, _nrt=False)
def null_tx(st, q, pool, bufs, nb):
    nbytes = 0
    for k in range(nb):
        nbytes += pool.data_len[bufs[k]]
    free_bulk(pool, bufs, nb)
    st.stats[q, ST_OPACKETS] += nb
    st.stats[q, ST_OBYTES] += nbytes
    return nb


register_burst(NullState, null_rx, null_tx)


def _packet_size(text: str) -> int:
    size = parse_int(text)
    if not 14 <= size <= 9000:
        raise ValueError(f"size must be 14..9000, got {size}")
    return size


@register_driver
class NullDriver(NoWireSettings, PortDriver):
    prefix = "net_null"
    devargs = {"size": _packet_size, "copy": parse_bool}
    devarg_defaults = {"size": 64, "copy": False}

    def __init__(self, name: str, args: dict) -> None:
        super().__init__(name, args)
        self._state: NullState | None = None
        self._stats = new_stats(1)

    def start(self) -> None:
        if self._stats.shape[0] != max(self.nb_rxq, self.nb_txq):
            self._stats = new_stats(max(self.nb_rxq, self.nb_txq))
        pkt = np.zeros(self.args["size"], np.uint8)
        self._state = NullState(self._stats, pkt, bool(self.args["copy"]), self.port_id)

    def kernel_state(self) -> NullState:
        assert self._state is not None, "port not started"
        return self._state

    def stats_array(self) -> np.ndarray:
        return self._stats

    def mac(self) -> bytes:
        return bytes([0x02, 0, 0, 0, 0x4E, int(self.name[len(self.prefix):]) & 0xFF])
