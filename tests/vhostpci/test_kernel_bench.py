"""pytest-benchmark micro-benchmarks of the ring kernels (split and packed) on in-memory
rings: VM1's driver kernels and VM2's device kernels in one thread over the
same shared memory, 64 B and 1518 B, ns per packet (figures, no thresholds).

    python3 -m pytest tests/vhostpci/test_kernel_bench.py -s --benchmark-only
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
from numba import njit

from pmd.burst import rx_burst, tx_burst
from pmd.ethdev import Port
from pmd.vdev import parse_vdev
from pmd.mbuf import alloc_bulk, create_pool, free_bulk
from pmd.vhostpci_pmd.state import VQ_PACKED
from tests.vhostpci.peer_io import recv

BURST = 32
BURSTS = 2000


@njit(nogil=True, cache=True)
def pump(src, dst, pool, size, bursts):
    """``bursts`` times: BURST mbufs of ``size`` bytes out of ``src``
    (tx_burst), then everything ``dst`` receives (rx_burst).  Returns
    packets received."""
    bufs = np.empty(BURST, np.int32)
    got = np.empty(BURST, np.int32)
    total = 0
    for _ in range(bursts):
        if alloc_bulk(pool, bufs, BURST):
            for k in range(BURST):
                pool.data_len[bufs[k]] = size
            sent = tx_burst(src, 0, pool, bufs, BURST)
            if sent < BURST:
                free_bulk(pool, bufs[sent:], BURST - sent)
        n = rx_burst(dst, 0, pool, got, BURST)
        free_bulk(pool, got, n)
        total += n
    return total


@pytest.fixture(scope="module", params=["split", "packed"])
def pair(request):
    import tempfile
    import shutil

    d = tempfile.mkdtemp(prefix="kb", dir="/tmp")
    path = os.path.join(d, "vp.sock")
    vp = Port(0, parse_vdev(f"net_vhost_pci0,path={path}"))
    vu = Port(1, parse_vdev(f"net_virtio_user0,path={path},packed_vq={int(request.param == 'packed')}"))
    pool = create_pool(8192)
    try:
        vp.start()
        vu.start()
        end = time.monotonic() + 10
        while not (vp.link().up and vu.driver.session is not None) and time.monotonic() < end:
            time.sleep(0.01)
        while vu.driver.rx_buffers_posted() < 256 and time.monotonic() < end:
            recv(vu, pool)
        yield vp, vu, pool
    finally:
        vu.close()
        vp.close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("size", [64, 1518])
@pytest.mark.parametrize("direction", ["vm1_to_vm2", "vm2_to_vm1"])
def test_ns_per_packet(benchmark, pair, direction, size):
    vp, vu, pool = pair
    src, dst = (vu, vp) if direction == "vm1_to_vm2" else (vp, vu)
    s, d = src.kernel_state(), dst.kernel_state()
    pump(s, d, pool, size, 10)  # compile / warm
    counts = []
    benchmark.pedantic(lambda: counts.append(pump(s, d, pool, size, BURSTS)), rounds=5, iterations=1)
    pkts = min(counts)
    assert pkts > BURSTS * BURST // 2, counts  # the pair really moves packets
    ns = benchmark.stats.stats.median * 1e9 / pkts
    benchmark.extra_info.update(ns_per_packet=round(ns, 1), mpps=round(1e3 / ns, 2))
    layout = "packed" if vp.driver.vq[0, VQ_PACKED] else "split"
    print(f"\n{layout} {direction} {size} B: {ns:.1f} ns/packet ({1e3 / ns:.2f} Mpps, driver + device kernels, one thread)")
    assert pool.available() > 0
