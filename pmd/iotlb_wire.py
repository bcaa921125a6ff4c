"""The vhost-user IOTLB message on the wire, for compiled code.

Both sides of the protocol handle IOTLB traffic in kernels, off Python: the
back-end (``vhostpci_pmd``) reads UPDATEs and INVALIDATEs and writes MISSes
and acks; the front-end (``virtio_user_pmd``) writes UPDATEs and
INVALIDATEs and reads MISSes.  The layout is written here once: a 12-byte
header (request, flags, size: little-endian u32s) and a ``struct
vhost_iotlb_msg`` padded to 32 bytes (iova, size, uaddr: u64s; perm, type:
u8s), as QEMU and DPDK send it; an ack is the header and a u64.
(``pmd/vhost_user`` holds the same layout for Python and stays free of
Numba.)
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .syscalls import MSG_DONTWAIT, MSG_NOSIGNAL, socket_send_from
from .vhost_user.messages import FLAG_REPLY, HEADER_SIZE, KNOWN_FLAGS, VERSION, BackendReq, FrontendReq, IotlbType

IOTLB_SIZE = 32  # struct vhost_iotlb_msg, padded
MSG_SIZE = HEADER_SIZE + IOTLB_SIZE
REPLY_SIZE = HEADER_SIZE + 8
# offsets in a message
OFF_REQUEST, OFF_FLAGS, OFF_SIZE = 0, 4, 8
OFF_IOVA, OFF_LEN, OFF_UADDR = HEADER_SIZE, HEADER_SIZE + 8, HEADER_SIZE + 16
OFF_PERM, OFF_TYPE = HEADER_SIZE + 24, HEADER_SIZE + 25
MISS, UPDATE, INVALIDATE = int(IotlbType.MISS), int(IotlbType.UPDATE), int(IotlbType.INVALIDATE)
# the request codes: the front-end's IOTLB_MSG (UPDATE, INVALIDATE), the back-end's (MISS)
FRONTEND_IOTLB_MSG, BACKEND_IOTLB_MSG = int(FrontendReq.IOTLB_MSG), int(BackendReq.IOTLB_MSG)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def put_le(buf, off, value, nbytes):
    """``value``'s low ``nbytes`` bytes at ``buf[off:]``, little-endian."""
    for k in range(nbytes):
        buf[off + k] = (value >> (8 * k)) & 0xFF


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def get_u32(buf, off):
    return np.uint32(buf[off]) | np.uint32(buf[off + 1]) << 8 | np.uint32(buf[off + 2]) << 16 \
        | np.uint32(buf[off + 3]) << 24


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def get_u64(buf, off):
    return np.uint64(get_u32(buf, off)) | np.uint64(get_u32(buf, off + 4)) << np.uint64(32)


@njit(nogil=True, cache=True, _nrt=False)
def is_iotlb_msg(buf, got, request):
    """Whether the ``got`` bytes peeked into ``buf`` are one whole IOTLB
    message with request code ``request``, this protocol version, known
    flags and the padded body size; anything else is the Python codec's to
    read (and to report)."""
    if got < MSG_SIZE:
        return False
    flags = get_u32(buf, OFF_FLAGS)
    return get_u32(buf, OFF_REQUEST) == request and flags & 0x3 == VERSION \
        and flags & ~np.uint32(KNOWN_FLAGS) == 0 and get_u32(buf, OFF_SIZE) == IOTLB_SIZE


@njit(nogil=True, cache=True, _nrt=False)
def put_iotlb(buf, off, request, flags, iova, size, uaddr, perm, kind):
    """One whole IOTLB message (header and padded body) at ``buf[off:]``."""
    put_le(buf, off + OFF_REQUEST, request, 4)
    put_le(buf, off + OFF_FLAGS, flags, 4)
    put_le(buf, off + OFF_SIZE, IOTLB_SIZE, 4)
    put_le(buf, off + OFF_IOVA, np.uint64(iova), 8)
    put_le(buf, off + OFF_LEN, np.uint64(size), 8)
    put_le(buf, off + OFF_UADDR, np.uint64(uaddr), 8)
    buf[off + OFF_PERM] = perm
    buf[off + OFF_TYPE] = kind
    for k in range(off + OFF_TYPE + 1, off + MSG_SIZE):
        buf[k] = 0


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def put_ack(out, off, request, flags, ok):
    """The u64 reply to a request (0 done, 1 failed), with the request's
    version and the REPLY flag, at ``out[off:off + REPLY_SIZE]``."""
    put_le(out, off + OFF_REQUEST, request, 4)
    put_le(out, off + OFF_FLAGS, (flags & 0x3) | FLAG_REPLY, 4)
    put_le(out, off + OFF_SIZE, 8, 4)
    put_le(out, off + HEADER_SIZE, 0 if ok else 1, 8)


@njit(nogil=True, cache=True, _nrt=False)
def send_ack(fd, out, request, flags, ok):
    """``put_ack`` at the start of ``out``, then one non-blocking send: True
    if it went whole."""
    put_ack(out, 0, request, flags, ok)
    return socket_send_from(fd, out, REPLY_SIZE, MSG_DONTWAIT | MSG_NOSIGNAL) == REPLY_SIZE
