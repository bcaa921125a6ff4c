"""The compiled IOTLB path (``pmd/vhostpci_pmd/iotlb_serve.py``).

A front-end driven by hand (QEMU's order, behind an IOMMU) sends IOTLB
messages to a port whose lcore is forwarding: the plain ones must be taken
by the kernel -- counted in ``served``, never silently by the Python path --
with exactly the Python path's isolation (a page is mapped when its UPDATE
is acked, unmapped when its INVALIDATE is); everything else must reach the
session's path and get its answer there."""
from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
import pytest

from pmd.guestmem.translate import granted_perm
from pmd.iotlb_wire import FRONTEND_IOTLB_MSG, INVALIDATE, MSG_SIZE, REPLY_SIZE, UPDATE, get_u32, get_u64, put_iotlb
from pmd.vhost_user.frontend import FrontendError, FrontendSession
from pmd.vhost_user.messages import (
    FLAG_NEED_REPLY, FLAG_REPLY, HEADER_SIZE, VERSION, FrontendReq, IotlbMsg, IotlbPerm, IotlbType,
)
from pmd.vhostpci_pmd.iotlb import ASK_SLOTS
from pmd.vhostpci_pmd.state import VQ_READER
from tests.util import wait_until
from tests.vhost_user.test_vu_backend import readable
from tests.vhostpci.test_port_control import MEM_SIZE, Guest, qemu_handshake, vp_vdev

PAGE = 4096
BUF = 0x80000  # a page of VM1's memory no ring uses


def mapped_soon(win, iova: int) -> bool:
    """Whether the page at ``iova`` becomes readable and translated: an
    acked UPDATE is mapped at once, or (the control thread serving while an
    lcore polls on a CPU of its own) by that lcore a moment later
    (``iotlb_maps.py``)."""
    return wait_until(lambda: readable(win.base + iova)
                      and granted_perm(win.table, win.table_count, np.int64(iova)) != 0, 2.0)


@pytest.fixture(params=["lcore", "control"])
def setup(fwd, sockdir, request):
    """(front-end, port, guest): rings granted, the rest of VM1's memory not;
    the port's lcore serves the IOTLB messages whenever it polls
    (``iotlb_lcore=1``), or only the control thread does (``=0``); a param
    may add devargs after a comma (``"control,iotlb_revoke=control"``)."""
    guest = Guest()
    who, _, more = request.param.partition(",")
    extra = (",iotlb_lcore=1" if who == "lcore" else ",iotlb_lcore=0") + ("," + more if more else "")
    port = fwd.attach_port(vp_vdev(os.path.join(sockdir, "vp.sock"), extra))
    port.start()
    fwd.config.mode = "rxonly"
    fwd.start()  # an lcore polls the port: every invalidate needs a grace period
    fe = FrontendSession.connect(os.path.join(sockdir, "vp.sock"), timeout=2.0)
    try:
        qemu_handshake(fe, guest, iommu=True)
        assert wait_until(lambda: port.link().up, 5.0), "link not up"
        fe.iotlb_invalidate(BUF, MEM_SIZE - BUF)  # only the rings stay granted
        yield fe, port, guest
    finally:
        fe.close()
        if fwd.running:
            fwd.stop()
        guest.close()


def test_plain_updates_and_invalidates_are_compiled_and_isolate(setup):
    fe, port, guest = setup
    dev = port.driver.device
    win = dev.window
    served = dev.iotlb_server.served
    assert served >= 2, "the handshake's grant and invalidate took the Python path"
    uaddr = guest.mem.gpa_to_uaddr(BUF)
    for round_ in range(50):
        page = BUF + (round_ % 8) * PAGE
        perm = IotlbPerm.RO if round_ % 2 else IotlbPerm.WO
        fe.iotlb_update(page, PAGE, uaddr + (page - BUF), perm)
        assert mapped_soon(win, page), "acked UPDATE never mapped"
        assert granted_perm(win.table, win.table_count, np.int64(page)) == perm
        fe.iotlb_invalidate(page, PAGE)
        assert not readable(win.base + page), "acked INVALIDATE still mapped"
    assert dev.iotlb_server.served == served + 100
    xs = dev.iotlb_xstats()
    if dev.iotlb_server.policy.mode is False:  # iotlb_lcore=0 (the lcore's share: test_iotlb_lend.py)
        assert xs["iotlb_served_by_lcore"] == 0, xs
    assert xs["iotlb_updates"] >= 51 and xs["iotlb_invalidates"] >= 51
    # the profile: the parts are inside their wholes
    assert xs["iotlb_map_ns"] <= xs["iotlb_update_ns"], xs
    assert xs["iotlb_map_ns"] + xs["iotlb_after_ack_map_ns"] > 0, xs  # (the lcore's: after the ack)
    assert 0 < xs["iotlb_grace_ns"] + xs["iotlb_revoke_ns"] <= xs["iotlb_invalidate_ns"], xs
    # the session records them once the kernel returns, just after the last ack went out
    assert wait_until(lambda: list(port.driver.server.session.history).count(int(FrontendReq.IOTLB_MSG)) >= 102, 2.0)
    assert port.stats().ierrors == 0


def test_an_ask_stays_noted_through_a_thousand_updates(setup):
    """UPDATEs served at a stretch answer only their own pages' asks: the
    ask for a page none of them covers stays noted, so it is not sent twice
    (the service once forgot every ask after 1024 UPDATEs between two looks
    of the control thread)."""
    fe, port, guest = setup
    dev = port.driver.device
    other = BUF + 64 * PAGE
    row = dev.iotlb.asked[(other >> 12) & (ASK_SLOTS - 1)]
    row[0], row[1] = other, time.monotonic_ns()  # as a kernel notes its MISS
    uaddr = guest.mem.gpa_to_uaddr(BUF)
    served = dev.iotlb_server.served
    for _ in range(1100):
        fe.iotlb_update(BUF, PAGE, uaddr, IotlbPerm.RO)
        fe.iotlb_invalidate(BUF, PAGE)
    assert dev.iotlb_server.served == served + 2200
    assert wait_until(lambda: list(port.driver.server.session.history).count(int(FrontendReq.IOTLB_MSG))
                      >= served + 2200, 2.0)  # every batch drained
    assert row[0] == other and row[1] != 0, "an ask no UPDATE answered was forgotten"


def test_a_run_of_messages_is_answered_in_one_send(setup):
    """A front-end that sends several IOTLB messages at once, then reads the
    replies (our virtio-user's transient rounds do), gets them together:
    one send, one wake-up, each in order and each after its own work."""
    fe, port, guest = setup
    win = port.driver.device.window
    uaddr = guest.mem.gpa_to_uaddr(BUF)
    flags = VERSION | FLAG_NEED_REPLY
    run = np.zeros(3 * MSG_SIZE, np.uint8)
    put_iotlb(run, 0, FRONTEND_IOTLB_MSG, flags, BUF, PAGE, uaddr, int(IotlbPerm.RO), UPDATE)
    # an INVALIDATE inside the run: its reply waits for the run's last one too
    put_iotlb(run, MSG_SIZE, FRONTEND_IOTLB_MSG, flags, BUF, PAGE, 0, 0, INVALIDATE)
    put_iotlb(run, 2 * MSG_SIZE, FRONTEND_IOTLB_MSG, flags, BUF + PAGE, PAGE, uaddr + PAGE, int(IotlbPerm.RW), UPDATE)
    served = port.driver.device.iotlb_server.served
    with socket.socket(fileno=os.dup(fe.channel.fileno())) as sock:  # the session's socket, raw
        sock.settimeout(5.0)
        sock.sendall(run.tobytes())
        first = sock.recv(3 * REPLY_SIZE)  # whatever arrived by the first wake-up
    assert len(first) == 3 * REPLY_SIZE, f"{len(first)} bytes: the replies came one by one"
    for k in range(3):
        reply = np.frombuffer(first[k * REPLY_SIZE:(k + 1) * REPLY_SIZE], np.uint8)
        assert get_u32(reply, 0) == FRONTEND_IOTLB_MSG and get_u32(reply, 4) & FLAG_REPLY
        assert get_u64(reply, HEADER_SIZE) == 0, f"message {k} refused"
    assert port.driver.device.iotlb_server.served == served + 3
    assert not readable(win.base + BUF) and mapped_soon(win, BUF + PAGE)
    fe.iotlb_invalidate(BUF + PAGE, PAGE)  # the session goes on as before
    assert not readable(win.base + BUF + PAGE)


def test_what_the_kernel_leaves_gets_the_sessions_answer(setup):
    fe, port, guest = setup
    dev = port.driver.device
    win = dev.window
    uaddr = guest.mem.gpa_to_uaddr(BUF)
    fe.iotlb_update(BUF, PAGE, uaddr, IotlbPerm.RO)
    served = dev.iotlb_server.served
    # a re-grant of a live page with another perm: the Python path replaces it
    fe.iotlb_update(BUF, PAGE, uaddr, IotlbPerm.RW)
    assert granted_perm(win.table, win.table_count, np.int64(BUF)) == IotlbPerm.RW
    # a uaddr in no memory region: refused (nack), nothing mapped
    with pytest.raises(FrontendError, match="refused"):
        fe.iotlb_update(BUF + PAGE, PAGE, uaddr + 16 * MEM_SIZE, IotlbPerm.RO)
    assert not readable(win.base + BUF + PAGE)
    # a type a front-end never sends: refused
    reply = fe._call(FrontendReq.IOTLB_MSG, IotlbMsg(BUF, PAGE, uaddr, 1, IotlbType.ACCESS_FAIL),
                     need_reply=True, expect_reply=True)
    with reply:
        assert reply.u64 != 0
    assert dev.iotlb_server.served == served, "the kernel took a message it must leave"
    # and the plain case is still the kernel's afterwards
    fe.iotlb_invalidate(BUF, PAGE)
    assert dev.iotlb_server.served == served + 1
    assert not readable(win.base + BUF)


def test_a_flush_to_the_top_of_the_iova_space_is_compiled(setup):
    """A lazy guest IOMMU flushes whole ranges at once; QEMU sends them as
    INVALIDATEs that end exactly at 2**64.  The kernel takes those too (they
    once went to the Python path, on the control thread's CPU), revokes every
    page granted in the range in one go with the ungranted gaps between them,
    and leaves the grant below the range mapped."""
    fe, port, guest = setup
    dev = port.driver.device
    win = dev.window
    uaddr = guest.mem.gpa_to_uaddr(BUF)
    granted = [BUF + k * PAGE for k in (0, 2, 3, 5, 8)]
    for page in granted:
        fe.iotlb_update(page, PAGE, uaddr + (page - BUF), IotlbPerm.RW)
    served = dev.iotlb_server.served
    top = BUF + 2 * PAGE
    fe.iotlb_invalidate(top, (1 << 64) - top)
    assert dev.iotlb_server.served == served + 1, "the flush took the Python path"
    assert readable(win.base + BUF), "the grant below the flush was revoked"
    assert granted_perm(win.table, win.table_count, np.int64(BUF)) == IotlbPerm.RW
    for page in granted[1:] + [BUF + PAGE, BUF + 4 * PAGE, BUF + 7 * PAGE]:
        assert not readable(win.base + page), hex(page)
        assert granted_perm(win.table, win.table_count, np.int64(page)) == 0, hex(page)
    # a page in a gap the revocation covered is granted again as usual
    fe.iotlb_update(BUF + 4 * PAGE, PAGE, uaddr + 4 * PAGE, IotlbPerm.RO)
    assert mapped_soon(win, BUF + 4 * PAGE) and not readable(win.base + BUF + 3 * PAGE)
    fe.iotlb_invalidate(0, (1 << 64) - 1)  # everything, the rings too
    assert dev.iotlb_server.served == served + 3
    assert not readable(win.base + BUF) and not readable(win.base + BUF + 4 * PAGE)
    fe.iotlb_update(BUF, PAGE, uaddr, IotlbPerm.RW)
    fe.iotlb_invalidate(BUF, (1 << 64) - 1)  # past 2**64: clamped there, as the Python path rounds it
    assert dev.iotlb_server.served == served + 5 and not readable(win.base + BUF)


def test_an_invalidate_waits_only_for_a_burst_inside_the_window(setup, fwd):
    """The grace period is the vrings' read sections: a burst inside the
    window (its VQ_READER odd) holds the ack and the unmap until it leaves."""
    fe, port, guest = setup
    fwd.stop()  # no lcore polls now: the test plays one inside its rx burst
    dev = port.driver.device
    win = dev.window
    served = dev.iotlb_server.served
    fe.iotlb_update(BUF, PAGE, guest.mem.gpa_to_uaddr(BUF), IotlbPerm.RW)
    fe.iotlb_invalidate(BUF, PAGE)  # every section closed: acked at once
    assert not readable(win.base + BUF)
    fe.iotlb_update(BUF, PAGE, guest.mem.gpa_to_uaddr(BUF), IotlbPerm.RW)
    dev.vq[1, VQ_READER] += 1  # VM1's transmit ring: a burst is inside
    t = threading.Thread(target=fe.iotlb_invalidate, args=(BUF, PAGE))
    t.start()
    t.join(0.3)  # the wait's timeout is 1 s
    try:
        assert t.is_alive(), "acked while a burst was inside the window"
        assert readable(win.base + BUF), "revoked while a burst was inside the window"
    finally:
        dev.vq[1, VQ_READER] += 1  # the burst leaves
        t.join(5.0)
    assert not t.is_alive()
    assert not readable(win.base + BUF)
    assert dev.iotlb_server.served == served + 4, "the kernel did not take them"
