"""A network interface as sysfs shows it (the netdev behind a VF port, a
veth end in tests), shared by the VF drivers: existence, link state, MTU,
MAC, queues; and the ``iface=`` devarg and the "is it usable" check."""
from __future__ import annotations

import os
import socket
import subprocess

_SYS = "/sys/class/net"


def _read(iface: str, attr: str) -> str:
    with open(os.path.join(_SYS, iface, attr)) as f:
        return f.read().strip()


def exists(iface: str) -> bool:
    return bool(iface) and "/" not in iface and os.path.isdir(os.path.join(_SYS, iface))


def operstate(iface: str) -> str:
    """``up``, ``down``, ``lowerlayerdown``, ``unknown``...; ``absent`` once it is gone."""
    try:
        return _read(iface, "operstate")
    except OSError:
        return "absent"


def admin_up(iface: str) -> bool:
    try:
        return bool(int(_read(iface, "flags"), 16) & 1)  # IFF_UP
    except (OSError, ValueError):
        return False


def is_up(iface: str) -> bool:
    """Carrier and admin state both up (``unknown``: a device that does not
    report operstate, e.g. tun, counts as up when admin-up)."""
    return admin_up(iface) and operstate(iface) in ("up", "unknown")


def mac(iface: str) -> bytes:
    return bytes.fromhex(_read(iface, "address").replace(":", ""))


def mtu(iface: str) -> int:
    return int(_read(iface, "mtu"))


def speed_mbps(iface: str) -> int:
    try:
        return max(int(_read(iface, "speed")), 0)
    except (OSError, ValueError):  # veth and most virtual devices: EINVAL
        return 0


def ifindex(iface: str) -> int:
    return socket.if_nametoindex(iface)




def rx_queues(iface: str) -> int:
    """How many rx queues the netdev has (``queues/rx-N`` in sysfs)."""
    try:
        return sum(1 for e in os.listdir(os.path.join(_SYS, iface, "queues")) if e.startswith("rx-"))
    except OSError:
        return 0


def iface_devarg(text: str) -> str:
    """The ``iface=`` devarg: a plausible netdev name (existence is checked at start)."""
    if not text or len(text) > 15 or "/" in text or "," in text:
        raise ValueError(f"expected a network interface name, got {text!r}")
    return text


def unusable(iface: str) -> str | None:
    """Why ``iface`` cannot carry traffic now (absent, down), or None."""
    if not exists(iface):
        return f"interface {iface} does not exist"
    if not is_up(iface):
        admin = "up" if admin_up(iface) else "down"
        return f"interface {iface} is down (admin {admin}, operstate {operstate(iface)})"
    return None


def ip_link_set(iface: str, *words: str) -> None:
    """``ip link set dev IFACE WORDS...``; OSError with ip's message on failure."""
    p = subprocess.run(["ip", "link", "set", "dev", iface, *words], capture_output=True, text=True, timeout=10)
    if p.returncode != 0:
        raise OSError(f"{iface}: ip link set {' '.join(words)}: {p.stderr.strip() or p.returncode}")
