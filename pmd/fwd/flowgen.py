"""flowgen: txonly frames spread over ``nb_flows`` destination IPv4 addresses.

The destination's low 16 bits are the flow index; the IPv4 header checksum
is recomputed per frame (RFC 1071) so receivers accept it.
"""
from numba import njit

from ..mbuf import mbuf_offset
from .common import CFG_NB_FLOWS, fill_from_template, send_burst
from ..csum import inet_checksum

ETH_LEN = 14
IP_CSUM = ETH_LEN + 10
IP_DST = ETH_LEN + 16
IP_LEN = 20


@njit(nogil=True, cache=True, _nrt=False)
def fwd(s, ctx, burst):
    n = fill_from_template(s, ctx, burst)
    pool = ctx.pool
    nb_flows = max(ctx.cfg[CFG_NB_FLOWS], 1)
    flow = ctx.flow[0]
    for k in range(n):
        i = ctx.bufs[k]
        off = mbuf_offset(pool, i)
        pool.data[off + IP_DST + 2] = (flow >> 8) & 0xFF
        pool.data[off + IP_DST + 3] = flow & 0xFF
        pool.data[off + IP_CSUM] = 0
        pool.data[off + IP_CSUM + 1] = 0
        csum = inet_checksum(pool.data, off + ETH_LEN, off + ETH_LEN + IP_LEN)
        pool.data[off + IP_CSUM] = csum >> 8
        pool.data[off + IP_CSUM + 1] = csum & 0xFF
        flow = (flow + 1) % nb_flows
    ctx.flow[0] = flow
    send_burst(s, ctx, n)
    return n
