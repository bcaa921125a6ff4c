"""The vdev bus: ``--vdev 'name,key=val,...'`` strings and the built-in drivers.

Drivers register themselves (``pmd.ethdev.register_driver`` on their class);
this module is the one place that knows which driver packages come with
vhostpci and imports them, on first use, before a vdev string is matched
against the registry (DPDK's vdev bus probes its drivers the same way).
"""
from __future__ import annotations

import importlib
import re

from .ethdev import DevargError, PortDriver, VdevSpec, registered_drivers

# Packages whose import registers a driver (each names its driver module).
BUILTIN_DRIVERS = (
    "pmd.null_pmd.driver",
    "pmd.ring_pmd.driver",
    "pmd.vhostpci_pmd.driver",
    "pmd.virtio_user_pmd.driver",
    "pmd.vf_pmd.driver",
    "pmd.xdp_pmd.driver",
)


def load_builtin_drivers() -> dict[str, type[PortDriver]]:
    """Import the built-in drivers (idempotent); returns the registry."""
    for name in BUILTIN_DRIVERS:
        importlib.import_module(name)
    return registered_drivers()


_VDEV_NAME = re.compile(r"^([a-z_]+?)(\d+)$")


def parse_vdev(text: str) -> VdevSpec:
    """Parse and validate a vdev string against the driver registry.

    Raises DevargError naming the bad token: a malformed string, an unknown
    driver, an unknown devarg, or a devarg value its parser rejects.
    """
    parts = text.split(",")
    name = parts[0].strip()
    if not name:
        raise DevargError(f"malformed vdev {text!r}: empty device name")
    m = _VDEV_NAME.match(name)
    if not m:
        raise DevargError(f"malformed vdev name {name!r}: expected <driver><N>, e.g. net_ring0")
    known = load_builtin_drivers()
    cls = known.get(m.group(1))
    if cls is None:
        raise DevargError(f"unknown driver {m.group(1)!r} in vdev {name!r} (known: {', '.join(sorted(known))})")
    args = dict(cls.devarg_defaults)
    for kv in parts[1:]:
        key, sep, value = kv.partition("=")
        key = key.strip()
        if not sep or not key:
            raise DevargError(f"malformed devarg {kv!r} in vdev {name!r}: expected key=value")
        if key not in cls.devargs:
            allowed = ", ".join(sorted(cls.devargs)) or "none"
            raise DevargError(f"unknown devarg {key!r} for {name} (allowed: {allowed})")
        try:
            args[key] = cls.devargs[key](value)
        except ValueError as e:
            raise DevargError(f"bad value for devarg {key}={value!r} of {name}: {e}") from None
    return VdevSpec(name=name, driver=cls, args=args, text=text)


