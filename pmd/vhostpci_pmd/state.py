"""The vhost-pci port's kernel state: what its kernels hold and what each
column of its control arrays means (one place: ``vq.py``, ``txhold.py``,
``notify.py``, ``iotlb.py`` and the control thread all index these).

Per-vring control words (``vq`` rows, one cache line-pair each) are written
by the control thread before it publishes ``VQ_READY`` with a release store;
the kernel owns ``VQ_LAST_AVAIL``/``VQ_LAST_USED`` while the vring is ready.
(VM1's side, the virtio-user driver, names its columns ``DRV_*``.)
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..guestmem.iotlb_ops import WinState
from ..guestmem.views import Mem
from ..standin import Hand

# vq control columns
VQ_READY, VQ_NUM, VQ_DESC, VQ_AVAIL, VQ_USED, VQ_LAST_AVAIL, VQ_LAST_USED, VQ_CALL_FD = range(8)
VQ_HDR_LEN, VQ_IOMMU, VQ_MISS_PENDING, VQ_MISS_IOVA, VQ_MISS_WRITE, VQ_MRG, VQ_EVENT_IDX = range(8, 15)
# inflight tracking: the vring's area in the region (-1: off), the next counter,
# heads taken by the last burst and not yet published, heads to resubmit
VQ_IF_BASE, VQ_IF_COUNTER, VQ_PENDING, VQ_RESUB_N, VQ_RESUB_POS = range(15, 20)
VQ_HELD = 20  # receive rings: packets in the port's hold queue (txhold.py)
VQ_MISS_ANSWERED = 21  # the page of the last miss an UPDATE answered (iotlb.py)
# kernel-owned (the vring's lcore): available chains left after the last
# enqueue (a lower bound: VM1 only adds), and 1 if that burst stopped on a miss
# (a buffer's, or the ring's own pages: ringmap.py)
VQ_AVAIL_LEFT, VQ_PARKED = 22, 23
# 1 for a packed ring (VIRTIO_F_RING_PACKED): VQ_DESC is its descriptor ring,
# VQ_AVAIL the driver area, VQ_USED the device area, and VQ_LAST_AVAIL /
# VQ_LAST_USED are positions ``idx | wrap << 15`` (vq_packed.py)
VQ_PACKED = 24
# 1 with VIRTIO_F_IN_ORDER: the port uses buffers in ring order anyway; a
# packed transmit ring then gets one used element per burst (vq_packed.py)
VQ_IN_ORDER = 25
VQ_MISS_SENT = 26  # 1: the kernel sent the MISS of its park itself (iotlb.py); the control thread clears it
# the vring's read section (pmd/grace.py): odd while its lcore's burst uses the
# window; an IOTLB invalidation waits only for the vrings it finds inside
VQ_READER = 27
# packed and tracked (inflight_packed.py): the flags that publish the chains
# the last burst took (their used elements are written, the first's flags not)
VQ_PEND_FLAGS = 28
N_VQ = 29
PEND_CAP = 512  # chains a tracked packed burst takes at most (their head entries wait in ``pend``)

# extended per-vring counters
(XS_IOTLB_MISS, XS_BAD_DESC, XS_TOO_BIG, XS_BAD_RING, XS_CALLS, XS_MERGED, XS_RESUBMITTED, XS_REPAIRED,
 XS_ROLLED_FORWARD, XS_HELD, XS_PERM_DENIED, XS_MISS_SENT, XS_MISS_AHEAD) = range(13)
N_XSTATS = 13
XSTAT_NAMES = ("iotlb_misses", "bad_descriptors", "too_big", "bad_ring", "calls", "merged_rx_buffers",
               "inflight_resubmitted", "inflight_repaired", "inflight_rolled_forward", "tx_held_on_miss",
               "iotlb_perm_denied", "iotlb_miss_sent_by_lcore", "iotlb_miss_ahead")

# port-wide control words (state.ctl): the eventfd that wakes the control
# thread (IOTLB misses to send); 1 while an inflight region is mapped;
PORT_WAKE_FD, PORT_INFLIGHT = 0, 1
# RARP announcements (announce.py): requests (control thread), served (lcore), VM1's MAC
PORT_RARP_REQ, PORT_RARP_DONE, PORT_RARP_MAC = 2, 3, 4
# the back-end channel (a dup the device owns; -1: none) a parking kernel sends its MISS on
PORT_MISS_FD = 5
# who reads VM1's socket for IOTLB messages (iotlb_lend.py): the control
# thread or the lcore polling queue 0; the socket and how to answer while it
# is lent; the lcore's last stamp (ns) and last look (ns)
PORT_IOTLB_OWNER, PORT_IOTLB_FD, PORT_IOTLB_REPLY, PORT_IOTLB_QUIESCE_NS, PORT_IOTLB_BEAT, PORT_IOTLB_LOOKED = range(6, 12)
# an INVALIDATE's pieces (``IotlbBufs.ws.gone``) the control thread handed to that lcore to revoke (iotlb_serve.py)
PORT_IOTLB_GONE_N = 12
N_PORT_CTL = 16


class MapQueue(NamedTuple):
    """UPDATEs acked, for the lcore to map (``iotlb_maps.py``): the jobs
    (int64 [MAP_SLOTS, N_J]) and the queue's words (int64 [N_W])."""

    jobs: np.ndarray
    words: np.ndarray


class IotlbBufs(NamedTuple):
    """What the compiled IOTLB service (``iotlb_serve.serve``) works on,
    for whichever thread holds VM1's socket (``iotlb_lend.py``)."""

    ws: WinState  # the window's grants and tables
    buf: np.ndarray  # uint8[PEEK_SIZE]: the message read (and a look at what is queued behind it)
    out: np.ndarray  # uint8[MAX_BATCH * REPLY_SIZE]: the replies of a run
    io: np.ndarray  # int64[N_IO]: counters and the profile
    hand: Hand  # the port's stand-in: the control thread hands revocations to the lcore (pmd/standin.py)
    maps: MapQueue  # UPDATEs the control thread acked, for the lcore to map (iotlb_maps.py)


class VhostPciState(NamedTuple):
    mem: Mem  # the window
    table: np.ndarray  # window translation table
    tcount: np.ndarray
    gtable: np.ndarray  # iova -> gpa (dirty log)
    gcount: np.ndarray
    logctl: np.ndarray  # dirty log control (dirty_log.py)
    vq: np.ndarray  # (nb_vrings, N_VQ) int64
    xstats: np.ndarray  # (nb_vrings, N_XSTATS) int64
    stats: np.ndarray  # (nb_queue_pairs, N_STATS) int64
    ctl: np.ndarray  # int64[8]
    port_id: int
    inflight: Mem  # the inflight region (inflight.py), mapped while set
    resub: np.ndarray  # (nb_vrings, 32768) uint16: heads to resubmit, [VQ_RESUB_POS, VQ_RESUB_N)
    pend: np.ndarray  # (nb_vrings, PEND_CAP) uint16: packed: head entries of the chains not yet returned
    src: np.ndarray  # uint64[MAX_TRACKED_MBUFS]: by mbuf index, where dequeue took it (inflight.source)
    hold: np.ndarray  # (nb_queue_pairs, HOLD_CAP) int32: mbufs held on a miss, [0, vq[2q, VQ_HELD]) (txhold.py)
    vec: np.ndarray  # (nb_vrings, VEC_MAX, 3) int64: the buffer vector of the chain being copied (chain.py)
    pk: np.ndarray  # (nb_vrings, VEC_MAX, 3) int64: packed enqueue's used elements of one packet (vq_packed.py)
    missmsg: np.ndarray  # (nb_vrings, 48) uint8: the IOTLB MISS message a parking vring sends (iotlb.py)
    asked: np.ndarray  # (iotlb.ASK_SLOTS, 2) int64: pages asked for, not answered yet (iotlb.py)
    ahead: np.ndarray  # (nb_vrings, iotlb_ahead.MAX_AHEAD) int64: a parking vring's pages to ask ahead
    memo: np.ndarray  # (nb_vrings, 4) int64: the translation row a burst found last (translate_remembered)
    iotlb: IotlbBufs  # VM1's IOTLB messages, served by the lcore of queue 0 while lent (iotlb_lend.py)


