"""Virtio feature bits, device status bits and the net header (virtio 1.2,
sections 2.1, 5.1.3, 5.1.6 and 6): plain constants, no Numba, so the
vhost-user protocol layer can use them too."""
from __future__ import annotations

# Feature bits (bit numbers)
VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_F_CTRL_VQ = 17
VIRTIO_NET_F_MQ = 22
VIRTIO_F_ANY_LAYOUT = 27
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32
VIRTIO_F_IOMMU_PLATFORM = 33  # addresses are IOVAs, granted through IOTLB messages
VIRTIO_F_RING_PACKED = 34
VIRTIO_F_IN_ORDER = 35

# Device status bits (2.1)
VIRTIO_CONFIG_S_DRIVER_OK = 4

# Largest ring a split virtqueue may have (2.7: Queue Size up to 32768)
MAX_VRING_SIZE = 32768

# struct virtio_net_hdr: 10 bytes, 12 with num_buffers (VERSION_1 or MRG_RXBUF)
NET_HDR_LEN_LEGACY = 10
NET_HDR_LEN = 12
NET_HDR_NUM_BUFFERS = 10  # offset of the u16 num_buffers


def has(features: int, bit: int) -> bool:
    """True if feature ``bit`` is set in ``features``."""
    return bool(features >> bit & 1)


def net_hdr_len(features: int) -> int:
    """Length of the virtio-net header the negotiated ``features`` imply."""
    if features & ((1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF)):
        return NET_HDR_LEN
    return NET_HDR_LEN_LEGACY
