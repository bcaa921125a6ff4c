"""Shared by the vhost-pci tests: the vhost-user tests' hang guard and short
socket directory, and a one-time warm-up that compiles every kernel these
tests run (outside the per-test 60 s guard: a cold Numba cache costs
minutes on a 2-core machine; afterwards each process loads them in < 1 s)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest

from tests.vhost_user.conftest import no_hang, sockdir  # noqa: F401


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels():
    from pmd.ethdev import Port
    from pmd.vdev import parse_vdev
    from pmd.fwd.runtime import Forwarding
    from pmd.lcore import LcoreManager
    from pmd.mbuf import create_pool
    from tests.conftest import CPUS, WORKER_CPU
    from tests.vhostpci.peer_io import make_packet, recv, send

    d = tempfile.mkdtemp(prefix="warm", dir="/tmp")
    path = os.path.join(d, "vp.sock")
    fw = Forwarding(LcoreManager({0: CPUS[0], 1: WORKER_CPU}, 0), nb_mbufs=1024)
    vu = None
    try:
        vp = fw.attach_port(f"net_vhost_pci0,path={path}")
        vp.start()
        fw.start()  # compiles the forwarding loop over a vhost-pci port
        fw.stop()
        ring = fw.attach_port("net_ring0")
        ring.start()
        fw.start()  # ... and over a vhost-pci port paired with a ring (test_interrupts)
        fw.stop()
        fw.close_port(ring.port_id)
        vu = Port(9, parse_vdev(f"net_virtio_user9,path={path},iommu=transient"))
        vu.start()
        pool = create_pool(256)
        for port in (vu, vp):  # compiles both ports' burst kernels for Python callers
            send(port, pool, [make_packet(0, 64)])
            recv(port, pool)
        deadline = time.monotonic() + 10
        while not vu.link().up and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        if vu is not None:
            vu.close()
        fw.close()
        shutil.rmtree(d, ignore_errors=True)
    yield


@pytest.fixture
def hugepages(tmp_path):
    """A private hugetlbfs mount with 160 more 2 MiB pages (DPDK's usual
    set-up), undone after the test; skips where it cannot be made."""
    from apps.bench.hugepages import Hugepages, HugepagesUnavailable

    try:
        huge = Hugepages(160, parent=str(tmp_path))
    except HugepagesUnavailable as e:
        pytest.skip(str(e))
    try:
        yield huge.dir
    finally:
        huge.close()
