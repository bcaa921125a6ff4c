"""vhost-user codec: payload layouts, the rule table, and a Channel over a real
socketpair — well-formed traffic with fds, and one test per kind of malformed
input, each checking the error names what was received and that no fd leaks."""
from __future__ import annotations

import array
import mmap
import os
import random
import re
import socket
import struct

import pytest

from pmd.vhost_user import messages as m
from pmd.vhost_user.codec import (
    BadFdCount,
    BadFlags,
    BadPayload,
    BadReply,
    BadSize,
    BadVersion,
    Channel,
    Message,
    PeerClosed,
    ShortHeader,
    ShortPayload,
    Timeout,
    UnknownRequest,
    VhostUserError,
    validate,
)
from pmd.vhost_user.messages import BackendReq, FdRule, FrontendReq, ProtocolFeature

F = FrontendReq


# --------------------------------------------------------------------------
# Fixtures and helpers


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_fd_leak():
    """Every test: no fd may leak (conftest's no_hang bounds the time)."""
    before = open_fds()
    yield
    # listdir opens one fd itself, the same one both times.
    assert open_fds() == before, "fds leaked"


@pytest.fixture
def pair():
    """(backend-side Channel, raw peer socket) over a socketpair."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ch = Channel(a, "frontend", message_timeout=0.5, send_timeout=0.5)
    yield ch, b
    ch.close()
    b.close()


@pytest.fixture
def channels():
    """(front-end Channel, back-end Channel) over a socketpair."""
    fe, be = Channel.pair("frontend", message_timeout=0.5, send_timeout=0.5)
    yield fe, be
    fe.close()
    be.close()


def raw_send(sock: socket.socket, request: int, payload: bytes = b"", fds=(), flags: int = m.VERSION,
             size: int | None = None) -> None:
    """Send bytes as a peer would, bypassing every check of ours."""
    head = struct.pack("=III", request, flags, len(payload) if size is None else size)
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", list(fds)).tobytes())] if fds else []
    sock.sendmsg([head + payload], anc)


class Eventfds:
    """n eventfds, closed on exit."""

    def __init__(self, n: int) -> None:
        self.fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(n)]

    def __enter__(self) -> list[int]:
        return self.fds

    def __exit__(self, *exc) -> None:
        for fd in self.fds:
            os.close(fd)


def region(i: int) -> m.MemoryRegion:
    return m.MemoryRegion(guest_phys_addr=i << 30, memory_size=1 << 20, userspace_addr=0x7F00_0000_0000 + (i << 30),
                          mmap_offset=i * 4096)


# One sample of every payload layout.
SAMPLES: list[m.Payload] = [
    m.Empty(),
    m.U64(0xDEAD_BEEF_0000_0001),
    m.VringFd(3),
    m.VringFd(255, nofd=True),
    m.VringState(1, 256),
    m.VringAddr(1, m.VRING_ADDR_F_LOG, 0x1000, 0x2000, 0x3000, 0x4000),
    m.MemoryRegion(0, 1 << 28, 0x7F12_3456_0000, 0),
    m.MemTable([]),
    m.MemTable([region(0)]),
    m.MemTable([region(i) for i in range(8)]),
    m.SingleMemoryRegion(region(2)),
    m.LogRegion(8192, 0),
    m.IotlbMsg(0x1000, 0x2000, 0x7F00_0000_1000, m.IotlbPerm.RW, m.IotlbType.UPDATE),
    m.Config(0, 0),
    m.Config(8, 6, m.ConfigFlags.LIVE_MIGRATION, b"\x52\x54\x00\x12\x34\x56"),
    m.Config(0, 256, 0, bytes(range(256))),
    m.VringArea(2, 4096, 0x3000),
    m.VringArea(5, 0, 0, nofd=True),
    m.InflightInfo(1 << 16, 0, 2, 256),
    m.SharedObject(bytes(range(16))),
    m.DeviceStateParams(m.TransferDirection.LOAD, m.MigrationPhase.STOPPED),
    m.Opaque(b"crypto session bytes"),
]


def sample_of(layout: type[m.Payload]) -> m.Payload:
    return next(s for s in SAMPLES if type(s) is layout)


# --------------------------------------------------------------------------
# Payload layouts


@pytest.mark.parametrize("payload", SAMPLES, ids=lambda p: type(p).__name__)
def test_payload_round_trip(payload):
    wire = payload.pack()
    assert type(payload).size_ok(len(wire))
    assert type(payload).unpack(wire) == payload


def test_layout_sizes_match_qemu_structs():
    # The C structs QEMU puts in its VhostUserMsg union.
    assert m.HEADER_SIZE == 12
    assert m.VringAddr.FORMAT.size == 40
    assert m.MemoryRegion.FORMAT.size == 32
    assert len(m.MemTable([region(0), region(1)]).pack()) == 8 + 2 * 32
    assert m.SingleMemoryRegion.FORMAT.size == 40
    assert m.IotlbMsg.FORMAT.size == 32  # 3 x u64 + 2 x u8, padded to 8
    assert m.InflightInfo.FORMAT.size == 24  # 2 x u64 + 2 x u16, padded to 8
    assert m.VringArea.FORMAT.size == 24
    assert m.LogRegion.FORMAT.size == 16
    assert len(m.Config(0, 10).pack()) == 12 + 10


def test_flag_and_bit_constants():
    assert (m.VERSION, m.FLAG_REPLY, m.FLAG_NEED_REPLY) == (1, 0x4, 0x8)
    assert m.VHOST_USER_F_PROTOCOL_FEATURES == 30 and m.VHOST_F_LOG_ALL == 26
    assert m.VRING_NOFD_MASK == 0x100 and m.VRING_IDX_MASK == 0xFF and m.VRING_ADDR_F_LOG == 1
    assert (ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.BACKEND_REQ) == (0, 3, 5)
    assert (ProtocolFeature.INFLIGHT_SHMFD, ProtocolFeature.STATUS, ProtocolFeature.DEVICE_STATE) == (12, 16, 19)
    assert ProtocolFeature.REPLY_ACK.mask == 8
    assert FrontendReq.SET_SLAVE_REQ_FD is FrontendReq.SET_BACKEND_REQ_FD == 21
    assert (F.IOTLB_MSG, F.GET_CONFIG, F.GET_INFLIGHT_FD, F.SET_STATUS, F.GET_STATUS) == (22, 24, 31, 39, 40)
    assert sorted(FrontendReq) == list(range(1, 44))
    assert sorted(BackendReq) == list(range(1, 9))
    assert (m.IotlbType.MISS, m.IotlbType.ACCESS_FAIL, m.IotlbPerm.RO, m.IotlbPerm.RW) == (1, 4, 1, 3)


def test_vring_fd_u64_bits():
    assert m.VringFd(7, nofd=True).pack() == struct.pack("=Q", 0x107)
    # Unused high bits are ignored, like QEMU and DPDK do.
    assert m.VringFd.unpack(struct.pack("=Q", (1 << 40) | 0x102)) == m.VringFd(2, nofd=True)


@pytest.mark.parametrize("layout,size,expected", [
    (m.U64, 4, "expected 8"),
    (m.VringAddr, 39, "expected 40"),
    (m.IotlbMsg, 26, "expected 32"),
    (m.MemTable, 8 + 31, "expected 8 + 32 * nregions"),
    (m.MemTable, 8 + 9 * 32, "nregions <= 8"),
    (m.Config, 11, "expected 12 + size"),
    (m.Config, 12 + 257, "size <= 256"),
])
def test_unpack_wrong_size_names_sizes(layout, size, expected):
    pattern = re.escape(f"{layout.__name__} payload is {size} bytes, ") + ".*" + re.escape(expected)
    with pytest.raises(BadSize, match=pattern):
        layout.unpack(bytes(size))


def test_unpack_inconsistent_fields():
    with pytest.raises(BadPayload, match=r"nregions=3 but its 72 bytes carry 2 regions"):
        m.MemTable.unpack(struct.pack("=II", 3, 0) + bytes(64))
    with pytest.raises(BadPayload, match=r"size=9 but carries 4 bytes"):
        m.Config.unpack(struct.pack("=III", 0, 9, 0) + bytes(4))


@pytest.mark.parametrize("payload", [
    m.U64(-1), m.U64(1 << 64), m.VringState(1 << 32, 0), m.VringFd(256), m.MemTable([region(0)] * 9),
    m.Config(0, 2, 0, b"abc"), m.Config(0, 300), m.SharedObject(b"short"), m.IotlbMsg(0, 0, 0, 256, 1),
    m.VringArea(300, 0, 0), m.SingleMemoryRegion(m.MemoryRegion(-1, 0, 0, 0)),
], ids=lambda p: type(p).__name__)
def test_pack_out_of_range_is_value_error(payload):
    with pytest.raises(ValueError):
        payload.pack()


# --------------------------------------------------------------------------
# The rule table


def test_every_request_has_a_rule():
    assert set(m.FRONTEND_SPECS) == set(FrontendReq)
    assert set(m.BACKEND_SPECS) == set(BackendReq)


@pytest.mark.parametrize("code,rule", [
    (F.SET_MEM_TABLE, FdRule.PER_REGION), (F.SET_LOG_BASE, FdRule.ONE), (F.SET_LOG_FD, FdRule.ONE),
    (F.SET_VRING_KICK, FdRule.UNLESS_NOFD), (F.SET_VRING_CALL, FdRule.UNLESS_NOFD),
    (F.SET_VRING_ERR, FdRule.UNLESS_NOFD), (F.SET_BACKEND_REQ_FD, FdRule.ONE), (F.SET_INFLIGHT_FD, FdRule.ONE),
    (F.GET_FEATURES, FdRule.NONE), (F.SET_VRING_ADDR, FdRule.NONE), (F.IOTLB_MSG, FdRule.NONE),
])
def test_fd_rules(code, rule):
    assert m.FRONTEND_SPECS[code].request.fds is rule


def test_expects_reply():
    none, ack, shm = 0, ProtocolFeature.REPLY_ACK.mask, ProtocolFeature.LOG_SHMFD.mask
    for get in (F.GET_FEATURES, F.GET_PROTOCOL_FEATURES, F.GET_VRING_BASE, F.GET_QUEUE_NUM, F.GET_CONFIG,
                F.GET_INFLIGHT_FD, F.GET_STATUS, F.IOTLB_MSG):
        assert m.expects_reply(get, m.VERSION, none), get.name
    assert not m.expects_reply(F.SET_FEATURES, m.VERSION, ack)
    assert not m.expects_reply(F.SET_FEATURES, m.VERSION | m.FLAG_NEED_REPLY, none)  # REPLY_ACK not negotiated
    assert m.expects_reply(F.SET_FEATURES, m.VERSION | m.FLAG_NEED_REPLY, ack)
    assert not m.expects_reply(F.SET_LOG_BASE, m.VERSION, none)
    assert m.expects_reply(F.SET_LOG_BASE, m.VERSION, shm)
    assert not m.expects_reply(F.SET_MEM_TABLE, m.VERSION, ack)
    assert m.expects_reply(BackendReq.IOTLB_MSG, m.VERSION | m.FLAG_NEED_REPLY, ack, "backend")


# --------------------------------------------------------------------------
# Well-formed traffic


def fds_needed(rule: m.Rule, payload: bytes) -> int:
    return rule.fds.expected(payload)[1]


@pytest.mark.parametrize("direction,code", [("frontend", r) for r in FrontendReq if r != F.SET_SLAVE_REQ_FD]
                         + [("backend", r) for r in BackendReq], ids=lambda x: getattr(x, "name", x))
def test_every_request_and_reply_crosses_the_channel(direction, code):
    request = code
    fe, be = Channel.pair(direction, message_timeout=0.5, send_timeout=0.5)
    spec = m.SPECS[direction][request]
    with fe, be:
        payload = sample_of(spec.request.layouts[0]).pack()
        with Eventfds(fds_needed(spec.request, payload)) as fds:
            fe.send_message(request, payload, fds, need_reply=True)
            with be.recv_message(timeout=2) as msg:
                assert (msg.request, msg.payload, len(msg.fds), msg.need_reply) == (request, payload, len(fds), True)
                assert msg.decode() == spec.request.layouts[0].unpack(payload)
                assert msg.request.name == request.name  # known codes come back as enum members
                body = sample_of(spec.reply.layouts[0]).pack() if spec.reply else m.U64(0).pack()
                rule = spec.reply or m.ACK_RULE
                with Eventfds(fds_needed(rule, body)) as reply_fds:
                    be.send_reply(msg, body, reply_fds)
        with fe.recv_reply(request, timeout=2) as reply:
            assert reply.is_reply and reply.payload == body


def test_fds_arrive_and_work(channels):
    fe, be = channels
    # kick eventfd: the front-end writes its copy, the back-end reads the received one.
    with Eventfds(1) as (kick,):
        fe.send_message(F.SET_VRING_KICK, m.VringFd(1), [kick])
        with be.recv_message(timeout=2) as msg:
            assert msg.decode() == m.VringFd(1, nofd=False)
            got = msg.take_fd()
        try:
            assert got != kick
            os.eventfd_write(kick, 5)
            assert os.eventfd_read(got) == 5
        finally:
            os.close(got)


def test_mem_table_fds_map_the_same_memory(channels):
    fe, be = channels
    memfds = [os.memfd_create(f"guest-ram-{i}", os.MFD_CLOEXEC) for i in range(2)]
    try:
        for i, fd in enumerate(memfds):
            os.ftruncate(fd, 8192)
            os.pwrite(fd, f"region {i}".encode(), 4096)
        table = m.MemTable([m.MemoryRegion(i << 20, 8192, 0x7F00_0000_0000 + (i << 20), 0) for i in range(2)])
        fe.send_message(F.SET_MEM_TABLE, table, memfds)
        with be.recv_message(timeout=2) as msg:
            assert msg.decode() == table
            for i, fd in enumerate(msg.fds):
                with mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ) as mem:
                    assert mem[4096:4104] == f"region {i}".encode()
    finally:
        for fd in memfds:
            os.close(fd)


def test_get_features_call_and_reply_ack(channels):
    fe, be = channels
    fe.send_message(F.GET_FEATURES)
    with be.recv_message(timeout=2) as req:
        assert req.request == F.GET_FEATURES and not req.is_reply and req.payload == b""
        be.send_reply(req, m.U64(1 << m.VHOST_USER_F_PROTOCOL_FEATURES))
    assert fe.recv_reply(F.GET_FEATURES).u64 == 1 << 30

    fe.send_message(F.SET_FEATURES, m.U64(1 << 32), need_reply=True)
    req = be.recv_message(timeout=2)
    assert m.expects_reply(req.request, req.flags, ProtocolFeature.REPLY_ACK.mask)
    be.send_ack(req, ok=False)
    reply = fe.recv_reply(F.SET_FEATURES)
    assert reply.flags == m.VERSION | m.FLAG_REPLY and reply.u64 == 1


def test_call_waits_only_when_a_reply_is_due(channels):
    fe, be = channels
    be.send_message(F.GET_STATUS, m.U64(0x0F), reply=True)  # queued before the request: fine for a socket
    assert fe.call(F.GET_STATUS).u64 == 0x0F
    assert fe.call(F.SET_STATUS, m.U64(0x0F)) is None
    assert be.recv_message(timeout=2).request == F.GET_STATUS
    assert be.recv_message(timeout=2).decode() == m.U64(0x0F)


def test_backend_channel_via_set_backend_req_fd(channels):
    fe, be = channels
    fe_req, be_req_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fe_backend = Channel(fe_req, "backend", message_timeout=0.5)
    with fe_backend:
        fe.send_message(F.SET_BACKEND_REQ_FD, fds=[be_req_end.fileno()])
        be_req_end.close()  # the back-end now holds the only other end
        with be.recv_message(timeout=2) as msg:
            be_backend = Channel.from_fd(msg.take_fd(), "backend", message_timeout=0.5)
        with be_backend:
            miss = m.IotlbMsg(iova=0x4000, size=0, uaddr=0, perm=m.IotlbPerm.RO, type=m.IotlbType.MISS)
            be_backend.send_message(BackendReq.IOTLB_MSG, miss, need_reply=True)
            req = fe_backend.recv_message(timeout=2)
            assert req.request == BackendReq.IOTLB_MSG and req.decode() == miss and req.need_reply
            fe_backend.send_ack(req, ok=True)
            assert be_backend.recv_reply(BackendReq.IOTLB_MSG).u64 == 0


def test_empty_and_error_config_replies(channels):
    fe, be = channels
    fe.send_message(F.GET_CONFIG, m.Config(0, 6))
    req = be.recv_message(timeout=2)
    assert req.decode() == m.Config(0, 6, 0, bytes(6))
    be.send_reply(req)  # empty body: the spec's way of failing GET_CONFIG
    assert fe.recv_reply(F.GET_CONFIG).decode() == m.Empty()


# --------------------------------------------------------------------------
# Malformed input: one test per kind, each naming what was received


def test_short_header_then_eof(pair):
    ch, peer = pair
    with Eventfds(1) as (fd,):
        peer.sendmsg([b"\x02\x00\x00\x00\x01"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(ShortHeader, match=r"after 5 of 12 bytes of the header"):
        ch.recv_message(timeout=2)


def test_eof_at_message_boundary_is_peer_closed(pair):
    ch, peer = pair
    raw_send(peer, F.SET_OWNER)
    peer.close()
    assert ch.recv_message(timeout=2).request == F.SET_OWNER
    with pytest.raises(PeerClosed) as e:
        ch.recv_message(timeout=2)
    assert type(e.value) is PeerClosed and "closed the connection" in str(e.value)


def test_short_payload_then_eof(pair):
    ch, peer = pair
    raw_send(peer, F.SET_VRING_ADDR, bytes(16), size=40)
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(ShortPayload, match=r"after 16 of 40 bytes of the 40-byte payload of SET_VRING_ADDR \(9\)"):
        ch.recv_message(timeout=2)


def test_wrong_version_bits(pair):
    ch, peer = pair
    with Eventfds(1) as fds:
        raw_send(peer, F.SET_VRING_CALL, m.VringFd(0).pack(), fds, flags=0x2)
    with pytest.raises(BadVersion, match=r"SET_VRING_CALL \(13\): flags 0x2 carry version 2, expected 1") as e:
        ch.recv_message(timeout=2)
    assert (e.value.request, e.value.flags, e.value.in_sync) == (13, 0x2, False)


def test_reserved_flag_bits(pair):
    ch, peer = pair
    raw_send(peer, F.GET_FEATURES, flags=0x21)
    with pytest.raises(BadFlags, match=r"flags 0x21 set reserved bits 0x20"):
        ch.recv_message(timeout=2)


def test_size_mismatch_on_fixed_size_request_keeps_stream_in_sync(pair):
    ch, peer = pair
    raw_send(peer, F.SET_FEATURES, b"\x01\x00\x00\x00")
    raw_send(peer, F.SET_OWNER)
    with pytest.raises(BadSize, match=r"SET_FEATURES \(2\): payload size 4, expected 8") as e:
        ch.recv_message(timeout=2)
    assert e.value.in_sync and e.value.size == 4
    assert ch.recv_message(timeout=2).request == F.SET_OWNER


def test_size_mismatch_on_reply(pair):
    ch, peer = pair
    raw_send(peer, F.GET_VRING_BASE, bytes(4), flags=m.VERSION | m.FLAG_REPLY)
    with pytest.raises(BadSize, match=r"reply to GET_VRING_BASE \(11\): payload size 4, expected 8"):
        ch.recv_message(timeout=2)


def test_too_many_fds(pair):
    ch, peer = pair
    with Eventfds(2) as fds:
        raw_send(peer, F.SET_VRING_KICK, m.VringFd(0).pack(), fds)
    with pytest.raises(BadFdCount, match=r"SET_VRING_KICK \(12\): received 2 fds, expected 1 \(one fd unless NOFD"):
        ch.recv_message(timeout=2)


def test_fd_with_nofd_flag(pair):
    ch, peer = pair
    with Eventfds(1) as fds:
        raw_send(peer, F.SET_VRING_CALL, m.VringFd(0, nofd=True).pack(), fds)
    with pytest.raises(BadFdCount, match=r"received 1 fd, expected 0"):
        ch.recv_message(timeout=2)


def test_too_few_fds_for_mem_table(pair):
    ch, peer = pair
    with Eventfds(1) as fds:
        raw_send(peer, F.SET_MEM_TABLE, m.MemTable([region(0), region(1)]).pack(), fds)
    with pytest.raises(BadFdCount, match=r"SET_MEM_TABLE \(5\): received 1 fd, expected 2 \(.*nregions=2\)"):
        ch.recv_message(timeout=2)


def test_missing_fd(pair):
    ch, peer = pair
    raw_send(peer, F.SET_BACKEND_REQ_FD)
    with pytest.raises(BadFdCount, match=r"SET_BACKEND_REQ_FD \(21\): received 0 fds, expected 1"):
        ch.recv_message(timeout=2)


def test_more_fds_than_the_protocol_allows(pair):
    ch, peer = pair
    with Eventfds(9) as fds:
        raw_send(peer, F.SET_MEM_TABLE, m.MemTable([region(i) for i in range(8)]).pack(), fds)
    raw_send(peer, F.SET_OWNER)
    with pytest.raises(BadFdCount, match=r"more than 8 fds") as e:
        ch.recv_message(timeout=2)
    assert e.value.in_sync
    assert ch.recv_message(timeout=2).request == F.SET_OWNER


def test_unknown_request_keeps_stream_in_sync(pair):
    ch, peer = pair
    with Eventfds(1) as fds:
        raw_send(peer, 999, b"12345678", fds)
    raw_send(peer, F.GET_STATUS)
    with pytest.raises(UnknownRequest, match=r"unknown frontend request 999 \(flags 0x1, size 8, 1 fd\)") as e:
        ch.recv_message(timeout=2)
    assert e.value.in_sync and e.value.request == 999
    assert ch.recv_message(timeout=2).request == F.GET_STATUS


def test_backend_code_on_backend_channel_only(pair):
    ch, peer = pair
    raw_send(peer, 41, bytes(16))  # GET_SHARED_OBJECT on the main socket; unknown as a BackendReq
    with pytest.raises(UnknownRequest, match=r"unknown backend request 41"):
        ch.recv_message(timeout=2, direction="backend")


def test_payload_larger_than_any_legal_message(pair):
    ch, peer = pair
    with Eventfds(1) as fds:
        raw_send(peer, F.SET_CONFIG, b"", fds, size=100_000)
    with pytest.raises(BadSize, match=r"SET_CONFIG \(25\): payload size 100000 exceeds the maximum 4096") as e:
        ch.recv_message(timeout=2)
    assert not e.value.in_sync


def test_inconsistent_mem_table(pair):
    ch, peer = pair
    raw_send(peer, F.SET_MEM_TABLE, struct.pack("=II", 0, 0) + region(0).pack())
    with pytest.raises(BadPayload, match=r"SET_MEM_TABLE \(5\): MemTable says nregions=0 but its 40 bytes carry 1"):
        ch.recv_message(timeout=2)


def test_reply_to_another_request(pair):
    ch, peer = pair
    raw_send(peer, F.GET_PROTOCOL_FEATURES, bytes(8), flags=m.VERSION | m.FLAG_REPLY)
    with pytest.raises(BadReply, match=r"expected the reply to GET_FEATURES \(1\), got GET_PROTOCOL_FEATURES \(15\)"):
        ch.recv_reply(F.GET_FEATURES, timeout=2)


def test_request_where_reply_expected(pair):
    ch, peer = pair
    with Eventfds(1) as fds:
        raw_send(peer, F.SET_LOG_FD, b"", fds)
    with pytest.raises(BadReply, match=r"got SET_LOG_FD \(7\) with flags 0x1"):
        ch.recv_reply(F.GET_FEATURES, timeout=2)


def test_timeout_waiting_for_a_message(pair):
    ch, _ = pair
    with pytest.raises(Timeout, match=r"waiting for the header \(got 0 of 12 bytes\)") as e:
        ch.recv_message(timeout=0.05)
    assert e.value.in_sync


def test_timeout_inside_a_message(pair):
    ch, peer = pair
    peer.send(struct.pack("=III", F.SET_FEATURES, m.VERSION, 8) + b"\x01\x02")  # peer stalls mid-payload
    with pytest.raises(Timeout, match=r"the 8-byte payload of SET_FEATURES \(2\) \(got 2 of 8 bytes\)") as e:
        ch.recv_message(timeout=None)  # waits for the start only; message_timeout (0.5 s) bounds the rest
    assert not e.value.in_sync


def test_send_timeout_when_peer_never_reads(pair):
    ch, _ = pair
    ch.send_timeout = 0.05
    with pytest.raises(Timeout, match=r"SET_CONFIG \(25\): sent \d+ of 280 bytes before timing out"):
        for _ in range(100_000):
            ch.send_message(F.SET_CONFIG, m.Config(0, 256))


def test_send_to_closed_peer_is_peer_closed(pair):
    ch, peer = pair
    peer.close()
    with pytest.raises(PeerClosed, match=r"SET_OWNER \(3\): peer closed while sending"):
        ch.send_message(F.SET_OWNER)


def test_channel_stays_closeable(pair):
    ch, peer = pair
    raw_send(peer, F.SET_FEATURES, b"\x01", flags=0x3)
    with pytest.raises(BadVersion):
        ch.recv_message(timeout=2)
    ch.close()
    ch.close()
    assert ch.closed and ch.fileno() == -1
    with pytest.raises(VhostUserError, match="closed"):
        ch.recv_message(timeout=0)


def test_send_side_refuses_malformed_messages(channels):
    fe, be = channels
    with pytest.raises(ValueError, match=r"SET_FEATURES \(2\): payload size 4, expected 8"):
        fe.send_message(F.SET_FEATURES, b"1234")
    with pytest.raises(ValueError, match=r"received 0 fds, expected 1"):
        fe.send_message(F.SET_VRING_KICK, m.VringFd(0))
    with pytest.raises(ValueError, match=r"at most 8"):
        fe.send_message(F.SET_MEM_TABLE, m.MemTable([]), list(range(9)))
    fe.send_message(F.SET_FEATURES, b"1234", check=False)  # fault injection still possible
    with pytest.raises(BadSize):
        be.recv_message(timeout=2)


def test_validate_without_a_socket():
    assert validate(F.SET_VRING_NUM, m.VERSION, m.VringState(0, 256).pack(), 0).layouts == (m.VringState,)
    with pytest.raises(BadFdCount):
        validate(F.SET_INFLIGHT_FD, m.VERSION, m.InflightInfo(4096, 0, 2, 256).pack(), 0)


def test_message_fd_ownership():
    fds = [os.eventfd(0), os.eventfd(0)]
    msg = Message(F.SET_MEM_TABLE, payload=m.MemTable([region(0), region(1)]).pack(), fds=list(fds))
    kept = msg.take_fd(1)
    with pytest.raises(IndexError):
        msg.take_fd(1)
    msg.close_fds()
    os.close(kept)
    with pytest.raises(OSError):
        os.close(fds[0])  # already closed by close_fds


# --------------------------------------------------------------------------
# Fuzz: random streams only ever raise VhostUserError and never leak fds


def test_random_streams_raise_only_codec_errors():
    rng = random.Random(1234)
    codes = list(range(0, 46)) + [999, 0xFFFFFFFF]
    for _ in range(300):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ch = Channel(a, rng.choice(["frontend", "backend"]), message_timeout=0.2)
        try:
            for _ in range(rng.randint(1, 4)):
                layout = rng.choice(SAMPLES)
                payload = layout.pack() if rng.random() < 0.5 else rng.randbytes(rng.randint(0, 300))
                size = len(payload) if rng.random() < 0.8 else rng.randint(0, 5000)
                flags = rng.choice([m.VERSION, m.VERSION | m.FLAG_REPLY, m.VERSION | m.FLAG_NEED_REPLY,
                                    rng.getrandbits(32)])
                with Eventfds(rng.choice([0, 0, 1, 2, 9])) as fds:
                    wire = struct.pack("=III", rng.choice(codes), flags, size) + payload
                    cut = len(wire) if rng.random() < 0.8 else rng.randint(0, len(wire))
                    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
                    b.sendmsg([wire[:cut]], anc)
            b.shutdown(socket.SHUT_WR)
            for _ in range(10):
                try:
                    ch.recv_message(timeout=0.5).close_fds()
                except VhostUserError as e:
                    if isinstance(e, PeerClosed) or not e.in_sync:
                        break
        finally:
            ch.close()
            b.close()


def test_channel_needs_a_unix_stream_socket():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b, pytest.raises(ValueError, match="AF_UNIX SOCK_STREAM"):
        Channel(a)
    fd = os.eventfd(0)
    with pytest.raises(ValueError, match=f"fd {fd} is not a socket"):
        Channel.from_fd(fd)  # and the fd is closed: the leak check would notice
