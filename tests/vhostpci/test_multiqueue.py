"""queues=N: N queue pairs between VM1 (virtio-user) and VM2 (vhost-pci),
each rx queue a ring of its own (VIRTIO_NET_F_MQ, GET_QUEUE_NUM)."""
from __future__ import annotations

import os

from pmd.ethdev import Port
from pmd.vdev import parse_vdev
from pmd.mbuf import create_pool
from pmd.virtio.features import VIRTIO_NET_F_MQ
from tests.vhostpci.peer_io import check_packet, make_packet, recv, send
from tests.util import wait_until as wait

QUEUES = 3


def test_each_queue_pair_carries_its_own_traffic(sockdir):
    path = os.path.join(sockdir, "vp.sock")
    vp = Port(0, parse_vdev(f"net_vhost_pci0,path={path},queues={QUEUES}"))
    vu = Port(1, parse_vdev(f"net_virtio_user0,path={path},queues={QUEUES},iommu=buffers"))
    pool = create_pool(2048)
    try:
        vp.start()
        vu.start()
        assert wait(lambda: vp.link().up and vu.driver.session is not None)
        assert vu.driver.features & (1 << VIRTIO_NET_F_MQ)
        assert wait(lambda: vp.driver.info()["rings ready"] == 2 * QUEUES)
        assert (vp.nb_rxq, vu.nb_txq) == (QUEUES, QUEUES)
        for q in range(QUEUES):  # VM1 -> VM2 on queue q arrives on rx queue q only
            seqs = [100 * q + s for s in range(20)]
            assert send(vu, pool, [make_packet(s, 80 + s) for s in seqs], queue=q) == 20
            got = []
            assert wait(lambda: got.extend(recv(vp, pool, queue=q)) or len(got) == 20)
            assert [check_packet(p) for p in got] == seqs
            assert all(recv(vp, pool, queue=o) == [] for o in range(QUEUES) if o != q)
        for q in range(QUEUES):  # VM2 -> VM1: rx buffers posted on every queue first
            assert wait(lambda: recv(vu, pool, queue=q) == [] and vu.driver.rx_buffers_posted(q) == 256)
        for q in range(QUEUES):
            seqs = [1000 + 100 * q + s for s in range(20)]
            assert send(vp, pool, [make_packet(s, 1400) for s in seqs], queue=q) == 20
            got = []
            assert wait(lambda: got.extend(recv(vu, pool, queue=q)) or len(got) == 20)
            assert [check_packet(p) for p in got] == seqs
        per_q = vp.stats().per_queue
        assert [r["ipackets"] for r in per_q] == [20] * QUEUES
        assert [r["opackets"] for r in per_q] == [20] * QUEUES
    finally:
        vu.close()
        vp.close()


def test_forwarding_serves_every_rx_queue(fwd, sockdir):
    """The runtime makes one stream per rx queue; VM1 on every queue gets
    its packets back (io mode, one port looping to itself)."""
    path = os.path.join(sockdir, "vp.sock")
    port = fwd.attach_port(f"net_vhost_pci0,path={path},queues=2")
    port.start()
    fwd.start()
    assert len(fwd.streams) == 2
    vu = Port(1, parse_vdev(f"net_virtio_user0,path={path},queues=2"))
    pool = create_pool(1024)
    try:
        vu.start()
        assert wait(lambda: vu.driver.session is not None)
        for q in range(2):
            assert wait(lambda: recv(vu, pool, queue=q) == [] and vu.driver.rx_buffers_posted(q) == 256)
        for q in range(2):
            seqs = [500 * q + s for s in range(30)]
            assert send(vu, pool, [make_packet(s, 200) for s in seqs], queue=q) == 30
            got = []
            assert wait(lambda: got.extend(recv(vu, pool, queue=q)) or len(got) == 30)
            assert [check_packet(p) for p in got] == seqs
    finally:
        vu.close()
    fwd.stop()
    assert [r["ipackets"] for r in port.stats().per_queue] == [30, 30]
