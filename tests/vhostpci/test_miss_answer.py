"""virtio-user's compiled MISS answers (``miss.py``, iommu=demand): a MISS
for a buffer page is answered with that page's UPDATE (its area's
permission and address) and consumed, acked when it asked; anything else
stays unread for the Python path; a refused UPDATE ends the session."""
from __future__ import annotations

import os
import socket
import struct

import numpy as np
import pytest

from pmd.vhost_user.codec import Channel
from pmd.vhost_user.messages import (
    FLAG_NEED_REPLY, FLAG_REPLY, VERSION, BackendReq, FrontendReq, IotlbMsg, IotlbPerm, IotlbType,
)
from pmd.virtio_user_pmd.miss import IO_NEXT, NEXT_NONE, NEXT_PYTHON, MissAnswerer

PAGE = 4096
AREAS = [(0x10000, 0x20000, int(IotlbPerm.WO), 0x7F0000010000),  # an rx ring's buffers
         (0x40000, 0x48000, int(IotlbPerm.RO), 0x7F0000400000)]  # a tx ring's


@pytest.fixture
def chans():
    """(back-end socket, front-end's back-end channel end, back-end's main
    Channel, front-end's main channel end), closed after the test."""
    b_be, b_fe = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    m_be, m_fe = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ch = Channel(m_be, "frontend", message_timeout=1.0, send_timeout=1.0)  # reads what a front-end sends
    yield b_be, b_fe, ch, m_fe
    for s in (b_be, b_fe, m_fe):
        s.close()
    ch.close()


def _msg(iova: int, perm: int, need_reply: bool = False, request: int = BackendReq.IOTLB_MSG,
         kind: int = IotlbType.MISS) -> bytes:
    return struct.pack("=III", int(request), VERSION | (FLAG_NEED_REPLY if need_reply else 0), 32) \
        + struct.pack("=QQQBB6x", iova & (2**64 - 1), 0, 0, perm, int(kind))


def _miss(sock: socket.socket, iova: int, perm: int, need_reply: bool = False) -> None:
    sock.sendall(_msg(iova, perm, need_reply))


def _ack(ch: Channel, value: int) -> None:
    """The back-end's reply to the UPDATE to come, written ahead (the socket keeps it)."""
    with socket.socket(fileno=os.dup(ch.fileno())) as s:
        s.sendall(struct.pack("=IIIQ", int(FrontendReq.IOTLB_MSG), VERSION | FLAG_REPLY, 8, value))


def _answerer(b_fe, m_fe, other_fds=(), reply_ack=True) -> MissAnswerer:
    return MissAnswerer(b_fe.fileno(), m_fe.fileno(), AREAS, reply_ack, list(other_fds), 1.0)


def _unread(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    try:
        return sock.recv(4096, socket.MSG_PEEK)
    except BlockingIOError:
        return b""
    finally:
        sock.setblocking(True)


def test_a_miss_for_a_buffer_page_gets_that_pages_update_and_an_ack(chans):
    b_be, b_fe, ch, m_fe = chans
    a = _answerer(b_fe, m_fe)
    _ack(ch, 0)
    _ack(ch, 0)
    _miss(b_be, 0x13456, int(IotlbPerm.WO), need_reply=True)  # rx page 3
    _miss(b_be, 0x47FFF, int(IotlbPerm.RO))  # the tx area's last page, no reply asked
    assert a.wait(0.0) == 2 and a.answered == 2 and a.io[IO_NEXT] == NEXT_NONE
    got = []
    for _ in range(2):
        with ch.recv_message(1.0) as msg:
            assert msg.request == FrontendReq.IOTLB_MSG and msg.need_reply
            got.append(msg.decode())
    assert got == [IotlbMsg(0x13000, PAGE, 0x7F0000013000, int(IotlbPerm.WO), IotlbType.UPDATE),
                   IotlbMsg(0x47000, PAGE, 0x7F0000407000, int(IotlbPerm.RO), IotlbType.UPDATE)]
    # one ack on the back-end channel: for the MISS that asked for it; nothing left unread
    b_be.settimeout(1.0)
    assert b_be.recv(20) == struct.pack("=IIIQ", int(BackendReq.IOTLB_MSG), VERSION | FLAG_REPLY, 8, 0)
    assert _unread(b_be) == b"" and _unread(b_fe) == b"" and _unread(m_fe) == b""


def test_no_ack_without_reply_ack(chans):
    b_be, b_fe, ch, m_fe = chans
    a = _answerer(b_fe, m_fe, reply_ack=False)
    _ack(ch, 0)
    _miss(b_be, 0x10000, int(IotlbPerm.WO), need_reply=True)
    assert a.wait(0.0) == 1
    assert _unread(b_be) == b""


@pytest.mark.parametrize("what", ["outside", "not-a-miss", "other-request", "partial"])
def test_what_is_not_a_buffer_miss_stays_for_python(chans, what):
    b_be, b_fe, ch, m_fe = chans
    a = _answerer(b_fe, m_fe)
    sent = {"outside": _msg(0x20000, int(IotlbPerm.RO)),  # the rings, or beyond every area: Python
            "not-a-miss": _msg(0x10000, int(IotlbPerm.RO), kind=IotlbType.UPDATE),
            "other-request": _msg(0x10000, int(IotlbPerm.RO), request=BackendReq.CONFIG_CHANGE_MSG),
            "partial": _msg(0x10000, int(IotlbPerm.RO))[:20]}[what]
    b_be.sendall(sent)
    assert a.wait(0.0) == 0 and a.io[IO_NEXT] == NEXT_PYTHON
    assert _unread(b_fe) == sent, "left whole for the Python path"
    assert _unread(m_fe) == b"", "no UPDATE sent"


def test_a_refused_update_ends_the_session(chans):
    b_be, b_fe, ch, m_fe = chans
    a = _answerer(b_fe, m_fe)
    _ack(ch, 1)
    _miss(b_be, 0x11000, int(IotlbPerm.WO))
    with pytest.raises(ConnectionError):
        a.wait(0.0)
    assert a.answered == 0


def test_it_waits_for_misses_and_returns_when_another_fd_is_readable(chans):
    b_be, b_fe, ch, m_fe = chans
    wake = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        a = _answerer(b_fe, m_fe, [wake])
        assert a.wait(0.02) == 0 and a.io[IO_NEXT] == NEXT_NONE, "time up, nothing came"
        os.eventfd_write(wake, 1)
        assert a.wait(5.0) == 0 and a.io[IO_NEXT] == NEXT_PYTHON, "back at once for the wake fd"
    finally:
        os.close(wake)


def test_leaves_python_work_answers_first_then_says_what_is_left(chans):
    b_be, b_fe, ch, m_fe = chans
    a = _answerer(b_fe, m_fe)
    _ack(ch, 0)
    _miss(b_be, 0x12000, int(IotlbPerm.WO))
    assert not a.leaves_python_work() and a.answered == 1
    b_be.sendall(_msg(0x30000, int(IotlbPerm.RO)))  # outside every area
    assert a.leaves_python_work() and a.answered == 1
