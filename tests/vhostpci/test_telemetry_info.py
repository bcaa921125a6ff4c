"""Telemetry's ``/vhostpci/info`` for a vhost-pci port with VM1 connected:
the negotiated features, the window's regions and grants, IOTLB counters.
VM1 is our virtio-user port in this process (``iommu=buffers``: the rings
and the buffer areas granted once, with known sizes)."""
from __future__ import annotations

import json
import os

from pmd.ethdev import Port
from pmd.telemetry import TelemetryServer, ethdev_commands
from pmd.vdev import parse_vdev
from pmd.virtio.features import VIRTIO_F_IOMMU_PLATFORM
from tests.util import wait_until

MIB = 1 << 20


def test_vhostpci_info_reports_features_regions_and_grants(fwd, sockdir, tmp_path):
    path = os.path.join(sockdir, "vp.sock")
    vp = fwd.attach_port(f"net_vhost_pci0,path={path}")
    vp.start()
    fwd.start()
    server = TelemetryServer(str(tmp_path / "t" / "dpdk_telemetry.v2"), ethdev_commands(lambda: dict(fwd.ports)))
    vm1 = Port(9, parse_vdev(f"net_virtio_user9,path={path},iommu=buffers,mem=32M@0/16M@0x100000000"))
    try:
        def info() -> dict:
            return json.loads(server.reply(f"/vhostpci/info,{vp.port_id}"))["/vhostpci/info"]

        down = info()
        assert down["connected"] == "no" and down["grants"] == 0 and down["memory regions"] == 0, down
        vm1.start()
        assert vm1.driver.wait_link(True, 10) and wait_until(lambda: vp.link().up, 10)
        up = info()
        granted = vm1.driver.xstats()["iotlb_grants_sent"]
        assert up["connected"] == "yes" and up["iommu"] == "yes", up
        assert int(up["features"], 16) >> VIRTIO_F_IOMMU_PLATFORM & 1 and int(up["protocol features"], 16) != 0, up
        assert up["memory regions"] == 2 and up["memory bytes"] == 48 * MIB, up
        # rings and buffer areas: one grant row per granted range, merged where adjacent with the
        # same permission into the translation entries
        win = vp.driver.window
        assert up["grants"] == int(win.grant_count[0]) and 0 < up["grants"] <= up["grant table capacity"], up
        assert 0 < up["translation entries"] == len(win.entries()) <= up["grants"], up
        assert 0 < up["granted bytes"] < 48 * MIB, (up, granted)
        assert up["granted bytes"] == sum(end - iova for iova, end, _, _ in win.entries())
        assert up["iotlb misses pending"] == 0 and up["packets held"] == 0, up
        assert up["iotlb_updates"] == granted and up["rings ready"] == 2, up
    finally:
        vm1.close()
        server.close()
    assert wait_until(lambda: info()["grants"] == 0 and info()["connected"] == "no", 10), info()
