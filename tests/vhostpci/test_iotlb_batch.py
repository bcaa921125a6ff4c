"""IOTLB messages sent in batches from compiled code (``iotlb_batch``) and
virtio-user's transient rounds built on them (``transient_round``): what
goes on the wire is what the Python codec reads as IOTLB messages asking
for a reply, every reply is read, and a refusal or a dead channel moves
nothing."""
from __future__ import annotations

import os
import socket
import struct

import numpy as np
import pytest

from pmd.vhost_user.codec import Channel
from tests.vhost_user.test_vu_codec import pair  # noqa: F401  ((back-end Channel, front-end socket))
from pmd.virtio_user_pmd.iotlb_batch import (
    INVALIDATE, MSG_SIZE, REPLY_SIZE, UPDATE, call_batch, put_iotlb,
)
from pmd.vhost_user.messages import FLAG_REPLY, VERSION, FrontendReq, IotlbMsg, IotlbPerm, IotlbType
from pmd.virtio_user_pmd.transient import N_TR, TR_GRANTS, TR_INVALIDATES, TR_ROUNDS, transient_round
from pmd.virtio_user_pmd.vq import (
    DRV_BUF, DRV_DONE_TAIL, DRV_MAP_DONE, DRV_NUM, DRV_STAGE_TAIL, DRV_STRIDE, DRV_TRANSIENT, DRV_UNMAP_DONE, N_DRV,
)

TIMEOUT_NS = 2_000_000_000
PAGE = 4096


def _reply(ch: Channel, request: int, value: int) -> None:
    """A back-end's u64 reply, written ahead (the socket keeps it)."""
    with socket.socket(fileno=os.dup(ch.fileno())) as s:
        s.sendall(struct.pack("=IIIQ", request, VERSION | FLAG_REPLY, 8, value))


def _ack(ch: Channel, value: int) -> None:
    _reply(ch, int(FrontendReq.IOTLB_MSG), value)


def _received(ch: Channel, n: int) -> list[IotlbMsg]:
    out = []
    for _ in range(n):
        with ch.recv_message(1.0) as msg:
            assert msg.request == FrontendReq.IOTLB_MSG and msg.need_reply, msg
            out.append(msg.decode())
    return out


def test_a_batch_goes_in_one_piece_and_every_reply_is_read(pair):
    ch, fd = pair
    buf = np.zeros(3 * MSG_SIZE, np.uint8)
    put_iotlb(buf, 0, 0x1000, 2 * PAGE, 0x7F0000001000, int(IotlbPerm.WO), UPDATE)
    put_iotlb(buf, 1, 0x5000, PAGE, 0x7F0000005000, int(IotlbPerm.RO), UPDATE)
    put_iotlb(buf, 2, 0x9000, PAGE, 0, 0, INVALIDATE)
    for _ in range(3):
        _ack(ch, 0)
    assert call_batch(fd.fileno(), buf, 3, np.zeros(REPLY_SIZE, np.uint8), TIMEOUT_NS) == 0
    assert _received(ch, 3) == [
        IotlbMsg(0x1000, 2 * PAGE, 0x7F0000001000, int(IotlbPerm.WO), IotlbType.UPDATE),
        IotlbMsg(0x5000, PAGE, 0x7F0000005000, int(IotlbPerm.RO), IotlbType.UPDATE),
        IotlbMsg(0x9000, PAGE, 0, 0, IotlbType.INVALIDATE),
    ]
    fd.setblocking(False)
    with pytest.raises(BlockingIOError):
        fd.recv(1)  # every reply was read: nothing is left for the session's next call


def test_refusals_are_counted_and_a_dead_or_silent_channel_fails(pair):
    ch, fd = pair
    buf = np.zeros(2 * MSG_SIZE, np.uint8)
    reply = np.zeros(REPLY_SIZE, np.uint8)
    for n in range(2):
        put_iotlb(buf, n, 0x1000 * (n + 1), PAGE, 0x7F0000000000, int(IotlbPerm.RO), UPDATE)
    _ack(ch, 1)
    _ack(ch, 0)
    assert call_batch(fd.fileno(), buf, 2, reply, TIMEOUT_NS) == 1
    _received(ch, 2)
    assert call_batch(fd.fileno(), buf, 1, reply, 50_000_000) == -1, "no reply within the time limit"
    _received(ch, 1)
    _reply(ch, int(FrontendReq.GET_FEATURES), 0)
    assert call_batch(fd.fileno(), buf, 1, reply, TIMEOUT_NS) == -1, "a reply to something else"
    ch.close()
    assert call_batch(fd.fileno(), buf, 1, reply, TIMEOUT_NS) == -1, "the back-end is gone"


def _vrings(num: int = 8) -> np.ndarray:
    vq = np.zeros((2, N_DRV), np.int64)
    for v in range(2):
        vq[v, DRV_NUM], vq[v, DRV_BUF], vq[v, DRV_STRIDE], vq[v, DRV_TRANSIENT] = num, 0x100000 * (v + 1), PAGE, 1
    return vq


def _round(vq, stage, done, granted, fd, counts):
    nvq, num = stage.shape
    return transient_round(vq, stage, done, granted, np.array([0x7F0000100000, 0x7F0000200000], np.int64),
                           np.array([int(IotlbPerm.WO), int(IotlbPerm.RO)], np.int64), fd,
                           np.zeros(2 * nvq * num * MSG_SIZE, np.uint8), np.zeros(REPLY_SIZE, np.uint8),
                           np.zeros((nvq, 2), np.int64), counts, TIMEOUT_NS)


def test_a_transient_round_grants_runs_of_staged_ids_and_revokes_returned_ones(pair):
    """Vring 1 staged ids 5 6 7 0 1 (FIFO positions 3-7: round the ring) and
    the device returned 2 3: UPDATEs for runs 5-7 and 0-1, then one
    INVALIDATE for 2-3; vring 0 has nothing to do.  The counters move once
    every reply came."""
    ch, fd = pair
    vq, num = _vrings(), 8
    stage, done = np.zeros((2, num), np.int32), np.zeros((2, num), np.int32)
    granted = np.zeros((2, num), np.uint8)
    granted[1, [2, 3]] = 1
    stage[1, 3:8] = [5, 6, 7, 0, 1]
    vq[1, DRV_MAP_DONE], vq[1, DRV_STAGE_TAIL] = 3, 8
    done[1, 0:2] = [2, 3]
    vq[1, DRV_UNMAP_DONE], vq[1, DRV_DONE_TAIL] = 0, 2
    counts = np.zeros(N_TR, np.int64)
    for _ in range(3):
        _ack(ch, 0)
    assert _round(vq, stage, done, granted, fd.fileno(), counts) == 3
    base, local = 0x200000, 0x7F0000200000
    assert _received(ch, 3) == [
        IotlbMsg(base + 5 * PAGE, 3 * PAGE, local + 5 * PAGE, int(IotlbPerm.RO), IotlbType.UPDATE),
        IotlbMsg(base, 2 * PAGE, local, int(IotlbPerm.RO), IotlbType.UPDATE),
        IotlbMsg(base + 2 * PAGE, 2 * PAGE, 0, 0, IotlbType.INVALIDATE),
    ]
    assert list(np.flatnonzero(granted[1])) == [0, 1, 5, 6, 7] and not granted[0].any()
    assert (vq[1, DRV_MAP_DONE], vq[1, DRV_UNMAP_DONE]) == (8, 2)
    assert (counts[TR_GRANTS], counts[TR_INVALIDATES], counts[TR_ROUNDS]) == (2, 1, 1)


def test_a_refused_round_moves_nothing_and_no_back_end_moves_everything(pair):
    ch, fd = pair
    vq, num = _vrings(), 8
    stage, done = np.zeros((2, num), np.int32), np.zeros((2, num), np.int32)
    granted = np.zeros((2, num), np.uint8)
    stage[0, 0:2] = [0, 1]
    vq[0, DRV_STAGE_TAIL] = 2
    counts = np.zeros(N_TR, np.int64)
    _ack(ch, 1)
    assert _round(vq, stage, done, granted, fd.fileno(), counts) == -1
    _received(ch, 1)
    assert vq[0, DRV_MAP_DONE] == 0 and counts[TR_GRANTS] == 0, "the kernels must not post a refused buffer"
    # disconnected (fd -1): the grants died with the back-end; the kernels go on
    assert _round(vq, stage, done, granted, -1, counts) == 1
    assert vq[0, DRV_MAP_DONE] == 2 and counts[TR_GRANTS] == 0 and counts[TR_ROUNDS] == 1
