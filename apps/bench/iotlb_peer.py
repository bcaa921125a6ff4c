"""The front-end of ``vhostpci-bench iotlb``'s update/invalidate figures, in
its own process as QEMU is: ``python -m apps.bench.iotlb_peer PATH SAMPLES
[--live N] [--python]``.

It connects to the vhost-pci port's socket, negotiates what QEMU negotiates
behind a vIOMMU (IOMMU_PLATFORM, REPLY_ACK), hands over 1 MiB of memory and
then times ``SAMPLES`` pairs: an UPDATE of one 4 KiB page (read-only) until
its ack, and that page's INVALIDATE until its ack, both with NEED_REPLY.
``--live N`` first grants N other pages, every other page (no two merge),
the timed one in their middle: the state a lazy vIOMMU leaves (Linux's
default flushes its IOTLB in batches, so tens of thousands of grants stay
live), where a table rebuilt per message would cost O(N).
Prints one JSON line: the two lists of seconds.  Its own process keeps the
figures free of the bench's threads (one interpreter lock would be shared
with VM2's control thread otherwise).

The timed exchanges are sent and read by a compiled loop, as QEMU's C code
sends them: the figure is the back-end's round trip, not this front-end's
Python (``--python`` times them through ``FrontendSession`` instead).
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
from numba import njit

from pmd.syscalls import monotonic_ns
from pmd.virtio_user_pmd.iotlb_batch import INVALIDATE, MSG_SIZE, REPLY_SIZE, UPDATE, call_batch, put_iotlb
from pmd.vhost_user.frontend import FrontendSession
from pmd.vhost_user.messages import VHOST_USER_F_PROTOCOL_FEATURES, IotlbPerm
from pmd.virtio.features import VIRTIO_F_IOMMU_PLATFORM, VIRTIO_F_VERSION_1
from pmd.virtio_user_pmd.guest_memory import GuestMemory

MEM_SIZE = 1 << 20
PAGE = 4096
TIMEOUT_NS = 5_000_000_000  # a reply later than this: the port is stuck
LIVE_BASE = 0x100000  # the live grants' pages start here, after the timed one's 1 MiB


@njit(nogil=True, cache=True)
def _round_trip(fd, msg, reply):
    """Send the one message in ``msg`` and read its reply; ns taken, or -1."""
    t0 = monotonic_ns()
    if call_batch(fd, msg, 1, reply, TIMEOUT_NS) != 0:
        return -1  # a nack, or the channel failed
    return monotonic_ns() - t0


def _message(page: int, uaddr: int, perm: int, kind: int) -> np.ndarray:
    msg = np.zeros(MSG_SIZE, np.uint8)
    put_iotlb(msg, 0, page, PAGE, uaddr, perm, kind)
    return msg


def _compiled(fe: FrontendSession, page: int, uaddr: int, samples: int) -> tuple[list[float], list[float]]:
    fd = fe.channel.fileno()
    update = _message(page, uaddr, int(IotlbPerm.RO), UPDATE)
    invalidate = _message(page, 0, 0, INVALIDATE)
    reply = np.zeros(REPLY_SIZE, np.uint8)
    ups, invs = [], []
    for _ in range(samples):
        tu = _round_trip(fd, update, reply)
        ti = _round_trip(fd, invalidate, reply)
        if tu < 0 or ti < 0:
            raise RuntimeError("the port nacked or closed the connection")
        ups.append(tu / 1e9)
        invs.append(ti / 1e9)
    return ups, invs


def _python(fe: FrontendSession, page: int, uaddr: int, samples: int) -> tuple[list[float], list[float]]:
    ups, invs = [], []
    for _ in range(samples):
        t0 = time.perf_counter()
        fe.iotlb_update(page, PAGE, uaddr, IotlbPerm.RO)
        t1 = time.perf_counter()
        fe.iotlb_invalidate(page, PAGE)
        t2 = time.perf_counter()
        ups.append(t1 - t0)
        invs.append(t2 - t1)
    return ups, invs


def _grant_live(fe: FrontendSession, mem: GuestMemory, live: int) -> int:
    """Grant ``live`` pages, every other one from LIVE_BASE; returns the
    page in their middle (not granted) for the timed pair."""
    fd = fe.channel.fileno()
    reply = np.zeros(REPLY_SIZE, np.uint8)
    for k in range(live):
        page = LIVE_BASE + 2 * k * PAGE
        perm = IotlbPerm.RO if k % 2 else IotlbPerm.WO
        if _round_trip(fd, _message(page, mem.gpa_to_uaddr(page), int(perm), UPDATE), reply) < 0:
            raise RuntimeError(f"the port refused live grant {k}")
    return LIVE_BASE + (live | 1) * PAGE


def measure(path: str, samples: int, python: bool = False, live: int = 0) -> tuple[list[float], list[float]]:
    mem = GuestMemory([(0, MEM_SIZE + 2 * live * PAGE)])
    fe = FrontendSession.connect(path, timeout=10.0)
    try:
        want = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_IOMMU_PLATFORM) | (1 << VHOST_USER_F_PROTOCOL_FEATURES)
        offered = fe.get_features()
        if offered & want != want:
            raise RuntimeError(f"the port offers features {offered:#x}, not IOMMU_PLATFORM")
        fe.set_owner()
        fe.set_protocol_features(fe.get_protocol_features())
        fe.set_features(want)
        fe.set_mem_table(mem)
        page = _grant_live(fe, mem, live) if live else 0x10000
        uaddr = mem.gpa_to_uaddr(page)
        fe.iotlb_update(page, PAGE, uaddr, IotlbPerm.RO)  # a first pair through the session: its replies are checked
        fe.iotlb_invalidate(page, PAGE)
        return (_python if python else _compiled)(fe, page, uaddr, samples)
    finally:
        fe.close()
        mem.close()


def main() -> None:
    live = int(sys.argv[sys.argv.index("--live") + 1]) if "--live" in sys.argv else 0
    ups, invs = measure(sys.argv[1], int(sys.argv[2]), "--python" in sys.argv[3:], live)
    print(json.dumps({"update": ups, "invalidate": invs}))


if __name__ == "__main__":
    main()
