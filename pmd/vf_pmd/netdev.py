"""Control side of the VF port: the netdev as sysfs shows it, AF_PACKET
sockets with their rings, and one address range per direction into which
every queue's ring is mapped, so kernels see all queues as one 2-D array."""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import struct

import numpy as np

from . import layout as L

_SYS = "/sys/class/net"
PAGE_SIZE = mmap.PAGESIZE


# ---- the netdev ----------------------------------------------------------
def _read(iface: str, attr: str) -> str:
    with open(os.path.join(_SYS, iface, attr)) as f:
        return f.read().strip()


def exists(iface: str) -> bool:
    return bool(iface) and "/" not in iface and os.path.isdir(os.path.join(_SYS, iface))


def operstate(iface: str) -> str:
    """``up``, ``down``, ``lowerlayerdown``, ``unknown``...; ``absent`` once it is gone."""
    try:
        return _read(iface, "operstate")
    except OSError:
        return "absent"


def admin_up(iface: str) -> bool:
    try:
        return bool(int(_read(iface, "flags"), 16) & 1)  # IFF_UP
    except (OSError, ValueError):
        return False


def is_up(iface: str) -> bool:
    """Carrier and admin state both up (``unknown``: a device that does not
    report operstate, e.g. tun, counts as up when admin-up)."""
    return admin_up(iface) and operstate(iface) in ("up", "unknown")


def mac(iface: str) -> bytes:
    return bytes.fromhex(_read(iface, "address").replace(":", ""))


def mtu(iface: str) -> int:
    return int(_read(iface, "mtu"))


def speed_mbps(iface: str) -> int:
    try:
        return max(int(_read(iface, "speed")), 0)
    except (OSError, ValueError):  # veth and most virtual devices: EINVAL
        return 0


def ifindex(iface: str) -> int:
    return socket.if_nametoindex(iface)


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


# ---- one address range holding every queue's ring ------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_FIXED = 0x10
_PROT_NONE = 0
_MAP_NORESERVE = 0x4000


def _sys_mmap(addr, length, prot, flags, fd, what):
    res = _mmap(addr, length, prot, flags, fd, 0)
    if res == _MAP_FAILED or res is None:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap {what}: {os.strerror(err)}")
    return res


class RingArea:
    """``n`` equal slots of ``slot_bytes``: a PROT_NONE reservation into which
    each queue's socket ring is mapped (MAP_SHARED|MAP_FIXED).  ``array`` is the
    (n, slot_bytes) uint8 view kernels take.  ``close`` unmaps everything: no
    kernel may run on the views afterwards."""

    def __init__(self, n: int, slot_bytes: int) -> None:
        assert slot_bytes % PAGE_SIZE == 0
        self.n, self.slot_bytes = n, slot_bytes
        self.size = n * slot_bytes
        self.base = _sys_mmap(None, self.size, _PROT_NONE,
                              mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE, -1, "ring reservation")
        buf = (ctypes.c_uint8 * self.size).from_address(self.base)
        self.array = np.frombuffer(buf, np.uint8).reshape(n, slot_bytes)

    def map(self, q: int, sock: socket.socket) -> None:
        _sys_mmap(self.base + q * self.slot_bytes, self.slot_bytes, mmap.PROT_READ | mmap.PROT_WRITE,
                  mmap.MAP_SHARED | _MAP_FIXED, sock.fileno(), f"ring of queue {q}")

    def close(self) -> None:
        if self.base:
            _munmap(self.base, self.size)
            self.base = 0
