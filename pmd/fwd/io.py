"""io: forward packets untouched (testpmd's iofwd)."""
from numba import njit

from ..burst import rx_burst
from .common import FS_RX, send_burst


@njit(nogil=True, cache=True)
def fwd(s, ctx, burst):
    n = rx_burst(s.rx, s.rxq, ctx.pool, ctx.bufs, burst)
    if n == 0:
        return 0
    ctx.fs[s.sid, FS_RX] += n
    send_burst(s, ctx, n)
    return n
