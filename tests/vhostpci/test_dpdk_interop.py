"""DPDK's own virtio-user (dpdk-testpmd, io forwarding, one port looping
back) as VM1 against our vhost-pci port: sequence-numbered, CRC-checked
packets go VM2 -> DPDK's rx ring -> DPDK -> DPDK's tx ring -> VM2.
Exercises DPDK's driver choices (MRG_RXBUF, INDIRECT_DESC, packed rings) on
our device."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest

from pmd.ethdev import Port
from pmd.vdev import parse_vdev
from pmd.mbuf import create_pool
from pmd.vhostpci_pmd.state import VQ_PACKED
from tests.vhostpci.peer_io import check_packet, make_packet, recv, send

TESTPMD = shutil.which("dpdk-testpmd")
pytestmark = pytest.mark.skipif(TESTPMD is None, reason="dpdk-testpmd not installed (tools/setup installs dpdk-dev)")


def dpdk_vm1(path: str, prefix: str, devargs: str = "", huge_dir: str | None = None) -> subprocess.Popen:
    """DPDK testpmd with a virtio-user port; on hugepages in ``huge_dir`` (VM1's
    memory: the hugetlbfs fds our port maps) or ``--no-huge``."""
    memory = ["--huge-dir", huge_dir] if huge_dir else ["--no-huge"]
    cmd = ["stdbuf", "-oL", TESTPMD, "--lcores", "0@0,1@0", "--no-pci", *memory, "-m", "256", "--single-file-segments",
           "--file-prefix", prefix, "--vdev", f"net_virtio_user0,path={path},queue_size=256{devargs}", "--",
           "--forward-mode=io", "--nb-cores=1", "-a", "--total-num-mbufs=8192"]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


class Output:
    """testpmd's output, read by a thread so a marker can be waited for."""

    def __init__(self, p: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, args=(p,), daemon=True)
        self._t.start()

    def _read(self, p: subprocess.Popen) -> None:
        for raw in p.stdout:
            self.lines.append(raw.decode(errors="replace"))

    def wait_for(self, marker: str, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(marker in line for line in self.lines):
                return True
            time.sleep(0.05)
        return False

    def text(self) -> str:
        self._t.join(10)
        return "".join(self.lines)


def stop(p: subprocess.Popen, prefix: str, huge_dir: str | None = None) -> None:
    p.terminate()  # only the PID we started
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)
    for f in os.listdir(huge_dir) if huge_dir else []:  # the hugepage files EAL keeps after exit
        if f.startswith(prefix):
            os.unlink(os.path.join(huge_dir, f))


@pytest.mark.parametrize("devargs", ["", ",mrg_rxbuf=0", ",in_order=0,mrg_rxbuf=1", ",packed_vq=1",
                                     ",packed_vq=1,mrg_rxbuf=0", ",packed_vq=1,in_order=0,mrg_rxbuf=1"],
                         ids=["default", "no-mrg", "mrg", "packed", "packed-no-mrg", "packed-mrg"])
def test_dpdk_virtio_user_loops_our_packets_back(sockdir, devargs):
    loop_back_through_dpdk(sockdir, devargs)


def test_dpdk_virtio_user_on_hugepages(sockdir, hugepages):
    """DPDK as its users run it: VM1's memory in hugetlbfs files, which our
    window maps at their guest-physical addresses (2 MiB aligned), packed
    rings, one buffer per packet."""
    loop_back_through_dpdk(sockdir, ",packed_vq=1,mrg_rxbuf=0", huge_dir=hugepages)
    assert not [f for f in os.listdir(hugepages) if f.startswith(f"vpci{os.getpid()}")]


def loop_back_through_dpdk(sockdir: str, devargs: str, huge_dir: str | None = None) -> None:
    """2000 numbered, CRC-checked packets of many sizes: our port -> DPDK's
    rx ring -> io forwarding -> DPDK's tx ring -> our port; each back once, intact."""
    path = os.path.join(sockdir, "vp.sock")
    prefix = f"vpci{os.getpid()}"
    port = Port(0, parse_vdev(f"net_vhost_pci0,path={path}"))
    pool = create_pool(4096)
    port.start()
    p = dpdk_vm1(path, prefix, devargs, huge_dir)
    out = Output(p)
    try:
        # testpmd starts and restarts its port before forwarding (flushing what
        # its rx ring got meanwhile): send only once it forwards.
        assert out.wait_for("Press enter to exit", 30), out.text()[-2000:]
        assert port.link().up, "DPDK virtio-user never brought the link up"
        assert list(port.driver.vq[:2, VQ_PACKED]) == [int("packed_vq=1" in devargs)] * 2  # the layout negotiated
        if huge_dir:  # DPDK's memory (and so the rings and buffers our port reads) is in hugetlbfs files
            assert [f for f in os.listdir(huge_dir) if f.startswith(prefix)], os.listdir(huge_dir)
        n, sent, got = 2000, 0, []
        end = time.monotonic() + 20
        while len(got) < n and time.monotonic() < end:
            if sent < n and sent - len(got) < 64:
                sent += send(port, pool, [make_packet(s, 64 + (s * 97) % 1451) for s in range(sent, min(n, sent + 32))])
            got += recv(port, pool)
        seqs = [check_packet(x) for x in got]
        assert (sent, len(got), seqs.count(-1)) == (n, n, 0), (port.driver.xstats(), port.stats().totals)
        assert sorted(seqs) == list(range(n)), "lost or duplicated packets"
        xs = port.driver.xstats()
        assert xs["bad_descriptors"] == xs["bad_ring"] == xs["too_big"] == 0, xs
        st = port.stats()
        assert st.ipackets == st.opackets == n and st.ierrors == st.oerrors == 0
    finally:
        stop(p, prefix, huge_dir)
        port.close()
    assert "Bye" in out.text(), out.text()[-2000:]
