"""Internet checksum kernels (RFC 1071), shared by the packet generators and
the ports that must finish a checksum the sender left to "hardware"."""
from __future__ import annotations

import numpy as np
from numba import njit

ETHERTYPE_IPV4, ETHERTYPE_IPV6 = 0x0800, 0x86DD
ETHERTYPE_VLAN, ETHERTYPE_QINQ = 0x8100, 0x88A8
IPPROTO_TCP, IPPROTO_UDP = 6, 17


@njit(nogil=True, cache=True, _nrt=False)
def inet_checksum(data, start, end):
    """RFC 1071 checksum of ``data[start:end]`` in a kernel (zero the
    checksum field first when computing one; a valid header sums to 0)."""
    total = 0
    i = start
    while i + 1 < end:
        total += (np.int64(data[i]) << 8) | np.int64(data[i + 1])
        i += 2
    if i < end:
        total += np.int64(data[i]) << 8
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@njit(nogil=True, cache=True, _nrt=False, inline="always")
def _be16(data, off):
    return (np.int64(data[off]) << 8) | np.int64(data[off + 1])


@njit(nogil=True, cache=True, _nrt=False)
def complete_partial_l4_checksum(data, frame, length):
    """Finish the TCP/UDP checksum of the Ethernet frame at ``data[frame:frame
    + length]`` whose checksum field holds only the pseudo-header sum (Linux
    CHECKSUM_PARTIAL: what a veth peer hands to AF_PACKET as
    TP_STATUS_CSUMNOTREADY, expecting a NIC to finish it).  The sum over the
    L4 header and payload, field included, is the final checksum.  Returns
    False (frame untouched) when it is not IPv4/IPv6 + TCP/UDP, a fragment,
    has IPv6 extension headers, or is too short."""
    end = frame + length
    l3 = frame + 14
    if l3 + 2 > end:
        return False
    etype = _be16(data, l3 - 2)
    while (etype == ETHERTYPE_VLAN or etype == ETHERTYPE_QINQ) and l3 + 6 <= end:
        etype = _be16(data, l3 + 2)
        l3 += 4
    if etype == ETHERTYPE_IPV4:
        if l3 + 20 > end or data[l3] >> 4 != 4:
            return False
        if _be16(data, l3 + 6) & 0x3FFF:  # MF or a fragment offset
            return False
        proto = np.int64(data[l3 + 9])
        l4 = l3 + (np.int64(data[l3]) & 0xF) * 4
    elif etype == ETHERTYPE_IPV6:
        if l3 + 40 > end:
            return False
        proto = np.int64(data[l3 + 6])
        l4 = l3 + 40
    else:
        return False
    if proto == IPPROTO_UDP:
        field = l4 + 6
    elif proto == IPPROTO_TCP:
        field = l4 + 16
    else:
        return False
    if field + 2 > end:
        return False
    csum = inet_checksum(data, l4, end)
    if csum == 0 and proto == IPPROTO_UDP:
        csum = 0xFFFF  # 0 means "no checksum" in UDP
    data[field] = csum >> 8
    data[field + 1] = csum & 0xFF
    return True
