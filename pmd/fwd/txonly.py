"""txonly: send the template frame (``set txpkts`` bytes), never receive."""
from numba import njit

from .common import fill_from_template, send_burst


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def fwd(s, ctx, burst):
    n = fill_from_template(s, ctx, burst)
    send_burst(s, ctx, n)
    return n
