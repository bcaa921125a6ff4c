"""Control side of the VF port: AF_PACKET sockets with their rings (the
netdev itself is ``pmd/netdev.py``; the address range every queue's ring is
mapped into, ``pmd/ringarea.py``)."""
from __future__ import annotations

import errno
import os
import socket
import struct

from ..netdev import ifindex
from ..ringarea import PAGE_SIZE
from . import layout as L


# ---- sockets -------------------------------------------------------------
def _setopt(sock: socket.socket, opt: int, value: int) -> None:
    sock.setsockopt(L.SOL_PACKET, opt, value)


def rx_socket(iface: str, block_size: int, block_nr: int, fanout: str | int | None) -> socket.socket:
    """A TPACKET_V3 rx socket bound to ``iface`` (ring set up before bind,
    so no packet is queued outside the ring).  ``fanout``: None (alone),
    "new" (start a hash fanout group with a kernel-chosen unique id: read it
    with ``fanout_id``) or a group id to join.  Our own tx is not seen
    (IGNORE_OUTGOING)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        _setopt(sock, L.PACKET_VERSION, L.TPACKET_V3)
        frame_nr = block_size // L.RX_FRAME_SIZE * block_nr
        req3 = struct.pack("7I", block_size, block_nr, L.RX_FRAME_SIZE, frame_nr, L.RETIRE_BLK_TOV_MS, 0, 0)
        sock.setsockopt(L.SOL_PACKET, L.PACKET_RX_RING, req3)
        _setopt(sock, L.PACKET_IGNORE_OUTGOING, 1)
        sock.bind((iface, L.ETH_P_ALL))
        if fanout is not None:
            # A fanout group delivers through its own hook, which does not
            # honour the sockets' IGNORE_OUTGOING: the group needs the flag.
            flags = L.PACKET_FANOUT_HASH | L.PACKET_FANOUT_FLAG_DEFRAG | L.PACKET_FANOUT_FLAG_IGNORE_OUTGOING
            arg = (flags | L.PACKET_FANOUT_FLAG_UNIQUEID) << 16 if fanout == "new" else fanout | flags << 16
            try:
                sock.setsockopt(L.SOL_PACKET, L.PACKET_FANOUT, struct.pack("I", arg))
            except OSError as e:
                if e.errno == errno.EINVAL and _kernel() < (6, 2):
                    raise OSError(e.errno, "several rx queues need Linux >= 6.2 (PACKET_FANOUT_FLAG_IGNORE_OUTGOING; "
                                  "without it each queue would receive the port's own transmitted frames)") from e
                raise
        return sock
    except BaseException:
        sock.close()
        raise


def _kernel() -> tuple[int, int]:
    """(major, minor) of the running kernel."""
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def fanout_id(sock: socket.socket) -> int:
    return struct.unpack("I", sock.getsockopt(L.SOL_PACKET, L.PACKET_FANOUT, 4))[0] & 0xFFFF


def tx_socket(iface: str, frame_size: int, frame_nr: int, qdisc_bypass: bool) -> socket.socket:
    """A TPACKET_V2 tx-ring socket bound to ``iface`` with protocol 0, so it
    receives nothing.  PACKET_LOSS: a frame the kernel rejects is skipped
    (marked available), never left to block the ring."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        _setopt(sock, L.PACKET_VERSION, L.TPACKET_V2)
        _setopt(sock, L.PACKET_LOSS, 1)
        if qdisc_bypass:
            _setopt(sock, L.PACKET_QDISC_BYPASS, 1)
        block_size = max(frame_size, PAGE_SIZE)
        block_nr = frame_nr * frame_size // block_size
        req = struct.pack("4I", block_size, block_nr, frame_size, frame_nr)
        sock.setsockopt(L.SOL_PACKET, L.PACKET_TX_RING, req)
        sock.bind((iface, 0))
        return sock
    except BaseException:
        sock.close()
        raise


def _mreq(iface: str) -> bytes:
    return struct.pack("iHH8s", ifindex(iface), L.PACKET_MR_PROMISC, 0, b"")


def set_promisc(sock: socket.socket, iface: str, on: bool) -> None:
    opt = L.PACKET_ADD_MEMBERSHIP if on else L.PACKET_DROP_MEMBERSHIP
    sock.setsockopt(L.SOL_PACKET, opt, _mreq(iface))


def rx_drops(sock: socket.socket) -> int:
    """Packets the kernel dropped since the last call (ring full): PACKET_STATISTICS
    returns tpacket_stats_v3 and resets it."""
    _packets, drops, _freeze = struct.unpack("3I", sock.getsockopt(L.SOL_PACKET, L.PACKET_STATISTICS, 12))
    return drops
