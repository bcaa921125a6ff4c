"""icmpecho: answer ARP requests and ICMP echo requests on the port they
came in on (testpmd's icmpecho); every other packet is freed.  Useful
between VMs: VM1 can ping (and ARP for) any address behind the port."""
from numba import njit

from ..mbuf import free_bulk, mbuf_offset
from .common import receive_for, send_burst, write_mac

_ETH_ARP, _ETH_IPV4 = 0x0806, 0x0800
_ARP_REQUEST, _ARP_REPLY = 1, 2
_IPPROTO_ICMP, _ICMP_ECHO_REQUEST = 1, 8


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _be16(data, off):
    return (data[off] << 8) | data[off + 1]


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _swap(data, a, b, n):
    for i in range(n):
        t = data[a + i]
        data[a + i] = data[b + i]
        data[b + i] = t


@njit(nogil=True, cache=True, _nrt=False)
def _arp_reply(data, off, length, mac):
    """Turn an Ethernet/IPv4 ARP request into our reply in place."""
    if length < 42 or _be16(data, off + 14) != 1 or _be16(data, off + 16) != _ETH_IPV4:
        return False
    if _be16(data, off + 20) != _ARP_REQUEST:
        return False
    data[off + 21] = _ARP_REPLY
    for i in range(6):
        data[off + i] = data[off + 6 + i]  # to the requester
        data[off + 32 + i] = data[off + 22 + i]  # target hw = requester's
    write_mac(data, off + 6, mac)
    write_mac(data, off + 22, mac)  # sender hw = ours
    _swap(data, off + 28, off + 38, 4)  # sender ip <-> target ip
    return True


@njit(nogil=True, cache=True, _nrt=False)
def _echo_reply(data, off, length, mac):
    """Turn an IPv4 ICMP echo request into its reply in place (the IP header
    checksum is unchanged by swapping addresses; ICMP's is updated
    incrementally, RFC 1624, for the type going from 8 to 0)."""
    if length < 34 or data[off + 14] >> 4 != 4:
        return False
    ihl = (data[off + 14] & 0xF) * 4
    icmp = off + 14 + ihl
    if ihl < 20 or length < 14 + ihl + 8 or data[off + 23] != _IPPROTO_ICMP:
        return False
    if data[icmp] != _ICMP_ECHO_REQUEST or data[icmp + 1] != 0:
        return False
    _swap(data, off, off + 6, 6)
    write_mac(data, off + 6, mac)
    _swap(data, off + 26, off + 30, 4)
    data[icmp] = 0
    s = (~_be16(data, icmp + 2) & 0xFFFF) + (~(_ICMP_ECHO_REQUEST << 8) & 0xFFFF)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    s = ~s & 0xFFFF
    data[icmp + 2] = s >> 8
    data[icmp + 3] = s & 0xFF
    return True


@njit(nogil=True, cache=True, _nrt=False)
def fwd(s, ctx, burst):
    pool = ctx.pool
    n = receive_for(s, ctx, burst)
    if n == 0:
        return 0
    data = pool.data
    mac = ctx.macs[s.tx_port]
    m = 0  # replies are moved to the front, in order
    for k in range(n):
        i = ctx.bufs[k]
        off = mbuf_offset(pool, i)
        length = pool.data_len[i]
        ok = False
        if length >= 14:
            etype = _be16(data, off + 12)
            if etype == _ETH_ARP:
                ok = _arp_reply(data, off, length, mac)
            elif etype == _ETH_IPV4:
                ok = _echo_reply(data, off, length, mac)
        if ok:
            ctx.bufs[k] = ctx.bufs[m]
            ctx.bufs[m] = i
            m += 1
    if m < n:
        free_bulk(pool, ctx.bufs[m:], n - m)
    send_burst(s, ctx, m)
    return n
