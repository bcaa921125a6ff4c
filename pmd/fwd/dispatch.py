"""``fwd_one``: run the selected engine on one stream (a run-time switch, so
changing the mode never recompiles)."""
from numba import njit

from ..burst import tx_flush
from . import flowgen, icmpecho, io, mac, macswap, rxonly, txonly
from .common import MODE_FLOWGEN, MODE_ICMPECHO, MODE_IO, MODE_MAC, MODE_MACSWAP, MODE_RXONLY, MODE_TXONLY


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _engine(s, ctx, mode, burst):
    if mode == MODE_IO:
        return io.fwd(s, ctx, burst)
    if mode == MODE_MAC:
        return mac.fwd(s, ctx, burst)
    if mode == MODE_MACSWAP:
        return macswap.fwd(s, ctx, burst)
    if mode == MODE_RXONLY:
        return rxonly.fwd(s, ctx, burst)
    if mode == MODE_TXONLY:
        return txonly.fwd(s, ctx, burst)
    if mode == MODE_FLOWGEN:
        return flowgen.fwd(s, ctx, burst)
    if mode == MODE_ICMPECHO:
        return icmpecho.fwd(s, ctx, burst)
    return 0


@njit(nogil=True, cache=True, _nrt=False)
def fwd_one(s, ctx, mode, burst):
    """One engine pass on stream ``s``; returns packets handled, or on an
    empty pass the packets its tx port still holds (so the lcore keeps
    polling, never sleeps on them)."""
    n = _engine(s, ctx, mode, burst)
    if n == 0:
        return tx_flush(s.tx, s.txq, ctx.pool)
    return n
