"""Dirty log: with VHOST_F_LOG_ALL on, every page of VM1 memory the vhost-pci
device writes (packet data, used entries, used idx) is marked in the log.

VM1 (our virtio-user) prepares everything first (rx buffers posted, tx
packets queued); then only the device runs, between two snapshots of VM1's
RAM, so every page that changed was written by the device."""
from __future__ import annotations

import os

import numpy as np
import pytest

from pmd.ethdev import Port
from pmd.vdev import parse_vdev
from pmd.mbuf import create_pool
from pmd.vhost_user.messages import VHOST_LOG_PAGE
from pmd.vhostpci_pmd.dirty_log import LOG_ON
from tests.vhostpci.peer_io import check_packet, make_packet, recv, send
from tests.util import wait_until as wait

N = 40


def ram_pages(mem) -> dict[int, bytes]:
    """guest page number -> content, over every region."""
    out = {}
    for r in mem.regions:
        data = r.mm[:]
        for off in range(0, r.size, VHOST_LOG_PAGE):
            out[(r.gpa + off) // VHOST_LOG_PAGE] = data[off:off + VHOST_LOG_PAGE]
    return out


@pytest.mark.parametrize("iommu", ["off", "static", "buffers"])
def test_every_page_the_device_writes_is_logged(sockdir, iommu):
    path = os.path.join(sockdir, "vp.sock")
    vp = Port(0, parse_vdev(f"net_vhost_pci0,path={path}"))
    vu = Port(1, parse_vdev(f"net_virtio_user0,path={path},iommu={iommu}"))
    pool = create_pool(1024)
    try:
        vp.start()
        vu.start()
        assert wait(lambda: vp.link().up and vu.driver.session is not None)
        assert wait(lambda: recv(vu, pool) == [] and vu.driver.rx_buffers_posted() == 256)
        assert send(vu, pool, [make_packet(s, 60 + 23 * s) for s in range(N)]) == N
        log = vu.driver.start_dirty_log()
        assert wait(lambda: vp.driver.logctl[LOG_ON] == 1), "back-end did not turn logging on"
        bits = np.frombuffer(log, np.uint8)
        assert not bits.any()
        before = ram_pages(vu.driver.memory)
        got = []
        assert wait(lambda: got.extend(recv(vp, pool)) or len(got) == N)  # device: VM1 tx -> mbufs
        assert sorted(check_packet(p) for p in got) == list(range(N))
        assert send(vp, pool, [make_packet(1000 + s, 1400 - 17 * s) for s in range(N)]) == N  # device -> VM1 rx
        after = ram_pages(vu.driver.memory)
        changed = {p for p in before if before[p] != after[p]}
        marked = {int(i) * 8 + b for i in np.flatnonzero(bits) for b in range(8) if bits[i] >> b & 1}
        assert changed, "the device wrote nothing?"
        assert changed <= marked, f"written pages not logged: {sorted(changed - marked)}"
        # every marked page is one the device may have written (same bytes rewritten is fine)
        assert len(marked) <= len(changed) + 2, (sorted(marked), sorted(changed))
        back = []
        assert wait(lambda: back.extend(recv(vu, pool)) or len(back) == N)
        assert sorted(check_packet(p) for p in back) == [1000 + s for s in range(N)]
    finally:
        vu.close()
        vp.close()
