"""mac: rewrite Ethernet dst to the tx port's peer and src to the tx port."""
from numba import njit

from ..mbuf import mbuf_offset
from .common import receive_for, send_burst, write_mac


@njit(nogil=True, cache=True, _nrt=False)
def fwd(s, ctx, burst):
    pool = ctx.pool
    n = receive_for(s, ctx, burst)
    if n == 0:
        return 0
    dst = ctx.peer_macs[s.tx_port]
    src = ctx.macs[s.tx_port]
    for k in range(n):
        off = mbuf_offset(pool, ctx.bufs[k])
        write_mac(pool.data, off, dst)
        write_mac(pool.data, off + 6, src)
    send_burst(s, ctx, n)
    return n
