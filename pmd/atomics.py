"""Memory-ordering primitives for Numba kernels on shared memory.

Numba hoists plain loads out of loops and has no volatile flag, so every
ring index, flag or counter another thread or process writes must be read
with ``load_acquire`` and published with ``store_release`` (a plain ``mov``
on x86, but it stops the compiler from caching or reordering).  Arming
notifications against a peer that may be going to sleep needs ``fence()``
(seq_cst) on both sides or wake-ups are lost (release/acquire alone lost
wake-ups in testing).
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic


def _elem_ptr(context, builder, arrty, arr, idx):
    ary = context.make_array(arrty)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, arrty, ary, [idx], wraparound=False)


def _align(arrty) -> int:
    return arrty.dtype.bitwidth // 8


@intrinsic
def load_acquire(typingctx, arr, idx):
    """``arr[idx]`` as an acquire load: never hoisted, later reads stay after it."""
    sig = arr.dtype(arr, types.intp)

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", _align(sig.args[0]))

    return sig, codegen


@intrinsic
def store_release(typingctx, arr, idx, val):
    """``arr[idx] = val`` as a release store: earlier writes are visible first."""
    sig = types.void(arr, types.intp, arr.dtype)

    def codegen(context, builder, sig, args):
        arrty = sig.args[0]
        ptr = _elem_ptr(context, builder, arrty, args[0], args[1])
        val = context.cast(builder, args[2], sig.args[2], arrty.dtype)
        builder.store_atomic(val, ptr, "release", _align(arrty))
        return context.get_dummy_value()

    return sig, codegen


def _atomic_rmw(op: str, doc: str):
    @intrinsic
    def rmw(typingctx, arr, idx, val):
        sig = arr.dtype(arr, types.intp, arr.dtype)

        def codegen(context, builder, sig, args):
            arrty = sig.args[0]
            ptr = _elem_ptr(context, builder, arrty, args[0], args[1])
            val = context.cast(builder, args[2], sig.args[2], arrty.dtype)
            return builder.atomic_rmw(op, ptr, val, "seq_cst")

        return sig, codegen

    rmw.__doc__ = doc
    return rmw


fetch_add = _atomic_rmw("add", "Atomically ``arr[idx] += val`` (seq_cst); returns the old value.")
fetch_or = _atomic_rmw("or", "Atomically ``arr[idx] |= val`` (seq_cst); returns the old value.")


@intrinsic
def compare_exchange(typingctx, arr, idx, expected, desired):
    """Atomic CAS on ``arr[idx]`` (acq_rel); returns True when it swapped."""
    sig = types.boolean(arr, types.intp, arr.dtype, arr.dtype)

    def codegen(context, builder, sig, args):
        arrty = sig.args[0]
        ptr = _elem_ptr(context, builder, arrty, args[0], args[1])
        exp = context.cast(builder, args[2], sig.args[2], arrty.dtype)
        des = context.cast(builder, args[3], sig.args[3], arrty.dtype)
        res = builder.cmpxchg(ptr, exp, des, "acq_rel", "acquire")
        return builder.extract_value(res, 1)

    return sig, codegen


@intrinsic
def fence(typingctx):
    """A full (seq_cst) memory fence."""
    sig = types.void()

    def codegen(context, builder, sig, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fence_acquire(typingctx):
    """An acquire fence: loads before it complete before anything after it.

    Free on x86 (TSO already orders loads); what it buys is the compiler
    barrier: LLVM may not sink earlier plain loads (e.g. of a seqlock-protected
    table) below it, past the re-check of the sequence number.
    """
    sig = types.void()

    def codegen(context, builder, sig, args):
        builder.fence("acquire")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def cpu_pause(typingctx):
    """x86 PAUSE: polite spinning (and a compiler barrier for the loop)."""
    sig = types.void()

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.VoidType(), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pause")
        builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def memcpy(typingctx, dst, dst_off, src, src_off, nbytes):
    """Copy ``nbytes`` from ``src[src_off:]`` to ``dst[dst_off:]`` (uint8 arrays).

    Uses llvm.memcpy: ~10x faster than slice assignment in a kernel.  No bounds
    checks: the caller has validated both ranges.
    """
    sig = types.void(dst, types.intp, src, types.intp, types.intp)

    def codegen(context, builder, sig, args):
        dptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        sptr = _elem_ptr(context, builder, sig.args[2], args[2], args[3])
        i8p = ir.IntType(8).as_pointer()
        cgutils.raw_memcpy(
            builder, builder.bitcast(dptr, i8p), builder.bitcast(sptr, i8p), args[4], 1
        )
        return context.get_dummy_value()

    return sig, codegen


def _prefetch(rw: int, doc: str):
    """An intrinsic asking for the cache line holding ``arr[idx]``
    (llvm.prefetch, ``rw`` 1: write intent, 0: read): a hint, never a
    fault, so an index past what is mapped costs nothing.  Lets the miss on
    a buffer the peer's CPU touched last overlap the work on the packets
    before it."""
    @intrinsic
    def prefetch(typingctx, arr, idx):
        sig = types.void(arr, types.intp)

        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            i8p = ir.IntType(8).as_pointer()
            base = builder.bitcast(ary.data, i8p)
            ptr = builder.gep(base, [args[1]])  # raw address: no bounds check (a hint)
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                                "llvm.prefetch.p0i8")
            builder.call(fn, [ptr, i32(rw), i32(3), i32(1)])
            return context.get_dummy_value()

        return sig, codegen

    prefetch.__doc__ = doc
    return prefetch


prefetch_write = _prefetch(1, "Ask for ``arr[idx]``'s line ahead of a write (see ``_prefetch``).")
prefetch_read = _prefetch(0, "Ask for ``arr[idx]``'s line ahead of a read (see ``_prefetch``).")


@intrinsic
def fetch_or_u8_at(typingctx, addr, index, value):
    """Atomic ``*(uint8_t *)(addr + index) |= value`` on a raw address: for
    memory the kernel reaches by address rather than through an array (the
    dirty log, which the front-end may replace while the state lives on)."""
    sig = types.void(types.int64, types.int64, types.int64)

    def codegen(context, builder, sig, args):
        i8 = ir.IntType(8)
        base = builder.inttoptr(args[0], i8.as_pointer())
        ptr = builder.gep(base, [args[1]])
        builder.atomic_rmw("or", ptr, builder.trunc(args[2], i8), "monotonic")
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def full_fence():
    """A seq_cst fence for Python callers (``LcoreManager.wait_quiescent``'s
    side of the pairing with a waking lcore)."""
    fence()
