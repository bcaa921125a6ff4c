"""rtnetlink, just for XDP: which program a netdev carries and in which
mode (RTM_GETLINK, IFLA_XDP), and setting or removing a program attached
the legacy way, without a BPF link (RTM_SETLINK, IFLA_XDP_FD)."""
from __future__ import annotations

import itertools
import os
import socket
import struct
from typing import NamedTuple

RTM_GETLINK, RTM_SETLINK = 18, 19
NLMSG_ERROR, NLM_F_REQUEST, NLM_F_ACK = 2, 1, 4
IFLA_XDP = 43
IFLA_XDP_FD, IFLA_XDP_ATTACHED, IFLA_XDP_FLAGS, IFLA_XDP_PROG_ID = 1, 2, 3, 4
NLA_F_NESTED = 1 << 15
ATTACHED = {0: "none", 1: "native", 2: "generic", 3: "offloaded", 4: "several"}
_seq = itertools.count(1)


class XdpState(NamedTuple):
    mode: str  # none, native, generic, offloaded, several
    prog_id: int  # 0: none (or several: see the kernel's per-mode ids)


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("HH", n, kind) + payload + b"\0" * (-n % 4)


def _attrs(data: bytes) -> dict[int, bytes]:
    out, off = {}, 0
    while off + 4 <= len(data):
        n, kind = struct.unpack_from("HH", data, off)
        if n < 4:
            break
        out[kind & ~NLA_F_NESTED & 0x7FFF] = data[off + 4:off + n]
        off += (n + 3) & ~3
    return out


def _request(kind: int, flags: int, ifindex: int, attrs: bytes) -> bytes:
    """Send one rtnetlink request for ``ifindex``; the payload of the answer
    (RTM_NEWLINK), or b'' for an ACK.  OSError carries the kernel's errno."""
    seq = next(_seq)
    body = struct.pack("BxHiII", socket.AF_UNSPEC, 0, ifindex, 0, 0) + attrs
    msg = struct.pack("IHHII", 16 + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as s:
        s.settimeout(5)
        s.send(msg)
        while True:
            data = s.recv(65536)
            off = 0
            while off + 16 <= len(data):
                n, mtype, _flags, mseq, _pid = struct.unpack_from("IHHII", data, off)
                if mseq == seq:
                    if mtype == NLMSG_ERROR:
                        err = -struct.unpack_from("i", data, off + 16)[0]
                        if err:
                            raise OSError(err, os.strerror(err))
                        return b""
                    return data[off + 16:off + n]
                off += (n + 3) & ~3


def xdp_state(ifindex: int) -> XdpState:
    """The XDP program on netdev ``ifindex`` as rtnetlink reports it."""
    answer = _request(RTM_GETLINK, 0, ifindex, b"")
    xdp = _attrs(_attrs(answer[16:]).get(IFLA_XDP, b""))
    mode = ATTACHED.get(xdp[IFLA_XDP_ATTACHED][0] if IFLA_XDP_ATTACHED in xdp else 0, "?")
    prog_id = struct.unpack("I", xdp[IFLA_XDP_PROG_ID])[0] if IFLA_XDP_PROG_ID in xdp else 0
    return XdpState(mode, prog_id)


def set_xdp_fd(ifindex: int, prog_fd: int, flags: int) -> None:
    """Attach ``prog_fd`` the legacy way (no link), or remove the program
    with ``prog_fd`` = -1; ``flags`` select the mode (native / generic)."""
    nested = _attr(IFLA_XDP_FD, struct.pack("i", prog_fd)) + _attr(IFLA_XDP_FLAGS, struct.pack("I", flags))
    _request(RTM_SETLINK, NLM_F_ACK, ifindex, _attr(IFLA_XDP | NLA_F_NESTED, nested))
