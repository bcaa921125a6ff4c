"""vhost-user back-end session and server: a scripted front-end (the codec's
Channel) against BackendServer with a fake device that records every call;
QEMU's handshake, the IOMMU flow, malformed input, reconnects without leaks,
client mode, and (slow) a real QEMU as the front-end."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from pmd.vhost_user import messages as m
from pmd.vhost_user.backend import BackendSession
from pmd.virtio.features import VIRTIO_CONFIG_S_DRIVER_OK
from pmd.vhost_user.server import BackendServer
from pmd.vhost_user.codec import Channel, VhostUserError
from pmd.vhost_user.messages import BackendReq, FrontendReq, IotlbType
from pmd.guestmem.window import Window

from .fakes import IOMMU_PLATFORM, MRG_RXBUF, PF, PROTOCOL_FEATURES, VERSION_1, WINDOW, FakeDevice
from tests.util import wait_until

F = FrontendReq
UADDR = 0x7F00_0000_0000


# --------------------------------------------------------------------------
# Fixtures and helpers


def open_fds() -> set[str]:
    """This process's open fds, less the one the listing itself used (it is
    the lowest free number then, which changes as other fds come and go)."""
    return {fd for fd in os.listdir("/proc/self/fd") if os.path.lexists(f"/proc/self/fd/{fd}")}


def maps_count() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def connect(path: str) -> Channel:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return Channel(sock, "frontend", message_timeout=2.0, send_timeout=2.0)


def ack(fe: Channel, request: int, payload=b"", fds=()) -> int:
    """Send with NEED_REPLY and return the ack value (0 = success)."""
    reply = fe.call(request, payload, fds, need_reply=True)
    assert reply is not None
    return reply.u64


def memfd(size: int, fill: bytes = b"") -> int:
    fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    if fill:
        os.pwrite(fd, fill, 0)
    return fd


def handshake(fe: Channel, features: int, protocol: int | None = None) -> tuple[int, int]:
    """QEMU's init order; returns (offered features, offered protocol features)."""
    offered = fe.call(F.GET_FEATURES).u64
    fe.send_message(F.SET_OWNER)
    pf = fe.call(F.GET_PROTOCOL_FEATURES).u64
    fe.send_message(F.SET_PROTOCOL_FEATURES, m.U64(pf if protocol is None else protocol))
    return offered, pf


def readable(addr: int) -> bool:
    """Whether this process can read the byte at ``addr``: write(2) copies it
    into a pipe and gets EFAULT instead of the SIGSEGV a direct read would."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    r, w = os.pipe()
    try:
        return libc.write(w, ctypes.c_void_p(addr), 1) == 1
    finally:
        os.close(r)
        os.close(w)


# --------------------------------------------------------------------------
# The handshake QEMU does, then a ring started and stopped


def test_full_handshake_maps_memory_starts_ring_and_returns_base(served):
    srv, dev, path = served
    size, gpa = 2 << 20, 0x10_0000
    ram = memfd(size, b"hello from VM1")
    kick, call = os.eventfd(0, os.EFD_CLOEXEC), os.eventfd(0, os.EFD_CLOEXEC)
    be_ours, be_theirs = socket.socketpair()
    try:
        with connect(path) as fe:
            offered, pf = handshake(fe, VERSION_1 | MRG_RXBUF)
            assert offered & (VERSION_1 | MRG_RXBUF | PROTOCOL_FEATURES) == VERSION_1 | MRG_RXBUF | PROTOCOL_FEATURES
            assert pf == dev.protocol_features()
            assert fe.call(F.GET_QUEUE_NUM).u64 == 2
            assert ack(fe, F.SET_BACKEND_REQ_FD, fds=[be_theirs.fileno()]) == 0
            assert ack(fe, F.SET_FEATURES, m.U64(VERSION_1 | MRG_RXBUF | PROTOCOL_FEATURES)) == 0
            region = m.MemoryRegion(gpa, size, UADDR, 0)
            assert ack(fe, F.SET_MEM_TABLE, m.MemTable([region]), [ram]) == 0
            win = srv.session.window
            assert not win.iommu
            assert bytes(win.array[gpa:gpa + 14]) == b"hello from VM1"
            assert win.uaddr_to_gpa(UADDR + 0x100) == gpa + 0x100
            assert ack(fe, F.SET_VRING_NUM, m.VringState(0, 256)) == 0
            assert ack(fe, F.SET_VRING_ADDR, m.VringAddr(0, 0, UADDR, UADDR + 0x2000, UADDR + 0x1000, 0)) == 0
            assert ack(fe, F.SET_VRING_BASE, m.VringState(0, 5)) == 0
            assert ack(fe, F.SET_VRING_KICK, m.VringFd(0), [kick]) == 0
            assert ack(fe, F.SET_VRING_CALL, m.VringFd(0), [call]) == 0
            assert not dev.link, "protocol features negotiated: rings start disabled"
            assert ack(fe, F.SET_VRING_ENABLE, m.VringState(0, 1)) == 0
            assert dev.link and ("vring_ready", 0) in dev.calls
            ring = dev.rings[0]
            assert (ring.num, ring.base, ring.addr.desc_user_addr) == (256, 5, UADDR)
            assert ring.kick_fd >= 0 and ring.call_fd >= 0
            os.eventfd_write(kick, 1)
            assert os.eventfd_read(ring.kick_fd) == 1, "the kick fd is the one the front-end sent"
            n_quiesce = dev.names().count("quiesce")
            reply = fe.call(F.GET_VRING_BASE, m.VringState(0, 0))
            assert reply.decode() == m.VringState(0, 12)
            assert dev.names().count("quiesce") == n_quiesce + 1
            assert not dev.link
            assert ack(fe, F.SET_STATUS, m.U64(VIRTIO_CONFIG_S_DRIVER_OK)) == 0
            assert dev.link and fe.call(F.GET_STATUS).u64 == VIRTIO_CONFIG_S_DRIVER_OK
            cfg = fe.call(F.GET_CONFIG, m.Config(2, 4)).decode()
            assert cfg.payload == bytes([2, 3, 4, 5])
            assert ack(fe, F.NET_SET_MTU, m.U64(9000)) == 0 and srv.session.mtu == 9000
            assert ack(fe, F.SEND_RARP, m.U64(0x5634_1200_5452)) == 0
            assert srv.session.rarp_mac == bytes.fromhex("525400123456")
            history = list(srv.session.history)
        assert srv.wait_for(lambda s: s.disconnections == 1)
        assert history[:7] == [F.GET_FEATURES, F.SET_OWNER, F.GET_PROTOCOL_FEATURES, F.SET_PROTOCOL_FEATURES,
                               F.GET_QUEUE_NUM, F.SET_BACKEND_REQ_FD, F.SET_FEATURES]
        assert dev.calls[-1] == ("memory_changed", False) or not dev.link
        assert not dev.link and srv.last_session.window is None
    finally:
        for fd in (ram, kick, call):
            os.close(fd)
        be_ours.close()
        be_theirs.close()


def test_rings_start_enabled_without_protocol_features(served):
    srv, dev, path = served
    kick = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        with connect(path) as fe:
            fe.call(F.GET_FEATURES)
            fe.send_message(F.SET_FEATURES, m.U64(VERSION_1))
            fe.send_message(F.SET_VRING_ADDR, m.VringAddr(1, 0, UADDR, UADDR, UADDR, 0))
            fe.send_message(F.SET_VRING_KICK, m.VringFd(1), [kick])
            assert fe.call(F.GET_QUEUE_NUM).u64 == 2  # a round trip: everything before was handled
            assert dev.link and ("vring_ready", 1) in dev.calls
        assert srv.wait_for(lambda s: s.disconnections == 1)
        assert not dev.link and ("vring_stopped", 1) in dev.calls
    finally:
        os.close(kick)


def _negotiate_log_all(fe) -> None:
    """Features with LOG_ALL, after the handshake (its protocol features include LOG_SHMFD)."""
    handshake(fe, VERSION_1)
    fe.send_message(F.SET_FEATURES, m.U64(VERSION_1 | PROTOCOL_FEATURES | (1 << m.VHOST_F_LOG_ALL)))


def test_dirty_log_and_inflight(served):
    srv, dev, path = served
    logfd = memfd(8192)
    try:
        with connect(path) as fe:
            _negotiate_log_all(fe)
            # LOG_SHMFD negotiated: a reply is due
            reply = fe.call(F.SET_LOG_BASE, m.LogRegion(8192, 0), [logfd], expect_reply=True)
            assert reply.u64 == 0
            sess = srv.session
            assert sess.log_all and len(sess.log) == 8192
            sess.log[0] = 0xFF
            assert os.pread(logfd, 1, 0) == b"\xff"
            reply = fe.call(F.GET_INFLIGHT_FD, m.InflightInfo(0, 0, 2, 256))
            info = reply.decode()
            assert (info.num_queues, info.queue_size) == (2, 256)
            assert info.mmap_size == 2 * (-(-(16 + 16 * 256) // 64) * 64)
            got = reply.take_fd()
            assert os.fstat(got).st_size == info.mmap_size
            os.close(got)
            reply.close_fds()
            assert ack(fe, F.SET_INFLIGHT_FD, m.InflightInfo(4096, 0, 2, 256), [logfd]) == 0
        assert srv.wait_for(lambda s: s.disconnections == 1)
        assert srv.last_session.log is None and srv.last_session.inflight_fd == -1
    finally:
        os.close(logfd)


@pytest.mark.parametrize("size, offset", [(8192 + 4096, 0), (4096, 8192), (1 << 63, 0), (4096, (1 << 64) - 4096)])
def test_shared_areas_past_the_fd_are_refused(served, caplog, size, offset):
    """A log or inflight area larger than its fd (up to sizes no mmap takes)
    is refused naming it, never an unexpected error: the log's refusal ends
    the connection (as any failed SET_LOG_BASE), the inflight area's is a nack."""
    srv, dev, path = served
    fd = memfd(8192)
    try:
        with connect(path) as fe:
            _negotiate_log_all(fe)
            assert ack(fe, F.SET_INFLIGHT_FD, m.InflightInfo(size, offset, 2, 256), [fd]) != 0
            assert fe.call(F.GET_QUEUE_NUM).u64 == 2  # the connection lives on
            assert srv.session.inflight_fd == -1
            fe.send_message(F.SET_LOG_BASE, m.LogRegion(size, offset), [fd])
            assert srv.wait_for(lambda s: s.disconnections == 1)
        assert srv.last_session.log is None
    finally:
        os.close(fd)
    said = [r.getMessage() for r in caplog.records]
    assert len([t for t in said if "unusable (the fd holds 8192 bytes)" in t]) == 2, said
    assert not [t for t in said if "unexpected" in t], said


# --------------------------------------------------------------------------
# IOMMU


def test_iommu_flow_update_invalidate_and_miss(served):
    from pmd.guestmem.translate import translate

    srv, dev, path = served
    size = 1 << 20
    ram = memfd(size)
    os.pwrite(ram, b"granted page", 0x3000)
    be_ours, be_theirs = socket.socketpair()
    iova = 0x8000_0000
    try:
        with connect(path) as fe, Channel(be_ours, "backend", message_timeout=2.0) as be:
            handshake(fe, 0)
            fe.send_message(F.SET_BACKEND_REQ_FD, fds=[be_theirs.fileno()])
            be_theirs.close()
            feats = VERSION_1 | PROTOCOL_FEATURES | IOMMU_PLATFORM
            assert ack(fe, F.SET_FEATURES, m.U64(feats)) == 0
            assert ack(fe, F.SET_MEM_TABLE, m.MemTable([m.MemoryRegion(0, size, UADDR, 0)]), [ram]) == 0
            win = srv.session.window
            assert win.iommu and win.entries() == []
            assert translate(win.table, win.table_count, 0x3000, 1, False) == -1
            upd = m.IotlbMsg(iova, 0x1000, UADDR + 0x3000, m.IotlbPerm.RW, IotlbType.UPDATE)
            assert fe.call(F.IOTLB_MSG, upd).u64 == 0
            off = translate(win.table, win.table_count, iova, 12, True)
            assert off >= 0 and bytes(win.array[off:off + 12]) == b"granted page"

            # RCU order: rows gone before the quiesce, page unmapped only after it
            seen = []
            dev.on_quiesce = lambda: seen.append((translate(win.table, win.table_count, iova, 1, False),
                                                  readable(win.base + off), bytes(win.array[off:off + 12])))
            inv = m.IotlbMsg(iova, 0x1000, 0xDEAD_BEEF, 0x77, IotlbType.INVALIDATE)  # garbage uaddr/perm
            assert fe.call(F.IOTLB_MSG, inv).u64 == 0
            assert seen == [(-1, True, b"granted page")], "quiesce must come after the table, before the unmap"
            assert translate(win.table, win.table_count, iova, 1, False) == -1
            assert not readable(win.base + off), "the page is still mapped after the ack"
            dev.on_quiesce = None
            assert fe.call(F.IOTLB_MSG, inv).u64 == 0  # nothing left to remove: no quiesce
            assert len(seen) == 1

            bad = m.IotlbMsg(iova, 0x1000, UADDR + size, m.IotlbPerm.RW, IotlbType.UPDATE)  # not in a region
            assert fe.call(F.IOTLB_MSG, bad).u64 != 0
            assert not srv.session.closed

            assert srv.session.send_iotlb_miss(iova + 0x10, m.IotlbPerm.RO)
            miss = be.recv_message(2.0)
            assert miss.request == BackendReq.IOTLB_MSG
            got = miss.decode()
            assert (got.iova, got.perm, got.type) == (iova + 0x10, m.IotlbPerm.RO, IotlbType.MISS)
        assert srv.wait_for(lambda s: s.disconnections == 1)
    finally:
        os.close(ram)
        be_theirs.close()


def test_quiesce_timeout_still_replies(sockdir):
    dev = FakeDevice(features=VERSION_1 | IOMMU_PLATFORM, quiesce_error=TimeoutError("lcore 3 stuck"))
    path = os.path.join(sockdir, "q.sock")
    ram = memfd(1 << 20)
    with BackendServer(path, dev) as srv, connect(path) as fe:
        handshake(fe, 0)
        fe.send_message(F.SET_FEATURES, m.U64(VERSION_1 | PROTOCOL_FEATURES | IOMMU_PLATFORM))
        fe.send_message(F.SET_MEM_TABLE, m.MemTable([m.MemoryRegion(0, 1 << 20, UADDR, 0)]), [ram])
        upd = m.IotlbMsg(0x1000, 0x1000, UADDR, m.IotlbPerm.RW, IotlbType.UPDATE)
        assert fe.call(F.IOTLB_MSG, upd).u64 == 0
        assert "quiesce" not in dev.names()
        inv = m.IotlbMsg(0, 1 << 30, 0, 0, IotlbType.INVALIDATE)  # removes the grant: quiesces
        assert fe.call(F.IOTLB_MSG, inv).u64 == 0
        assert "quiesce" in dev.names()
    os.close(ram)


# --------------------------------------------------------------------------
# Errors


def raw_send(sock: socket.socket, request: int, payload: bytes = b"", flags: int = m.VERSION,
             size: int | None = None) -> None:
    import struct
    sock.sendall(struct.pack("=III", request, flags, len(payload) if size is None else size) + payload)


def mem_table_short_fd(sock: socket.socket) -> None:
    """SET_MEM_TABLE, no reply asked: one 2 MiB region over a one-page memfd."""
    ram = memfd(4096)
    try:
        table = m.MemTable([m.MemoryRegion(0, 2 << 20, UADDR, 0)]).pack()
        import struct
        socket.send_fds(sock, [struct.pack("=III", F.SET_MEM_TABLE, m.VERSION, len(table)) + table], [ram])
    finally:
        os.close(ram)


@pytest.mark.parametrize("what, send, reason", [
    ("bad version", lambda s: raw_send(s, F.GET_FEATURES, flags=0x2), "version"),
    ("size mismatch", lambda s: raw_send(s, F.SET_FEATURES, b"\0" * 4), "payload size 4"),
    ("unknown request", lambda s: raw_send(s, 999), "unknown frontend request 999"),
    ("oversized", lambda s: raw_send(s, F.SET_FEATURES, size=1 << 20), "exceeds the maximum"),
    ("region beyond its fd", lambda s: mem_table_short_fd(s), "ends beyond its fd"),
])
def test_malformed_closes_connection_and_server_accepts_next(served, what, send, reason):
    srv, dev, path = served
    with connect(path) as fe:
        assert fe.call(F.GET_FEATURES).u64
        sock = socket.socket(fileno=os.dup(fe.fileno()))
        try:
            send(sock)
        finally:
            sock.close()
        assert srv.wait_for(lambda s: s.disconnections == 1, 3.0), what
        with pytest.raises(VhostUserError):  # the back-end hung up
            fe.call(F.GET_FEATURES, timeout=2.0)
    assert reason in srv.last_session.close_reason
    with connect(path) as fe:
        assert fe.call(F.GET_FEATURES).u64 & VERSION_1


def test_handling_error_nacks_with_reply_ack_else_closes(served):
    srv, dev, path = served
    with connect(path) as fe:
        handshake(fe, 0)
        assert ack(fe, F.SET_VRING_NUM, m.VringState(5, 256)) != 0  # no such vring
        assert ack(fe, F.SET_VRING_NUM, m.VringState(0, 100)) != 0  # not a power of 2
        assert ack(fe, F.SET_FEATURES, m.U64(1 << 60)) != 0  # not offered
        assert fe.call(F.GET_QUEUE_NUM).u64 == 2
        fe.send_message(F.SET_VRING_NUM, m.VringState(5, 256))  # no ack asked for: close
        assert srv.wait_for(lambda s: s.disconnections == 1, 3.0)
    assert "vring index 5" in srv.last_session.close_reason


def test_stop_is_prompt_and_releases_socket(served):
    srv, dev, path = served
    fe = connect(path)
    fe.call(F.GET_FEATURES)
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 1.0
    assert not os.path.exists(path)
    with pytest.raises(Exception):
        fe.call(F.GET_FEATURES, timeout=1.0)
    fe.close()


def test_stale_socket_is_replaced(sockdir):
    path = os.path.join(sockdir, "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()
    with BackendServer(path, FakeDevice()) as srv, connect(path) as fe:
        assert fe.call(F.GET_FEATURES).u64


def test_socket_a_live_process_listens_on_is_refused(sockdir):
    """A second back-end on a path another one serves must not unlink it
    (it would silently take VM1's socket over): refused, the first one keeps
    serving; a socket nobody listens on is stale and replaced."""
    path = os.path.join(sockdir, "live.sock")
    with BackendServer(path, FakeDevice()) as first:
        with pytest.raises(FileExistsError, match=f"another process is listening on {path}"):
            BackendServer(path, FakeDevice()).start()
        assert os.path.exists(path)
        with connect(path) as fe:
            assert fe.call(F.GET_FEATURES).u64
    # a listener in another process, not ours
    child = subprocess.Popen([sys.executable, "-c", "import socket, sys, time\n"
                              "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)\n"
                              "print('listening', flush=True); time.sleep(60)", path],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "listening"
        with pytest.raises(FileExistsError, match="another process is listening"):
            BackendServer(path, FakeDevice()).start()
        assert os.path.exists(path)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    # bound, never listening (or its process gone): stale
    with BackendServer(path, FakeDevice()), connect(path) as fe:
        assert fe.call(F.GET_FEATURES).u64


# --------------------------------------------------------------------------
# Reconnects, leaks, client mode


def one_connection(path: str, ram: int, kick: int) -> None:
    a, b = socket.socketpair()
    try:
        with connect(path) as fe:
            handshake(fe, 0)
            fe.send_message(F.SET_BACKEND_REQ_FD, fds=[b.fileno()])
            fe.send_message(F.SET_FEATURES, m.U64(VERSION_1 | PROTOCOL_FEATURES))
            fe.send_message(F.SET_MEM_TABLE, m.MemTable([m.MemoryRegion(0, 1 << 20, UADDR, 0)]), [ram])
            fe.send_message(F.SET_VRING_ADDR, m.VringAddr(0, 0, UADDR, UADDR, UADDR, 0))
            fe.send_message(F.SET_VRING_KICK, m.VringFd(0), [kick])
            fe.send_message(F.SET_VRING_CALL, m.VringFd(0), [kick])
            assert ack(fe, F.SET_VRING_ENABLE, m.VringState(0, 1)) == 0
    finally:
        a.close()
        b.close()


def test_reconnect_50_times_without_leaks(served):
    srv, dev, path = served
    ram, kick = memfd(1 << 20), os.eventfd(0, os.EFD_CLOEXEC)
    try:
        one_connection(path, ram, kick)  # warm up (imports, thread-local state)
        assert srv.wait_for(lambda s: s.disconnections == 1)
        fds, maps = open_fds(), maps_count()
        for i in range(50):
            one_connection(path, ram, kick)
            assert srv.wait_for(lambda s: s.disconnections == i + 2), f"connection {i} not closed"
        assert open_fds() == fds, "fds leaked"
        assert maps_count() <= maps + 5, "mappings leaked"
        assert dev.names().count("vring_ready") == 51 and not dev.link
    finally:
        os.close(ram)
        os.close(kick)


def test_client_mode_reconnects_when_server_returns(sockdir):
    path = os.path.join(sockdir, "fe.sock")
    dev = FakeDevice()

    def listen() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(1)
        s.settimeout(5.0)
        return s

    with BackendServer(path, dev, client=True) as srv:
        time.sleep(0.35)  # a few failed attempts first
        assert srv.connections == 0
        for round_ in range(2):
            lst = listen()
            conn, _ = lst.accept()
            # The listener goes first: else the back-end could reconnect to its backlog.
            lst.close()
            os.unlink(path)
            with Channel(conn, "frontend", message_timeout=2.0) as fe:
                assert fe.call(F.GET_FEATURES).u64 & VERSION_1
                assert srv.wait_for(lambda s: s.connections == round_ + 1)
            assert srv.wait_for(lambda s: s.disconnections == round_ + 1)
            time.sleep(0.3)
        assert srv.connections == 2


def test_session_directly_over_socketpair():
    """BackendSession works without the server (any connected Channel)."""
    fe, be = Channel.pair("frontend", message_timeout=1.0, send_timeout=1.0)
    dev = FakeDevice()
    sess = BackendSession(be, dev)
    try:
        assert sess.handle_one(0.01) == "idle"
        fe.send_message(F.GET_FEATURES)
        assert sess.handle_one(1.0) == "ok"
        assert fe.recv_reply(F.GET_FEATURES).u64 & PROTOCOL_FEATURES
        fe.close()
        assert sess.handle_one(1.0) == "closed" and sess.closed and "peer closed" in sess.close_reason
    finally:
        sess.close()
        fe.close()


# --------------------------------------------------------------------------
# The device's persistent memory (BackendDevice.memory) and wake-up fd (wake_fd/service)


class WindowDevice(FakeDevice):
    """A port that keeps one Window for its life and hands it to every session."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.port_window = Window(WINDOW)


def test_device_window_is_reused_reset_and_never_closed(sockdir):
    from pmd.guestmem.translate import translate

    dev = WindowDevice(features=VERSION_1 | IOMMU_PLATFORM)
    win = dev.port_window
    array, table, count = win.array, win.table, win.table_count
    path = os.path.join(sockdir, "w.sock")
    ram = memfd(1 << 20, b"guest")
    seen: list[tuple[int, bool]] = []
    try:
        with BackendServer(path, dev) as srv:
            for round_, iommu in enumerate((False, True, False)):
                with connect(path) as fe:
                    handshake(fe, 0)
                    feats = VERSION_1 | PROTOCOL_FEATURES | (IOMMU_PLATFORM if iommu else 0)
                    assert ack(fe, F.SET_FEATURES, m.U64(feats)) == 0
                    mem = m.MemTable([m.MemoryRegion(0, 1 << 20, UADDR, 0)])
                    assert ack(fe, F.SET_MEM_TABLE, mem, [ram]) == 0
                    assert srv.session.window is win and dev.window is win and win.iommu == iommu
                    assert win.array is array and win.table is table and win.table_count is count
                    if iommu:
                        upd = m.IotlbMsg(0x10000, 0x1000, UADDR, m.IotlbPerm.RW, IotlbType.UPDATE)
                        assert fe.call(F.IOTLB_MSG, upd).u64 == 0
                        off = translate(table, count, 0x10000, 5, False)
                    else:
                        off = translate(table, count, 0, 5, False)
                        # a new table on the same window: rows first, then quiesce, then unmap
                        dev.on_quiesce = lambda: seen.append((translate(table, count, 0, 1, False),
                                                              readable(win.base)))
                        assert ack(fe, F.SET_MEM_TABLE, mem, [ram]) == 0
                        dev.on_quiesce = None
                        assert seen[-1] == (-1, True) and srv.session.window is win
                        off = translate(table, count, 0, 5, False)
                    assert off >= 0 and bytes(array[off:off + 5]) == b"guest"
                    dev.on_quiesce = lambda: seen.append((translate(table, count, off, 1, False),
                                                          readable(win.base + off)))
                assert srv.wait_for(lambda s: s.disconnections == round_ + 1)
                dev.on_quiesce = None
                # disconnect: emptied (the last quiesce saw no rows, memory still there), not closed
                assert seen[-1] == (-1, True)
                assert not win._closed and win.entries() == [] and win.region_count[0] == 0
                assert not readable(win.base + off) and dev.window is None
        assert ("memory", True) in dev.calls and not win._closed
    finally:
        win.close()
        os.close(ram)


class WakeDevice(FakeDevice):
    """Has an eventfd its "kernels" write; records when ``service`` runs."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.efd = os.eventfd(0, os.EFD_CLOEXEC)
        self.serviced: list[float] = []
        self.fail = False

    def wake_fd(self) -> int:
        return self.efd

    def service(self, session: BackendSession) -> None:
        assert isinstance(session, BackendSession)
        self.serviced.append(time.monotonic())
        if self.fail:
            raise RuntimeError("device bug in service")


def test_wake_fd_runs_service_promptly(sockdir):
    dev = WakeDevice()
    path = os.path.join(sockdir, "wake.sock")
    srv = BackendServer(path, dev)
    srv.POLL = 0.5  # periodic service rarely lands within 50 ms of a wake-up by chance
    try:
        srv.start()
        with connect(path) as fe:
            handshake(fe, 0)
            assert wait_until(lambda: len(dev.serviced) >= 1, 2.0), "no periodic service"
            for _ in range(5):
                time.sleep(0.02)
                n, t0 = len(dev.serviced), time.monotonic()
                os.eventfd_write(dev.efd, 1)
                assert wait_until(lambda: len(dev.serviced) > n, 1.0)
                assert dev.serviced[n] - t0 < 0.05, dev.serviced[n] - t0
                assert fe.call(F.GET_QUEUE_NUM).u64 == 2  # messages still served
            with pytest.raises(BlockingIOError):  # the server drained the counter
                os.eventfd_read(dev.efd)
            # periodic: without wake-ups service still runs about every POLL
            n = len(dev.serviced)
            assert wait_until(lambda: len(dev.serviced) >= n + 2, 2.0)
            # a failing service is logged; the control thread and session live on
            dev.fail = True
            n = len(dev.serviced)
            os.eventfd_write(dev.efd, 1)
            assert wait_until(lambda: len(dev.serviced) > n, 1.0)
            assert fe.call(F.GET_FEATURES).u64 & VERSION_1
            assert srv.session is not None and not srv.session.closed
        assert srv.wait_for(lambda s: s.disconnections == 1)
        n = len(dev.serviced)
        time.sleep(0.6)
        assert len(dev.serviced) == n, "service ran without a session"
    finally:
        srv.stop()
        os.close(dev.efd)


# --------------------------------------------------------------------------
# Real QEMU as the front-end


QEMU = shutil.which("qemu-system-x86_64")


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed (tools/setup installs qemu-system-x86)")
@pytest.mark.parametrize("boot", [False, True], ids=["paused", "firmware"])
def test_real_qemu_handshake(sockdir, boot):
    """Paused (-S): QEMU's init-time negotiation only.  Running: the firmware's
    iPXE virtio-net driver sets DRIVER_OK, so QEMU starts vhost: memory table,
    rings 0 and 1, link up (no guest kernel needed)."""
    path = os.path.join(sockdir, "qemu.sock")
    dev = FakeDevice(features=VERSION_1 | MRG_RXBUF,
                     protocol=PF.MQ.mask | PF.REPLY_ACK.mask | PF.BACKEND_REQ.mask | PF.STATUS.mask
                     | PF.LOG_SHMFD.mask | PF.MTU.mask)
    srv = BackendServer(path, dev)
    srv.start()
    cmd = [QEMU, "-machine", "q35,accel=tcg", "-cpu", "max", "-m", "256M",
           "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem",
           "-chardev", f"socket,id=chr0,path={path}", "-netdev", "vhost-user,id=net0,chardev=chr0",
           "-device", "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,vectors=0",
           "-nographic", "-nodefaults", "-display", "none", "-serial", "none"] + ([] if boot else ["-S"])
    qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        want = {F.GET_FEATURES, F.GET_PROTOCOL_FEATURES, F.SET_PROTOCOL_FEATURES, F.GET_QUEUE_NUM,
                F.SET_OWNER, F.SET_BACKEND_REQ_FD}

        def negotiated(s: BackendServer) -> bool:
            return s.last_session is not None and want <= set(s.last_session.history)

        ok = srv.wait_for(lambda s: negotiated(s) or qemu.poll() is not None, 20.0) and negotiated(srv)
        if not ok and qemu.poll() is not None:
            out = qemu.stdout.read().decode(errors="replace")
            if "romfile" in out:
                pytest.skip(f"QEMU lacks its option ROMs (install ipxe-qemu): {out.strip()}")
            pytest.fail(f"QEMU exited with {qemu.returncode}: {out}")
        assert ok, (f"QEMU's init negotiation incomplete: saw "
                    f"{[F(r).name for r in (srv.last_session.history if srv.last_session else [])]}")
        if boot:
            assert srv.wait_for(lambda s: dev.link and {("vring_ready", 0), ("vring_ready", 1)} <= set(dev.calls),
                                20.0), f"vhost did not start: {dev.calls}"
            win = srv.last_session.window
            assert win is not None and not win.iommu and win.regions_list
        time.sleep(2.0)
        assert qemu.poll() is None, f"QEMU exited: {qemu.stdout.read().decode(errors='replace')}"
        sess = srv.last_session
        assert not sess.closed and sess.backend_channel is not None
        assert sess.protocol_features & PF.REPLY_ACK.mask
        qemu.terminate()
        qemu.wait(10)
        assert srv.wait_for(lambda s: s.disconnections == 1, 5.0)
        assert sess.closed and "peer closed" in sess.close_reason
        assert not dev.link and sess.window is None
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait(5)
        qemu.stdout.close()
        srv.stop()


# --------------------------------------------------------------------------
# Handover: a second front-end while one is live (VM1 live migration on one host)


def live_ring(fe: Channel, ram: int, kick: int, call: int) -> None:
    """Memory, ring 0 started: what a running VM1's QEMU has set up."""
    assert ack(fe, F.SET_FEATURES, m.U64(VERSION_1 | PROTOCOL_FEATURES)) == 0
    assert ack(fe, F.SET_MEM_TABLE, m.MemTable([m.MemoryRegion(0, 1 << 20, UADDR, 0)]), [ram]) == 0
    assert ack(fe, F.SET_VRING_NUM, m.VringState(0, 256)) == 0
    assert ack(fe, F.SET_VRING_ADDR, m.VringAddr(0, 0, UADDR, UADDR + 0x2000, UADDR + 0x1000, 0)) == 0
    assert ack(fe, F.SET_VRING_KICK, m.VringFd(0), [kick]) == 0
    assert ack(fe, F.SET_VRING_CALL, m.VringFd(0), [call]) == 0
    assert ack(fe, F.SET_VRING_ENABLE, m.VringState(0, 1)) == 0


def test_second_front_end_negotiates_as_standby_then_takes_over(served):
    """The destination QEMU of a migration connects and negotiates while the
    source forwards; the source stops its ring; the destination's first device
    change closes the source's session and becomes the live one."""
    srv, dev, path = served
    fds = [memfd(1 << 20), *(os.eventfd(0, os.EFD_CLOEXEC) for _ in range(4))]
    ram, kick1, call1, kick2, call2 = fds
    try:
        with connect(path) as src:
            handshake(src, 0)
            live_ring(src, ram, kick1, call1)
            assert dev.link and srv.session is not None
            live, before = srv.session, len(dev.calls)
            with connect(path) as dst:
                handshake(dst, 0)  # answered while the source is live
                assert dst.call(F.GET_QUEUE_NUM).u64 == 2
                assert ack(dst, F.SET_VRING_CALL, m.VringFd(0), [call2]) == 0  # QEMU's masked notifier
                assert srv.wait_for(lambda s: s.standby is not None)
                assert srv.session is live and dev.calls[before:] == [], "the standby touched the device"
                assert src.call(F.GET_QUEUE_NUM).u64 == 2, "the source is still served"
                assert src.call(F.GET_VRING_BASE, m.VringState(0, 0)).decode() == m.VringState(0, 7)
                # the destination starts: its first device change takes the port over
                assert ack(dst, F.SET_FEATURES, m.U64(VERSION_1 | PROTOCOL_FEATURES)) == 0
                assert srv.session is not live and srv.standby is None and srv.handovers == 1
                assert live.closed and "superseded" in live.close_reason
                with pytest.raises(VhostUserError):  # the source's connection is closed
                    src.call(F.GET_FEATURES, timeout=2.0)
                assert ("memory_changed", False) in dev.calls[before:], "the source's memory was dropped"
                live_ring(dst, ram, kick2, call2)
                assert dev.link and dev.rings[0].kick_fd >= 0
                os.eventfd_write(kick2, 1)
                assert os.eventfd_read(dev.rings[0].kick_fd) == 1, "ring 0 is the destination's"
            assert srv.wait_for(lambda s: s.session is None and not dev.link)
    finally:
        for fd in fds:
            os.close(fd)


def test_standby_that_leaves_changes_nothing_and_a_third_is_refused(served):
    srv, dev, path = served
    with connect(path) as first:
        handshake(first, 0)
        live = srv.session
        with connect(path) as second:
            handshake(second, 0)
            assert srv.wait_for(lambda s: s.standby is not None)
            with connect(path) as third:
                with pytest.raises(VhostUserError):
                    third.call(F.GET_FEATURES, timeout=2.0)
            n = len(dev.calls)
        assert srv.wait_for(lambda s: s.standby is None)
        assert srv.session is live and dev.calls[n:] == [] and "quiesce" not in dev.names()
        assert first.call(F.GET_QUEUE_NUM).u64 == 2
    # the live one leaves while a standby waits: the standby becomes live at once
    with connect(path) as a:
        handshake(a, 0)
        with connect(path) as b:
            assert b.call(F.GET_FEATURES).u64
            assert srv.wait_for(lambda s: s.standby is not None)
        # b gone; now a stays live
        assert srv.wait_for(lambda s: s.standby is None) and srv.session is not None
    assert srv.wait_for(lambda s: s.session is None)
    with connect(path) as c, connect(path) as d:
        handshake(c, 0)
        assert d.call(F.GET_FEATURES).u64
        assert srv.wait_for(lambda s: s.standby is not None)
        c.close()
        assert srv.wait_for(lambda s: s.standby is None and s.session is not None and not s.session.closed)
        assert d.call(F.GET_QUEUE_NUM).u64 == 2
