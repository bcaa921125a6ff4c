"""Guest memory that vanishes: survive a SIGBUS in a mapped guest range.

A front-end can shrink (``ftruncate``) a memory fd after the back-end mapped
it.  The pages past the new end are gone from every mapping, and the next
access -- a Numba kernel in an lcore thread, or numpy code on the control
thread -- gets SIGBUS, which kills the process by default.  A Python signal
handler cannot help: it would only run between bytecodes of the main
thread, long after a kernel re-executed the faulting instruction.

So the handler is native code, a Numba ``cfunc`` installed with
``sigaction(SA_SIGINFO)``.  It looks the faulting address up in a table of
guarded ranges (``guard``); inside one it maps a private anonymous page over
the faulting page (a read sees zeros, a write goes nowhere; ``mmap`` is
async-signal-safe), counts the fault, records the address and writes 1 to
the range's eventfd; the faulting instruction then re-executes and succeeds.
The owner (the vhost-pci device) is woken by that eventfd, closes the
session that gave it the memory, and the window's teardown revokes the
stand-in pages with everything else.  A fault outside every guarded range
is not ours: the handler puts the previous action back (``faulthandler``'s,
or the default) and returns, so the fault repeats and is handled as before.

The table (``MAX_GUARDS`` rows) lives in a numpy array whose address the
handler reaches through a symbol registered with LLVM, so the compiled
handler carries no address of this process and can be cached.  Only the
control thread adds or removes rows; a row is made inactive (end = 0) before
it changes.
"""
from __future__ import annotations

import ctypes
import logging
import signal

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import carray, cfunc, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..syscalls import eventfd_signal
from ..units import PAGE_SIZE
from .vmem import MAP_ANONYMOUS, MAP_FIXED, MAP_NORESERVE, MAP_PRIVATE, PROT_READ, PROT_WRITE

__all__ = ["Guard", "guard", "installed", "MAX_GUARDS"]

log = logging.getLogger(__name__)

MAX_GUARDS = 256
# guard table columns: [start, end) of the range, the eventfd to signal (-1:
# none), faults taken, the last faulting address
G_START, G_END, G_FD, G_FAULTS, G_ADDR = range(5)
_N_COLS = 8
_SA_SIGINFO = 4
_SI_ADDR = 16  # offsetof(siginfo_t, si_addr) on 64-bit Linux
_STAND_IN = (PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE)

_table = np.zeros((MAX_GUARDS, _N_COLS), np.int64)


class _Sigaction(ctypes.Structure):
    """glibc's ``struct sigaction`` on x86_64/aarch64."""

    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]


_previous = _Sigaction()  # the action before ours, put back for a fault that is not ours
_TABLE_SYM, _PREVIOUS_SYM = "vhostpci_sigbus_guards", "vhostpci_sigbus_previous"
llvm.add_symbol(_TABLE_SYM, _table.ctypes.data)
llvm.add_symbol(_PREVIOUS_SYM, ctypes.addressof(_previous))

_I32, _I64 = ir.IntType(32), ir.IntType(64)
_VOIDP = ir.IntType(8).as_pointer()


def _symbol(builder, name: str):
    g = builder.module.globals.get(name)
    if g is None:
        g = ir.GlobalVariable(builder.module, _I64, name)
        g.linkage = "external"
    return builder.bitcast(g, _VOIDP)


@intrinsic
def _guards(typingctx):
    """The guard table's address (resolved at load time: cacheable)."""
    def codegen(context, builder, sig, args):
        return _symbol(builder, _TABLE_SYM)
    return types.voidptr(), codegen


@intrinsic
def _fault_addr(typingctx, info):
    """``siginfo->si_addr``."""
    def codegen(context, builder, sig, args):
        p = builder.inttoptr(builder.add(args[0], ir.Constant(_I64, _SI_ADDR)), _I64.as_pointer())
        return builder.load(p)
    return types.int64(types.int64), codegen


@intrinsic
def _stand_in(typingctx, addr):
    """mmap an anonymous read-write page at ``addr`` (MAP_FIXED); returns mmap's result."""
    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(_VOIDP, [_VOIDP, _I64, _I32, _I32, _I32, _I64])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "mmap")
        prot, flags = _STAND_IN
        res = builder.call(fn, [builder.inttoptr(args[0], _VOIDP), ir.Constant(_I64, PAGE_SIZE),
                                ir.Constant(_I32, prot), ir.Constant(_I32, flags), ir.Constant(_I32, -1),
                                ir.Constant(_I64, 0)])
        return builder.ptrtoint(res, _I64)
    return types.int64(types.int64), codegen


@intrinsic
def _restore_previous(typingctx):
    """``sigaction(SIGBUS, &previous, NULL)``."""
    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(_I32, [_I32, _VOIDP, _VOIDP])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "sigaction")
        return builder.call(fn, [ir.Constant(_I32, int(signal.SIGBUS)), _symbol(builder, _PREVIOUS_SYM),
                                 ir.Constant(_VOIDP, None)])
    return types.int32(), codegen


@cfunc(types.void(types.int32, types.int64, types.int64), cache=True)
def _on_sigbus(signum, info, context):  # pragma: no cover  (runs in a signal handler)
    addr = _fault_addr(info)
    t = carray(_guards(), (MAX_GUARDS, _N_COLS), np.int64)
    for i in range(MAX_GUARDS):
        if t[i, G_START] <= addr < t[i, G_END]:
            _stand_in(addr & ~np.int64(PAGE_SIZE - 1))
            t[i, G_FAULTS] += 1
            t[i, G_ADDR] = addr
            if t[i, G_FD] >= 0:
                eventfd_signal(t[i, G_FD])
            return
    _restore_previous()  # not guest memory: the fault repeats under the previous action


_libc = ctypes.CDLL(None, use_errno=True)
_libc.sigaction.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def _current() -> _Sigaction:
    cur = _Sigaction()
    if _libc.sigaction(int(signal.SIGBUS), None, ctypes.byref(cur)) != 0:
        raise OSError(ctypes.get_errno(), "sigaction(SIGBUS) query failed")
    return cur


def installed() -> bool:
    """True if SIGBUS is handled by this module's handler now."""
    return _current().handler == _on_sigbus.address


def _install() -> None:
    """Make ours the SIGBUS action (again, if something replaced it since),
    remembering the one it replaces."""
    cur = _current()
    if cur.handler == _on_sigbus.address:
        return
    ours = _Sigaction()
    ours.handler = _on_sigbus.address
    ours.flags = _SA_SIGINFO
    if _libc.sigaction(int(signal.SIGBUS), ctypes.byref(ours), ctypes.byref(_previous)) != 0:
        raise OSError(ctypes.get_errno(), "sigaction(SIGBUS) failed")


class Guard:
    """One guarded range; ``faults``/``last_fault`` say what the handler saw."""

    def __init__(self, row: int) -> None:
        self._row = row

    @property
    def active(self) -> bool:
        return self._row >= 0

    @property
    def faults(self) -> int:
        """SIGBUS faults taken in the range (each replaced a page by zeros)."""
        return int(_table[self._row, G_FAULTS]) if self._row >= 0 else 0

    @property
    def last_fault(self) -> int:
        """The last faulting address (0: none)."""
        return int(_table[self._row, G_ADDR]) if self._row >= 0 else 0

    def set_fd(self, fd: int) -> None:
        """The eventfd the handler writes on a fault (-1: none)."""
        if self._row >= 0:
            _table[self._row, G_FD] = fd

    def release(self) -> None:
        """Stop guarding (idempotent); call once the range is unmapped."""
        if self._row >= 0:
            _table[self._row, G_END] = 0  # inactive first
            _table[self._row] = 0
            self._row = -1


def guard(start: int, size: int, fd: int = -1) -> Guard:
    """Guard ``[start, start+size)``: a SIGBUS there replaces the page by
    zeros and signals ``fd`` instead of killing the process."""
    _install()
    free = np.flatnonzero(_table[:, G_END] == 0)
    if not len(free):
        raise RuntimeError(f"more than {MAX_GUARDS} guarded guest memory ranges")
    row = int(free[0])
    _table[row] = 0
    _table[row, G_FD] = fd
    _table[row, G_START] = start
    _table[row, G_END] = start + size  # active last
    return Guard(row)
