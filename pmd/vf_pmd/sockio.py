"""``send(fd, NULL, 0, MSG_DONTWAIT)`` from inside a Numba kernel: the one
syscall per tx burst that makes the kernel transmit every frame marked
TP_STATUS_SEND_REQUEST in a PACKET_TX_RING.  libc's ``send`` is declared as
an external symbol (as pmd/syscalls.py does for write/read): a ctypes global
would break ``cache=True``."""
from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_VOIDP = ir.IntType(8).as_pointer()


@intrinsic
def tx_ring_kick(typingctx, fd, flags):
    """``send(fd, NULL, 0, flags)``; returns send's result (-1 on error)."""
    sig = types.int64(types.int64, types.int64)

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(_I64, [_I32, _VOIDP, _I64, _I32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "send")
        return builder.call(fn, [builder.trunc(args[0], _I32), ir.Constant(_VOIDP, None),
                                 ir.Constant(_I64, 0), builder.trunc(args[1], _I32)])

    return sig, codegen
