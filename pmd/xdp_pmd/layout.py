"""AF_XDP constants and ring layouts (linux/if_xdp.h), and the per-queue
cursor and counter slots of the port's kernels.

An XSK has four single-producer/single-consumer rings, each mmap'd from
the socket: ``producer`` u32, ``consumer`` u32, ``flags`` u32 (at offsets
XDP_MMAP_OFFSETS returns) and a power-of-two array of entries.  The fill
and completion rings carry u64 UMEM addresses, the rx and tx rings
``struct xdp_desc {u64 addr; u32 len; u32 options;}`` (16 B).  Indices
run freely (u32 wrap-around); entry = index & (size - 1).
"""
from __future__ import annotations

AF_XDP = 44
SOL_XDP = 283

# setsockopt / getsockopt
XDP_MMAP_OFFSETS = 1
XDP_RX_RING = 2
XDP_TX_RING = 3
XDP_UMEM_REG = 4
XDP_UMEM_UNALIGNED_CHUNK_FLAG = 1  # struct xdp_umem_reg flags: chunks at any address, of any size
XDP_UMEM_MIN_CHUNK_SIZE = 2048
UNALIGNED_OFFSET_SHIFT = 48  # unaligned mode: an rx address is chunk | data offset << 48
XDP_UMEM_FILL_RING = 5
XDP_UMEM_COMPLETION_RING = 6
XDP_STATISTICS = 7
XDP_OPTIONS = 8
XDP_OPTIONS_ZEROCOPY = 1
# Linux >= 6.17: how many tx descriptors one wakeup may send in copy mode
# (32..tx ring entries); older kernels refuse it and send TX_BATCH_DEFAULT
XDP_MAX_TX_SKB_BUDGET = 9
TX_BATCH_DEFAULT = 32
# a tx burst this long says its source has more: the copy-mode wakeup waits
# until the ring holds the port's kick batch (or the next empty pass's
# flush); a shorter burst says the source is drained: wake at once
TX_DEFER_MIN = 32

# bind flags (sockaddr_xdp.sxdp_flags)
XDP_COPY = 1 << 1
XDP_ZEROCOPY = 1 << 2
XDP_USE_NEED_WAKEUP = 1 << 3

# ring flags
XDP_RING_NEED_WAKEUP = 1

# mmap page offsets of the four rings
XDP_PGOFF_RX_RING = 0
XDP_PGOFF_TX_RING = 0x80000000
XDP_UMEM_PGOFF_FILL_RING = 0x100000000
XDP_UMEM_PGOFF_COMPLETION_RING = 0x180000000

# XDP attach flags (linux/if_link.h)
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_PACKET_HEADROOM = 256  # the kernel's headroom in front of every rx frame (copy mode)

DESC_SIZE = 16  # struct xdp_desc
ADDR_SIZE = 8  # fill / completion entries
ETH_HLEN = 14
MSG_DONTWAIT = 0x40
EAGAIN, EBUSY, ENOBUFS = 11, 16, 105

# rings, in the order of struct xdp_mmap_offsets {rx, tx, fr, cr}
RX, TX, FILL, COMP = range(4)
RING_NAMES = ("rx", "tx", "fill", "completion")
# fields of struct xdp_ring_offset, each a u64 offset
OFF_PRODUCER, OFF_CONSUMER, OFF_DESC, OFF_FLAGS = range(4)

# fill ring top-up: only when at least this many entries are free (one pool lock per batch)
REFILL_MIN = 32
# the fill ring holds this many rx rings' worth of frames, all posted: the
# kernel never runs out of fill entries while the rx ring has room (DPDK's
# net_af_xdp also sizes it twice the rx ring but posts one ring's worth).
# Measured on a veth at ~0.85 Mpps offered: with one ring's worth 22% of the
# frames found no fill entry; with two none did (as many found the rx ring
# full instead), and the rx ratio to net_af_xdp rose from ~0.99 to 1.05-1.16.
FILL_RING_FACTOR = 2

# driver counters (xstats), one row per queue
(X_RX_WAKEUPS, X_TX_WAKEUPS, X_TX_WAKEUP_AGAIN, X_TX_WAKEUP_ERRORS, X_TX_RING_FULL, X_TX_TOO_BIG,
 X_RX_BAD_DESC, X_RX_COPIED, X_TX_COPIED, X_FILL_SHORT, X_TX_NO_FRAME) = range(11)
N_X = 11
X_NAMES = ("rx_wakeups", "tx_wakeups", "tx_wakeup_again", "tx_wakeup_errors", "tx_ring_full", "tx_too_big",
           "rx_bad_desc", "rx_copied", "tx_copied", "fill_short", "tx_no_frame")
