"""A 200 ms burst from the wire (the VF side) to VM1 behind a strict vIOMMU.

The namespace sends BURST frames in 200 ms into the VF port; VM2 forwards
them (io) to its vhost-pci port, whose VM1 (our virtio-user in its own
process, split or packed rings, ``iommu=demand``: every receive buffer page
granted only when the port asks for it, write-only or read-write) only
receives.  The port's promise: every frame it took from the VF reaches
VM1, intact, once, in order -- frames it could not place yet wait in its
hold queue, and the engine takes no more from the VF than the port can
hold, so the rest wait in the VF's ring.  What the kernel dropped before
the port saw it (the VF ring full: ``imissed``) is counted apart; on this
machine it stays 0."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pmd.vhostpci_pmd.state import VQ_PACKED
from tests.conftest import ROOT
from tests.vhost_user.conftest import sockdir  # noqa: F401  (a short socket directory)

BURST = 2000
RATE = 10_000  # frames per second: BURST in 200 ms


@pytest.mark.parametrize("rx_grant", ["wo", "rw"])
@pytest.mark.parametrize("devargs", ["", "packed_vq=1"], ids=["split", "packed"])
def test_200ms_burst_from_the_vf_reaches_vm1_whole_and_in_order(fwd, veth, sockdir, compiled_vf, rx_grant, devargs):
    path = os.path.join(sockdir, "vp.sock")
    vp = fwd.attach_port(f"net_vhost_pci0,path={path}")
    vf = fwd.attach_port(f"net_vf0,iface={veth.host}")
    vp.start()
    vf.start()
    fwd.config.mode = "io"
    fwd.start()
    vm1 = subprocess.Popen([sys.executable, "-m", "tests.vhostpci.vm1_peer", "--path", path, "--iommu", "demand",
                            "--rx-grant", rx_grant, "--expect", str(BURST), "--timeout", "60",
                            *(["--devargs", devargs] if devargs else [])],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = vm1.stdout.readline()
        assert line.strip() == "ready", (line, vm1.stderr.read()[-3000:] if vm1.poll() is not None else "")
        sent = veth.run_peer("send", BURST, "64,300,1514", RATE, 0, timeout=60)["sent"]
        out, err = vm1.communicate(timeout=90)
    finally:
        if vm1.poll() is None:
            vm1.kill()
            vm1.wait()
    assert vm1.returncode == 0, err[-3000:]
    res = json.loads(out.strip().splitlines()[-1])
    fwd.stop()
    assert list(vp.driver.vq[:2, VQ_PACKED]) == [1 if devargs else 0] * 2
    st_vf, st_vp, xs = vf.stats(), vp.stats(), vp.driver.xstats()
    # the port's promise: what VM2 took from the VF reached VM1, intact, once, in order
    assert (res["bad"], res["duplicates"], res["out_of_order"]) == (0, 0, 0), res
    assert res["received"] == st_vf.ipackets == st_vp.opackets, f"{res}\n{st_vf}\n{st_vp}\n{xs}"
    assert st_vp.oerrors == 0 and fwd.fwd_stats()[vf.port_id]["dropped"] == 0
    # what never reached the port is the VF ring's (imissed), counted apart
    assert res["received"] + st_vf.imissed == sent == BURST, (res, st_vf)
    assert xs["iotlb_miss_requests"] > 0 and xs["iotlb_perm_denied"] == 0 and xs["bad_descriptors"] == 0, xs
    print(f"\n[vf burst] {devargs or 'split'} rx_grant={rx_grant}: {res['received']}/{BURST} in VM1 in "
          f"{res['seconds']} s, VF imissed {st_vf.imissed}, MISS requests {xs['iotlb_miss_requests']} "
          f"(ahead {xs['iotlb_miss_ahead']}), held {xs['tx_held_on_miss']}")
