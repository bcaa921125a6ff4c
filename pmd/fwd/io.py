"""io: forward packets untouched (testpmd's iofwd)."""
from numba import njit

from .common import receive_for, send_burst


@njit(nogil=True, cache=True, _nrt=False)
def fwd(s, ctx, burst):
    n = receive_for(s, ctx, burst)
    if n > 0:
        send_burst(s, ctx, n)
    return n
