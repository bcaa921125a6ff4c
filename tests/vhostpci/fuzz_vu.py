"""Stateful fuzzer of vhost-user message sequences against a running port.

VM2 (this process): a forwarding runtime, io mode, one lcore: a net_ring
pair (ports 0 <-> 1, forwarding all the time) and a net_vhost_pci port
(port 2, forwarding to itself, so its kernels run on whatever rings the
fuzzer sets up).  The front-end is a hypothesis ``RuleBasedStateMachine``
speaking raw vhost-user (the codec's ``Channel``, checks off): each rule is
one request with fields drawn from values that matter (page-aligned or not,
inside the memory tables it sent or not, vring indices in and out of range,
regions beyond their fd, IOTLB grants of every type, fds of the wrong kind,
garbage headers) and every request asks for a reply (REPLY_ACK is
negotiated at connect), so the sequence is in lock-step.  The port may nack,
reply or hang up; a hang-up starts a new connection.

Invariants, checked as it runs and at the end: the port's control thread
lives, the ring ports keep forwarding, and once the last connection is gone
the port holds no memory (window rows), no fd and no mapping more than
before the first one.  Every refusal must be one the port meant: its
"unexpected error" records are counted (with the first messages) for the
parent to assert none.  A crash kills this process: the parent sees it.

``python -m tests.vhostpci.fuzz_vu EXAMPLES STEPS SECONDS [SEED]`` (at most EXAMPLES x STEPS
steps, within SECONDS) prints one JSON line.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import struct
import sys
import tempfile
import time
from collections import Counter

import hypothesis.core
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from pmd.fwd.runtime import Forwarding
from pmd.lcore import LcoreManager
from pmd.vhost_user.codec import Channel
from pmd.vhost_user.errors import Timeout, VhostUserError
from pmd.vhost_user.messages import FLAG_NEED_REPLY, VERSION, expects_reply
from pmd.vhost_user.messages import FrontendReq as F
from pmd.vhostpci_pmd.state import VQ_READY
from tests.conftest import CPUS, WORKER_CPU
from tests.vhost_user.test_vu_backend import open_fds

PAGE = 4096
CHUNK = 10  # examples per run of the state machine (seeded seed + chunk number: a seed replays the run)
UADDR = 0x7F00_0000_0000
# memfds the front-end hands out: (size); the tables mostly use them within their size
FD_SIZES = (16 * PAGE, 256 * PAGE, 1024 * PAGE)
FEATURE_BITS = (0, 1, 5, 15, 17, 24, 27, 28, 29, 30, 32, 33, 34, 35, 36, 60, 63)
PROTOCOL_ALL = (1 << 18) - 1
# requests whose u64 reply is an ack (the others answer a value)
ACKED = frozenset(r for r in F if r not in (F.GET_FEATURES, F.GET_PROTOCOL_FEATURES, F.GET_QUEUE_NUM,
                                             F.GET_MAX_MEM_SLOTS, F.GET_STATUS, F.GET_VRING_BASE))

u64 = st.one_of(st.integers(0, 2 ** 64 - 1), st.sampled_from([0, 1, PAGE, 2 ** 63, 2 ** 64 - 1, 2 ** 64 - PAGE]))
pages = st.integers(0, 1100).map(lambda n: n * PAGE)
vring = st.one_of(st.integers(0, 1), st.integers(0, 1), st.integers(0, 5))  # the port has vrings 0..1
ring_size = st.sampled_from([0, 1, 2, 3, 64, 256, 1000, 1024, 32768, 65536])


class Port:
    """VM2 for the whole run."""

    def __init__(self, path: str) -> None:
        self.fw = Forwarding(LcoreManager({0: CPUS[0], 1: WORKER_CPU}, 0), nb_mbufs=2048)
        for vdev in ("net_ring1,peer=net_ring2", "net_ring2", f"net_vhost_pci0,path={path}"):
            self.fw.attach_port(vdev)
        for pid in sorted(self.fw.ports):
            self.fw.start_port(pid)
        self.fw.config.mode = "io"
        self.fw.start(tx_first=True)
        self.vp = self.fw.port(2)
        self.srv = self.vp.driver.server

    def ring_rx(self) -> int:
        s = self.fw.fwd_stats()
        return s[0]["rx"] + s[1]["rx"]


class Env:
    port: Port
    path: str
    deadline: float
    memfds: list[int]
    efds: list[int]
    stats: Counter


ENV = Env()


class VhostUserFuzz(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ch: Channel | None = None
        self.pf = self.offered_pf = 0  # protocol features as the port sees them
        self.pf_next: int | None = None
        self.regions: list[tuple[int, int, int]] = []  # (gpa, size, uaddr) of the last table/added regions
        self.last_ring_rx = ENV.port.ring_rx()
        self.last_check = time.monotonic()

    # ------------------------------------------------------------ plumbing
    def _connect(self) -> Channel:
        if self.ch is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(ENV.path)
            self.ch = Channel(sock, "frontend", message_timeout=2.0, send_timeout=2.0)
            self.pf = 0
            ENV.stats["connections"] += 1
            self.offered_pf = self._send(F.GET_PROTOCOL_FEATURES, b"") or 0
            self._send(F.SET_PROTOCOL_FEATURES, struct.pack("=Q", self.offered_pf))
        return self.ch

    def _send(self, request: int, payload: bytes, fds=()) -> int | None:
        """One request, NEED_REPLY set; waits for the reply when the spec
        says one is due under what the port believes was negotiated (so the
        stream stays in lock-step).  Returns a u64 reply's value."""
        if time.monotonic() > ENV.deadline:
            return None  # the time budget is spent: the remaining steps do nothing
        ch = self.ch if self.ch is not None else self._connect()
        if ch is None:
            return None
        flags = VERSION | FLAG_NEED_REPLY
        due = expects_reply(request, flags, self.pf)
        if request == F.SET_PROTOCOL_FEATURES:
            value = struct.unpack("=Q", payload)[0] if len(payload) == 8 else -1
            if 0 <= value and not value & ~self.offered_pf:
                self.pf_next = value
                due = expects_reply(request, flags, value)  # the port acks under the value it just took
        try:
            ch.send_message(request, payload, list(fds), need_reply=True, check=False)
            ENV.stats["messages"] += 1
            if request == F.SET_PROTOCOL_FEATURES and getattr(self, "pf_next", None) is not None:
                self.pf, self.pf_next = self.pf_next, None  # applies from the next request on
            if not due:
                return None
            with ch.recv_reply(request, timeout=2.0) as reply:
                if len(reply.payload) == 8:
                    value = reply.u64
                    if request in ACKED:
                        ENV.stats["nacked" if value else "acked"] += 1
                    else:
                        ENV.stats["replied"] += 1
                    return value
                ENV.stats["replied"] += 1
                return None
        except Timeout as e:
            ENV.stats["no_reply"] += 1  # the port closed it or read it as something else: start over
            self._drop()
        except (VhostUserError, OSError, ValueError) as e:
            ENV.stats["hung_up"] += 1
            if os.environ.get("FUZZ_DEBUG"):
                print("hung up:", F(request).name, type(e).__name__, e, flush=True)
            self._drop()
        return None

    def _drop(self) -> None:
        if self.ch is not None:
            self.ch.close()
            self.ch = None

    def teardown(self) -> None:
        self._drop()

    def _memfd(self, k: int) -> int:
        return ENV.memfds[k % len(ENV.memfds)]

    # ------------------------------------------------------------ negotiation
    @rule(bits=st.lists(st.sampled_from(FEATURE_BITS), max_size=8))
    def set_features(self, bits):
        self._send(F.SET_FEATURES, struct.pack("=Q", sum(1 << b for b in set(bits))))

    @rule(req=st.sampled_from([F.GET_FEATURES, F.GET_QUEUE_NUM, F.GET_MAX_MEM_SLOTS, F.GET_STATUS, F.SET_OWNER,
                               F.RESET_OWNER, F.RESET_DEVICE]))
    def simple(self, req):
        self._send(req, b"")

    @rule(value=st.integers(0, 2 ** 64 - 1))
    def set_protocol_features(self, value):
        self._send(F.SET_PROTOCOL_FEATURES, struct.pack("=Q", value & PROTOCOL_ALL if value % 3 else value))

    @rule(status=st.integers(0, 255))
    def set_status(self, status):
        self._send(F.SET_STATUS, struct.pack("=Q", status))

    @rule(mac=st.binary(min_size=8, max_size=8), mtu=st.integers(0, 70000))
    def rarp_and_mtu(self, mac, mtu):
        self._send(F.SEND_RARP, mac)
        self._send(F.NET_SET_MTU, struct.pack("=Q", mtu))

    # ------------------------------------------------------------ memory
    def _region(self, data, fd_k: int) -> tuple[int, int, int, int]:
        fd_size = FD_SIZES[fd_k % len(FD_SIZES)]
        gpa = data.draw(st.one_of(pages, st.sampled_from([0, 0x100000, 1 << 32]), u64))
        size = data.draw(st.one_of(st.integers(1, fd_size // PAGE).map(lambda n: n * PAGE), pages, u64))
        off = data.draw(st.one_of(st.just(0), st.integers(0, 8).map(lambda n: n * PAGE), u64))
        uaddr = data.draw(st.one_of(st.integers(0, 64).map(lambda n: UADDR + n * (4 << 20)), u64))
        return gpa, size, uaddr, off

    @rule(data=st.data(), n=st.integers(0, 9), fd_ks=st.lists(st.integers(0, 2), min_size=9, max_size=9),
          fd_count=st.one_of(st.none(), st.integers(0, 9)))
    def set_mem_table(self, data, n, fd_ks, fd_count):
        regs = [self._region(data, fd_ks[i]) for i in range(n)]
        payload = struct.pack("=II", n, 0) + b"".join(struct.pack("=QQQQ", *r) for r in regs)
        fds = [self._memfd(k) for k in fd_ks[: n if fd_count is None else fd_count]]
        self.regions = [(g, s, u) for g, s, u, _ in regs]
        self._send(F.SET_MEM_TABLE, payload, fds)

    @rule(data=st.data(), fd_k=st.integers(0, 2), add=st.booleans(), with_fd=st.booleans())
    def mem_reg(self, data, fd_k, add, with_fd):
        if not add and self.regions and data.draw(st.booleans()):
            gpa, size, uaddr = data.draw(st.sampled_from(self.regions))
            off = 0
        else:
            gpa, size, uaddr, off = self._region(data, fd_k)
        if add:
            self.regions.append((gpa, size, uaddr))
        payload = struct.pack("=8xQQQQ", gpa, size, uaddr, off)
        self._send(F.ADD_MEM_REG if add else F.REM_MEM_REG, payload, [self._memfd(fd_k)] if with_fd else [])

    @rule(size=st.one_of(st.just(PAGE), st.integers(0, 2 ** 20), u64), off=st.one_of(st.just(0), u64),
          fd_k=st.integers(0, 2), shm=st.booleans())
    def log_base(self, size, off, fd_k, shm):
        self._send(F.SET_LOG_BASE, struct.pack("=QQ", size, off), [self._memfd(fd_k)])
        if shm:
            self._send(F.SET_LOG_FD, b"", [ENV.efds[0]])

    @rule(nq=st.integers(0, 4), qs=ring_size, size=st.one_of(pages, u64), off=st.one_of(st.just(0), u64),
          fd_k=st.integers(0, 2), get=st.booleans())
    def inflight(self, nq, qs, size, off, fd_k, get):
        if get:
            self._send(F.GET_INFLIGHT_FD, struct.pack("=QQHH4x", 0, 0, nq, qs & 0xFFFF))
        else:
            self._send(F.SET_INFLIGHT_FD, struct.pack("=QQHH4x", size, off, nq, qs & 0xFFFF), [self._memfd(fd_k)])

    @rule(data=st.data(), kind=st.sampled_from([1, 2, 3, 4, 0, 9]), perm=st.integers(0, 5))
    def iotlb(self, data, kind, perm):  # 1 MISS, 2 UPDATE, 3 INVALIDATE, 4 ACCESS_FAIL
        iova = data.draw(st.one_of(pages, u64))
        size = data.draw(st.one_of(st.integers(1, 64).map(lambda n: n * PAGE), u64))
        uaddr = data.draw(st.one_of(st.sampled_from([u for _, _, u in self.regions] or [UADDR]), u64))
        self._send(F.IOTLB_MSG, struct.pack("=QQQBB6x", iova, size, uaddr, perm, kind))

    @rule(fd_k=st.integers(0, 3))
    def backend_req_fd(self, fd_k):
        a, b = socket.socketpair()
        try:
            self._send(F.SET_BACKEND_REQ_FD, b"", [b.fileno() if fd_k else self._memfd(fd_k)])
        finally:
            a.close()
            b.close()

    # ------------------------------------------------------------ vrings
    def _ring_addr(self, data) -> int:
        if self.regions and data.draw(st.booleans()):
            gpa, size, uaddr = data.draw(st.sampled_from(self.regions))
            return (uaddr + data.draw(st.integers(0, 64)) * 64) % 2 ** 64
        return data.draw(st.one_of(u64, pages))

    @rule(data=st.data(), index=vring, num=ring_size, base=st.integers(0, 2 ** 32 - 1), fd_k=st.integers(0, 3),
          nofd=st.booleans(), enable=st.integers(0, 2))
    def vring_setup(self, data, index, num, base, fd_k, nofd, enable):
        self._send(F.SET_VRING_NUM, struct.pack("=II", index, num))
        self._send(F.SET_VRING_BASE, struct.pack("=II", index, base))
        addrs = [self._ring_addr(data) for _ in range(4)]
        self._send(F.SET_VRING_ADDR, struct.pack("=IIQQQQ", index, 0, *addrs))
        fd = ENV.efds[fd_k % len(ENV.efds)] if fd_k < 3 else self._memfd(0)  # an fd that is no eventfd
        for req in (F.SET_VRING_CALL, F.SET_VRING_KICK, F.SET_VRING_ERR):
            self._send(req, struct.pack("=Q", index | (0x100 if nofd else 0)), [] if nofd else [fd])
        self._send(F.SET_VRING_ENABLE, struct.pack("=II", index, enable))

    @rule(index=vring, enable=st.integers(0, 1), get=st.booleans())
    def vring_toggle(self, index, enable, get):
        if get:
            self._send(F.GET_VRING_BASE, struct.pack("=II", index, 0))
        else:
            self._send(F.SET_VRING_ENABLE, struct.pack("=II", index, enable))

    @rule(index=vring)
    def kick(self, index):
        os.eventfd_write(ENV.efds[index % len(ENV.efds)], 1)

    @rule(offset=st.integers(0, 300), size=st.integers(0, 300), data=st.binary(max_size=64), get=st.booleans())
    def config(self, offset, size, data, get):
        body = data.ljust(size, b"\0")[:size] if not get else bytes(size)
        self._send(F.GET_CONFIG if get else F.SET_CONFIG, struct.pack("=III", offset, size, 0) + body)

    # ------------------------------------------------------------ garbage
    @rule(req=st.integers(0, 80), flags=st.integers(0, 2 ** 32 - 1), body=st.binary(max_size=300),
          size=st.one_of(st.none(), st.integers(0, 2 ** 32 - 1)))
    def raw(self, req, flags, body, size):
        if time.monotonic() > ENV.deadline:
            return
        ch = self._connect() if self.ch is None else self.ch
        hdr = struct.pack("=III", req, flags if flags % 4 else VERSION, len(body) if size is None else size)
        try:
            if ch is not None:
                os.write(ch.fileno(), hdr + body)
        except OSError:
            pass
        ENV.stats["raw"] += 1
        self._drop()  # the stream may be out of sync now: start over

    @rule()
    def reconnect(self):
        self._drop()

    # ------------------------------------------------------------ invariants
    @invariant()
    def port_alive(self):
        if ENV.port.vp.driver.vq[:, VQ_READY].any():  # the lcore runs on rings the fuzzer made
            ENV.stats["steps_with_a_ring_running"] += 1
        srv = ENV.port.srv
        assert srv._thread is not None and srv._thread.is_alive(), "the port's control thread died"
        now = time.monotonic()
        if now - self.last_check > 1.0:  # the other ports never stop
            rx = ENV.port.ring_rx()
            assert rx > self.last_ring_rx, "ring forwarding stalled"
            self.last_ring_rx, self.last_check = rx, now


class _Unexpected(logging.Handler):
    """Counts the back-end's "unexpected error" records: a handler that
    raised something other than a refusal (a missed check on the peer's input)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: Counter = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and "unexpected error" in record.getMessage():
            e = record.exc_info[1]
            self.seen[f"{record.getMessage().split(': ', 1)[-1]}: {type(e).__name__}: {e}"] += 1


def _named(fd: str) -> str:
    """``fd -> what it is``, for the leak report."""
    try:
        return f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}"
    except OSError:
        return fd


def _maps() -> set[str]:
    with open("/proc/self/maps") as f:
        return {" ".join(line.split()[1:]) + " " + line.split()[0] for line in f}


def main(examples: int, steps: int, budget: float, seed: int) -> None:
    d = tempfile.mkdtemp(prefix="fuzzvu", dir="/tmp")
    ENV.path = os.path.join(d, "vp.sock")
    ENV.stats = Counter()
    unexpected = _Unexpected()
    logging.getLogger("pmd.vhost_user").addHandler(unexpected)
    t0 = time.monotonic()
    ENV.port = Port(ENV.path)
    try:
        ENV.memfds = []
        for size in FD_SIZES:
            fd = os.memfd_create("fuzz-ram", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
            ENV.memfds.append(fd)
        ENV.efds = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(3)]
        # baseline after one full connection (lazy allocations done)
        ENV.deadline = time.monotonic() + 60
        m = VhostUserFuzz()
        m.simple(F.GET_FEATURES)
        m.teardown()
        srv = ENV.port.srv
        assert srv.wait_for(lambda s: s.session is None, 5.0)
        fds0, lines0 = open_fds(), _maps()
        ENV.deadline = time.monotonic() + budget
        chunks = 0
        while time.monotonic() < ENV.deadline and chunks * CHUNK < examples:  # chunks: stop on time
            hypothesis.core.global_force_seed = seed + chunks
            run_state_machine_as_test(VhostUserFuzz, settings=settings(
                max_examples=CHUNK, stateful_step_count=steps, deadline=None, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True))
            chunks += 1
        ENV.stats["examples_run"] = chunks * CHUNK
        assert srv.wait_for(lambda s: s.session is None and s.standby is None, 5.0), "a session is left"
        win = ENV.port.vp.driver.window
        # the port's stand-in (pmd/standin.py) starts with its first IOMMU session and lives with the port
        standin_fds = {str(fd) for fd in ENV.port.vp.driver.device.iotlb_server.standin.fds}
        leaks = {
            "fds": sorted(_named(fd) for fd in open_fds() - fds0 - standin_fds),
            # guest memory (memfd mappings; anonymous ones come and go with malloc)
            "memfd_maps": sorted(m for m in _maps() - lines0 if "memfd:" in m and "vhostpci-standin" not in m),
            "window_rows": int(win.table_count[0]) + int(win.region_count[0]),
        }
        rx0 = ENV.port.ring_rx()
        time.sleep(0.2)
        forwarding = ENV.port.ring_rx() > rx0
        print(json.dumps({"examples": examples, "steps": steps, **ENV.stats, "leaks": leaks,
                          "ring_ports_forwarding": forwarding,
                          "unexpected_errors": sum(unexpected.seen.values()),
                          "unexpected_first": [k for k, _ in unexpected.seen.most_common(5)],
                          "seconds": round(time.monotonic() - t0, 1)}),
              flush=True)
    finally:
        ENV.port.fw.close()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed}", flush=True)
    main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), seed)
