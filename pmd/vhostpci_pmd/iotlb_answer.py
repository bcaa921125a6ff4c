"""What an UPDATE answers once its pages are mapped and published: the
vrings parked on them (``unpark_covered``) and the asks for them
(``forget_asked``), in that order, on whichever thread mapped it -- the
control thread, or the polling lcore (its own serve, or the UPDATEs it maps
after their ack, ``iotlb_maps.py``).  The whole miss story is ``iotlb.py``'s.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..atomics import fence, store_release
from ..guestmem.vmem import PAGE_SIZE
from ..syscalls import monotonic_ns
from .state import VQ_MISS_ANSWERED, VQ_MISS_IOVA, VQ_MISS_PENDING

# pages asked for and not answered yet, as both the control thread and a
# parking kernel see them (state.asked rows [page | 1 if WO, monotonic ns], a
# slot per page number modulo ASK_SLOTS; a collision only costs a second MISS)
ASK_SLOTS = 1024
_PAGE_MASK = ~(PAGE_SIZE - 1)


@njit(nogil=True, cache=True, _nrt=False)
def unpark_covered(vq, iova, end):
    """An UPDATE of ``[iova, end)`` was mapped: each vring parked on an
    address inside it retries (``VQ_MISS_PENDING`` cleared with a release
    store, the page recorded in ``VQ_MISS_ANSWERED`` before it); returns the
    bitmask of those vrings.  Others stay parked: clearing them on every
    update (the pages asked ahead arrive as updates too) made each ring
    re-ask for its own page several times.  The fence orders the new rows
    before the reads of the parks (``park_on_miss``'s pairing)."""
    fence()
    mask = 0
    for v in range(len(vq)):
        parked = np.uint64(vq[v, VQ_MISS_IOVA])
        if vq[v, VQ_MISS_PENDING] != 0 and iova <= parked and parked < end:
            vq[v, VQ_MISS_ANSWERED] = vq[v, VQ_MISS_IOVA] & np.int64(_PAGE_MASK)
            store_release(vq[v], VQ_MISS_PENDING, 0)
            mask |= 1 << v
    return mask


@njit(nogil=True, cache=True, _nrt=False)
def forget_asked(asked, iova, end):
    """An UPDATE of ``[iova, end)`` answered the asks of its pages: their
    ``state.asked`` rows are cleared, so a kernel that parks on one of them
    again (VM1 invalidated it meanwhile) sends its own MISS at once.
    Returns (asks answered, ns they waited in all): VM1's answer time."""
    first = np.int64(iova) & np.int64(_PAGE_MASK)
    stop = np.int64(end)
    now = monotonic_ns()
    n = 0
    waited = 0
    if (stop - first) // PAGE_SIZE >= ASK_SLOTS:  # a large grant: look at every row
        for s in range(ASK_SLOTS):
            page = asked[s, 0] & np.int64(_PAGE_MASK)
            if asked[s, 1] != 0 and first <= page and page < stop:
                n += 1
                waited += now - asked[s, 1]
                asked[s, 0] = asked[s, 1] = 0
        return n, waited
    page = first
    while page < stop:
        s = (page >> 12) & (ASK_SLOTS - 1)
        if asked[s, 0] & np.int64(_PAGE_MASK) == page:
            if asked[s, 1] != 0:  # a note (an empty row matches page 0)
                n += 1
                waited += now - asked[s, 1]
            asked[s, 0] = asked[s, 1] = 0
        page += PAGE_SIZE
    return n, waited
