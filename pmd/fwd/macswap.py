"""macswap: swap Ethernet source and destination, send back."""
from numba import njit

from ..mbuf import mbuf_offset
from .common import receive_for, send_burst


@njit(nogil=True, cache=True, _nrt=False)
def fwd(s, ctx, burst):
    pool = ctx.pool
    n = receive_for(s, ctx, burst)
    if n == 0:
        return 0
    data = pool.data
    for k in range(n):
        off = mbuf_offset(pool, ctx.bufs[k])
        for b in range(6):
            t = data[off + b]
            data[off + b] = data[off + 6 + b]
            data[off + 6 + b] = t
    send_burst(s, ctx, n)
    return n
