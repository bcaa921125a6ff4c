"""CONFIGURE_MEM_SLOTS: GET_MAX_MEM_SLOTS, ADD_MEM_REG and REM_MEM_REG.

Our virtio-user (VM1) hands its memory one region at a time when the port
offers the feature (as QEMU does), so a VM1 with more regions than
SET_MEM_TABLE's 8 works; it hot-adds and hot-removes memory while VM2
forwards (each removal in RCU order: rows out, quiesce, unmap).  A hand-
driven VM1 (``rogue_vm1``) puts a packet in hot-added memory and, once the
region is removed, points a descriptor at it again."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from pmd.ethdev import Port, PortError
from pmd.mbuf import create_pool
from pmd.vdev import parse_vdev
from pmd.vhost_user.frontend import FrontendError
from pmd.vhost_user.messages import FrontendReq, MemoryRegion
from tests.util import memfd_fds, memfd_maps, wait_until
from tests.vhost_user.test_vu_backend import readable
from tests.vhostpci.peer_io import check_packet, make_packet, recv, send
from tests.vhostpci.rogue_vm1 import HDR_LEN, TX, RogueVM1

F = FrontendReq
MIB = 1 << 20


def start_vm2(fwd, path: str):
    vp = fwd.attach_port(f"net_vhost_pci0,path={path}")
    vp.start()
    fwd.config.mode = "io"
    fwd.start()
    return vp


def start_vm1(path: str, mem: str) -> tuple[Port, object]:
    vm1 = Port(9, parse_vdev(f"net_virtio_user9,path={path},mem={mem}"))
    vm1.start()
    assert vm1.driver.wait_link(True, 10)
    return vm1, create_pool(1024)


def round_trips(vm1: Port, pool, seqs: range, size: int = 200) -> list[int]:
    """Send ``seqs`` from VM1 (VM2 forwards them back); the seqs that came back intact."""
    got: list[int] = []
    for seq in seqs:
        assert send(vm1, pool, [make_packet(seq, size)]) == 1
        deadline = time.monotonic() + 2.0
        while len(got) <= seq - seqs.start and time.monotonic() < deadline:
            got += [check_packet(p) for p in recv(vm1, pool)]
    return got


def session(vp):
    return vp.driver.server.session


def test_more_than_8_regions_through_add_mem_reg(fwd, sockdir):
    path = os.path.join(sockdir, "vp.sock")
    vp = start_vm2(fwd, path)
    # 12 regions of 2 MiB with holes between them; rings land in the first, buffers in the last
    mem = "/".join(f"2M@{i * 4 * MIB:#x}" for i in range(12))
    vm1, pool = start_vm1(path, mem)
    try:
        sess = session(vp)
        history = list(sess.history)
        assert history.count(F.ADD_MEM_REG) == 12 and F.SET_MEM_TABLE not in history, history
        assert F.GET_MAX_MEM_SLOTS in history
        assert int(vp.driver.window.region_count[0]) == 12
        got = round_trips(vm1, pool, range(100))
        assert got == list(range(100)), got
    finally:
        vm1.close()
    assert vp.driver.device.max_mem_slots() >= 509


def test_hot_add_and_remove_while_forwarding_no_leaks(fwd, sockdir):
    path = os.path.join(sockdir, "vp.sock")
    vp = start_vm2(fwd, path)
    vm1, pool = start_vm1(path, "32M@0/32M@0x100000000")
    win = vp.driver.window
    try:
        assert round_trips(vm1, pool, range(10)) == list(range(10))
        fds0, maps0 = memfd_fds(), memfd_maps()
        seq = 10
        for i in range(20):
            gpa = 0x2_0000_0000 + i * 0x1000_0000
            vm1.driver.add_memory(gpa, 2 * MIB)
            assert int(win.region_count[0]) == 3
            data = np.random.default_rng(i).integers(0, 256, 4096, dtype=np.uint8).tobytes()
            vm1.driver.memory.write(gpa + MIB, data)
            assert bytes(win.array[gpa + MIB: gpa + MIB + 4096]) == data  # VM2 sees the new memory
            assert round_trips(vm1, pool, range(seq, seq + 5)) == list(range(seq, seq + 5))
            seq += 5
            vm1.driver.remove_memory(gpa)
            assert int(win.region_count[0]) == 2
            assert not readable(win.base + gpa + MIB), "removed memory still mapped in VM2"
        assert round_trips(vm1, pool, range(seq, seq + 10)) == list(range(seq, seq + 10))
        assert memfd_fds() == fds0 and memfd_maps() == maps0
        with pytest.raises(PortError, match="holds rings or buffers"):
            vm1.driver.remove_memory(0)
        with pytest.raises(PortError, match="overlaps"):
            vm1.driver.add_memory(0x100000, 2 * MIB)
    finally:
        vm1.close()
    st = vp.stats()
    assert st.ierrors == st.oerrors == 0


def test_packet_in_hot_added_memory_then_removed(sockdir):
    """A tx packet placed in hot-added memory is forwarded intact; after
    REM_MEM_REG a descriptor into it is a counted bad descriptor (the
    pages are gone from VM2), and bad ADD/REM requests are nacked."""
    path = os.path.join(sockdir, "vp.sock")
    port = Port(0, parse_vdev(f"net_vhost_pci0,path={path}"))
    port.start()
    pool = create_pool(256)
    vm = RogueVM1(path, iommu=False)
    new_gpa = 0x4000_0000
    try:
        region = vm.mem.add_region(new_gpa, 2 * MIB)
        mr = MemoryRegion(region.gpa, region.size, region.userspace_addr, 0)
        vm.fe.add_mem_reg(mr, region.fd)
        pkt = make_packet(7, 300)
        vm.mem.write(new_gpa + 0x1000, bytes(HDR_LEN) + pkt)
        vm.desc(TX, 0, new_gpa + 0x1000, HDR_LEN + len(pkt))
        vm.offer(TX, 0)
        got: list[bytes] = []
        assert wait_until(lambda: got.extend(recv(port, pool)) or got, 2.0)
        assert got == [pkt]
        # nacked: overlapping, beyond its fd, removing what is not there
        with pytest.raises(FrontendError, match="refused"):
            vm.fe.add_mem_reg(MemoryRegion(new_gpa + MIB, 2 * MIB, region.userspace_addr + 8 * MIB, 0), region.fd)
        with pytest.raises(FrontendError, match="refused"):
            vm.fe.add_mem_reg(MemoryRegion(0x8000_0000, 4 * MIB, 0x7000_0000_0000, 0), region.fd)
        with pytest.raises(FrontendError, match="refused"):
            vm.fe.rem_mem_reg(MemoryRegion(0x9000_0000, 2 * MIB, 0x7000_0000_0000, 0))
        vm.fe.rem_mem_reg(mr)
        assert not readable(port.driver.window.base + new_gpa + 0x1000)
        bad0 = port.driver.xstats()["bad_descriptors"]
        vm.desc(TX, 1, new_gpa + 0x1000, HDR_LEN + len(pkt))
        vm.offer(TX, 1)
        assert wait_until(lambda: recv(port, pool) == [] and port.driver.xstats()["bad_descriptors"] > bad0, 2.0)
        assert vm.used_idx(TX) == 2  # returned, not read
        srv = port.driver.server
        assert srv.session is not None and not srv.session.closed
    finally:
        vm.close()
        port.close()
