"""UPDATEs the control thread acks and the polling lcore maps
(``pmd/vhostpci_pmd/iotlb_maps.py``), driven through the compiled ``serve``
on a socket pair: a page is never readable before its UPDATE, becomes
readable once the queue runs (the lcore's ``lcore_maps``), and an
INVALIDATE behind a queued UPDATE maps it first, then revokes it before
its ack."""
from __future__ import annotations

import os
import socket
from time import monotonic_ns

import numpy as np
import pytest

from pmd.guestmem.translate import PERM_RO, PERM_RW
from pmd.guestmem.window import PAGE_SIZE, Window
from pmd.iotlb_wire import FRONTEND_IOTLB_MSG, INVALIDATE, MSG_SIZE, REPLY_SIZE, UPDATE, get_u64, put_iotlb
from pmd.standin import StandIn
from pmd.vhost_user.messages import FLAG_NEED_REPLY, HEADER_SIZE, VERSION
from pmd.vhostpci_pmd.iotlb import ASK_SLOTS
from pmd.vhostpci_pmd.iotlb_maps import MAP_SLOTS, W_BY_LCORE, lcore_maps, map_queue, maps_pending
from pmd.vhostpci_pmd.iotlb_serve import (
    IO_NEXT, IO_QUEUED, IO_UPDATES, MAX_BATCH, N_IO, NEXT_PYTHON, PEEK_SIZE, REPLY_ALWAYS, serve,
)
from pmd.vhostpci_pmd.state import N_PORT_CTL, N_VQ, PORT_IOTLB_BEAT, VQ_MISS_IOVA, VQ_MISS_PENDING
from tests.vhost_user.test_vu_backend import readable

PG = PAGE_SIZE
RAM = 1 << 20
UADDR = 0x7F12_0000_0000


class Port:
    """A window over a memfd "VM1 RAM", the kernel's arrays, and a socket
    pair: the front-end's end ``fe``, the back-end's ``back``."""

    def __init__(self) -> None:
        self._memfd = os.memfd_create("vm1-ram")
        os.ftruncate(self._memfd, RAM)
        self.win = Window(1 << 32, iommu=True)
        self.win.add_region(self._memfd, 0, RAM, 0, UADDR)
        self.vq = np.zeros((2, N_VQ), np.int64)
        self.asked = np.zeros((ASK_SLOTS, 2), np.int64)
        self.ctl = np.zeros(N_PORT_CTL, np.int64)
        self.standin = StandIn("test")  # never started: every revocation is the caller's
        self.mq = map_queue()
        self.buf = np.zeros(PEEK_SIZE, np.uint8)
        self.out = np.zeros(MAX_BATCH * REPLY_SIZE, np.uint8)
        self.io = np.zeros(N_IO, np.int64)
        self.fe, self.back = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.fe.settimeout(2.0)

    def close(self) -> None:
        self.fe.close()
        self.back.close()
        self.win.close()
        os.close(self._memfd)

    def send(self, kind: int, iova: int, size: int, uaddr: int = 0, perm: int = 0) -> None:
        msg = np.zeros(MSG_SIZE, np.uint8)
        put_iotlb(msg, 0, FRONTEND_IOTLB_MSG, VERSION | FLAG_NEED_REPLY, iova, size, uaddr, perm, kind)
        self.fe.sendall(msg.tobytes())

    def serve(self, lcore_polls: bool = True) -> int:
        """The control thread's kernel, the lcore stamping (or not)."""
        self.ctl[PORT_IOTLB_BEAT] = monotonic_ns() if lcore_polls else 0
        return serve(self.back.fileno(), self.win.kstate, self.vq, self.asked, 10**9, REPLY_ALWAYS, self.buf,
                     self.out, self.io, self.ctl, self.standin.hand, self.mq, True)

    def acked(self) -> bool:
        reply = np.frombuffer(self.fe.recv(REPLY_SIZE), np.uint8)
        return len(reply) == REPLY_SIZE and get_u64(reply, HEADER_SIZE) == 0

    def lcore(self) -> None:
        lcore_maps(self.win.kstate, self.vq, self.asked, self.mq)


@pytest.fixture
def port():
    p = Port()
    yield p
    p.close()


def test_an_acked_update_is_mapped_when_the_lcore_runs_the_queue(port):
    base = port.win.base
    page = 0x10000
    port.vq[1, VQ_MISS_IOVA] = page + 64  # a vring parked on it ...
    port.vq[1, VQ_MISS_PENDING] = 1
    slot = port.asked[(page >> 12) & (ASK_SLOTS - 1)]
    slot[0], slot[1] = page, monotonic_ns()  # ... whose MISS is noted
    port.send(UPDATE, page, PG, UADDR + 7 * PG, PERM_RW)
    assert port.serve() == 1 and port.acked()
    assert port.io[IO_QUEUED] == 1 and maps_pending(port.mq)
    # acked, not mapped yet: the vring stays parked and its ask noted (it does not ask again)
    assert not readable(base + page) and port.win.entries() == []
    assert port.vq[1, VQ_MISS_PENDING] == 1 and slot[1] != 0
    port.lcore()
    assert not maps_pending(port.mq)
    assert readable(base + page) and port.win.array[page] == 0  # (the memfd's zeros)
    assert port.win.entries() == [(page, page + PG, page, PERM_RW)]
    assert port.vq[1, VQ_MISS_PENDING] == 0 and slot[1] == 0, "mapped: the vring retries, the ask answered"
    assert port.mq.words[W_BY_LCORE] == 1


def test_an_invalidate_behind_a_queued_update_maps_it_then_revokes_it_before_its_ack(port):
    base = port.win.base
    page = 0x20000
    port.send(UPDATE, page, PG, UADDR, PERM_RO)
    port.send(INVALIDATE, page, PG)
    assert port.serve() == 2
    assert port.acked() and port.acked()
    assert not maps_pending(port.mq), "the queue ran before the rows went out"
    assert not readable(base + page) and port.win.entries() == []
    assert port.io[IO_UPDATES] == 1 and port.io[IO_QUEUED] == 1


def test_without_a_polling_lcore_the_update_is_mapped_before_its_ack(port):
    page = 0x30000
    port.send(UPDATE, page, PG, UADDR, PERM_RO)
    assert port.serve(lcore_polls=False) == 1 and port.acked()
    assert port.io[IO_QUEUED] == 0 and readable(port.win.base + page)


def test_what_is_not_the_plain_case_is_left_for_python_unqueued(port):
    port.send(UPDATE, 0x40000, PG, UADDR + 2 * RAM, PERM_RO)  # a uaddr in no region
    assert port.serve() == 0 and port.io[IO_NEXT] == NEXT_PYTHON
    assert not maps_pending(port.mq) and port.win.entries() == []


def test_a_full_queue_is_run_by_the_control_thread(port):
    base = port.win.base
    for k in range(MAP_SLOTS + 2):
        port.send(UPDATE, k * PG, PG, UADDR + k * PG, PERM_RO)
        assert port.serve() == 1 and port.acked()
    # the first MAP_SLOTS waited for an lcore; the next push found the ring full and ran it here
    assert readable(base) and readable(base + (MAP_SLOTS - 1) * PG)
    assert not readable(base + MAP_SLOTS * PG) and maps_pending(port.mq)
    port.lcore()
    assert readable(base + (MAP_SLOTS + 1) * PG)
