"""IOTLB messages a front-end sends from compiled code, many at a time.

A guest IOMMU that maps and unmaps buffers at packet rate (our virtio-user's
``iommu=transient``; QEMU does the same for a strict guest, in C) cannot go
through the Python session, one message and one reply at a time: ~100 us
each on a busy machine.  Here messages are written into one buffer
(``put_iotlb``), sent with one ``send`` and their replies read after
(``call_batch``).  A vhost-user back-end reads its socket in order and
answers every IOTLB_MSG with a u64 (0: done), so a batch is as safe as the
same messages sent one by one: a buffer may be used once *its* reply came,
which ``call_batch`` waits for.

The socket is the session's main channel, used by the thread that owns the
session only (the control thread), so nothing else reads the replies.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..iotlb_wire import FRONTEND_IOTLB_MSG, MSG_SIZE, OFF_REQUEST, OFF_SIZE, REPLY_SIZE, get_u32
from ..iotlb_wire import INVALIDATE, UPDATE  # noqa: F401  (re-exported: the kinds a batch carries)
from ..iotlb_wire import put_iotlb as put_message
from ..syscalls import MSG_DONTWAIT, MSG_NOSIGNAL, last_errno, monotonic_ns, poll_fds, socket_recv_into, socket_send_from
from ..vhost_user.messages import FLAG_NEED_REPLY, HEADER_SIZE, VERSION

FLAGS = VERSION | FLAG_NEED_REPLY  # QEMU sets NEED_REPLY on every IOTLB message
_POLLIN, _POLLOUT = 0x1, 0x4
_EINTR, _EAGAIN = 4, 11


@njit(nogil=True, cache=True, _nrt=False)
def put_iotlb(buf, n, iova, size, uaddr, perm, kind):
    """Write IOTLB message number ``n`` of a batch into ``buf``."""
    put_message(buf, n * MSG_SIZE, FRONTEND_IOTLB_MSG, FLAGS, iova, size, uaddr, perm, kind)


@njit(nogil=True, cache=True)
def _wait(fd, events, deadline):
    """Wait until ``fd`` is ready for ``events``; False when time is up."""
    pfd = np.empty(2, np.int32)
    while True:
        left = deadline - monotonic_ns()
        if left <= 0:
            return False
        pfd[0] = fd
        pfd[1] = events
        r = poll_fds(pfd, 1, max(1, left // 1_000_000))
        if r > 0:
            return True
        if r < 0 and last_errno() != _EINTR:
            return False


@njit(nogil=True, cache=True)
def _io(fd, buf, start, nbytes, sending, deadline):
    """Send (or receive) ``buf[start:start + nbytes]`` whole; False on an
    error, a closed peer or the deadline."""
    done = 0
    while done < nbytes:
        view = buf[start + done:]
        if sending:  # never blocking in the call, whatever the fd's mode: the deadline holds
            r = socket_send_from(fd, view, nbytes - done, MSG_NOSIGNAL | MSG_DONTWAIT)
        else:
            r = socket_recv_into(fd, view, nbytes - done, MSG_DONTWAIT)
        if r > 0:
            done += r
            continue
        if r == 0 or (last_errno() != _EAGAIN and last_errno() != _EINTR):
            return False
        if not _wait(fd, _POLLOUT if sending else _POLLIN, deadline):
            return False
    return True


@njit(nogil=True, cache=True)
def call_batch(fd, buf, n, reply, timeout_ns):
    """Send the ``n`` messages ``put_iotlb`` wrote into ``buf`` and read
    their ``n`` replies (``reply``: REPLY_SIZE bytes of scratch); returns
    how many were refused (a reply other than 0), or -1 when the channel
    failed (an error, the peer gone, a reply to something else, or no
    answer within ``timeout_ns``)."""
    deadline = monotonic_ns() + timeout_ns
    if n == 0:
        return 0
    if not _io(fd, buf, 0, n * MSG_SIZE, True, deadline):
        return -1
    refused = 0
    for _ in range(n):
        if not _io(fd, reply, 0, REPLY_SIZE, False, deadline):
            return -1
        if get_u32(reply, OFF_REQUEST) != FRONTEND_IOTLB_MSG or get_u32(reply, OFF_SIZE) != 8:
            return -1
        for k in range(8):
            if reply[HEADER_SIZE + k] != 0:
                refused += 1
                break
    return refused
