"""The control thread's INVALIDATEs revoked by the polling lcore, through
the port's stand-in process (``iotlb_revoke=auto``, ``pmd/standin.py``):
the same isolation as its own revocation, the stand-in sending the ack,
and the process goes with the port."""
from __future__ import annotations

import os
import socket

import psutil
import pytest

from pmd.standin import W_GIVEN_GEN
from pmd.vhost_user.frontend import FrontendSession
from pmd.vhost_user.messages import IotlbPerm
from pmd.vhostpci_pmd.iotlb_serve import HAND_MAX_BYTES
from tests.util import wait_until
from tests.vhost_user.test_vu_backend import raw_send, readable
from tests.vhostpci.test_iotlb_fast import BUF, PAGE, mapped_soon, setup  # noqa: F401  (the fixture)
from tests.vhostpci.test_iotlb_lend import grant_and_revoke_until, keep_polling
from tests.vhostpci.test_port_control import MEM_SIZE, qemu_handshake


@pytest.mark.parametrize("setup", ["control"], indirect=True)
def test_the_polling_lcore_revokes_what_the_control_thread_serves(setup, fwd):
    fe, port, guest = setup
    keep_polling(fwd)  # a sleeping lcore revokes nothing: then the control thread does
    dev = port.driver.device
    win = dev.window
    uaddr = guest.mem.gpa_to_uaddr(BUF)
    xs = dev.iotlb_xstats
    # the stand-in starts once the lcore stamps; a preempted lcore hands the job back. Once it holds
    # the socket, the stand-in sends the ack of what the lcore revoked (each ack's isolation checked)
    grant_and_revoke_until(fe, dev, guest, "iotlb_acked_by_standin", 20, (IotlbPerm.RW, IotlbPerm.RO))
    # and the UPDATEs the control thread acked, the lcore maps (iotlb_maps.py; each one readable soon)
    grant_and_revoke_until(fe, dev, guest, "iotlb_mapped_by_lcore", 20, (IotlbPerm.RW, IotlbPerm.RO))
    got = xs()
    assert got["iotlb_mapped_by_lcore"] <= got["iotlb_mapped_after_ack"] and got["iotlb_map_failed"] == 0, got
    assert got["iotlb_acked_by_standin"] <= got["iotlb_revoked_by_lcore"], got
    assert got["iotlb_served_by_lcore"] == 0, "iotlb_lcore=0: the control thread serves every message"
    assert 0 < got["iotlb_grace_ns"] + got["iotlb_revoke_ns"] <= got["iotlb_invalidate_ns"], got
    # a flush of many pages (a lazy guest's) is revoked here: unmapping them takes as long anywhere,
    # and the lcore would stop polling meanwhile
    n = HAND_MAX_BYTES // PAGE + 1
    for k in range(n):
        fe.iotlb_update(BUF + k * PAGE, PAGE, uaddr + k * PAGE, IotlbPerm.RW)
    handed = xs()["iotlb_revoked_by_lcore"]
    fe.iotlb_invalidate(BUF, n * PAGE)
    assert not any(readable(win.base + BUF + k * PAGE) for k in range(n))
    assert xs()["iotlb_revoked_by_lcore"] == handed
    standin = dev.iotlb_server.standin
    pid = standin.pid
    # stopped, the lcore takes nothing: the control thread revokes, at once
    fwd.stop()
    after = xs()["iotlb_revoked_by_lcore"]
    for _ in range(10):
        fe.iotlb_update(BUF, PAGE, uaddr, IotlbPerm.RW)
        assert mapped_soon(win, BUF)
        fe.iotlb_invalidate(BUF, PAGE)
        assert not readable(win.base + BUF)
    assert xs()["iotlb_revoked_by_lcore"] == after
    # the stand-in goes with the port
    port.close()
    assert wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                      5.0), "the stand-in outlived its port"


@pytest.mark.parametrize("setup", ["control,iotlb_revoke=control"], indirect=True)
def test_iotlb_revoke_control_keeps_every_revocation_on_the_control_thread(setup, fwd, sockdir):
    fe, port, guest = setup
    dev = port.driver.device
    keep_polling(fwd)
    uaddr = guest.mem.gpa_to_uaddr(BUF)
    for _ in range(200):
        fe.iotlb_update(BUF, PAGE, uaddr, IotlbPerm.RW)
        fe.iotlb_invalidate(BUF, PAGE)
        assert not readable(dev.window.base + BUF)
    assert dev.iotlb_xstats()["iotlb_revoked_by_lcore"] == 0


@pytest.mark.parametrize("setup", ["control"], indirect=True)
def test_a_session_closed_by_the_port_ends_for_the_front_end_while_the_stand_in_holds_its_socket(setup, fwd):
    """The stand-in holds a dup of the session's socket: the port's close
    of a session must still end the connection for the front-end."""
    fe, port, guest = setup
    keep_polling(fwd)
    dev = port.driver.device
    grant_and_revoke_until(fe, dev, guest, "iotlb_acked_by_standin", 3)
    with socket.socket(fileno=os.dup(fe.channel.fileno())) as sock:
        raw_send(sock, 999)  # an unknown request: the port closes the session
    assert wait_until(fe.channel.peer_closed, 5.0), "the front-end still sees the session open"


@pytest.mark.parametrize("setup", ["control"], indirect=True)
def test_the_next_session_s_acks_go_on_its_own_socket(setup, fwd, sockdir):
    """A session's end takes its socket from the stand-in: the next session
    may get the same fd number, and its acks must not go to the old socket
    (shut down: each would fall short, counted in ``iotlb_standin_unsent``)."""
    fe, port, guest = setup
    keep_polling(fwd)
    dev = port.driver.device
    words = dev.iotlb_server.standin.hand.words
    grant_and_revoke_until(fe, dev, guest, "iotlb_acked_by_standin", 3)
    assert words[W_GIVEN_GEN] != 0, "the stand-in holds the session's socket"
    fe.close()
    assert wait_until(lambda: words[W_GIVEN_GEN] == 0, 5.0), "the ended session's socket is still the stand-in's"
    fe2 = FrontendSession.connect(os.path.join(sockdir, "vp.sock"), timeout=2.0)
    try:
        qemu_handshake(fe2, guest, iommu=True)
        assert wait_until(lambda: port.link().up, 5.0), "link not up"
        fe2.iotlb_invalidate(BUF, MEM_SIZE - BUF)
        grant_and_revoke_until(fe2, dev, guest, "iotlb_acked_by_standin", 3)
        assert dev.iotlb_xstats()["iotlb_standin_unsent"] == 0
    finally:
        fe2.close()
