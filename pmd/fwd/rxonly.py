"""rxonly: receive and free."""
from numba import njit

from ..mbuf import free_bulk
from .common import receive


@njit(nogil=True, cache=True, _nrt=False)
def fwd(s, ctx, burst):
    n = receive(s, ctx, burst)
    if n > 0:
        free_bulk(ctx.pool, ctx.bufs, n)
    return n
