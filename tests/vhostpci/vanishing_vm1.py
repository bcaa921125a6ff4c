"""Child process of test_vanishing_memory: VM1 shrinks its memory under VM2.

VM2 is a forwarding runtime in this process (io mode, one lcore): a
net_ring pair (ports 0 <-> 1, always busy, so the lcore never sleeps) and a
net_vhost_pci port (port 2, forwarding to itself).  VM1 is a ``RogueVM1``
whose rings and buffers live in its region A.  A first packet goes around;
then VM1 truncates region A's memfd to ``SIZE`` bytes (0: all of it), so the
lcore's next read of the ring is a SIGBUS.  Prints one ``key: value`` line
per check; the parent asserts them.  If VM2 dies, the parent sees the signal.

``python -m tests.vhostpci.vanishing_vm1 plain|iommu SIZE``
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

from pmd.fwd.runtime import Forwarding
from pmd.lcore import LcoreManager
from pmd.virtio.split import VRING_DESC_F_WRITE as WRITE
from tests.conftest import CPUS, WORKER_CPU
from tests.util import wait_until
from tests.vhostpci.peer_io import check_packet, make_packet
from tests.vhostpci.rogue_vm1 import HDR_LEN, PAGE, RX, TX, RogueVM1


def ring_rx(fw: Forwarding) -> int:
    st = fw.fwd_stats()
    return st[0]["rx"] + st[1]["rx"]


def round_trip(vm: RogueVM1, seq: int) -> bool:
    """One packet out of VM1's tx ring, back into its rx ring, intact."""
    slot = vm.avail_idx[RX] % 8
    vm.desc(RX, slot, vm.rx_slot(slot), PAGE, WRITE)
    vm.offer(RX, slot)
    used0 = vm.used_idx(RX)
    gpa, n = vm.tx_buffer(slot, make_packet(seq, 64))
    vm.desc(TX, slot, gpa, n)
    vm.offer(TX, slot)
    os.eventfd_write(vm.kick[TX], 1)
    if not wait_until(lambda: vm.used_idx(RX) != used0, 3.0):
        return False
    _, length = vm.used(RX, used0)
    return check_packet(vm.mem.read(vm.rx_slot(slot) + HDR_LEN, length - HDR_LEN)) == seq


def main(mode: str, size: int) -> None:
    d = tempfile.mkdtemp(prefix="vanish", dir="/tmp")
    path = os.path.join(d, "vp.sock")
    fw = Forwarding(LcoreManager({0: CPUS[0], 1: WORKER_CPU}, 0), nb_mbufs=1024)
    try:
        for vdev in ("net_ring1,peer=net_ring2", "net_ring2", f"net_vhost_pci0,path={path}"):
            fw.attach_port(vdev)
        for pid in sorted(fw.ports):
            fw.start_port(pid)
        fw.config.mode = "io"
        fw.start(tx_first=True)
        vp = fw.port(2)
        srv = vp.driver.server
        vm = RogueVM1(path, iommu=mode == "iommu")
        print("first round trip:", round_trip(vm, 1), flush=True)
        region = vm.mem.regions[1]  # A: rings and buffers
        os.ftruncate(region.fd, size)  # from here on VM1's own code keeps off region A
        closed = srv.wait_for(lambda s: s.disconnections >= 1, 5.0)
        print("session closed:", closed, flush=True)
        print("reason:", srv.last_session.close_reason, flush=True)
        print("faults:", vp.driver.xstats()["guest_memory_faults"], flush=True)
        print("link up:", vp.link().up, flush=True)
        print("lcore running:", fw.lcores.is_running(1), flush=True)
        before = ring_rx(fw)
        print("ring ports forward:", wait_until(lambda: ring_rx(fw) > before + 1000, 3.0), flush=True)
        vm.fe.close()
        vm.mem.regions.remove(region)  # its pages are gone: unmapping is all that is left
        region.mm.close()
        os.close(region.fd)
        vm.close()
        vm = RogueVM1(path, iommu=mode == "iommu")  # a new VM1 is served as before
        print("new front-end round trip:", round_trip(vm, 3), flush=True)
        vm.close()
    finally:
        fw.close()
        shutil.rmtree(d, ignore_errors=True)
    print("done", flush=True)


if __name__ == "__main__":
    t0 = time.monotonic()
    main(sys.argv[1], int(sys.argv[2]))
    print(f"seconds: {time.monotonic() - t0:.1f}", flush=True)
