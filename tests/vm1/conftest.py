"""Real VM1 (QEMU + a Debian guest, tools/guest) against VM2 = this process:
a forwarding runtime with a vhost-pci port (QEMU's vhost-user back-end) and
a VF port on a veth whose far end is a fresh network namespace.

    guest eth0 10.9.0.2 --virtio-net/vhost-user--> net_vhost_pci0 <-io-> net_vf0
        = veth host end <--> veth peer 10.9.0.1 in the namespace

Everything is created per test and removed on every exit path: QEMU (killed
by PID), the namespace and veth, the sockets, the runtime.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from apps.wire import VethWire, wire_unavailable
from pmd.fwd.runtime import Forwarding
from pmd.lcore import LcoreManager
from tests.conftest import CPUS, ROOT, WORKER_CPU
from tests.util import QEMU_SERIES, qemu_or_skip, wait_until

NS_IP, VM1_IP = "10.9.0.1", "10.9.0.2"
VM1_MAC = "52:54:00:00:00:01"
NS_UDP = ROOT / "tests" / "vm1" / "ns_udp.py"
BOOT_TIMEOUT = 240.0  # TCG on a loaded 2-core machine: boots take 5-10 s alone, much more when shared


def missing_part() -> str | None:
    """Why the real-VM1 tests cannot run here, or None."""
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not installed (tools/setup installs qemu-system-x86)"
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return "no apt-get/dpkg-deb to fetch the guest kernel and busybox (Debian packages)"
    return wire_unavailable()


@pytest.fixture(scope="session", params=QEMU_SERIES, ids=[f"qemu-{s}" for s in QEMU_SERIES])
def qemu(request):
    """Each real-VM1 test runs on Debian's QEMU 7.2 (INTx) and bookworm-backports'
    10.0 (MSI-X): ``tools.guest.qemu_binary.Qemu``; skips when one is missing."""
    return qemu_or_skip(request.param)


@pytest.fixture(scope="session")
def image61():
    from tools.guest import build_image
    return build_image("6.1")


@pytest.fixture(scope="session")
def image612():
    from tools.guest import build_image
    return build_image("6.12")


class Lines:
    """A child's stdout lines, read by a thread (never blocks the test)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.q: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.q.put(line.rstrip("\n"))

    def next(self, timeout: float) -> str:
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output from {self.proc.args} within {timeout} s") from None


class Vm2:
    """VM2: the runtime with net_vhost_pci0 (server mode on ``sock``) and
    a VF port (``vf``: net_vf, or net_vf_xdp for AF_XDP) on a veth into
    namespace ``wire.ns`` (NS_IP); io forwarding."""

    _ids = itertools.count()

    def __init__(self, sockdir: str, vf: str = "net_vf") -> None:
        self.vf_kind = vf
        tag = f"{os.getpid() % 100000}{next(self._ids)}"
        self.wire = VethWire(f"vv{tag}h", f"vv{tag}n", f"vhostpci-vm1-{tag}")
        self.sock = os.path.join(sockdir, "vm1.sock")
        self.fw: Forwarding | None = None
        self.children: list[subprocess.Popen] = []

    def start_wire(self) -> Vm2:
        """Only the veth and the namespace (VM2's runtime runs elsewhere)."""
        self.wire.create()
        self.wire.peer_ip("addr", "add", f"{NS_IP}/24", "dev", self.wire.peer)
        self.wire.peer_ip("link", "set", "lo", "up")
        # no ARP towards the guest: the only frames VM2 writes into VM1 are the test's
        self.wire.peer_ip("neigh", "add", VM1_IP, "lladdr", VM1_MAC, "dev", self.wire.peer, "nud", "permanent")
        if self.vf_kind == "net_vf_xdp":
            # AF_XDP hands frames over as they are: the namespace computes its
            # checksums itself, as a real wire's sender would (net_vf completes
            # the partial ones a veth carries; an XDP program cannot know them)
            subprocess.run(["ip", "netns", "exec", self.wire.ns, "ethtool", "-K", self.wire.peer, "tx", "off"],
                           check=True, capture_output=True, timeout=10)
        return self

    def start(self, queues: int = 1) -> Vm2:
        """The wire and the runtime: QUEUES queue pairs on both ports."""
        self.start_wire()
        self.fw = Forwarding(LcoreManager({0: CPUS[0], 1: WORKER_CPU}, 0), nb_mbufs=8192)
        self.vp = self.fw.attach_port(f"net_vhost_pci0,path={self.sock},queues={queues}")
        self.vf = self.fw.attach_port(f"{self.vf_kind}0,iface={self.wire.host},queues={queues}")
        self.vp.start()
        self.vf.start()
        self.fw.config.mode = "io"
        self.fw.start()
        return self

    @property
    def ns_mac(self) -> str:
        return self.wire.peer_mac()

    def ns_popen(self, *args: str) -> subprocess.Popen:
        """``python3 ns_udp.py ARGS`` in the namespace, stdout as text lines."""
        p = subprocess.Popen(["ip", "netns", "exec", self.wire.ns, sys.executable, str(NS_UDP), *args],
                             stdout=subprocess.PIPE, text=True)
        self.children.append(p)
        return p

    def udp_receiver(self, port: int) -> UdpReceiver:
        return UdpReceiver(self.ns_popen("recv", str(port)))

    def udp_send(self, port: int, count: int, rate: float, size: int = 64, timeout: float = 120,
                 ports: int = 1) -> dict:
        """Send from the namespace to the guest (to PORTS ports from PORT on:
        as many flows); returns the sender's report."""
        p = self.ns_popen("send", VM1_IP, str(port), str(count), str(rate), str(size), str(ports))
        out, _ = p.communicate(timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])

    def diagnostics(self) -> dict:
        """Counters that say where packets went (for assertion messages)."""
        return {"streams": self.fw.fwd_stats() if self.fw else None,
                "vp": (self.vp.stats().totals, {k: v for k, v in self.vp.driver.xstats().items() if v}),
                "vf": (self.vf.stats().totals, {k: v for k, v in self.vf.driver.xstats().items() if v})}

    def close(self) -> None:
        for p in self.children:
            if p.poll() is None:
                p.kill()
            p.wait(10)
            if p.stdout:
                p.stdout.close()
        try:
            if self.fw is not None:
                self.fw.close()
        finally:
            self.wire.delete()


class UdpReceiver:
    """ns_udp.py recv: started and ready; ``result()`` stops it and returns its report."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines = Lines(proc)
        assert self.lines.next(30) == "ready"

    def result(self) -> dict:
        self.proc.terminate()
        return json.loads(self.lines.next(30))


@contextlib.contextmanager
def _vm2(start: Callable[[Vm2], Vm2], vf: str = "net_vf") -> Iterator[Vm2]:
    why = missing_part()
    if why:
        pytest.skip(why)
    d = tempfile.mkdtemp(prefix="vm1t", dir="/tmp")
    v = Vm2(d, vf)
    try:
        yield start(v)
    finally:
        try:
            v.close()
        finally:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def vm2():
    """A started Vm2 (skips with the reason when a part is missing)."""
    with _vm2(Vm2.start) as v:
        yield v


@pytest.fixture
def vm2_xdp():
    """A started Vm2 whose VF port is net_vf_xdp (AF_XDP)."""
    if shutil.which("ethtool") is None:
        pytest.skip("ethtool not found (the namespace's tx checksum offload must be off for AF_XDP)")
    with _vm2(Vm2.start, "net_vf_xdp") as v:
        yield v


@pytest.fixture
def vm2_mq():
    """A started Vm2 with two queue pairs on each port."""
    with _vm2(lambda v: v.start(queues=2)) as v:
        yield v


@pytest.fixture
def wire():
    """A Vm2 with only its veth and namespace: the test runs VM2's app itself."""
    with _vm2(Vm2.start_wire) as v:
        yield v


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Where QEMU's console log and stderr go (pytest keeps the last runs' for a post-mortem)."""
    return tmp_path


def port_up(vm2: Vm2, timeout: float) -> bool:
    return wait_until(lambda: vm2.vp.link().up, timeout, 0.05)
