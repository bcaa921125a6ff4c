"""A veth pair, optionally with one end in a fresh network namespace: the
"wire" behind a VF port in the demo, the VF bench and the VF tests.

Everything created is removed by ``delete()`` (idempotent, also after a
partial ``create()``); interfaces and namespaces carry the caller's unique
names, nothing else is touched.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ip ARGS`` (iproute2), output captured."""
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def reclaim_leftovers(ns_prefix: str, host_format: str) -> list[str]:
    """Remove what a process killed before its clean-up left: each namespace
    ``{ns_prefix}{pid}`` whose process is gone, with its veth
    ``host_format.format(pid)`` (a veth whose other end is in a namespace
    outlives it).  Returns the namespaces removed.  A live process's
    wire, and every name of another form, is left alone."""
    removed = []
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        tail = name[len(ns_prefix):] if name.startswith(ns_prefix) else ""
        if not tail.isdigit() or os.path.exists(f"/proc/{int(tail)}"):
            continue
        ip("link", "del", host_format.format(int(tail)), check=False)
        ip("netns", "del", name, check=False)
        removed.append(name)
    return removed


def wire_unavailable() -> str | None:
    """Why a veth wire cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "no `ip` tool (iproute2)"
    return None


class VethWire:
    """``host`` <-> ``peer``; with ``ns`` the peer end lives in that new
    namespace.  Both ends up, IPv6 off (no router solicitations or MLD on
    the wire or in counters).  ``queues``: rx and tx queues of each end (a
    frame sent on the peer's tx queue N arrives on the host's rx queue N)."""

    def __init__(self, host: str, peer: str, ns: str | None = None, queues: int = 1) -> None:
        self.host, self.peer, self.ns, self.queues = host, peer, ns, queues
        self.created = False

    def _on_peer(self, *args: str) -> list[str]:
        return ["-n", self.ns, *args] if self.ns else list(args)

    def create(self) -> None:
        self.created = True  # from the first command on, delete() cleans up
        if self.ns:
            ip("netns", "add", self.ns)
        nq = ("numtxqueues", str(self.queues), "numrxqueues", str(self.queues))
        ip("link", "add", self.host, *nq, "type", "veth", "peer", "name", self.peer, *nq)
        if self.ns:
            ip("link", "set", self.peer, "netns", self.ns)
            subprocess.run(["ip", "netns", "exec", self.ns, "sysctl", "-qw",
                            f"net.ipv6.conf.{self.peer}.disable_ipv6=1"], check=False, capture_output=True)
        else:
            _disable_ipv6(self.peer)
        _disable_ipv6(self.host)
        ip(*self._on_peer("link", "set", self.peer, "up"))
        ip("link", "set", self.host, "up")
        deadline = time.monotonic() + 5
        for end in [self.host] + ([] if self.ns else [self.peer]):
            while Path(f"/sys/class/net/{end}/operstate").read_text().strip() != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"veth {end} did not come up")
                time.sleep(0.02)

    def peer_ip(self, *args: str) -> subprocess.CompletedProcess:
        """``ip`` on the peer's side (inside the namespace, if any)."""
        return ip(*self._on_peer(*args))

    def peer_mac(self) -> str:
        out = self.peer_ip("-o", "link", "show", self.peer).stdout
        return out.split("link/ether ")[1].split()[0]

    def delete(self) -> None:
        if not self.created:
            return
        ip("link", "del", self.host, check=False)  # takes the peer end with it
        if self.ns:
            ip("netns", "del", self.ns, check=False)
        deadline = time.monotonic() + 3  # deletion is asynchronous
        while any(os.path.exists(f"/sys/class/net/{e}") for e in (self.host, self.peer)) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        self.created = False


def _disable_ipv6(iface: str) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/sys/net/ipv6/conf/{iface}/disable_ipv6").write_text("1")
