"""eventfd signalling and socket kicks from inside Numba kernels.

Kicks (driver -> device) and calls (device -> driver) are eventfd writes of
a u64 1.  A kernel cannot call Python, and a ctypes function pointer in a
kernel breaks ``cache=True`` (Numba cannot cache it), so libc's ``write``/``read`` are
declared as external symbols in intrinsics; the process's libc resolves them.
"""
from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba import njit
from numba.extending import intrinsic

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_VOIDP = ir.IntType(8).as_pointer()


def _libc_rw(builder, name: str):
    fnty = ir.FunctionType(_I64, [_I32, _VOIDP, _I64])
    return cgutils.get_or_insert_function(builder.module, fnty, name)


@intrinsic
def eventfd_signal(typingctx, fd):
    """``write(fd, &1, 8)``: add 1 to an eventfd.  Returns write's result
    (8, or -1 e.g. when the counter would overflow: harmless, the peer is
    already signalled).  ``fd`` < 0 is the caller's to skip."""
    sig = types.int64(types.int64)

    def codegen(context, builder, sig, args):
        slot = cgutils.alloca_once(builder, _I64)
        builder.store(ir.Constant(_I64, 1), slot)
        fd32 = builder.trunc(args[0], _I32)
        return builder.call(_libc_rw(builder, "write"), [fd32, builder.bitcast(slot, _VOIDP), ir.Constant(_I64, 8)])

    return sig, codegen


@intrinsic
def eventfd_drain(typingctx, fd):
    """``read(fd, &v, 8)`` on a non-blocking eventfd: returns the counter
    (and resets it), or -1 when it was zero (EAGAIN)."""
    sig = types.int64(types.int64)

    def codegen(context, builder, sig, args):
        slot = cgutils.alloca_once(builder, _I64)
        builder.store(ir.Constant(_I64, 0), slot)
        fd32 = builder.trunc(args[0], _I32)
        res = builder.call(_libc_rw(builder, "read"), [fd32, builder.bitcast(slot, _VOIDP), ir.Constant(_I64, 8)])
        ok = builder.icmp_signed("==", res, ir.Constant(_I64, 8))
        return builder.select(ok, builder.load(slot), ir.Constant(_I64, -1))

    return sig, codegen


@intrinsic
def sched_yield(typingctx):
    """``sched_yield()``: let another thread on this CPU run (a poller
    waiting for the control thread it shares the CPU with)."""
    sig = types.int64()

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, []), "sched_yield")
        return builder.sext(builder.call(fn, []), _I64)

    return sig, codegen


# ---- socket kicks -------------------------------------------------------------
# A ring shared with the kernel (an AF_PACKET tx ring, AF_XDP rings) is
# driven by empty send/recv calls: one per burst at most.
def _sock_io(builder, name: str):
    fnty = ir.FunctionType(_I64, [_I32, _VOIDP, _I64, _I32])
    return cgutils.get_or_insert_function(builder.module, fnty, name)


def _empty_sock_call(name: str, doc: str):
    @intrinsic
    def call(typingctx, fd, flags):
        sig = types.int64(types.int64, types.int64)

        def codegen(context, builder, sig, args):
            return builder.call(_sock_io(builder, name), [builder.trunc(args[0], _I32), ir.Constant(_VOIDP, None),
                                                          ir.Constant(_I64, 0), builder.trunc(args[1], _I32)])

        return sig, codegen

    call.__doc__ = doc
    return call


socket_send_empty = _empty_sock_call(
    "send", "``send(fd, NULL, 0, flags)``: makes the kernel transmit what a tx ring holds; send's result.")
socket_recv_empty = _empty_sock_call(
    "recv", "``recv(fd, NULL, 0, flags)``: wakes the kernel's rx processing of a socket; recv's result.")


@intrinsic
def last_errno(typingctx):
    """The calling thread's ``errno`` (after a call above returned -1)."""
    sig = types.int64()

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(_I32.as_pointer(), [])
        ptr = builder.call(cgutils.get_or_insert_function(builder.module, fnty, "__errno_location"), [])
        return builder.sext(builder.load(ptr), _I64)

    return sig, codegen


# ---- the IOTLB path: socket messages, mappings, time ----------------------------
MSG_PEEK, MSG_DONTWAIT, MSG_NOSIGNAL = 0x2, 0x40, 0x4000  # recv/send flags (Linux)


def _array_data(context, builder, arrty, arr):
    return builder.bitcast(context.make_array(arrty)(context, builder, arr).data, _VOIDP)


def _buffer_io(name: str, doc: str):
    @intrinsic
    def call(typingctx, fd, buf, nbytes, flags):
        """``name(fd, buf.ctypes.data, nbytes, flags)`` over a uint8 array."""
        sig = types.int64(types.int64, buf, types.int64, types.int64)

        def codegen(context, builder, sig, args):
            data = _array_data(context, builder, sig.args[1], args[1])
            return builder.call(_sock_io(builder, name), [builder.trunc(args[0], _I32), data, args[2],
                                                          builder.trunc(args[3], _I32)])

        return sig, codegen

    call.__doc__ = doc
    return call


socket_recv_into = _buffer_io("recv", "``recv(fd, buf, nbytes, flags)`` into a uint8 array; recv's result.")
socket_send_from = _buffer_io("send", "``send(fd, buf, nbytes, flags)`` from a uint8 array; send's result.")


@intrinsic
def mmap_at(typingctx, addr, length, prot, flags, fd, offset):
    """``mmap(addr, length, prot, flags, fd, offset)``; returns the address, or -1."""
    sig = types.int64(types.int64, types.int64, types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(_VOIDP, [_VOIDP, _I64, _I32, _I32, _I32, _I64])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "mmap")
        a, n, p, f, d, o = args
        res = builder.call(fn, [builder.inttoptr(a, _VOIDP), n, builder.trunc(p, _I32), builder.trunc(f, _I32),
                                builder.trunc(d, _I32), o])
        return builder.ptrtoint(res, _I64)

    return sig, codegen


@intrinsic
def monotonic_ns(typingctx):
    """``clock_gettime(CLOCK_MONOTONIC)`` in nanoseconds."""
    sig = types.int64()

    def codegen(context, builder, sig, args):
        ts = cgutils.alloca_once(builder, ir.ArrayType(_I64, 2))
        fnty = ir.FunctionType(_I32, [_I32, _VOIDP])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "clock_gettime")
        builder.call(fn, [ir.Constant(_I32, 1), builder.bitcast(ts, _VOIDP)])  # CLOCK_MONOTONIC
        sec = builder.load(builder.gep(ts, [ir.Constant(_I32, 0), ir.Constant(_I32, 0)]))
        nsec = builder.load(builder.gep(ts, [ir.Constant(_I32, 0), ir.Constant(_I32, 1)]))
        return builder.add(builder.mul(sec, ir.Constant(_I64, 1_000_000_000)), nsec)

    return sig, codegen


@intrinsic
def sleep_us(typingctx, us):
    """``usleep(us)``: a short sleep for a waiting kernel (returns usleep's result)."""
    sig = types.int64(types.int64)

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, [_I32]), "usleep")
        return builder.sext(builder.call(fn, [builder.trunc(args[0], _I32)]), _I64)

    return sig, codegen


# ---- waiting on several fds -------------------------------------------------------
POLLIN, POLLERR, POLLHUP, POLLNVAL = 0x1, 0x8, 0x10, 0x20


@intrinsic
def poll_fds(typingctx, pfds, nfds, timeout_ms):
    """``poll(pfds, nfds, timeout_ms)`` over an int32 array of ``struct
    pollfd`` rows ``[fd, events | revents << 16]`` (little-endian: the two
    shorts share the second word); poll's result (-1 with errno)."""
    sig = types.int64(pfds, types.int64, types.int64)

    def codegen(context, builder, sig, args):
        data = _array_data(context, builder, sig.args[0], args[0])
        fnty = ir.FunctionType(_I32, [_VOIDP, _I64, _I32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "poll")
        return builder.sext(builder.call(fn, [data, args[1], builder.trunc(args[2], _I32)]), _I64)

    return sig, codegen


# wait_first's answers
WAIT_TIMEOUT, WAIT_FIRST, WAIT_OTHER = 0, 1, 2
_EINTR = 4


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def others_fired(pfds, nfds):
    """After a ``poll`` of ``pfds[:nfds]``: a row past row 0 has events, or
    row 0 is in error (what ``wait_first`` calls WAIT_OTHER; a caller with
    more rows than it passes here tells theirs apart)."""
    for k in range(1, nfds):
        if pfds[k, 1] >> 16 != 0:
            return True
    return (pfds[0, 1] >> 16) & (POLLERR | POLLHUP | POLLNVAL) != 0


@njit(nogil=True, cache=True)
def wait_first(pfds, nfds, deadline_ns):
    """Wait in ``poll`` until row 0 of ``pfds`` is readable (WAIT_FIRST),
    another row is readable or any row in error, or poll failed
    (WAIT_OTHER: the caller's Python path looks), or ``deadline_ns``
    (``monotonic_ns``) passed (WAIT_TIMEOUT).  How a control thread's
    compiled service waits on its channel and on everything else it owns."""
    while True:
        left = deadline_ns - monotonic_ns()
        if left <= 0:
            return WAIT_TIMEOUT
        for k in range(nfds):
            pfds[k, 1] = POLLIN  # events in, revents cleared
        r = poll_fds(pfds, nfds, (left + 999_999) // 1_000_000)
        if r == 0:
            return WAIT_TIMEOUT
        if r < 0:
            if last_errno() == _EINTR:
                continue
            return WAIT_OTHER
        return WAIT_OTHER if others_fired(pfds, nfds) else WAIT_FIRST
