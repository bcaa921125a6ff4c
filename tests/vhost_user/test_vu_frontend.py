"""vhost-user front-end session and GuestMemory: our FrontendSession (VM1)
against our BackendServer with a fake device, in one process (the server runs
its control thread): QEMU's handshake, memory visible at the right GPA, rings
started and stopped, the IOMMU flow (update, invalidate, miss), server mode,
bad layouts and no fd leaks."""
from __future__ import annotations

import os

import pytest

from pmd.vhost_user.server import BackendServer
from pmd.vhost_user.frontend import FrontendError, FrontendListener, FrontendSession
from pmd.vhost_user.messages import IotlbPerm
from pmd.guestmem.translate import translate
from pmd.virtio_user_pmd.guest_memory import PAGE_SIZE, GuestMemory

from .fakes import IOMMU_PLATFORM, MRG_RXBUF, PF, PROTOCOL_FEATURES, VERSION_1, FakeDevice

HIGH = 0x1_0000_0000
LAYOUT = [(0x0, 2 << 20), (HIGH, 4 << 20)]  # hole from 2 MiB to 4 GiB


def handshake(fe: FrontendSession, features: int) -> tuple[int, int]:
    """QEMU's order up to SET_FEATURES; returns (offered features, protocol features)."""
    offered = fe.get_features()
    fe.set_owner()
    pf = fe.get_protocol_features()
    fe.set_protocol_features(pf)
    assert fe.get_queue_num() == 2
    fe.set_backend_req_fd()
    fe.set_features(features & offered)
    return offered, pf


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------
# GuestMemory


def test_guest_memory_regions_hole_and_views():
    with GuestMemory(LAYOUT) as mem:
        assert [(r.gpa, r.size) for r in mem.regions] == LAYOUT
        mem.write(HIGH + 0x10, b"high")
        assert mem.read(HIGH + 0x10, 4) == b"high"
        r, off = mem.gpa_to_local(HIGH + 0x10, 4)
        assert (r.gpa, off) == (HIGH, 0x10)
        v = mem.view(0x1000, 3)
        v[:] = [1, 2, 3]
        assert mem.read(0x1000, 3) == b"\x01\x02\x03"
        del v
        assert os.pread(mem.regions[0].fd, 3, 0x1000) == b"\x01\x02\x03"  # the memfd holds it
        for gpa, n in ((2 << 20, 1), ((2 << 20) - 1, 2), (HIGH - 1, 1), (HIGH + (4 << 20) - 2, 4)):
            with pytest.raises(ValueError, match="not inside one region"):
                mem.gpa_to_local(gpa, n)
        regions, fds = mem.regions_for_mem_table()
        assert [(x.guest_phys_addr, x.memory_size, x.mmap_offset) for x in regions] == [
            (0, 2 << 20, 0), (HIGH, 4 << 20, 0)]
        assert regions[0].userspace_addr == mem.gpa_to_uaddr(0) and fds == [r.fd for r in mem.regions]
    assert mem.closed and mem.regions == []
    mem.close()  # idempotent


@pytest.mark.parametrize("layout, match", [
    ([], "at least one"),
    ([(0x800, PAGE_SIZE)], "page-aligned"),
    ([(0, PAGE_SIZE + 1)], "multiple"),
    ([(0, 0)], "multiple"),
    ([(-PAGE_SIZE, PAGE_SIZE)], "page-aligned"),
    ([(0, 2 * PAGE_SIZE), (PAGE_SIZE, PAGE_SIZE)], "overlaps"),
    ([(i * PAGE_SIZE, PAGE_SIZE) for i in range(510)], "at most 509"),  # 8 per SET_MEM_TABLE, 509 by ADD_MEM_REG
])
def test_guest_memory_bad_layouts_rejected(layout, match):
    before = open_fds()
    with pytest.raises(ValueError, match=match):
        GuestMemory(layout)
    assert open_fds() == before


# --------------------------------------------------------------------------
# Against the back-end


def test_full_handshake_memory_rings_and_base(served):
    srv, dev, path = served
    kick, call = os.eventfd(0, os.EFD_CLOEXEC), os.eventfd(0, os.EFD_CLOEXEC)
    try:
        with GuestMemory(LAYOUT) as mem, FrontendSession.connect(path, timeout=2.0) as fe:
            offered, pf = handshake(fe, VERSION_1 | MRG_RXBUF | PROTOCOL_FEATURES)
            want = VERSION_1 | PROTOCOL_FEATURES | IOMMU_PLATFORM
            assert offered & want == want
            assert pf & PF.REPLY_ACK.mask and fe.reply_ack
            sess = srv.session
            assert sess.features == VERSION_1 | MRG_RXBUF | PROTOCOL_FEATURES and sess.owner
            assert sess.backend_channel is not None

            mem.write(0x2000, b"low ram")
            mem.write(HIGH + 0x5000, b"above the hole")
            fe.set_mem_table(mem)
            win = sess.window
            assert not win.iommu
            assert bytes(win.array[0x2000:0x2007]) == b"low ram"
            assert bytes(win.array[HIGH + 0x5000:HIGH + 0x500E]) == b"above the hole"
            mem.write(HIGH + 0x6000, b"later")  # shared, not copied
            assert bytes(win.array[HIGH + 0x6000:HIGH + 0x6005]) == b"later"
            win.array[0x3000:0x3002] = [0xAB, 0xCD]  # and the back-end's writes come back
            assert mem.read(0x3000, 2) == b"\xab\xcd"

            desc, avail, used = HIGH, HIGH + 0x1000, HIGH + 0x2000
            fe.set_vring_num(0, 256)
            fe.set_vring_base(0, 5)
            fe.set_vring_addr(0, mem.gpa_to_uaddr(desc), mem.gpa_to_uaddr(used), mem.gpa_to_uaddr(avail))
            fe.set_vring_kick(0, kick)
            fe.set_vring_call(0, call)
            assert not dev.link
            fe.set_vring_enable(0, True)
            assert dev.link and ("vring_ready", 0) in dev.calls
            ring = sess.vrings[0]
            assert (ring.num, ring.base, ring.enabled, ring.started) == (256, 5, True, True)
            assert win.uaddr_to_gpa(ring.addr.desc_user_addr) == desc
            assert win.uaddr_to_gpa(ring.addr.avail_user_addr) == avail
            assert ring.kick_fd >= 0 and ring.call_fd >= 0
            os.eventfd_write(ring.call_fd, 1)  # the back-end's call reaches our eventfd
            assert os.eventfd_read(call) == 1

            fe.set_status(3)  # ACKNOWLEDGE | DRIVER, not DRIVER_OK: the link follows the ring
            assert fe.get_status() == 3
            assert fe.get_vring_base(0) == 12  # the fake answers base + 7
            assert not dev.link and ("vring_stopped", 0) in dev.calls
    finally:
        os.close(kick)
        os.close(call)
    assert srv.wait_for(lambda s: s.disconnections == 1)


def test_nack_raises_frontend_error(served):
    srv, dev, path = served
    with FrontendSession.connect(path, timeout=2.0) as fe:
        handshake(fe, VERSION_1 | PROTOCOL_FEATURES)
        with pytest.raises(FrontendError, match="refused"):
            fe.set_vring_num(5, 256)  # the device has 2 vrings
        with pytest.raises(FrontendError, match="refused"):
            fe.set_vring_num(0, 300)  # not a power of 2
        assert not srv.session.closed
        fe.set_vring_num(0, 256)  # still usable


def test_without_reply_ack_no_acks_requested(served):
    srv, dev, path = served
    with GuestMemory([(0, 2 << 20)]) as mem, FrontendSession.connect(path, timeout=2.0) as fe:
        fe.get_features()
        fe.set_owner()
        fe.set_protocol_features(PF.BACKEND_REQ.mask)
        assert not fe.reply_ack
        fe.set_features(VERSION_1 | PROTOCOL_FEATURES)
        fe.set_mem_table(mem)
        assert fe.get_queue_num() == 2  # the stream stayed in step
        assert srv.session.window is not None


def test_closed_peer_and_timeout_raise_frontend_error(sockdir):
    path = os.path.join(sockdir, "none.sock")
    with pytest.raises(FrontendError, match="cannot connect"):
        FrontendSession.connect(path, timeout=0.2)
    with FrontendListener(path, timeout=2.0) as lst:
        import socket as s
        peer = s.socket(s.AF_UNIX, s.SOCK_STREAM)
        peer.connect(path)
        fe = lst.accept()
        with fe:
            fe.timeout = 0.2
            with pytest.raises(FrontendError, match="no reply"):
                fe.get_features()  # the peer never answers
            peer.close()
            with pytest.raises(FrontendError):
                fe.get_queue_num()
        with pytest.raises(FrontendError, match="closed"):
            fe.get_features()


def test_iommu_update_invalidate_and_miss(served):
    srv, dev, path = served
    with GuestMemory(LAYOUT) as mem, FrontendSession.connect(path, timeout=2.0) as fe:
        handshake(fe, VERSION_1 | PROTOCOL_FEATURES | IOMMU_PLATFORM)
        gpa, iova = HIGH + 0x3000, 0x8000_0000
        mem.write(gpa, b"granted page")
        fe.set_mem_table(mem)
        sess = srv.session
        win = sess.window
        assert win.iommu and win.entries() == []
        for a in (0, gpa, iova):
            assert translate(win.table, win.table_count, a, 1, False) == -1  # nothing until a grant

        fe.iotlb_update(iova, 0x1000, mem.gpa_to_uaddr(gpa), IotlbPerm.RW)
        off = translate(win.table, win.table_count, iova, 12, True)
        assert off >= 0 and bytes(win.array[off:off + 12]) == b"granted page"
        assert translate(win.table, win.table_count, iova + 0x1000, 1, False) == -1  # only the page

        fe.iotlb_invalidate(iova, 0x1000)
        assert translate(win.table, win.table_count, iova, 1, False) == -1
        # an address in no region (the regions' own addresses depend on this process's mappings)
        outside = max(r.userspace_addr + r.size for r in mem.regions) + (8 << 20)
        with pytest.raises(FrontendError, match="refused"):
            fe.iotlb_update(iova, 0x1000, outside, IotlbPerm.RW)

        misses = []

        def on_miss(a, perm):
            misses.append((a, perm))
            fe.iotlb_update(a & ~0xFFF, 0x1000, mem.gpa_to_uaddr(gpa), perm)

        assert fe.poll_backend_requests(on_miss, 0.05) == 0
        assert sess.send_iotlb_miss(iova + 0x10, IotlbPerm.RO)
        assert fe.poll_backend_requests(on_miss, 2.0) == 1
        assert misses == [(iova + 0x10, IotlbPerm.RO)]
        off = translate(win.table, win.table_count, iova, 12, False)
        assert off >= 0 and bytes(win.array[off:off + 12]) == b"granted page"
        assert translate(win.table, win.table_count, iova, 1, True) == -1  # RO grant


def test_server_mode_listener_accepts_client_backend(sockdir):
    path = os.path.join(sockdir, "fe.sock")
    dev = FakeDevice()
    with FrontendListener(path, timeout=5.0) as lst:
        srv = BackendServer(path, dev, client=True)
        srv.start()
        try:
            with lst.accept() as fe, GuestMemory([(0, 2 << 20)]) as mem:
                handshake(fe, VERSION_1 | PROTOCOL_FEATURES)
                mem.write(0x100, b"server mode")
                fe.set_mem_table(mem)
                assert bytes(srv.session.window.array[0x100:0x10B]) == b"server mode"
        finally:
            srv.stop()
    assert not os.path.exists(path)


def test_no_fd_leak_over_connect_close_cycles(served):
    srv, dev, path = served

    def cycle(i: int) -> None:
        kick = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            with GuestMemory(LAYOUT) as mem, FrontendSession.connect(path, timeout=2.0) as fe:
                handshake(fe, VERSION_1 | PROTOCOL_FEATURES)
                fe.set_mem_table(mem)
                fe.set_vring_num(0, 64)
                fe.set_vring_addr(0, mem.gpa_to_uaddr(0), mem.gpa_to_uaddr(0x2000), mem.gpa_to_uaddr(0x1000))
                fe.set_vring_kick(0, kick)
                fe.set_vring_call(0, None)
                fe.set_vring_enable(0, True)
        finally:
            os.close(kick)
        assert srv.wait_for(lambda s: s.disconnections == i + 1 and s.session is None)

    cycle(0)  # warm up (lazy imports, thread-local state)
    before = open_fds()
    for i in range(1, 21):
        cycle(i)
    assert open_fds() == before
