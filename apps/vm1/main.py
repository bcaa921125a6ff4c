"""VM1 for the demo: a ``net_virtio_user`` port (our virtio-net driver behind
an emulated IOMMU) that connects to VM2's vhost-pci socket and sends paced,
sequence-numbered flows: ICMP echo requests and UDP datagrams to the far end.

    python3 -m apps.vm1 --path SOCK --dst-mac 02:..:.. [--rate PPS] [--duration S] [--flows N]

Protocol with the parent (the demo): prints ``ready`` once the link is up and
every rx buffer is posted, then waits for a ``go`` line on stdin (or starts
at once with ``--no-wait``); sends for ``--duration`` seconds or until
SIGTERM/SIGINT, keeps receiving for ``--drain`` seconds, and prints one JSON
line: sent (icmp/udp), replies (echo replies matched to a request, checksums
verified), looped (own frames back, with a loopback stand-in), duplicates,
bad, other.  Exit 0 after a run, 1 when the link never came up.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time

import numpy as np

from pmd.ethdev import Port, PortError
from pmd.vdev import parse_vdev
from pmd.mbuf import create_pool
from pmd.signals import StopSignals

from .frames import (
    C_BAD,
    C_DUP,
    C_LOOPED,
    C_OTHER,
    C_REPLY,
    C_RX,
    MIN_SIZE,
    N_COUNTS,
    rx_frames,
    template,
    tx_frames,
)

BURST = 32


def _mac(text: str) -> bytes:
    b = bytes(int(x, 16) for x in text.split(":"))
    if len(b) != 6:
        raise argparse.ArgumentTypeError(f"bad MAC {text!r}")
    return b


def _ip(text: str) -> bytes:
    b = bytes(int(x) for x in text.split("."))
    if len(b) != 4:
        raise argparse.ArgumentTypeError(f"bad IPv4 address {text!r}")
    return b


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python3 -m apps.vm1", description="VM1: paced ICMP echo + UDP flows.")
    ap.add_argument("--path", required=True, help="VM2's vhost-user socket")
    ap.add_argument("--iommu", default="buffers", choices=("off", "static", "buffers", "transient"))
    ap.add_argument("--dst-mac", type=_mac, default=_mac("ff:ff:ff:ff:ff:ff"))
    ap.add_argument("--src-ip", type=_ip, default=_ip("10.99.0.1"))
    ap.add_argument("--dst-ip", type=_ip, default=_ip("10.99.0.2"))
    ap.add_argument("--rate", type=int, default=20000, help="packets per second, all flows together")
    ap.add_argument("--flows", type=int, default=4, help="UDP flows (source ports 10000..)")
    ap.add_argument("--size", type=int, default=64, help=f"frame size in bytes (>= {MIN_SIZE + 2})")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    ap.add_argument("--drain", type=float, default=0.5, help="seconds to keep receiving after the last send")
    ap.add_argument("--link-timeout", type=float, default=60.0)
    ap.add_argument("--no-wait", action="store_true", help="start sending without waiting for 'go' on stdin")
    a = ap.parse_args(argv)
    if not MIN_SIZE + 2 <= a.size <= 1514:
        ap.error(f"--size must be {MIN_SIZE + 2}..1514")
    if a.rate < 1 or a.flows < 1 or a.duration <= 0:
        ap.error("--rate, --flows and --duration must be positive")
    return a


def _wait_go(stop: StopSignals, port: Port, poll) -> bool:
    """Wait for a 'go' line on stdin, receiving meanwhile; False on a signal or EOF."""
    while not stop.stopped:
        poll()
        r, _, _ = select.select([sys.stdin], [], [], 0.02)
        if r:
            line = sys.stdin.readline()
            if not line:
                return False
            if line.strip() == "go":
                return True
    return False


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    vdev = f"net_virtio_user0,path={a.path},iommu={a.iommu}"
    port = Port(0, parse_vdev(vdev))
    pool = create_pool(4096)
    st = None
    bufs = np.zeros(BURST, np.int32)
    rbufs = np.zeros(BURST, np.int32)
    cap = int(a.rate * a.duration) + 2 * BURST + 1
    seen = np.zeros(cap, np.uint8)
    counts = np.zeros(N_COUNTS, np.int64)
    icmp_id = os.getpid() & 0xFFFF
    src_mac = port.mac()
    t_icmp = template(a.size, src_mac, a.dst_mac, a.src_ip, a.dst_ip, 1)
    t_udp = template(a.size, src_mac, a.dst_mac, a.src_ip, a.dst_ip, 17)
    result: dict = {"vdev": vdev, "mac": ":".join(f"{b:02x}" for b in src_mac)}
    with StopSignals() as stop:
        try:
            port.start()
            if not port.driver.wait_link(True, a.link_timeout):
                print(json.dumps({**result, "error": "link never came up"}), flush=True)
                return 1
            st = port.kernel_state()

            def poll() -> int:
                return int(rx_frames(st, 0, pool, rbufs, BURST, icmp_id, seen, counts))

            # compile both kernels (a zero-length send compiles tx_frames) and post every rx buffer
            tx_frames(st, 0, pool, bufs, t_icmp, t_udp, a.size, 0, 0, icmp_id, a.flows)
            deadline = time.monotonic() + a.link_timeout
            while port.driver.rx_buffers_posted() < port.driver.args["queue_size"] and time.monotonic() < deadline:
                poll()
                time.sleep(0.001)
            print("ready", flush=True)
            go = a.no_wait or _wait_go(stop, port, poll)
            counts[:] = 0  # anything before 'go' is not ours to count
            sent = refused = 0
            t0 = time.monotonic()
            end = t0 + a.duration
            while go and not stop.stopped:
                now = time.monotonic()
                if now >= end or sent >= cap - BURST:
                    break
                want = min(int((now - t0) * a.rate) + 1 - sent, BURST)
                if want > 0:
                    n = int(tx_frames(st, 0, pool, bufs, t_icmp, t_udp, a.size, sent, want, icmp_id, a.flows))
                    if n > 0:
                        sent += n
                    if n < want:
                        refused += 1
                if poll() == 0 and want <= 0:
                    time.sleep(0.0002)
            t_send = time.monotonic() - t0
            icmp_sent = (sent + 1) // 2
            drain_end = time.monotonic() + a.drain
            while time.monotonic() < drain_end:
                if poll() == 0:
                    if (counts[C_LOOPED] >= sent) if counts[C_LOOPED] else (counts[C_REPLY] >= icmp_sent):
                        break  # everything that can come back did
                    time.sleep(0.001)
            result.update(
                sent=sent, icmp_sent=icmp_sent, udp_sent=sent // 2, flows=a.flows, size=a.size,
                replies=int(counts[C_REPLY]), looped=int(counts[C_LOOPED]), duplicates=int(counts[C_DUP]),
                bad=int(counts[C_BAD]), other=int(counts[C_OTHER]), received=int(counts[C_RX]),
                tx_full=refused, seconds=round(t_send, 3), stopped_by_signal=stop.stopped,
                xstats=port.driver.xstats(),
            )
            print(json.dumps(result), flush=True)
            return 0
        except PortError as e:
            print(json.dumps({**result, "error": str(e)}), flush=True)
            return 1
        finally:
            port.close()


if __name__ == "__main__":
    sys.exit(main())
