"""What the VF drivers (net_vf: AF_PACKET, net_vf_xdp: AF_XDP) share: a
port on a netdev, its control ops answered from the netdev, and the tx rule
of a wire (a frame the MTU does not allow is taken and dropped, counted,
never truncated)."""
from __future__ import annotations

from typing import Any, NamedTuple

from numba import njit

from . import netdev as nd
from .ethdev import ST_OERRORS, LinkStatus, PortDriver, PortError

ETH_HLEN = 14


class NetdevPortDriver(PortDriver):
    """A driver whose port is the netdev ``iface=``.  Subclasses build their
    kernel state in ``start`` (``self._state``) and drop everything in
    ``_release`` (idempotent), which stop and close call."""

    def __init__(self, name: str, args: dict[str, Any]) -> None:
        super().__init__(name, args)
        if not args["iface"]:
            raise PortError(f"{name}: devarg iface=<netdev> is required")
        self.iface: str = args["iface"]
        self._state: NamedTuple | None = None

    def _check_netdev(self) -> None:
        why = nd.unusable(self.iface)
        if why is not None:
            raise PortError(f"{self.name}: {why}")

    def _release(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._release()

    def close(self) -> None:
        self._release()

    def kernel_state(self) -> NamedTuple:
        if self._state is None:
            raise PortError(f"{self.name}: not started")
        return self._state

    def mac(self) -> bytes:
        try:
            return nd.mac(self.iface)
        except OSError:
            return bytes(6)

    def link(self) -> LinkStatus:
        return LinkStatus(up=nd.is_up(self.iface), speed_mbps=nd.speed_mbps(self.iface))

    def mtu(self) -> int:
        try:
            return nd.mtu(self.iface)
        except OSError:
            return 0

    def set_mtu(self, mtu: int) -> None:
        """The netdev's MTU (frames above it are counted in oerrors from the next start)."""
        if self._state is not None:
            raise PortError(f"{self.name}: stop the port before changing its MTU")
        try:
            nd.ip_link_set(self.iface, "mtu", str(mtu))
        except OSError as e:
            raise PortError(str(e)) from None

    def set_link(self, up: bool) -> None:
        """Admin state of the netdev (a VF's link as its guest sees it)."""
        try:
            nd.ip_link_set(self.iface, "up" if up else "down")
        except OSError as e:
            raise PortError(str(e)) from None


@njit(nogil=True, cache=True, inline="always")
def unsendable(st, q, ln, x_too_big):
    """True for a frame longer than the MTU allows (``st.max_frame``) or
    shorter than an Ethernet header: counted in oerrors and the driver's
    xstat ``x_too_big``; the caller takes it and drops it."""
    if ln > st.max_frame or ln < ETH_HLEN:
        st.stats[q, ST_OERRORS] += 1
        st.xstats[q, x_too_big] += 1
        return True
    return False
