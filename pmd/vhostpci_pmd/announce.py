"""Announce VM1 after a migration: one RARP frame per SEND_RARP.

When VM1 moves (live migration), the network behind the VF must learn where
its MAC now lives.  QEMU's own announce and DPDK's vhost library do it the
same way: a reverse-ARP broadcast with VM1's MAC as sender.  The vhost-pci
port hands that frame out of its rx burst (queue 0) as if VM1 had sent it,
so the forwarding engine carries it to the port it forwards to (io mode:
unchanged; an engine that rewrites source MACs would spoil it) and no
Python touches the data path.

The control thread (``device.send_rarp``) stores the MAC, then bumps
PORT_RARP_REQ with a release store; the lcore polling queue 0 builds one
frame per request it has not served (PORT_RARP_DONE, written by it alone)
and counts it as received.  A burst with no free mbuf leaves the request
for the next one.
"""
from __future__ import annotations

from numba import njit

from ..atomics import load_acquire, store_release
from ..burst import register_burst
from ..ethdev import ST_IBYTES, ST_IPACKETS
from ..grace import section_enter, section_leave
from ..mbuf import alloc_bulk, mbuf_offset
from .state import PORT_RARP_DONE, PORT_RARP_MAC, PORT_RARP_REQ, VQ_READER, VhostPciState
from .iotlb_serve import lcore_serve
from .txhold import tx
from .vq import vhost_pci_rx

RARP_LEN = 60  # 14 B Ethernet + 28 B ARP, padded to the 60-byte minimum
ETH_P_RARP = 0x8035
ARPOP_RREQUEST = 3


def rarp_frame(mac: bytes) -> bytes:
    """The frame (what the kernel builds too; for tests and documentation)."""
    arp = (bytes([0, 1, 8, 0, 6, 4, 0, ARPOP_RREQUEST]) + mac + bytes(4) + mac + bytes(4))
    return (b"\xff" * 6 + mac + ETH_P_RARP.to_bytes(2, "big") + arp).ljust(RARP_LEN, b"\0")


@njit(nogil=True, cache=True, _nrt=False)
def _build(data, off, mac):
    for k in range(RARP_LEN):
        data[off + k] = 0
    for k in range(6):
        b = (mac >> (8 * k)) & 0xFF
        data[off + k] = 0xFF  # broadcast
        data[off + 6 + k] = b  # source: VM1
        data[off + 22 + k] = b  # sender hardware address
        data[off + 32 + k] = b  # target hardware address
    data[off + 12] = ETH_P_RARP >> 8
    data[off + 13] = ETH_P_RARP & 0xFF
    data[off + 15] = 1  # hardware type: Ethernet
    data[off + 16] = 0x08  # protocol type: IPv4
    data[off + 18] = 6
    data[off + 19] = 4
    data[off + 21] = ARPOP_RREQUEST


@njit(nogil=True, cache=True, _nrt=False)
def _announce(st, q, pool, bufs, n):
    """Append one RARP frame at ``bufs[n]`` if one is owed; returns 1 or 0."""
    done = st.ctl[PORT_RARP_DONE]
    if load_acquire(st.ctl, PORT_RARP_REQ) == done:
        return 0
    if not alloc_bulk(pool, bufs[n:], 1):
        return 0  # no mbuf now: the next burst tries again
    i = bufs[n]
    _build(pool.data, mbuf_offset(pool, i), st.ctl[PORT_RARP_MAC])
    pool.data_len[i] = RARP_LEN
    pool.port[i] = st.port_id
    if i < len(st.src):
        st.src[i] = 0  # not from a VM1 descriptor: nothing to commit
    st.stats[q, ST_IPACKETS] += 1
    st.stats[q, ST_IBYTES] += RARP_LEN
    store_release(st.ctl, PORT_RARP_DONE, done + 1)
    return 1


@njit(nogil=True, cache=True, _nrt=False)
def rx(st, q, pool, bufs, nb):
    """rx_burst of the vhost-pci port: VM1's packets, plus on queue 0 an
    announcement when one is owed (it takes the burst's last slot), and
    after it VM1's IOTLB messages when they are lent (``iotlb_lend.py``)."""
    row = st.vq[2 * q + 1]
    section_enter(row, VQ_READER)
    if q != 0 or nb <= 0 or load_acquire(st.ctl, PORT_RARP_REQ) == st.ctl[PORT_RARP_DONE]:
        n = vhost_pci_rx(st, q, pool, bufs, nb)
    else:
        n = vhost_pci_rx(st, q, pool, bufs, nb - 1)
        n += _announce(st, q, pool, bufs, n)
    section_leave(row, VQ_READER)
    if q == 0:
        lcore_serve(st, n == 0)  # VM1's IOTLB messages, if the control thread lent the socket
    return n


register_burst(VhostPciState, rx, tx)
