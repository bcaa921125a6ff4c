"""macswap: swap Ethernet source and destination, send back."""
from numba import njit

from ..burst import rx_burst
from ..mbuf import mbuf_offset
from .common import FS_RX, send_burst


@njit(nogil=True, cache=True)
def fwd(s, ctx, burst):
    pool = ctx.pool
    n = rx_burst(s.rx, s.rxq, pool, ctx.bufs, burst)
    if n == 0:
        return 0
    ctx.fs[s.sid, FS_RX] += n
    data = pool.data
    for k in range(n):
        off = mbuf_offset(pool, ctx.bufs[k])
        for b in range(6):
            t = data[off + b]
            data[off + b] = data[off + 6 + b]
            data[off + 6 + b] = t
    send_burst(s, ctx, n)
    return n
