"""The bpf() syscall, just what the AF_XDP port needs: an XSKMAP, the
redirect-by-queue XDP program (six instruction slots assembled here: no
compiler, no libbpf/libxdp at run time), a BPF link attaching it to a
netdev, and the queries that tell whose program a netdev carries.

A BPF link detaches its program when its last fd is closed, so the
program goes with the process on every exit path, SIGKILL included.
"""
from __future__ import annotations

import ctypes
import os
import struct

_NR_BPF = 321  # x86_64
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]

# commands
MAP_CREATE, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, PROG_LOAD = 0, 2, 3, 5
PROG_GET_FD_BY_ID, OBJ_GET_INFO_BY_FD, LINK_CREATE, LINK_GET_FD_BY_ID, LINK_GET_NEXT_ID = 13, 15, 28, 30, 31
MAP_TYPE_XSKMAP = 17
PROG_TYPE_XDP = 6
ATTACH_XDP = 37  # enum bpf_attach_type BPF_XDP
LINK_TYPE_XDP = 6
FUNC_REDIRECT_MAP = 51
XDP_PASS = 2
PROG_NAME = "vhostpci_xsk"  # how a program of ours is recognised on a netdev
_ATTR_SIZE = 128


class BpfError(OSError):
    """A bpf() command failed; ``errno`` is the kernel's answer."""


def _bpf(cmd: int, attr: bytes, what: str, out: ctypes.Array | None = None) -> int:
    """Run bpf(cmd, attr); ``out`` (a buffer of _ATTR_SIZE) receives the
    attr as the kernel left it, for commands that answer in it."""
    buf = out if out is not None else ctypes.create_string_buffer(_ATTR_SIZE)
    ctypes.memmove(buf, attr, len(attr))
    res = _syscall(_NR_BPF, cmd, buf, _ATTR_SIZE)
    if res < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return res


def _name16(name: str) -> bytes:
    return name.encode()[:15].ljust(16, b"\0")


def create_xskmap(entries: int) -> int:
    """An XSKMAP (queue index -> XSK): its fd."""
    attr = struct.pack("IIIIIII", MAP_TYPE_XSKMAP, 4, 4, entries, 0, 0, 0) + _name16("vhostpci_xsks")
    return _bpf(MAP_CREATE, attr, "create the XSKMAP")


def xskmap_set(map_fd: int, queue: int, xsk_fd: int) -> None:
    key, value = ctypes.c_uint32(queue), ctypes.c_uint32(xsk_fd)
    attr = struct.pack("IIQQQ", map_fd, 0, ctypes.addressof(key), ctypes.addressof(value), 0)
    _bpf(MAP_UPDATE_ELEM, attr, f"put the XSK of queue {queue} in the XSKMAP")


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, src << 4 | dst, off, imm)


def redirect_program(map_fd: int) -> bytes:
    """``return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);``:
    a frame goes to the XSK bound to the queue it arrived on; a queue with
    no XSK (or a frame from before the socket was bound) goes to the
    kernel stack (the low bits of flags are the action on a missed lookup)."""
    return b"".join([
        _insn(0x61, dst=2, src=1, off=16),  # r2 = *(u32 *)(r1 + 16): xdp_md.rx_queue_index
        _insn(0x18, dst=1, src=1, imm=map_fd), _insn(0),  # r1 = the map (ld_imm64, BPF_PSEUDO_MAP_FD)
        _insn(0xB7, dst=3, imm=XDP_PASS),  # r3 = XDP_PASS
        _insn(0x85, imm=FUNC_REDIRECT_MAP),  # r0 = bpf_redirect_map(r1, r2, r3)
        _insn(0x95),  # exit
    ])


def load_program(map_fd: int, name: str = PROG_NAME) -> int:
    """Load the redirect program named ``name`` (verifier log included in the error)."""
    insns = ctypes.create_string_buffer(redirect_program(map_fd))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    attr = struct.pack("IIQQIIQII", PROG_TYPE_XDP, len(insns.raw) // 8, ctypes.addressof(insns),
                       ctypes.addressof(license_), 1, len(log), ctypes.addressof(log), 0, 0) \
        + _name16(name) + struct.pack("II", 0, ATTACH_XDP)
    try:
        return _bpf(PROG_LOAD, attr, "load the XDP program")
    except BpfError as e:
        text = log.value.decode(errors="replace").strip()
        raise BpfError(e.errno, f"{e.strerror}{': ' + text if text else ''}") from None


def attach(prog_fd: int, ifindex: int, flags: int) -> int:
    """Attach ``prog_fd`` to netdev ``ifindex`` through a BPF link (XDP
    ``flags``: native or generic mode); the link's fd.  EBUSY: the netdev
    already has a program."""
    attr = struct.pack("IIII", prog_fd, ifindex, ATTACH_XDP, flags)
    return _bpf(LINK_CREATE, attr, "attach the XDP program")


def _info(fd: int, size: int) -> bytes:
    buf = ctypes.create_string_buffer(size)
    attr = struct.pack("IIQ", fd, size, ctypes.addressof(buf))
    _bpf(OBJ_GET_INFO_BY_FD, attr, "read object info")
    return buf.raw


def program_name(prog_id: int) -> str:
    """The name of loaded program ``prog_id`` ('' when it is gone)."""
    try:
        fd = _bpf(PROG_GET_FD_BY_ID, struct.pack("I", prog_id), f"open program {prog_id}")
    except BpfError:
        return ""
    try:
        info = _info(fd, 256)  # struct bpf_prog_info: name[16] at offset 64
        return info[64:80].split(b"\0", 1)[0].decode(errors="replace")
    finally:
        os.close(fd)


def xdp_links(ifindex: int) -> list[tuple[int, int]]:
    """(link id, program id) of every XDP BPF link on netdev ``ifindex``."""
    out, link_id = [], 0
    answer = ctypes.create_string_buffer(_ATTR_SIZE)
    while True:
        try:  # attr {start_id, next_id}: the kernel writes next_id
            _bpf(LINK_GET_NEXT_ID, struct.pack("II", link_id, 0), "next link", answer)
        except BpfError:  # ENOENT: no more links
            return out
        link_id = struct.unpack_from("I", answer.raw, 4)[0]
        try:
            fd = _bpf(LINK_GET_FD_BY_ID, struct.pack("I", link_id), f"open link {link_id}")
        except BpfError:
            continue  # released meanwhile
        try:  # struct bpf_link_info {type, id, prog_id; union (8-aligned) {xdp {ifindex}}}
            kind, _id, prog_id, _pad, target = struct.unpack_from("IIIII", _info(fd, 64))
        finally:
            os.close(fd)
        if kind == LINK_TYPE_XDP and target == ifindex:
            out.append((link_id, prog_id))
