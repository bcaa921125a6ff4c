"""UDP peer of the real-VM1 tests, run inside the test's namespace with
``ip netns exec NS python3 ns_udp.py ...`` (standard library only).

``recv PORT``: bind UDP PORT, print ``ready``, count datagrams until
SIGTERM/SIGINT, then print one JSON line: datagrams, bytes, unique sequence
numbers, duplicates, bad (payloads not of the form below), the first and
last sequence numbers seen, the gaps between them ([first, last] ranges of
the numbers missing) and when each number first arrived (CLOCK_MONOTONIC).

``rarp IFACE``: capture RARP frames (ethertype 0x8035) on IFACE, print
``ready``, and on SIGTERM one JSON line: their count and source MACs.

``send DST PORT COUNT RATE SIZE [PORTS]``: send COUNT datagrams of SIZE bytes
to DST:PORT (datagram SEQ to PORT + SEQ % PORTS: that many flows), RATE per
second, then print one JSON line (sent, seconds, t0: CLOCK_MONOTONIC when
datagram 0 was due, so SEQ was sent at t0 + SEQ / RATE).

Payload: from here ``ns SEQ `` then ``x`` up to SIZE-1 bytes, then a
newline (one line per datagram for the guest's awk); from the guest
(tools/guest ``udp_send``) ``SEQ `` then ``x`` up to SIZE bytes.  Every byte
is implied by the sequence number and the size: the receiver checks all.
"""
from __future__ import annotations

import json
import re
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from apps.vm1.ns_receiver import receive  # noqa: E402


def payload(tag: str, seq: int, size: int) -> bytes:
    head = f"{tag} {seq} ".encode()
    return head + b"x" * max(0, size - len(head) - 1) + b"\n"


_WELL_FORMED = re.compile(rb"(?:ns )?(\d+) x*\n?")


def check(data: bytes) -> int | None:
    """The sequence number of a well-formed payload (either form), else None."""
    m = _WELL_FORMED.fullmatch(data)
    return int(m.group(1)) if m else None


def recv(port: int) -> None:
    seen: dict[int, float] = {}  # seq -> first arrival
    total = nbytes = dups = bad = 0
    first = last = 0.0

    def take(data: bytes) -> None:
        nonlocal total, nbytes, dups, bad, first, last
        total += 1
        nbytes += len(data)
        last = time.monotonic()
        first = first or last
        seq = check(data)
        if seq is None:
            bad += 1
        elif seq in seen:
            dups += 1
        else:
            seen[seq] = last

    receive(port, take)
    print(json.dumps({"datagrams": total, "bytes": nbytes, "unique": len(seen), "duplicates": dups,
                      "bad": bad, "active_s": last - first, "first": min(seen, default=None),
                      "last": max(seen, default=None), "gaps": gaps(set(seen)),
                      "arrived": sorted(seen.items())}), flush=True)


def gaps(seen: set[int]) -> list[list[int]]:
    """[first, last] of each run of numbers missing between min and max of SEEN."""
    out, prev = [], None
    for s in sorted(seen):
        if prev is not None and s > prev + 1:
            out.append([prev + 1, s - 1])
        prev = s
    return out


def send(dst: str, port: int, count: int, rate: float, size: int, ports: int = 1) -> None:
    """Send COUNT datagrams at RATE; the report has each one's actual send
    time ("t", ms after "t0"): on a busy machine the sender may fall behind
    its schedule, and a test placing a loss in time must not assume it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t0 = time.monotonic()
    sent = 0
    when: list[int] = []
    for seq in range(count):
        due = t0 + seq / rate
        while (now := time.monotonic()) < due:
            time.sleep(min(due - now, 0.01))
        when.append(round((time.monotonic() - t0) * 1000))
        try:
            sock.sendto(payload("ns", seq, size), (dst, port + seq % ports))
            sent += 1
        except OSError as e:  # ENOBUFS/EAGAIN: counted as not sent, never retried (a fixed count)
            print(json.dumps({"error": str(e), "seq": seq}), file=sys.stderr, flush=True)
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0, "t0": t0, "t": when}), flush=True)


def rarp(iface: str) -> None:
    import signal

    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x8035))
    s.bind((iface, 0x8035))
    s.settimeout(0.1)
    print("ready", flush=True)
    macs: list[str] = []
    while not stop:
        try:
            frame = s.recv(2048)
        except (TimeoutError, InterruptedError):
            continue
        if frame[12:14] == b"\x80\x35":
            macs.append(frame[6:12].hex(":"))
    print(json.dumps({"rarp": len(macs), "macs": sorted(set(macs))}), flush=True)


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    if cmd == "recv":
        recv(int(rest[0]))
    elif cmd == "rarp":
        rarp(rest[0])
    elif cmd == "send":
        send(rest[0], int(rest[1]), int(rest[2]), float(rest[3]), int(rest[4]), *map(int, rest[5:6]))
    else:
        sys.exit(f"ns_udp.py: unknown command {cmd!r}")
