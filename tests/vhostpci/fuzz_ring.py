"""Ring fuzzer: random split rings from a hostile VM1 against a running port.

VM2 (this process): a forwarding runtime, io mode, one lcore: a net_ring
pair (ports 0 <-> 1, forwarding all the time) and a net_vhost_pci port
(port 2, forwarding to itself: it dequeues VM1's transmit ring and enqueues
into VM1's receive ring).  VM1 is ``rogue_vm1.RogueVM1``; each hypothesis
case writes random descriptor tables into both rings (addresses inside the
buffers, in a hole, in the sentinel area, above 4 GiB, near 2**64; lengths
from 0 to 4 GiB; any mix of NEXT / WRITE / INDIRECT and stray flag bits;
next indices in and out of range, loops), random indirect tables, random
avail entries and avail index jumps, then kicks and lets the lcore run on
it.  Every ``RECONNECT`` cases VM1 reconnects with fresh rings (and a fresh
feature mix: INDIRECT, MRG_RXBUF, EVENT_IDX), so a ring the port declared
broken does not end the fuzzing.

At the end: the port's control thread and lcore live, the ring ports kept
forwarding, a new VM1 gets a packet through intact, and once it is gone the
port holds no fd, no guest mapping and no window row more than before.

``python -m tests.vhostpci.fuzz_ring CASES SECONDS [SEED]`` (at most CASES, within SECONDS)
prints one JSON line.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import struct
import sys
import tempfile
import time
from collections import Counter

import hypothesis.core
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pmd.virtio.split import VRING_DESC_F_INDIRECT as IND
from pmd.virtio.split import VRING_DESC_F_NEXT as NEXT
from pmd.virtio.split import VRING_DESC_F_WRITE as WRITE
from tests.vhost_user.test_vu_backend import open_fds
from tests.vhostpci.fuzz_vu import Port, _maps
from tests.vhostpci.rogue_vm1 import (
    EVENT_IDX, HIGH, HOLE, IND_BUF, INDIRECT, MRG_RXBUF, NUM, PAGE, RX, RX_BUF, SENTINEL, TX, TX_BUF, RogueVM1,
    ring_addrs,
)
from tests.vhostpci.vanishing_vm1 import round_trip

RECONNECT = 40

SPECIAL_ADDRS = (0, 1, HOLE, SENTINEL, HIGH[0], HIGH[0] + HIGH[1] - 8, 2 ** 64 - 16, 2 ** 63, 2 ** 32)
LENGTHS = (0, 1, 11, 12, 14, 60, 64, 1500, 1514, 2048, 4096, 9000, 65536, 2 ** 31, 2 ** 32 - 1)
FLAGS = (0, NEXT, WRITE, IND, NEXT | WRITE, NEXT | IND, WRITE | IND, 7)


def _addr(r: random.Random) -> int:
    k = r.randrange(6)
    if k == 0:
        return TX_BUF + r.randrange(128) * PAGE // 2
    if k == 1:
        return RX_BUF + r.randrange(128) * PAGE // 2
    if k == 2:
        return IND_BUF + r.randrange(64) * 256
    if k == 3:
        return TX_BUF + 0x7F000 + r.randrange(PAGE)  # straddles the end of the tx area
    if k == 4:
        return r.choice(SPECIAL_ADDRS)
    return r.getrandbits(64)


def _desc(r: random.Random) -> tuple[int, int, int, int]:
    n = r.choice(LENGTHS) if r.random() < 0.6 else r.randrange(5000)
    f = r.choice(FLAGS) if r.random() < 0.9 else r.getrandbits(16)
    x = r.randrange(NUM) if r.random() < 0.9 else r.getrandbits(16)
    return _addr(r), n, f, x


def _heads(r: random.Random) -> list[int]:
    return [r.randrange(NUM) if r.random() < 0.9 else r.getrandbits(16) for _ in range(r.randrange(13))]


def make_case(seed: int, density: int) -> dict:
    """One case from its seed (hypothesis draws seeds and the density, so a
    failing case replays and shrinks by seed; generating the rings in plain
    Python keeps thousands of cases inside the time budget)."""
    r = random.Random(seed)
    return {
        "tx": [(r.randrange(NUM), _desc(r)) for _ in range(r.randrange(density + 1))],
        "rx": [(r.randrange(NUM), _desc(r)) for _ in range(r.randrange(density + 1))],
        "ind": [(r.randrange(64), _desc(r)) for _ in range(r.randrange(density // 2 + 1))],
        "tx_heads": _heads(r),
        "rx_heads": _heads(r),
        "tx_jump": r.getrandbits(16) if r.random() < 0.1 else None,  # avail idx set to this instead
        "rx_jump": r.getrandbits(16) if r.random() < 0.1 else None,
        "avail_flags": r.getrandbits(16) if r.random() < 0.3 else r.randrange(2),
        "payload": r.randbytes(r.randrange(65)),
    }


class Fuzzer:
    def __init__(self, path: str, port: Port) -> None:
        self.path, self.port = path, port
        self.vm: RogueVM1 | None = None
        self.cases = 0
        self.stats: Counter = Counter()
        self.rng = random.Random(0)

    def connect(self) -> RogueVM1:
        if self.vm is not None:
            self.vm.close()
        extra = sum(b for b in (INDIRECT, MRG_RXBUF, EVENT_IDX) if self.rng.random() < 0.6)
        self.vm = RogueVM1(self.path, iommu=False, extra=extra)
        self.stats["connections"] += 1
        return self.vm

    def run(self, c: dict) -> None:
        if self.vm is None or self.cases % RECONNECT == 0:
            self.connect()
        vm = self.vm
        self.cases += 1
        for gpa_off in range(0, 0x1000, 0x400):  # some recognisable bytes in the buffers
            vm.mem.write(TX_BUF + gpa_off, c["payload"].ljust(64, b"\x5a"))
        for i, d in c["ind"]:
            a, n, f, x = d
            vm.mem.write(IND_BUF + 16 * i, struct.pack("<QIHH", a, n & 0xFFFFFFFF, f, x))
        for v, descs, heads, jump in ((TX, c["tx"], c["tx_heads"], c["tx_jump"]),
                                      (RX, c["rx"], c["rx_heads"], c["rx_jump"])):
            for slot, (a, n, f, x) in descs:
                vm.desc(v, slot, a, n & 0xFFFFFFFF, f, x)
            vm.mem.write(ring_addrs(v)[1], struct.pack("<H", c["avail_flags"]))
            for h in heads:
                vm.offer(v, h)
            if jump is not None:
                vm.set_avail_idx(v, jump)
            self.stats["descriptors"] += len(descs)
            self.stats["avail_entries"] += len(heads)
        os.eventfd_write(vm.kick[TX], 1)
        os.eventfd_write(vm.kick[RX], 1)
        time.sleep(0.0005)  # the lcore runs on it meanwhile (and on the next case's writes: VM1 races too)


def main(cases: int, budget: float, seed: int) -> None:
    d = tempfile.mkdtemp(prefix="fuzzring", dir="/tmp")
    path = os.path.join(d, "vp.sock")
    t0 = time.monotonic()
    port = Port(path)
    try:
        vm = RogueVM1(path, iommu=False)  # baseline after one full connection
        assert round_trip(vm, 1), "no round trip before fuzzing"
        vm.close()
        srv = port.srv
        assert srv.wait_for(lambda s: s.session is None, 5.0)
        fds0, maps0 = open_fds(), _maps()
        fuzz = Fuzzer(path, port)
        fuzz.rng.seed(seed)
        hypothesis.core.global_force_seed = seed  # what pytest's --hypothesis-seed sets: a seed replays the run
        rx0 = port.ring_rx()
        deadline = time.monotonic() + budget

        @settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                  print_blob=True)
        @given(seed=st.integers(0, 2 ** 32 - 1), density=st.sampled_from([1, 4, 12, 24]))
        def one(seed, density):
            if time.monotonic() > deadline:
                return  # the time budget is spent: the remaining examples do nothing
            fuzz.run(make_case(seed, density))
            assert srv._thread is not None and srv._thread.is_alive(), "the port's control thread died"

        one()
        xs = port.vp.driver.xstats()
        st_ = port.vp.stats()
        if fuzz.vm is not None:
            fuzz.vm.close()
        assert srv.wait_for(lambda s: s.session is None, 5.0)
        lcore_alive = port.fw.lcores.is_running(1)
        ring_forwarded = port.ring_rx() > rx0
        vm = RogueVM1(path, iommu=False)
        after = round_trip(vm, 2)
        vm.close()
        assert srv.wait_for(lambda s: s.session is None, 5.0)
        win = port.vp.driver.window
        leaks = {"fds": sorted(open_fds() - fds0),
                 "memfd_maps": sorted(m for m in _maps() - maps0 if "memfd:" in m),
                 "window_rows": int(win.table_count[0]) + int(win.region_count[0])}
        print(json.dumps({"cases": fuzz.cases, **fuzz.stats, "port_rx": st_.ipackets, "port_tx": st_.opackets,
                          "ierrors": st_.ierrors, "oerrors": st_.oerrors,
                          **{k: xs[k] for k in ("bad_descriptors", "too_big", "bad_ring")},
                          "lcore_alive": lcore_alive, "ring_ports_forwarding": ring_forwarded,
                          "round_trip_after": after, "leaks": leaks,
                          "seconds": round(time.monotonic() - t0, 1)}), flush=True)
    finally:
        port.fw.close()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed}", flush=True)
    main(int(sys.argv[1]), float(sys.argv[2]), seed)
