"""XSK sockets (AF_XDP): create one, register its UMEM, size and locate
its four rings, bind it to a netdev queue, read its counters.  The rings
themselves are mapped by the driver (pmd/ringarea.py) at the page offsets
in layout.py."""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import time
from typing import NamedTuple

import numpy as np

from . import layout as L

_libc = ctypes.CDLL(None, use_errno=True)
_bind = _libc.bind
_bind.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]


class XskStats(NamedTuple):
    """struct xdp_statistics (cumulative since bind)."""

    rx_dropped: int
    rx_invalid_descs: int
    tx_invalid_descs: int
    rx_ring_full: int
    rx_fill_ring_empty_descs: int
    tx_ring_empty_descs: int


def open_socket() -> socket.socket:
    """A new XSK (close-on-exec).  EAFNOSUPPORT: a kernel without AF_XDP."""
    return socket.socket(L.AF_XDP, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)


def register_umem(sock: socket.socket, addr: int, length: int, chunk_size: int) -> None:
    """XDP_UMEM_REG: ``length`` bytes at ``addr`` in chunks of ``chunk_size``
    (unaligned-chunk mode: any chunk size up to a page, a chunk at any
    address; no extra headroom); the kernel pins the pages once."""
    sock.setsockopt(L.SOL_XDP, L.XDP_UMEM_REG, struct.pack("QQIIII", addr, length, chunk_size, 0,
                                                          L.XDP_UMEM_UNALIGNED_CHUNK_FLAG, 0))


def set_ring_sizes(sock: socket.socket, entries: int, fill_entries: int) -> None:
    """``entries`` for the rx, tx and completion rings, ``fill_entries`` for the fill ring."""
    for opt in (L.XDP_UMEM_COMPLETION_RING, L.XDP_RX_RING, L.XDP_TX_RING):
        sock.setsockopt(L.SOL_XDP, opt, entries)
    sock.setsockopt(L.SOL_XDP, L.XDP_UMEM_FILL_RING, fill_entries)


def set_tx_budget(sock: socket.socket, entries: int) -> int:
    """Let one tx wakeup send up to ``entries`` frames in copy mode
    (XDP_MAX_TX_SKB_BUDGET, after the tx ring is sized); returns the
    budget in force: the kernel's TX_BATCH_DEFAULT where it has no such
    option."""
    try:
        sock.setsockopt(L.SOL_XDP, L.XDP_MAX_TX_SKB_BUDGET, struct.pack("I", entries))
    except OSError as e:
        if e.errno != errno.ENOPROTOOPT:
            raise
        return L.TX_BATCH_DEFAULT
    return entries


def mmap_offsets(sock: socket.socket) -> np.ndarray:
    """(4 rings, 4 fields) offsets: rows RX, TX, FILL, COMP; columns
    OFF_PRODUCER, OFF_CONSUMER, OFF_DESC, OFF_FLAGS (struct xdp_mmap_offsets)."""
    raw = sock.getsockopt(L.SOL_XDP, L.XDP_MMAP_OFFSETS, 128)
    return np.array(struct.unpack("16Q", raw), np.int64).reshape(4, 4)


PGOFF = {L.RX: L.XDP_PGOFF_RX_RING, L.TX: L.XDP_PGOFF_TX_RING, L.FILL: L.XDP_UMEM_PGOFF_FILL_RING,
         L.COMP: L.XDP_UMEM_PGOFF_COMPLETION_RING}
ENTRY_SIZE = {L.RX: L.DESC_SIZE, L.TX: L.DESC_SIZE, L.FILL: L.ADDR_SIZE, L.COMP: L.ADDR_SIZE}


BIND_BUSY_WAIT_S = 2.0


def bind(sock: socket.socket, ifindex: int, queue: int, flags: int) -> None:
    """Bind to (``ifindex``, ``queue``); OSError with the kernel's errno.

    A closed XSK frees its netdev queue asynchronously (a kernel work item):
    a restart right after a stop, or after a killed process, sees EBUSY for
    a moment, so EBUSY is retried for BIND_BUSY_WAIT_S; still busy then, the
    queue belongs to a live socket."""
    addr = struct.pack("HHIII", L.AF_XDP, flags, ifindex, queue, 0)
    buf = ctypes.create_string_buffer(addr, len(addr))
    deadline = time.monotonic() + BIND_BUSY_WAIT_S
    while _bind(sock.fileno(), buf, len(addr)) < 0:
        err = ctypes.get_errno()
        if err == errno.EBUSY and time.monotonic() < deadline:
            time.sleep(0.005)
            continue
        if err == errno.EBUSY:
            raise OSError(err, f"queue {queue} is in use by another AF_XDP socket")
        raise OSError(err, f"bind to queue {queue}: {os.strerror(err)}")


def statistics(sock: socket.socket) -> XskStats:
    return XskStats(*struct.unpack("6Q", sock.getsockopt(L.SOL_XDP, L.XDP_STATISTICS, 48)))


def zero_copy(sock: socket.socket) -> bool:
    """True when the bound socket runs in zero-copy mode (XDP_OPTIONS)."""
    return bool(struct.unpack("I", sock.getsockopt(L.SOL_XDP, L.XDP_OPTIONS, 4))[0] & L.XDP_OPTIONS_ZEROCOPY)
