"""A fake vhost-user device for the back-end and front-end tests: it
records every call the session makes and answers like a small virtio-net."""
from __future__ import annotations

from pmd.guestmem.window import Window
from pmd.vhost_user import messages as m
from pmd.vhost_user.device import BackendDevice, VringInfo
from pmd.vhost_user.messages import ProtocolFeature
from pmd.virtio.features import VIRTIO_F_IOMMU_PLATFORM

PF = ProtocolFeature
VERSION_1 = 1 << 32
MRG_RXBUF = 1 << 15
PROTOCOL_FEATURES = 1 << m.VHOST_USER_F_PROTOCOL_FEATURES
IOMMU_PLATFORM = 1 << VIRTIO_F_IOMMU_PLATFORM
WINDOW = 1 << 34  # covers guest memory placed at 4 GiB


class FakeDevice(BackendDevice):
    """Records calls as (name, args) tuples; GET_VRING_BASE answers base + 7.
    Its memory is one Window (``WINDOW`` bytes) made on first use."""

    def __init__(self, features: int = VERSION_1 | MRG_RXBUF, protocol: int | None = None, queues: int = 2,
                 quiesce_error: BaseException | None = None) -> None:
        self._features = features
        self._protocol = (PF.MQ.mask | PF.REPLY_ACK.mask | PF.BACKEND_REQ.mask | PF.LOG_SHMFD.mask
                          | PF.STATUS.mask | PF.INFLIGHT_SHMFD.mask | PF.MTU.mask | PF.CONFIG.mask
                          if protocol is None else protocol)
        self._queues = queues
        self.calls: list[tuple] = []
        self.link = False
        self.rings: dict[int, VringInfo] = {}
        self.window = None  # as memory_changed last said
        self.port_window: Window | None = None
        self.quiesce_error = quiesce_error
        self.on_quiesce = None  # optional hook: runs inside quiesce()

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def features(self) -> int:
        return self._features

    def protocol_features(self) -> int:
        return self._protocol

    def num_queues(self) -> int:
        return self._queues

    def set_features(self, f: int) -> None:
        self.calls.append(("set_features", f))

    def memory(self, iommu: bool) -> Window:
        self.calls.append(("memory", iommu))
        if self.port_window is None:
            self.port_window = Window(WINDOW)
        return self.port_window

    def memory_changed(self, window) -> None:
        self.window = window
        self.calls.append(("memory_changed", window is not None))

    def vring_ready(self, index: int, vring: VringInfo) -> None:
        self.rings[index] = vring
        self.calls.append(("vring_ready", index))

    def vring_stopped(self, index: int) -> int:
        self.calls.append(("vring_stopped", index))
        return self.rings[index].base + 7

    def status_changed(self, status: int) -> None:
        self.calls.append(("status_changed", status))

    def link_changed(self, up: bool) -> None:
        self.link = up
        self.calls.append(("link_changed", up))

    def quiesce(self) -> None:
        self.calls.append(("quiesce",))
        if self.on_quiesce is not None:
            self.on_quiesce()
        if self.quiesce_error is not None:
            raise self.quiesce_error

    def get_config(self, offset: int, size: int) -> bytes:
        return bytes(range(offset, offset + size))

