"""A vring's three parts through the window, for both layouts: split
(descriptor table, available ring, used ring) and packed (descriptor ring,
driver area, device area).  Translated once per burst; what cannot be
translated is a miss with an IOMMU (parked, ``iotlb.py``) and a bad ring
without one."""
from __future__ import annotations

import numpy as np
from numba import njit

from ..guestmem.translate import translate
from .iotlb import map_acked, park_on_miss
from .state import VQ_AVAIL, VQ_DESC, VQ_IOMMU, VQ_PARKED, VQ_USED, XS_BAD_RING


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def ring_parts(st, v, desc_size, avail_size, used_size, desc_write):
    """Window offsets of ring ``v``'s parts (the descriptors written by the
    device if ``desc_write``, the third part always), or (-1, -1, -1) after
    counting the problem."""
    row = st.vq[v]
    desc = translate(st.table, st.tcount, row[VQ_DESC], desc_size, desc_write)
    avail = translate(st.table, st.tcount, row[VQ_AVAIL], avail_size, False)
    used = translate(st.table, st.tcount, row[VQ_USED], used_size, True)
    if desc >= 0 and avail >= 0 and used >= 0:
        return desc, avail, used
    if row[VQ_IOMMU] != 0 and map_acked(st):  # an UPDATE acked, not mapped yet: mapped now, looked at again
        desc = translate(st.table, st.tcount, row[VQ_DESC], desc_size, desc_write)
        avail = translate(st.table, st.tcount, row[VQ_AVAIL], avail_size, False)
        used = translate(st.table, st.tcount, row[VQ_USED], used_size, True)
        if desc >= 0 and avail >= 0 and used >= 0:
            return desc, avail, used
    if row[VQ_IOMMU] != 0:
        # a miss on the ring itself (a lazy guest IOMMU flushes everything,
        # rings too) stops the burst as a buffer's miss does: the transmit
        # side holds what it took (txhold.py) instead of refusing it
        row[VQ_PARKED] = 1
        if desc < 0:
            park_on_miss(st, v, row[VQ_DESC], desc_write)
        elif avail < 0:
            park_on_miss(st, v, row[VQ_AVAIL], False)
        else:
            park_on_miss(st, v, row[VQ_USED], True)
    else:
        st.xstats[v, XS_BAD_RING] += 1
    return np.int64(-1), np.int64(-1), np.int64(-1)
