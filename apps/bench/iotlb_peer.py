"""The front-end of ``vhostpci-bench iotlb``'s update/invalidate figures, in
its own process as QEMU is: ``python -m apps.bench.iotlb_peer PATH SAMPLES``.

It connects to the vhost-pci port's socket, negotiates what QEMU negotiates
behind a vIOMMU (IOMMU_PLATFORM, REPLY_ACK), hands over 1 MiB of memory and
then times ``SAMPLES`` pairs: an UPDATE of one 4 KiB page (read-only) until
its ack, and that page's INVALIDATE until its ack, both with NEED_REPLY.
Prints one JSON line: the two lists of seconds.  Its own process keeps the
figures free of the bench's threads (one interpreter lock would be shared
with VM2's control thread otherwise).
"""
from __future__ import annotations

import json
import sys
import time

from pmd.vhost_user.frontend import FrontendSession
from pmd.vhost_user.messages import VHOST_USER_F_PROTOCOL_FEATURES, IotlbPerm
from pmd.virtio.features import VIRTIO_F_IOMMU_PLATFORM, VIRTIO_F_VERSION_1
from pmd.virtio_user_pmd.guest_memory import GuestMemory

MEM_SIZE = 1 << 20
PAGE = 4096


def measure(path: str, samples: int) -> tuple[list[float], list[float]]:
    mem = GuestMemory([(0, MEM_SIZE)])
    fe = FrontendSession.connect(path, timeout=10.0)
    try:
        want = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_IOMMU_PLATFORM) | (1 << VHOST_USER_F_PROTOCOL_FEATURES)
        offered = fe.get_features()
        if offered & want != want:
            raise RuntimeError(f"the port offers features {offered:#x}, not IOMMU_PLATFORM")
        fe.set_owner()
        fe.set_protocol_features(fe.get_protocol_features())
        fe.set_features(want)
        fe.set_mem_table(mem)
        page, uaddr = 0x10000, mem.gpa_to_uaddr(0x10000)
        ups, invs = [], []
        for _ in range(samples):
            t0 = time.perf_counter()
            fe.iotlb_update(page, PAGE, uaddr, IotlbPerm.RO)
            t1 = time.perf_counter()
            fe.iotlb_invalidate(page, PAGE)
            t2 = time.perf_counter()
            ups.append(t1 - t0)
            invs.append(t2 - t1)
        return ups, invs
    finally:
        fe.close()
        mem.close()


def main() -> None:
    ups, invs = measure(sys.argv[1], int(sys.argv[2]))
    print(json.dumps({"update": ups, "invalidate": invs}))


if __name__ == "__main__":
    main()
