"""The net_vhost_pci port's control plane through the real port and sockets:
malformed vhost-user input against a forwarding app (the session closes, the
app and its other ports carry on), 50 reconnects in server and client mode
without fd/mapping leaks (with and without IOMMU), port stop/start/close, and
bad devargs."""
from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from pmd.ethdev import DevargError, Port, PortError
from pmd.vdev import parse_vdev
from pmd.vhost_user.frontend import FrontendError, FrontendListener, FrontendSession
from pmd.vhost_user.messages import (
    VERSION,
    VHOST_USER_F_PROTOCOL_FEATURES,
    FrontendReq,
    IotlbPerm,
    MemoryRegion,
    MemTable,
    VringFd,
)
from pmd.virtio.features import VIRTIO_F_IOMMU_PLATFORM, VIRTIO_F_VERSION_1
from pmd.virtio.split import ring_sizes
from pmd.virtio_user_pmd.guest_memory import GuestMemory
from tests.util import wait_until
from tests.vhost_user.test_vu_backend import maps_count, open_fds, raw_send

F = FrontendReq
VERSION_1 = 1 << VIRTIO_F_VERSION_1
PROTOCOL_FEATURES = 1 << VHOST_USER_F_PROTOCOL_FEATURES
IOMMU = 1 << VIRTIO_F_IOMMU_PLATFORM
MEM_SIZE = 1 << 20
RING_NUM = 256
DESC_GPA, AVAIL_GPA, USED_GPA = 0x0, 0x10000, 0x20000  # one ring per 0x40000 slice (vring 0, 1)


def vp_vdev(path: str, extra: str = "") -> str:
    return f"net_vhost_pci0,path={path}{extra}"


def server(port: Port):
    srv = port.driver.server
    assert srv is not None, "port not started"
    return srv


# --------------------------------------------------------------------------
# 1. Malformed messages against a running app


def send_fd_msg(sock: socket.socket, request: int, payload: bytes, fds: list[int]) -> None:
    socket.send_fds(sock, [struct.pack("=III", request, VERSION, len(payload)) + payload], fds)


def short_header_eof(sock: socket.socket, fd: int) -> None:
    sock.sendall(b"\x01\x00\x00\x00\x01")
    sock.shutdown(socket.SHUT_WR)


def short_header_stall(sock: socket.socket, fd: int) -> None:
    sock.sendall(b"\x01\x00\x00\x00\x01")  # the session's message timeout (1 s) ends it


def region_beyond_fd(sock: socket.socket, fd: int) -> None:
    """A region of 2 MiB whose memfd holds one page: mapping it would
    succeed, and the first access past the page would be a SIGBUS."""
    ram = os.memfd_create("short-ram", os.MFD_CLOEXEC)
    try:
        os.ftruncate(ram, 4096)
        send_fd_msg(sock, F.SET_MEM_TABLE, MemTable([MemoryRegion(0, 2 << 20, 0x7F00_0000_0000, 0)]).pack(), [ram])
    finally:
        os.close(ram)


MALFORMED = [
    ("short header, EOF", short_header_eof, "header"),
    ("short header, stall", short_header_stall, "stalled"),
    ("bad version", lambda s, fd: raw_send(s, F.GET_FEATURES, flags=0x2), "version"),
    ("reserved flags", lambda s, fd: raw_send(s, F.GET_FEATURES, flags=VERSION | 0x100), "reserved bits"),
    ("size mismatch", lambda s, fd: raw_send(s, F.SET_FEATURES, b"\0" * 4), "payload size 4"),
    ("unknown request", lambda s, fd: raw_send(s, 999), "unknown frontend request 999"),
    ("too many fds", lambda s, fd: send_fd_msg(s, F.SET_FEATURES, struct.pack("=Q", VERSION_1), [fd]),
     "received 1 fd, expected 0"),
    ("too few fds", lambda s, fd: raw_send(s, F.SET_VRING_KICK, VringFd(0).pack()),
     "received 0 fds, expected 1"),
    ("oversized", lambda s, fd: raw_send(s, F.SET_FEATURES, size=1 << 20), "exceeds the maximum"),
    ("region beyond its fd", region_beyond_fd, "ends beyond its fd"),
]


def ring_rx(fwd) -> int:
    st = fwd.fwd_stats()
    return st[0]["rx"] + st[1]["rx"]


@pytest.mark.parametrize("what, send, reason", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_message_closes_session_app_keeps_running(fwd, sockdir, what, send, reason):
    path = os.path.join(sockdir, "vp.sock")
    # Ring pair first (ports 0 <-> 1), vhost-pci last (port 2 alone): ring
    # traffic never depends on the vhost-pci port.
    for vdev in ("net_ring1,peer=net_ring2", "net_ring2", vp_vdev(path)):
        fwd.attach_port(vdev)
    for pid in sorted(fwd.ports):
        fwd.start_port(pid)
    vp = fwd.port(2)
    assert [(s.rx_port, s.tx_port) for s in fwd.layout()] == [(0, 1), (1, 0), (2, 2)]
    fwd.config.mode = "io"
    fwd.start(tx_first=True)
    srv = server(vp)
    assert wait_until(lambda: ring_rx(fwd) > 0, 2.0), "ring ports do not forward"

    t0 = time.monotonic()
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(3.0)
        sock.connect(path)
        assert srv.wait_for(lambda s: s.connections == 1, 2.0)
        before = ring_rx(fwd)
        send(sock, efd)
        assert srv.wait_for(lambda s: s.disconnections == 1, 3.0), f"{what}: connection not closed"
        assert sock.recv(1) == b"", "the back-end did not hang up"
    finally:
        sock.close()
        os.close(efd)
    sess = srv.last_session
    assert sess.closed and reason in sess.close_reason, sess.close_reason
    assert vp.driver.server is srv and srv._thread is not None and srv._thread.is_alive()
    assert not vp.link().up

    # The app lives on: a new front-end is served, ring traffic keeps flowing.
    with FrontendSession.connect(path, timeout=2.0) as fe:
        assert fe.get_features() & VERSION_1
    assert srv.wait_for(lambda s: s.disconnections == 2, 2.0)
    assert wait_until(lambda: ring_rx(fwd) > before + 1000, 2.0), "ring forwarding stalled"
    assert fwd.running
    assert time.monotonic() - t0 < 5.0


# --------------------------------------------------------------------------
# 2. 50 reconnects, server and client mode, no leaks


class Guest:
    """VM1 side kept across rounds: memory and eventfds (closed at the end)."""

    def __init__(self) -> None:
        self.mem = GuestMemory([(0, MEM_SIZE)])
        self.kick = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(2)]
        self.call = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(2)]

    def close(self) -> None:
        for fd in self.kick + self.call:
            os.close(fd)
        self.mem.close()


@pytest.fixture
def guest():
    g = Guest()
    yield g
    g.close()


def qemu_handshake(fe: FrontendSession, guest: Guest, iommu: bool) -> None:
    """QEMU's order: features, owner, protocol features, back-end channel,
    memory, then vrings 0 and 1 (addresses: local uaddrs, or IOVAs = GPAs)."""
    offered = fe.get_features()
    want = VERSION_1 | PROTOCOL_FEATURES | (IOMMU if iommu else 0)
    assert offered & want == want, f"offered {offered:#x}"
    fe.set_owner()
    fe.set_protocol_features(fe.get_protocol_features())
    fe.set_backend_req_fd()
    fe.set_features(want)
    fe.set_mem_table(guest.mem)
    if iommu:
        fe.iotlb_update(0, MEM_SIZE, guest.mem.gpa_to_uaddr(0), IotlbPerm.RW)
    desc_n, avail_n, used_n = ring_sizes(RING_NUM)
    for v in range(2):
        off = v * 0x40000
        if iommu:
            addrs = (DESC_GPA + off, USED_GPA + off, AVAIL_GPA + off)
        else:
            addrs = (guest.mem.gpa_to_uaddr(DESC_GPA + off, desc_n), guest.mem.gpa_to_uaddr(USED_GPA + off, used_n),
                     guest.mem.gpa_to_uaddr(AVAIL_GPA + off, avail_n))
        fe.set_vring_num(v, RING_NUM)
        fe.set_vring_base(v, 0)
        fe.set_vring_addr(v, *addrs)
        fe.set_vring_kick(v, guest.kick[v])
        fe.set_vring_call(v, guest.call[v])
        fe.set_vring_enable(v, True)


def one_round(fe: FrontendSession, port: Port, guest: Guest, iommu: bool) -> None:
    with fe:
        qemu_handshake(fe, guest, iommu)
        assert wait_until(lambda: port.link().up, 2.0), "link not up"
        assert port.driver.info()["rings ready"] == 2
        if iommu:
            fe.iotlb_invalidate(0, MEM_SIZE)


@pytest.mark.parametrize("iommu", [False, True], ids=["plain", "iommu"])
def test_server_mode_reconnect_50_times_without_leaks(fwd, sockdir, guest, iommu):
    path = os.path.join(sockdir, "vp.sock")
    port = fwd.attach_port(vp_vdev(path))
    port.start()
    srv = server(port)

    def round_(n: int) -> None:
        one_round(FrontendSession.connect(path, timeout=2.0), port, guest, iommu)
        assert srv.wait_for(lambda s: s.disconnections == n, 2.0), f"round {n}: disconnection not seen"
        assert wait_until(lambda: not port.link().up, 1.0), f"round {n}: link still up"

    round_(1)  # warm up
    fds, maps = open_fds(), maps_count()
    for n in range(2, 52):
        round_(n)
    assert srv.connections == 51
    assert open_fds() == fds, "fds leaked"
    assert maps_count() <= maps + 5, "mappings leaked"
    assert "peer closed" in srv.last_session.close_reason


def accept(lst: FrontendListener) -> FrontendSession:
    fe = lst.accept()
    fe.get_features()  # a round trip: the port's session is fully set up
    return fe


def test_client_mode_reconnect_50_times_without_leaks(fwd, sockdir, guest):
    path = os.path.join(sockdir, "vp.sock")
    port = fwd.attach_port(vp_vdev(path, ",client=1"))
    port.start()
    srv = server(port)
    time.sleep(0.35)  # no listener yet: failed attempts at 0, 0.1, 0.3 s; next at 0.7 s
    assert srv.connections == 0
    lst = FrontendListener(path, timeout=2.0)
    fe: FrontendSession | None = None
    try:
        t0 = time.monotonic()
        fe = accept(lst)
        assert time.monotonic() - t0 < 1.2, "back-off longer than its 1 s cap"
        gaps: list[float] = []

        def round_(n: int) -> None:
            nonlocal fe
            one_round(fe, port, guest, iommu=True)
            closed = time.monotonic()
            assert srv.wait_for(lambda s: s.disconnections == n, 2.0), f"round {n}: disconnection not seen"
            assert wait_until(lambda: not port.link().up, 1.0), f"round {n}: link still up"
            # After a session the port reconnects at once (no back-off wait).
            assert srv.wait_for(lambda s: s.connections == n + 1, 1.0), f"round {n}: no reconnect"
            gaps.append(time.monotonic() - closed)
            fe = accept(lst)

        round_(1)  # warm up
        fds, maps = open_fds(), maps_count()
        for n in range(2, 52):
            round_(n)
        assert open_fds() == fds, "fds leaked"
        assert maps_count() <= maps + 5, "mappings leaked"
        assert max(gaps) < 0.5, f"slow reconnects: {max(gaps):.2f} s"

        # The back-off restarts at 0.1 s after a session: with the listener
        # gone for 0.15 s the port retries at ~0.1 and ~0.3 s, so it is back
        # well before the 1 s cap.
        lst.close()
        fe.close()
        assert srv.wait_for(lambda s: s.disconnections == 52, 2.0)
        t0 = time.monotonic()
        time.sleep(0.15)
        lst = FrontendListener(path, timeout=2.0)
        fe = lst.accept()
        assert time.monotonic() - t0 < 0.6, "back-off not reset after a session"
    finally:
        if fe is not None:
            fe.close()
        lst.close()


# --------------------------------------------------------------------------
# 3. Port stop / start / close


def test_port_stop_start_close_releases_everything(sockdir, guest):
    path = os.path.join(sockdir, "vp.sock")
    warm = Port(0, parse_vdev(vp_vdev(path)))  # imports, Numba, thread machinery
    try:
        warm.start()
        with FrontendSession.connect(path, timeout=2.0) as fe:
            fe.get_features()
    finally:
        warm.close()
    fds = open_fds()

    port = Port(0, parse_vdev(vp_vdev(path)))
    try:
        port.start()
        srv = server(port)
        assert os.path.exists(path)
        fe = FrontendSession.connect(path, timeout=2.0)
        try:
            qemu_handshake(fe, guest, iommu=False)
            assert wait_until(lambda: port.link().up, 2.0), "link not up"
            port.stop()
            assert port.driver.server is None and not port.link().up
            assert srv.disconnections == 1 and "stopped" in srv.last_session.close_reason
            assert fe.channel.peer_closed(), "front-end did not see the close"
            with pytest.raises(FrontendError):
                fe.get_features()
        finally:
            fe.close()
        assert not os.path.exists(path), "socket file left behind"
        with pytest.raises(FrontendError):
            FrontendSession.connect(path, timeout=0.2)

        port.start()
        srv2 = server(port)
        assert srv2 is not srv and os.path.exists(path)
        with FrontendSession.connect(path, timeout=2.0) as fe:
            assert fe.get_features() & VERSION_1
            assert srv2.wait_for(lambda s: s.connections == 1, 1.0)
        assert srv2.wait_for(lambda s: s.disconnections == 1, 2.0)
    finally:
        port.close()
    assert not os.path.exists(path)
    assert open_fds() == fds, "fds leaked by the port"
    with pytest.raises(PortError, match="closed"):
        port.start()


# --------------------------------------------------------------------------
# 4. Bad devargs


def test_missing_path_is_a_port_error(fwd):
    with pytest.raises(PortError, match="path"):
        fwd.attach_port("net_vhost_pci0")
    assert not fwd.ports


@pytest.mark.parametrize("extra, key", [(",queues=0", "queues"), (",client=maybe", "client"),
                                        (",iotlb_revoke=lcore", "iotlb_revoke")])
def test_bad_devarg_values_name_the_key(sockdir, extra, key):
    with pytest.raises(DevargError, match=key):
        parse_vdev(vp_vdev(os.path.join(sockdir, "vp.sock"), extra))


def test_ring_outside_vm1_memory_is_refused_and_link_stays_down(sockdir, guest):
    path = os.path.join(sockdir, "vp.sock")
    port = Port(0, parse_vdev(vp_vdev(path)))
    try:
        port.start()
        with FrontendSession.connect(path, timeout=2.0) as fe:
            fe.get_features()
            fe.set_owner()
            fe.set_protocol_features(fe.get_protocol_features())  # REPLY_ACK: the refusal is a nack
            fe.set_features(VERSION_1 | PROTOCOL_FEATURES)
            fe.set_mem_table(guest.mem)
            fe.set_vring_num(0, RING_NUM)
            fe.set_vring_addr(0, 0x10, 0x20, 0x30)  # not VM1 addresses
            fe.set_vring_enable(0, True)
            with pytest.raises(FrontendError, match="refused"):
                fe.set_vring_kick(0, guest.kick[0])
            assert not port.link().up and port.driver.info()["rings ready"] == 0
    finally:
        port.close()
