"""rxonly: receive and free."""
from numba import njit

from ..burst import rx_burst
from ..mbuf import free_bulk
from .common import FS_RX


@njit(nogil=True, cache=True)
def fwd(s, ctx, burst):
    n = rx_burst(s.rx, s.rxq, ctx.pool, ctx.bufs, burst)
    if n > 0:
        ctx.fs[s.sid, FS_RX] += n
        free_bulk(ctx.pool, ctx.bufs, n)
    return n
