"""SEND_RARP: the vhost-pci port announces VM1's MAC (a RARP broadcast, as
QEMU's announce and DPDK's vhost library send) through the forwarding
engine, as if VM1 had sent it.  Here the port forwards into a net_ring that
loops back, so VM1 itself receives the announcement; the VF case (into a
namespace) is in tests/vf/test_vf_port.py."""
from __future__ import annotations

import os
import time

import pytest

from pmd.ethdev import Port, PortError
from pmd.mbuf import create_pool
from pmd.vdev import parse_vdev
from pmd.vhostpci_pmd.announce import RARP_LEN, rarp_frame
from tests.vhostpci.peer_io import check_packet, make_packet, recv, send


def test_rarp_frame_layout():
    mac = bytes.fromhex("525400123456")
    f = rarp_frame(mac)
    assert len(f) == RARP_LEN
    assert f[:6] == b"\xff" * 6 and f[6:12] == mac and f[12:14] == b"\x80\x35"
    assert f[14:22] == bytes([0, 1, 8, 0, 6, 4, 0, 3])  # Ethernet/IPv4, reverse request
    assert f[22:28] == mac and f[32:38] == mac and f[28:32] == f[38:42] == bytes(4)


def test_send_rarp_goes_out_through_the_forwarding_engine(fwd, sockdir):
    path = os.path.join(sockdir, "vp.sock")
    vp = fwd.attach_port(f"net_vhost_pci0,path={path}")
    vp.start()
    fwd.attach_port("net_ring0").start()  # loops back: VM1 -> vhost-pci -> ring -> vhost-pci -> VM1
    fwd.config.mode = "io"
    fwd.start()
    vm1 = Port(9, parse_vdev(f"net_virtio_user9,path={path}"))
    pool = create_pool(1024)
    try:
        vm1.start()
        assert vm1.driver.wait_link(True, 10)
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while vm1.driver.rx_buffers_posted() < vm1.driver.args["queue_size"]:
            assert time.monotonic() < deadline
            got += recv(vm1, pool)
            time.sleep(0.001)
        rx0 = vp.stats().ipackets
        vm1.driver.announce()
        assert send(vm1, pool, [make_packet(5, 100)]) == 1  # ordinary traffic goes on
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            got += recv(vm1, pool)
        assert sorted(got, key=len) == [rarp_frame(vm1.mac()), make_packet(5, 100)], [g.hex() for g in got]
        assert check_packet(make_packet(5, 100)) == 5
        xs = vp.driver.xstats()
        assert xs["rarp_announcements"] == xs["rarp_requests"] == 1, xs
        assert vp.stats().ipackets == rx0 + 2  # the announcement counts as received
    finally:
        vm1.close()


def test_announce_needs_the_rarp_protocol_feature(sockdir):
    """A back-end without RARP: the front-end's announce is refused clearly."""
    from pmd.vhost_user.server import BackendServer
    from tests.vhost_user.fakes import FakeDevice

    path = os.path.join(sockdir, "fake.sock")
    with BackendServer(path, FakeDevice()):
        vm1 = Port(9, parse_vdev(f"net_virtio_user9,path={path}"))
        try:
            vm1.start()
            assert vm1.driver.wait_link(True, 10)
            with pytest.raises(PortError, match="does not support SEND_RARP"):
                vm1.driver.announce()
        finally:
            vm1.close()
