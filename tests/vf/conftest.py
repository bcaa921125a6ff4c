"""A veth pair for the VF port: the host end is the port's netdev, the other
end lives in a fresh network namespace where ``ns_peer.py`` plays the wire.
Names are unique per pytest process; the pair and the namespace are removed
on every exit path, and nothing else is ever touched."""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from apps.wire import VethWire, ip, wire_unavailable
from pmd.ethdev import Port
from pmd.vdev import parse_vdev

PEER = str(Path(__file__).with_name("ns_peer.py"))
_seq = itertools.count()




@dataclass
class Veth:
    host: str  # the VF port's interface
    ns: str  # namespace holding the peer end
    peer: str  # the peer end, inside ``ns``
    subnet: int

    def peer_cmd(self, *args) -> list[str]:
        return ["ip", "netns", "exec", self.ns, sys.executable, PEER, args[0], self.peer, *map(str, args[1:])]

    def run_peer(self, *args, timeout: float = 30) -> dict:
        """Run ns_peer.py to completion; its JSON result."""
        out = subprocess.run(self.peer_cmd(*args), capture_output=True, text=True, timeout=timeout, check=True)
        return json.loads(out.stdout.splitlines()[-1])

    def start_peer(self, *args) -> subprocess.Popen:
        """Start ns_peer.py and wait until its socket is bound."""
        p = subprocess.Popen(self.peer_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = p.stdout.readline()
        if line.strip() != "ready":
            p.kill()
            raise RuntimeError(f"ns_peer did not start: {line!r} {p.stderr.read()}")
        return p

    @staticmethod
    def peer_result(p: subprocess.Popen, timeout: float = 30) -> dict:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        return json.loads(out.splitlines()[-1])

    def set_host_up(self, up: bool) -> None:
        ip("link", "set", self.host, "up" if up else "down")


def _require_root() -> None:
    why = wire_unavailable()
    if why is not None:
        pytest.skip(f"VF port tests need root and iproute2 (veth pairs, network namespaces, AF_PACKET): {why}")


@contextlib.contextmanager
def make_veth(queues: int = 1):
    """Create the pair and the namespace, both ends up; always removed."""
    n = next(_seq)
    tag = f"{os.getpid() % 1000000}x{n}"
    host, peer, ns = f"vfh{tag}", f"vfp{tag}", f"vfns{tag}"
    subnet = (os.getpid() + n) % 250 + 1
    wire = VethWire(host, peer, ns, queues)
    try:
        wire.create()
        wire.peer_ip("addr", "add", f"10.99.{subnet}.1/24", "dev", peer)
        yield Veth(host, ns, peer, subnet)
    finally:
        wire.delete()


@pytest.fixture
def veth():
    _require_root()
    with make_veth() as v:
        yield v


def _compile(kind: str) -> None:
    """Compile (or load) every kernel the tests run on a ``kind`` port once,
    outside the timed parts: its burst kernels called from Python (rx, tx,
    flush) and the forwarding loop over it."""
    _require_root()
    from pmd.fwd.runtime import Forwarding
    from pmd.lcore import LcoreManager
    from pmd.mbuf import create_pool
    from tests.conftest import CPUS, WORKER_CPU
    from tests.vhostpci.peer_io import flush, recv, send

    with make_veth() as v:
        fw = Forwarding(LcoreManager({0: CPUS[0], 1: WORKER_CPU}, 0), nb_mbufs=256)
        try:
            port = fw.attach_port(f"{kind}0,iface={v.host}")
            port.start()
            fw.start()
            fw.stop()
            pool = create_pool(64)
            send(port, pool, [bytes(60)])
            flush(port, pool)
            recv(port, pool)
        finally:
            fw.close()


@pytest.fixture(scope="session")
def compiled_vf():
    _compile("net_vf")


@pytest.fixture(scope="session")
def compiled_xdp():
    _compile("net_vf_xdp")


def xdp_attached(iface: str) -> str:
    """The XDP mode of the program on ``iface`` ('none' when it carries none)."""
    from pmd.xdp_pmd import netlink

    return netlink.xdp_state(socket.if_nametoindex(iface)).mode


@pytest.fixture
def port_on(veth, request):
    """Start a VF port (``kind``: net_vf or net_vf_xdp) on the veth's host
    end (extra devargs optional); an AF_XDP port leaves no XDP program."""
    ports = []

    def make(extra: str = "", port_id: int = 0, kind: str = "net_vf") -> Port:
        if kind == "net_vf_xdp":
            request.getfixturevalue("compiled_xdp")
        p = Port(port_id, parse_vdev(f"{kind}{port_id},iface={veth.host}{extra}"))
        ports.append(p)
        p.start()
        return p

    yield make
    for p in ports:
        p.close()
    assert xdp_attached(veth.host) == "none"


def send_all(port, pool, pkts, queue: int = 0) -> int:
    """tx_burst, then flush until the kernel took every frame (AF_XDP copy
    mode sends a bounded batch per wakeup; net_vf holds nothing)."""
    from tests.vhostpci.peer_io import flush, send

    n = send(port, pool, pkts, queue=queue)
    deadline = time.monotonic() + 5
    while flush(port, pool, queue=queue) and time.monotonic() < deadline:
        time.sleep(0.001)
    return n
