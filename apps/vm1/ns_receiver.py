"""The far end of the demo's wire: run inside the namespace with
``ip netns exec NS python3 ns_receiver.py PORT`` (standard library only, so
it starts in ~50 ms).  Binds UDP PORT on every address, counts the demo's
datagrams (payload ``VPCI | seq u64 LE | flow u32 LE``) until SIGTERM/SIGINT,
then prints one JSON line: datagrams, unique seqs, duplicates, foreign (not
ours), per-flow counts.  Prints ``ready`` once bound.
"""
import json
import signal
import socket
import sys

MAGIC = b"VPCI"


def receive(port, take, bufsize=65536):
    """Bind UDP ``port`` on every address, print ``ready``, hand every
    datagram to ``take(bytes)`` until SIGTERM/SIGINT, then what is queued."""
    stop = []
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.append(1))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE (root in the namespace)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(0.05)
    print("ready", flush=True)
    while not stop:
        try:
            take(sock.recv(bufsize))
        except (TimeoutError, InterruptedError):
            continue
    sock.setblocking(False)
    while True:  # what is already queued
        try:
            take(sock.recv(bufsize))
        except (BlockingIOError, InterruptedError):
            break
    sock.close()


def main(argv):
    seen, flows = set(), {}
    total = dups = foreign = 0

    def take(data):
        nonlocal total, dups, foreign
        total += 1
        if len(data) < 16 or data[:4] != MAGIC:
            foreign += 1
            return
        seq = int.from_bytes(data[4:12], "little")
        if seq in seen:
            dups += 1
            return
        seen.add(seq)
        flow = int.from_bytes(data[12:16], "little")
        flows[flow] = flows.get(flow, 0) + 1

    receive(int(argv[0]), take)
    print(json.dumps({"datagrams": total, "unique": len(seen), "duplicates": dups, "foreign": foreign,
                      "flows": {str(k): v for k, v in sorted(flows.items())}}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
