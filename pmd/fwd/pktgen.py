"""Template frames for txonly/flowgen: Ethernet + IPv4 + UDP, built once in
Python whenever the length changes (the kernels only copy it)."""
from __future__ import annotations

import struct

import numpy as np

ETH_HDR = 14
IP_HDR = 20
UDP_HDR = 8
MIN_FRAME = ETH_HDR + IP_HDR + UDP_HDR
SRC_IP = bytes([198, 18, 0, 1])  # RFC 2544 benchmarking range, as testpmd
DST_IP = bytes([198, 18, 0, 2])


def ipv4_checksum(header: bytes) -> int:
    """RFC 1071 checksum of an IPv4 header whose checksum field is zero."""
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_template(length: int, src_port: int = 9, dst_port: int = 9) -> np.ndarray:
    """A ``length``-byte UDP/IPv4 frame (MACs zero: the kernel writes them)."""
    if length < MIN_FRAME:
        raise ValueError(f"txpkts {length} is shorter than an Ethernet/IPv4/UDP header ({MIN_FRAME})")
    ip_len = length - ETH_HDR
    eth = bytes(12) + b"\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0, 64, 17, 0, SRC_IP, DST_IP)
    ip = ip[:10] + struct.pack("!H", ipv4_checksum(ip)) + ip[12:]
    udp = struct.pack("!HHHH", src_port, dst_port, ip_len - IP_HDR, 0)
    payload = bytes(length - MIN_FRAME)
    return np.frombuffer(eth + ip + udp + payload, np.uint8).copy()
