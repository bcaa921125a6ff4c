"""eventfd signalling and socket kicks from inside Numba kernels.

Kicks (driver -> device) and calls (device -> driver) are eventfd writes of
a u64 1.  A kernel cannot call Python, and a ctypes function pointer in a
kernel breaks ``cache=True`` (Numba cannot cache it), so libc's ``write``/``read`` are
declared as external symbols in intrinsics; the process's libc resolves them.
"""
from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
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
