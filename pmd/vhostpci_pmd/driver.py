"""net_vhost_pci: the vhost-pci port, VM2's end of a vhost-user connection.

Devargs: ``path=`` (unix socket, required), ``client=0|1`` (0: we listen and
VM1's hypervisor connects; 1: we connect and reconnect with back-off),
``queues=`` (queue pairs), ``iommu_support=0|1`` (offer
VIRTIO_F_IOMMU_PLATFORM, so VM1 grants memory through IOTLB messages),
``iotlb_lcore=auto|1|0`` (who serves VM1's IOTLB messages: the lcore polling
queue 0, while it polls, or the control thread; ``iotlb_lend.py``: auto, the
lcore while other threads keep the control thread's CPUs busy; 1, the lcore
whenever it polls; 0, always the control thread), ``iotlb_revoke=auto|control``
(who revokes the pages of an INVALIDATE the control thread serves: auto, the
lcore polling queue 0 while it polls on a CPU of its own, through a stand-in
process, ``pmd/standin.py``; control, the control thread).

The port ops (this file) run a ``BackendServer`` (the control thread) for
the port's ``VhostPciDevice`` (``device.py``: the session's callbacks and
the kernel state); the burst kernels are ``vq.py`` and ``txhold.py``, the
fallback-interrupt kernels ``notify.py``, the IOTLB miss service ``iotlb.py``.
"""
from __future__ import annotations

import logging

import numpy as np

from ..ethdev import (
    DevargQueuePairs, LinkStatus, PortDriver, PortError, int_in_range, one_of, parse_bool, parse_path, register_driver,
)
from ..placement import pin_control_thread
from ..vhost_user.device import VringInfo
from ..vhost_user.server import BackendServer
from ..virtio.features import VIRTIO_F_IOMMU_PLATFORM, has
from . import notify  # noqa: F401  (registers the fallback-interrupt kernels)
from . import announce  # noqa: F401  (registers the burst kernels: announce.rx, txhold.tx)
from .txhold import drop_held
from .device import VhostPciDevice
from .state import VQ_HELD, VQ_MISS_PENDING, VQ_READY, XSTAT_NAMES, VhostPciState

log = logging.getLogger("vhostpci.port")

MAX_QUEUE_PAIRS = 16


@register_driver
class VhostPciDriver(DevargQueuePairs, PortDriver):
    """One vhost-pci port: devargs, start/stop of its vhost-user server, stats."""

    prefix = "net_vhost_pci"
    devargs = {"path": parse_path, "client": parse_bool, "queues": int_in_range("queues", 1, MAX_QUEUE_PAIRS),
               "iommu_support": parse_bool, "iotlb_lcore": one_of("auto", boolean=True),
               "iotlb_revoke": one_of("auto", "control")}
    devarg_defaults = {"path": "", "client": False, "queues": 1, "iommu_support": True, "iotlb_lcore": "auto",
                       "iotlb_revoke": "auto"}

    def __init__(self, name: str, args: dict) -> None:
        super().__init__(name, args)
        if not args["path"]:
            raise PortError(f"{name}: devarg path=<unix socket> is required")
        self.nb_rxq = self.nb_txq = args["queues"]
        self.device = VhostPciDevice(name, args["queues"], args["iommu_support"],
                                     lcores=lambda: self.quiesce_lcores, vrings=self._vrings,
                                     iotlb_lcore=args["iotlb_lcore"], iotlb_revoke=args["iotlb_revoke"])
        # the port's kernel-state arrays, for tools and tests
        self.vq, self.window, self.logctl = self.device.vq, self.device.window, self.device.logctl
        self.server: BackendServer | None = None
        self.closed = False

    def _vrings(self) -> dict[int, VringInfo]:
        session = self.server.session if self.server is not None else None
        return session.vrings if session is not None else {}

    # ---------------------------------------------------------------- port ops
    def start(self) -> None:
        if self.closed:
            raise PortError(f"{self.name}: closed")
        if self.server is not None:
            return
        self.device.port_id = self.port_id
        self.device.warm()
        server = BackendServer(self.args["path"], self.device, client=self.args["client"], name=self.name,
                               thread_init=pin_control_thread)
        try:
            server.start()
        except OSError as e:
            raise PortError(f"{self.name}: cannot listen on {self.args['path']}: {e}") from None
        self.server = server
        log.info("%s: vhost-user %s on %s", self.name, "client" if self.args["client"] else "server",
                 self.args["path"])

    def stop(self) -> None:
        """Disconnect VM1 and stop serving the socket (port start serves it again)."""
        if self.server is not None:
            self.server.stop()
            if not self.server.stopped:
                raise PortError(f"{self.name}: control thread did not stop; socket {self.args['path']} kept")
            self.server = None

    def close(self) -> None:
        self.stop()
        if not self.closed:
            self.closed = True
            self.device.close()

    def kernel_state(self) -> VhostPciState:
        if self.closed:
            raise PortError(f"{self.name}: closed")
        self.device.port_id = self.port_id
        return self.device.kernel_state()

    def stats_array(self) -> np.ndarray:
        return self.device.stats

    def mac(self) -> bytes:
        return bytes([0x02, 0x56, 0x50, 0x43, 0, int(self.name[len(self.prefix):]) & 0xFF])

    def link(self) -> LinkStatus:
        up = self.device.link
        return LinkStatus(up=up, speed_mbps=10000 if up else 0)

    def xstats(self) -> dict[str, int]:
        totals = self.device.xstats.sum(axis=0)
        out = {name: int(totals[k]) for k, name in enumerate(XSTAT_NAMES)}
        out.update(self.device.iotlb_xstats())
        out["guest_memory_faults"] = self.device.memory_faults()
        out["rarp_announcements"], out["rarp_requests"] = self.device.announcements()
        return out

    def info(self) -> dict:
        """``show port info`` lines and telemetry's ``/vhostpci/info``: the
        connection, what was negotiated, the window (VM1's memory regions and
        its grants: translation entries and bytes), IOTLB misses waiting for
        an answer, packets held for them, then every xstat."""
        session = self.server.session if self.server is not None else None
        features = self.device.negotiated
        out = {
            "socket": f"{self.args['path']} ({'client' if self.args['client'] else 'server'})",
            "connected": "yes" if session is not None else "no",
            "features": f"{features:#x}",
            "protocol features": f"{session.protocol_features:#x}" if session is not None else "0x0",
            "iommu": "yes" if has(features, VIRTIO_F_IOMMU_PLATFORM) else "no",
            "rings ready": int((self.vq[:, VQ_READY] != 0).sum()),
            **window_figures(self.window),
            "iotlb misses pending": int((self.vq[:, VQ_MISS_PENDING] != 0).sum()),
            "packets held": int(self.vq[:, VQ_HELD].sum()),
        }
        out.update(self.xstats())
        return out

    def drain(self, pool) -> int:
        """Free the packets the transmit side still holds (counted in oerrors)."""
        if self.closed:
            return 0
        return int(drop_held(self.kernel_state(), pool))

    def quiesce(self) -> None:
        """Wait until every lcore polling this port passed a quiescent point."""
        self.device.quiesce()

    # ------------------------------------------------------- fallback interrupts
    def intr_fds(self, queue: int) -> list[int]:
        """What wakes an lcore sleeping on rx queue ``queue`` (VM1's transmit
        vring 2q+1): the queue's wake-up eventfd (``device.wake_fd_of``:
        written when the vring starts and when a RARP announcement is owed),
        plus the eventfd VM1 kicks while the vring runs; [] (keep polling)
        for a running vring without a kick fd.  The session owns the kick fd
        and replaces it on reconnect: fetch it before every sleep (and dup
        it: it may be closed while the lcore sleeps)."""
        if self.closed:
            return []
        wake = self.device.wake_fd_of(queue)
        if not self.vq[2 * queue + 1, VQ_READY]:
            return [wake]
        ring = self._vrings().get(2 * queue + 1)
        fd = ring.kick_fd if ring is not None else -1
        return [fd, wake] if fd >= 0 else []


def window_figures(window) -> dict[str, int]:
    """VM1's memory as the port's window holds it: regions (and bytes) and
    the grants (one row per range VM1's IOMMU granted, of the grant table's
    capacity; without an IOMMU each region is granted whole), the merged
    translation entries the kernels search and the bytes they cover.  Read
    without stopping the control thread: the seqlocked table is copied
    again if the writer was inside."""
    if window.array is None:  # closed
        return {"memory regions": 0, "memory bytes": 0, "grants": 0, "grant table capacity": 0,
                "translation entries": 0, "granted bytes": 0}
    count = window.table_count
    for _ in range(100):
        seq = int(count[1])
        rows = window.table[: int(count[0])].copy()
        if not seq & 1 and int(count[1]) == seq:
            break
    regions = list(window.regions_list)
    return {"memory regions": len(regions), "memory bytes": sum(r.size for r in regions),
            "grants": int(window.grant_count[0]), "grant table capacity": len(window.grants),
            "translation entries": len(rows),
            "granted bytes": sum(int(last) - int(iova) + 1 for iova, last, _, _ in rows)}
