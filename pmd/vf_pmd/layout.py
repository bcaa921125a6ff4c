"""AF_PACKET ring layouts and socket constants (linux/if_packet.h).

RX uses TPACKET_V3: the ring is ``block_nr`` blocks of ``block_size`` bytes;
the kernel fills a block with variable-size ``tpacket3_hdr`` entries and hands
the whole block over (block_status TP_STATUS_USER) when it is full or its
retire timer fires; user space gives it back with TP_STATUS_KERNEL.

TX uses TPACKET_V2: fixed-size frames, each a ``tpacket2_hdr`` followed by the
packet at TPACKET2_HDRLEN - sizeof(sockaddr_ll) = 32 (where the kernel reads
it when PACKET_TX_HAS_OFF is off).  V2 keeps tx per-frame and simple; the two
directions use separate sockets since PACKET_VERSION is per socket.

Offsets are in bytes; kernels index u32/u16 views with ``offset >> 2`` /
``offset >> 1`` (every field here is naturally aligned).
"""
from __future__ import annotations

# socket level and options
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_DROP_MEMBERSHIP = 2
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_LOSS = 14
PACKET_FANOUT = 18
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
TPACKET_V2 = 1
TPACKET_V3 = 2
PACKET_MR_PROMISC = 1
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000
PACKET_FANOUT_FLAG_IGNORE_OUTGOING = 0x4000  # Linux 6.2: a group ignores PACKET_IGNORE_OUTGOING
ETH_P_ALL = 0x0003
ETH_HLEN = 14
MSG_DONTWAIT = 0x40

# tp_status / block_status bits
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_CSUMNOTREADY = 0x8  # L4 checksum left to "hardware" (CHECKSUM_PARTIAL, e.g. from a veth peer)
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1
TP_STATUS_SENDING = 2
TP_STATUS_WRONG_FORMAT = 4

# struct tpacket_block_desc (version, offset_to_priv, tpacket_hdr_v1 h1)
BD_BLOCK_STATUS = 8
BD_NUM_PKTS = 12
BD_OFFSET_TO_FIRST_PKT = 16

# struct tpacket3_hdr
T3_NEXT_OFFSET = 0
T3_SNAPLEN = 12
T3_LEN = 16
T3_STATUS = 20
T3_MAC = 24  # u16
T3_VLAN_TCI = 32  # hv1.tp_vlan_tci (u32)
T3_VLAN_TPID = 36  # hv1.tp_vlan_tpid (u16)

# struct tpacket2_hdr (tx frames)
T2_STATUS = 0
T2_LEN = 4
T2_SNAPLEN = 8
T2_DATA = 32  # TPACKET2_HDRLEN (52) - sizeof(struct sockaddr_ll) (20)

TPACKET_ALIGNMENT = 16
RX_FRAME_SIZE = 2048  # nominal tp_frame_size for V3 (frames are variable-size)
RETIRE_BLK_TOV_MS = 1  # a partly filled block is handed over after this

# per-queue cursor slots (int64 rows of 8: one cache line per queue)
RX_BLOCK, RX_IDX, RX_OFF = 0, 1, 2  # current block, packets consumed in it, next entry offset
TX_HEAD = 0  # next tx frame to fill
N_CUR = 8

# driver counters (xstats), one row per queue
(X_RX_BLOCKS, X_RX_VLAN, X_RX_TRUNCATED, X_TX_KICKS, X_TX_KICK_ERRORS, X_TX_RING_FULL, X_TX_TOO_BIG,
 X_RX_CSUM_COMPLETED) = range(8)
N_X = 8
X_NAMES = ("rx_blocks", "rx_vlan_reinserted", "rx_truncated", "tx_kicks", "tx_kick_errors",
           "tx_ring_full", "tx_too_big", "rx_csum_completed")
