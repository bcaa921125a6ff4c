"""IOTLB MISSes answered by a compiled kernel on the control thread.

With ``iommu=demand`` every buffer page is granted only when the back-end
asks for it, as QEMU answers for a guest behind a strict vIOMMU: QEMU
answers in C, within microseconds.  Through the Python session (a selector
wake-up, the codec, the handler) an answer took ~150 us, so a figure
measured with this front-end was mostly this front-end.  Here the control
thread waits in ``answer_wait`` (``poll`` on the back-end channel and the
thread's other fds) and answers each MISS it takes without Python:

1. peek at the next back-end request; anything but a complete IOTLB MISS for
   a page of a vring's buffer area is left unread for the Python path
   (which refuses what is not granted, logs, and owns every error);
2. the page's UPDATE (the area's permission) goes out on the main channel
   and its ack is read (``iotlb_batch.call_batch``): the page is readable
   by the back-end once the MISS is consumed, as on the Python path;
3. the MISS is consumed and acked when it asked for a reply and REPLY_ACK
   was negotiated.

Returns as soon as another fd is readable, so the Python loop serves it.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..iotlb_wire import (
    BACKEND_IOTLB_MSG, MISS, MSG_SIZE, OFF_FLAGS, OFF_IOVA, OFF_TYPE, UPDATE, get_u32, get_u64, is_iotlb_msg, send_ack,
)
from ..syscalls import MSG_DONTWAIT, MSG_PEEK, WAIT_OTHER, WAIT_TIMEOUT, monotonic_ns, socket_recv_into, wait_first
from ..vhost_user.messages import FLAG_NEED_REPLY
from .guest_memory import PAGE_SIZE
from .iotlb_batch import call_batch, put_iotlb

# io: MISSes answered here (each one UPDATE sent), why the last call stopped
IO_ANSWERED, IO_NEXT = 0, 1
N_IO = 2
# IO_NEXT: time is up; another fd is readable or a request needs Python;
# the back-end refused an UPDATE or the main channel failed (the session ends)
NEXT_NONE, NEXT_PYTHON, NEXT_FAILED = 0, 1, 2
# areas columns: a vring's buffer area [start, end) (IOVA = GPA, page
# aligned), the permission its pages are granted with, our address of start
A_START, A_END, A_PERM, A_UADDR = range(4)
_PAGE = np.int64(PAGE_SIZE)


@njit(nogil=True, cache=True)
def answer(bfd, mfd, areas, reply_ack, timeout_ns, buf, msg, reply, io):
    """Answer the MISSes at the head of back-end channel ``bfd`` (UPDATEs on
    main channel ``mfd``); returns how many.  ``io[IO_NEXT]`` says why it
    stopped: NEXT_NONE (nothing left), NEXT_PYTHON or NEXT_FAILED."""
    done = 0
    io[IO_NEXT] = NEXT_NONE
    while True:
        got = socket_recv_into(bfd, buf, MSG_SIZE, MSG_PEEK | MSG_DONTWAIT)
        if got < 0:
            return done  # nothing there (EAGAIN), or an error the Python read reports
        io[IO_NEXT] = NEXT_PYTHON
        if not is_iotlb_msg(buf, got, BACKEND_IOTLB_MSG) or buf[OFF_TYPE] != MISS:
            return done  # another request, not all there yet, or a closed channel
        flags = get_u32(buf, OFF_FLAGS)
        iova = np.int64(get_u64(buf, OFF_IOVA) & np.uint64(0x7FFF_FFFF_FFFF_FFFF))
        a = -1
        for k in range(areas.shape[0]):
            if areas[k, A_START] <= iova < areas[k, A_END]:
                a = k
                break
        if a < 0:
            return done  # not a buffer page: Python answers from the standing grants, or refuses
        page = iova - iova % _PAGE
        put_iotlb(msg, 0, page, _PAGE, areas[a, A_UADDR] + (page - areas[a, A_START]), areas[a, A_PERM], UPDATE)
        if call_batch(mfd, msg, 1, reply, timeout_ns) != 0:
            io[IO_NEXT] = NEXT_FAILED
            return done
        socket_recv_into(bfd, buf, MSG_SIZE, MSG_DONTWAIT)  # consume it (all there: peeked)
        io[IO_ANSWERED] += 1
        done += 1
        io[IO_NEXT] = NEXT_NONE
        if reply_ack and flags & FLAG_NEED_REPLY != 0 and not send_ack(bfd, reply, BACKEND_IOTLB_MSG, flags, True):
            io[IO_NEXT] = NEXT_FAILED
            return done


@njit(nogil=True, cache=True)
def answer_wait(pfds, nfds, wait_ns, mfd, areas, reply_ack, timeout_ns, buf, msg, reply, io):
    """``answer``, then wait in ``poll`` for more MISSes and answer them too,
    for up to ``wait_ns``.  ``pfds`` rows are ``struct pollfd``s: row 0 the
    back-end channel, rows 1..nfds-1 what else the control thread waits on;
    it returns (``io[IO_NEXT]`` NEXT_PYTHON) once one of those is readable,
    the channel is in error, or a request needs Python."""
    done = 0
    deadline = monotonic_ns() + wait_ns
    while True:
        done += answer(pfds[0, 0], mfd, areas, reply_ack, timeout_ns, buf, msg, reply, io)
        if io[IO_NEXT] != NEXT_NONE:
            return done
        w = wait_first(pfds, nfds, deadline)
        if w == WAIT_TIMEOUT:
            return done
        if w == WAIT_OTHER:
            io[IO_NEXT] = NEXT_PYTHON
            return done


class MissAnswerer:
    """One session's compiled MISS answers (control thread only): the areas
    it grants from, its buffers and counters."""

    def __init__(self, backend_fd: int, main_fd: int, areas: list[tuple[int, int, int, int]], reply_ack: bool,
                 other_fds: list[int], timeout_s: float) -> None:
        """``areas``: (start, end, perm, uaddr of start) per buffer area;
        ``other_fds``: what else the control thread waits on."""
        rows = [a for a in areas if a[A_START] % PAGE_SIZE == 0 and a[A_END] % PAGE_SIZE == 0]
        self.areas = np.array(rows, np.int64).reshape(len(rows), 4)
        self.main_fd = main_fd
        self.reply_ack = reply_ack
        self.timeout_ns = int(timeout_s * 1e9)
        self.pfds = np.zeros((1 + len(other_fds), 2), np.int32)
        self.pfds[0, 0] = backend_fd
        self.pfds[1:, 0] = other_fds
        self.buf = np.zeros(MSG_SIZE, np.uint8)
        self.msg = np.zeros(MSG_SIZE, np.uint8)
        self.reply = np.zeros(MSG_SIZE, np.uint8)
        self.io = np.zeros(N_IO, np.int64)

    def wait(self, seconds: float) -> int:
        """Answer MISSes for up to ``seconds``, back as soon as another fd is
        readable or a request needs Python; returns how many it answered.
        Raises ConnectionError when the back-end refused an UPDATE or the
        channel failed."""
        n = answer_wait(self.pfds, len(self.pfds), int(seconds * 1e9), self.main_fd, self.areas, self.reply_ack,
                        self.timeout_ns, self.buf, self.msg, self.reply, self.io)
        if self.io[IO_NEXT] == NEXT_FAILED:
            raise ConnectionError("a MISS's UPDATE: the back-end refused it, or no reply came")
        return n

    def leaves_python_work(self) -> bool:
        """Answer what is queued now; True if the channel's next request
        (or its error) is the Python path's."""
        self.wait(0.0)
        return bool(self.io[IO_NEXT] == NEXT_PYTHON)

    @property
    def answered(self) -> int:
        return int(self.io[IO_ANSWERED])
