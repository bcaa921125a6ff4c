"""VM1 in its own process: a virtio-user port that sends sequence-numbered,
CRC-protected packets and checks every one that comes back.

    python -m tests.vhostpci.vm1_peer --path SOCK --count N [--iommu MODE] [--rx-grant wo|rw] [--server]
                                      [--window W] [--expect N] [--flush-every N]

Prints one JSON line: sent, received, bad (CRC mismatch), duplicates,
out_of_order (a sequence number below one already seen), missing (and its
first ranges), and the port's xstats.  ``--window`` packets may be in flight
(2000: one burst).  Exit 0 when the run finished (whatever the counts; the
test judges them), 1 when the link never came up.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from pmd.ethdev import Port
from pmd.vdev import parse_vdev
from pmd.mbuf import create_pool
from tests.vf.ns_peer import check_packet as check_wire_packet
from tests.vhostpci.peer_io import check_packet, make_packet, recv, send

FLUSH_ALL = 1 << 40  # bytes from IOVA 0: all of VM1's memory


def _ranges(seqs: set[int]) -> list[list[int]]:
    """``seqs`` as sorted [first, last] runs (what a failed test prints)."""
    out: list[list[int]] = []
    for s in sorted(seqs):
        if out and out[-1][1] == s - 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", required=True)
    ap.add_argument("--iommu", default="off")
    ap.add_argument("--rx-grant", default="wo")
    ap.add_argument("--server", action="store_true")
    ap.add_argument("--devargs", default="", help="more devargs of the port, e.g. packed_vq=1,mrg_rxbuf=0")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--size", type=int, default=0, help="packet size (0: vary 64..1514)")
    ap.add_argument("--window", type=int, default=32, help="packets in flight at most")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--expect", type=int, default=0,
                    help="receive only: send nothing, wait for this many packets from the wire "
                         "(tests/vf/ns_peer.py's frames; prints 'ready' first)")
    ap.add_argument("--flush-every", type=int, default=0,
                    help="after every N packets sent, invalidate all of VM1's memory, rings included "
                         "(a lazy guest IOMMU's global flush; iommu=demand grants it back on MISS)")
    a = ap.parse_args(argv)
    vdev = f"net_virtio_user0,path={a.path},iommu={a.iommu},rx_grant={a.rx_grant},server={int(a.server)}"
    if a.devargs:
        vdev += "," + a.devargs
    port = Port(0, parse_vdev(vdev))
    pool = create_pool(4096)
    result: dict = {"vdev": vdev}
    try:
        port.start()
        if not port.driver.wait_link(True, a.timeout):
            print(json.dumps({**result, "error": "link never came up"}), flush=True)
            return 1
        deadline = time.monotonic() + a.timeout
        while port.driver.rx_buffers_posted() < port.driver.args["queue_size"] and time.monotonic() < deadline:
            recv(port, pool)  # posts (and, in transient mode, gets granted) every rx buffer first
            time.sleep(0.001)
        seen: set[int] = set()
        bad = dups = sent = disorder = flushes = 0
        highest = -1
        if a.expect:
            a.count = 0
            print("ready", flush=True)
        started = time.monotonic()
        while len(seen) < max(a.count, a.expect) and time.monotonic() < deadline:
            want = min(a.window - (sent - len(seen) - bad), a.count - sent, 32)
            if want > 0:
                pkts = [make_packet(s, a.size or 64 + (s * 97) % 1451) for s in range(sent, sent + want)]
                before = sent
                sent += send(port, pool, pkts)
                if a.flush_every and sent // a.flush_every != before // a.flush_every:
                    port.driver.run_in_control(lambda session: session.iotlb_invalidate(0, FLUSH_ALL))
                    flushes += 1
            pkts = recv(port, pool)
            if a.expect and not pkts:
                time.sleep(0.0002)  # receive only: leave the CPUs to VM2 between polls
            for pkt in pkts:
                seq = check_wire_packet(pkt) if a.expect else check_packet(pkt)
                if seq < 0:
                    bad += 1
                elif seq in seen:
                    dups += 1
                else:
                    seen.add(seq)
                    disorder += seq < highest
                    highest = max(highest, seq)
            if sent - len(seen) - bad >= a.window:
                time.sleep(0.0002)
        result.update(sent=sent, received=len(seen), bad=bad, duplicates=dups, out_of_order=disorder,
                      missing=max(sent, a.expect) - len(seen), 
                      missing_ranges=_ranges(set(range(max(sent, a.expect))) - seen)[:8], seconds=round(time.monotonic() - started, 3),
                      flushes=flushes,
                      xstats=port.driver.xstats())
        print(json.dumps(result), flush=True)
        return 0
    finally:
        port.close()


if __name__ == "__main__":
    sys.exit(main())
