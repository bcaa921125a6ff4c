"""The vhost-pci port with our virtio-user port as VM1: handshake, traffic
both ways with payload checksums, and isolation proven by real faults.

VM1 runs in its own process (``vm1_peer``); VM2 is this process's
forwarding runtime, looping every packet back (io mode, one port), so each
packet crosses VM1 -> VM2 and VM2 -> VM1 and is checked on return.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile

import pytest

from pmd.vhostpci_pmd.state import VQ_PACKED
from tests.conftest import ROOT

COUNT = 1500
BURST = 2000


def run_vm1(path: str, *args: str, timeout: float = 50.0) -> dict:
    p = subprocess.run([sys.executable, "-m", "tests.vhostpci.vm1_peer", "--path", path, *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def start_vm2(fwd, vdev: str):
    port = fwd.attach_port(vdev)
    port.start()
    fwd.start()
    return port


@pytest.mark.parametrize("iommu", ["off", "static", "buffers", "transient"])
def test_vm1_to_vm2_and_back_with_checksums(fwd, sockdir, iommu):
    path = os.path.join(sockdir, "vp.sock")
    port = start_vm2(fwd, f"net_vhost_pci0,path={path}")
    res = run_vm1(path, "--iommu", iommu, "--count", str(COUNT))
    fwd.stop()
    assert (res["sent"], res["received"], res["bad"], res["duplicates"]) == (COUNT, COUNT, 0, 0), res
    st = port.stats()
    assert st.ipackets == st.opackets == COUNT and st.ierrors == st.oerrors == 0
    xs = port.driver.xstats()
    assert xs["bad_descriptors"] == xs["bad_ring"] == 0, xs
    vm1 = res["xstats"]
    assert vm1["bad_used_entries"] == 0 and vm1["iotlb_misses_refused"] == 0, vm1
    if iommu == "transient":  # each buffer granted before, revoked after, its transfer
        assert vm1["iotlb_grants_sent"] > 4 and vm1["iotlb_invalidates_sent"] > 0, vm1
    elif iommu == "buffers":  # rings + buffer areas once, nothing per packet
        assert vm1["iotlb_grants_sent"] == 6 and vm1["iotlb_invalidates_sent"] == 0, vm1
    assert fwd.fwd_stats()[port.port_id]["dropped"] == 0


@pytest.mark.parametrize("iommu", ["off", "buffers", "transient", "demand"])
@pytest.mark.parametrize("devargs", ["packed_vq=1", "packed_vq=1,mrg_rxbuf=0"], ids=["mrg", "no-mrg"])
def test_packed_rings_both_ways_with_checksums(fwd, sockdir, iommu, devargs):
    """Packed virtqueues on both sides (our virtio-user's driver kernels, our
    port's device kernels): every packet there and back intact, once, with
    every IOMMU mode (demand: each buffer page asked for with a MISS)."""
    path = os.path.join(sockdir, "vp.sock")
    port = start_vm2(fwd, f"net_vhost_pci0,path={path}")
    res = run_vm1(path, "--iommu", iommu, "--count", str(COUNT), "--devargs", devargs)
    fwd.stop()
    assert (res["sent"], res["received"], res["bad"], res["duplicates"]) == (COUNT, COUNT, 0, 0), res
    assert list(port.driver.vq[:2, VQ_PACKED]) == [1, 1]
    st = port.stats()
    assert st.ipackets == st.opackets == COUNT and st.ierrors == st.oerrors == 0
    xs = port.driver.xstats()
    assert xs["bad_descriptors"] == xs["bad_ring"] == xs["too_big"] == 0, xs
    if iommu == "demand":
        assert xs["iotlb_misses"] > 0, xs
    vm1 = res["xstats"]
    assert vm1["bad_used_entries"] == 0 and vm1["iotlb_misses_refused"] == 0, vm1
    assert fwd.fwd_stats()[port.port_id]["dropped"] == 0


@pytest.mark.alarm(150)  # the peer's own limit is 90 s: a loaded 2-core machine may need most of it
@pytest.mark.parametrize("rx_grant", ["wo", "rw"])
@pytest.mark.parametrize("devargs", ["", "packed_vq=1"], ids=["split", "packed"])
def test_burst_behind_on_demand_iommu_comes_back_whole_and_in_order(fwd, sockdir, rx_grant, devargs):
    """VM1 as QEMU behind a strict 4 KiB-page vIOMMU: rings granted at start,
    every buffer page only when the port sends a MISS (rx buffers WO as a
    Linux guest maps them, or RW), each IOTLB message acked.  A burst of
    BURST frames for the port to echo (macswap) comes back whole and in
    order: the port holds what it cannot place yet and receives no more than
    it can hold, so VM1's frames wait in VM1's ring instead of being dropped.
    Split and packed rings alike ask ahead for the queued buffers' pages."""
    path = os.path.join(sockdir, "vp.sock")
    fwd.config.mode = "macswap"
    port = start_vm2(fwd, f"net_vhost_pci0,path={path}")
    res = run_vm1(path, "--iommu", "demand", "--rx-grant", rx_grant, "--count", str(BURST), "--window",
                  str(BURST), "--timeout", "60", *(["--devargs", devargs] if devargs else []), timeout=90.0)
    fwd.stop()
    assert list(port.driver.vq[:2, VQ_PACKED]) == [1 if devargs else 0] * 2
    st, xs = port.stats(), port.driver.xstats()
    assert (res["sent"], res["received"], res["bad"], res["duplicates"], res["out_of_order"]) \
        == (BURST, BURST, 0, 0, 0), f"{res}\n{st}\n{xs}"
    assert st.ipackets == st.opackets == BURST and st.oerrors == 0, st
    assert fwd.fwd_stats()[port.port_id]["dropped"] == 0
    assert xs["iotlb_miss_requests"] > 0 and xs["iotlb_perm_denied"] == 0 and xs["bad_descriptors"] == 0, xs
    assert xs["iotlb_miss_ahead"] > 0, xs
    vm1 = res["xstats"]
    assert vm1["iotlb_misses_refused"] == 0 and vm1["iotlb_misses_granted"] > 0, vm1
    # every buffer page's MISS answered by the compiled path (miss.py), none through Python
    assert vm1["iotlb_misses_fast"] == vm1["iotlb_misses_granted"], vm1


@pytest.mark.alarm(150)  # the peer's own limit is 90 s: a loaded 2-core machine may need most of it
@pytest.mark.parametrize("devargs", ["", "packed_vq=1"], ids=["split", "packed"])
def test_burst_through_global_iotlb_flushes_comes_back_whole(fwd, sockdir, devargs):
    """A lazy guest IOMMU flushes everything at once, VM1's rings included:
    while the port waits for the rings' pages again, it holds what it took
    (it never refuses a packet its room promised): every frame comes back,
    in order, none dropped."""
    path = os.path.join(sockdir, "vp.sock")
    fwd.config.mode = "macswap"
    port = start_vm2(fwd, f"net_vhost_pci0,path={path}")
    res = run_vm1(path, "--iommu", "demand", "--count", str(BURST), "--window", "256", "--flush-every", "100",
                  "--timeout", "60", *(["--devargs", devargs] if devargs else []), timeout=90.0)
    fwd.stop()
    assert res["flushes"] >= BURST // 100 - 1, res
    assert (res["sent"], res["received"], res["bad"], res["duplicates"], res["out_of_order"]) \
        == (BURST, BURST, 0, 0, 0), res
    st = port.stats()
    assert st.ipackets == st.opackets == BURST and st.oerrors == 0, st
    assert fwd.fwd_stats()[port.port_id]["dropped"] == 0
    assert res["xstats"]["iotlb_misses_refused"] == 0, res["xstats"]


def test_client_mode_vm2_connects_to_listening_vm1(fwd, sockdir):
    path = os.path.join(sockdir, "vm1.sock")
    port = start_vm2(fwd, f"net_vhost_pci0,path={path},client=1")
    res = run_vm1(path, "--server", "--iommu", "static", "--count", "500")
    fwd.stop()
    assert (res["received"], res["bad"]) == (500, 0), res
    # VM1's listener lives until its process exits, so VM2 may reconnect once
    # more into its backlog before it goes; either way it ends disconnected.
    assert port.driver.server.connections >= 1
    assert port.driver.server.wait_for(lambda s: s.session is None, 3.0)
    assert not port.link().up  # VM1 gone: link down


# ------------------------------------------------------------ isolation
def run_isolation(action: str, mode: str) -> subprocess.CompletedProcess:
    """The child in a directory of its own for its socket, removed here:
    the child dies by SIGSEGV before it could remove anything."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONFAULTHANDLER"}
    with tempfile.TemporaryDirectory(prefix="iso") as sockdir:
        return subprocess.run([sys.executable, "-m", "tests.vhostpci.isolation_child", action, mode, sockdir],
                              cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)


def _lines(p: subprocess.CompletedProcess) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in p.stdout.splitlines() if ": " in line)


@pytest.mark.parametrize("mode", ["buffers", "transient"])
def test_never_granted_page_faults_and_counts(mode):
    """A rogue descriptor into RAM VM1 never granted: the kernel's checked
    translation says unmapped (counted as an IOTLB miss, refused by VM1),
    and a direct read of that window page dies with SIGSEGV."""
    p = run_isolation("never_granted", mode)
    out = _lines(p)
    assert p.returncode == -signal.SIGSEGV, (p.returncode, p.stdout, p.stderr[-2000:])
    assert out["forwarded"] == "[0, 1, 2, 3]"
    assert out["translate rogue"] == "-1" and out["port misses"] == "True"
    assert "read" not in out


def test_revoked_buffer_faults_after_invalidate_ack():
    """iommu=transient: once VM1's INVALIDATE for a sent buffer is acked,
    translation fails and the page is unreadable."""
    p = run_isolation("invalidated", "transient")
    out = _lines(p)
    assert p.returncode == -signal.SIGSEGV, (p.returncode, p.stdout, p.stderr[-2000:])
    assert out["translate sent buffer"] == "-1" and out["translate ring"] == "True"
    assert "read" not in out


def test_granted_page_reads_fine():
    """The control case: the same child reading a granted ring page exits 0."""
    p = run_isolation("granted", "buffers")
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr[-2000:])
    out = _lines(p)
    assert out["translate sent buffer"] != "-1"  # buffers mode: the area stays granted
    assert "read" in out
