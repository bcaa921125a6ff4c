"""The far end of the VF port's veth, run inside the test namespace with
``ip netns exec NS python3 ns_peer.py MODE ...`` (standard library only, so it
starts in ~50 ms).  Frames are ``tests/vhostpci/peer_io.make_packet``'s
format: Ethernet header (ethertype 0x88b5), seq u64, body, CRC32 of all before.

    send IFACE COUNT SIZES RATE SEQ0     send COUNT frames at RATE pps (sizes: a,b,... cycled)
    sendhex IFACE HEX...                 send these raw frames
    recv IFACE COUNT TIMEOUT             print every frame received (hex)
    recvtype IFACE ETHERTYPE COUNT TIMEOUT  frames of that ethertype (hex, e.g. 8035: RARP)
    both IFACE COUNT SIZE RATE TIMEOUT   send COUNT at RATE while receiving

Prints "ready" once its socket is bound, then one JSON line with the result.
"""
import json
import socket
import sys
import time
import zlib

ETH_P_ALL = 3
ETHERTYPE = b"\x88\xb5"
HDR = bytes.fromhex("020000000001" "020000000002") + ETHERTYPE
SOL_PACKET, PACKET_IGNORE_OUTGOING = 263, 23
_BODY = bytes(range(256)) * 40  # frames up to 10 KB


def make_packet(seq, size):
    body_len = size - len(HDR) - 12
    k = seq % 251
    head = HDR + seq.to_bytes(8, "little") + _BODY[k:k + body_len]
    return head + zlib.crc32(head).to_bytes(4, "little")


def check_packet(pkt):
    if len(pkt) < len(HDR) + 12 or zlib.crc32(pkt[:-4]) != int.from_bytes(pkt[-4:], "little"):
        return -1
    return int.from_bytes(pkt[len(HDR):len(HDR) + 8], "little")


def open_socket(iface):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    s.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE
    s.bind((iface, ETH_P_ALL))
    print("ready", flush=True)
    return s


def ours(pkt):
    return pkt[12:14] == ETHERTYPE


def paced_send(s, count, sizes, rate, seq0, on_idle=None):
    burst = max(1, min(32, rate // 1000))
    t0 = time.perf_counter()
    for first in range(0, count, burst):
        due = t0 + first / rate
        while time.perf_counter() < due:
            if on_idle is None or not on_idle():
                time.sleep(0)
        for seq in range(seq0 + first, seq0 + min(first + burst, count)):
            while True:
                try:
                    s.send(make_packet(seq, sizes[seq % len(sizes)]))
                    break
                except BlockingIOError:
                    time.sleep(0.0001)


def main(argv):
    mode, iface = argv[0], argv[1]
    if mode == "send":
        count, rate, seq0 = int(argv[2]), int(argv[4]), int(argv[5])
        sizes = [int(x) for x in argv[3].split(",")]
        s = open_socket(iface)
        paced_send(s, count, sizes, rate, seq0)
        print(json.dumps({"sent": count}), flush=True)
    elif mode == "sendhex":
        s = open_socket(iface)
        for h in argv[2:]:
            s.send(bytes.fromhex(h))
        print(json.dumps({"sent": len(argv) - 2}), flush=True)
    elif mode == "recv":
        count, timeout = int(argv[2]), float(argv[3])
        s = open_socket(iface)
        s.settimeout(0.05)
        got, deadline = [], time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            try:
                pkt = s.recv(65536)
            except TimeoutError:
                continue
            if ours(pkt):
                got.append(pkt.hex())
        print(json.dumps({"packets": got}), flush=True)
    elif mode == "recvtype":
        etype, count, timeout = bytes.fromhex(argv[2]), int(argv[3]), float(argv[4])
        s = open_socket(iface)
        s.settimeout(0.05)
        got, deadline = [], time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            try:
                pkt = s.recv(65536)
            except TimeoutError:
                continue
            if pkt[12:14] == etype:
                got.append(pkt.hex())
        print(json.dumps({"packets": got}), flush=True)
    elif mode == "both":
        count, size, rate = map(int, argv[2:5])
        timeout = float(argv[5])
        s = open_socket(iface)
        s.setblocking(False)
        seen, bad, dup = set(), 0, 0

        def drain():
            nonlocal bad, dup
            n = 0
            while True:
                try:
                    pkt = s.recv(65536)
                except BlockingIOError:
                    return n > 0
                if not ours(pkt):
                    continue
                n += 1
                seq = check_packet(pkt)
                if seq < 0 or len(pkt) != size:
                    bad += 1
                elif seq in seen:
                    dup += 1
                else:
                    seen.add(seq)

        paced_send(s, count, [size], rate, 0, drain)
        deadline = time.monotonic() + timeout
        while len(seen) < count and time.monotonic() < deadline:
            if not drain():
                time.sleep(0.001)
        missing = count - len(seen)
        print(json.dumps({"sent": count, "received": len(seen), "bad": bad, "dup": dup, "missing": missing,
                          "out_of_range": sum(1 for x in seen if x >= count)}), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
