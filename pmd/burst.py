"""The ethdev burst API as it is seen from inside Numba kernels.

``rx_burst(state, queue, pool, bufs, nb)`` fills ``bufs[:n]`` with received
buffer indices and returns n.  ``tx_burst(state, queue, pool, bufs, nb)``
takes ownership of ``bufs[:n]`` and returns n <= nb; the caller still owns
the rest (as in DPDK).  A driver registers its kernels for its own state
class (a NamedTuple of numpy arrays); callers are compiled once per
(state class, ...) combination, so the dispatch costs nothing at run time.

A state reaches these functions by reference from the forwarding loop
(``pmd/byref.py``): a call costs one pointer, not the state's hundreds of
words, whether LLVM inlines it or not.

Around each driver's bursts the dispatch counts packet sizes into the
state's ``stats`` array (``pmd.sizebins``: what rx handed out, what tx
accepted), so every driver has DPDK's size-bin xstats without keeping them.
"""
from __future__ import annotations

from typing import Callable

from numba.extending import overload

from .ethdev import ST_RX_SIZE, ST_TX_SIZE
from .sizebins import count_sizes

_RX: dict[type, Callable] = {}
_TX: dict[type, Callable] = {}


def register_burst(state_cls: type, rx: Callable, tx: Callable) -> None:
    """Make ``rx``/``tx`` (njit functions) the burst functions of ``state_cls``."""
    _RX[state_cls] = rx
    _TX[state_cls] = tx


def rx_burst(state, queue, pool, bufs, nb):  # pragma: no cover - replaced in kernels
    """Receive up to ``nb`` packets from ``queue`` (callable from kernels only)."""
    raise NotImplementedError("rx_burst is only callable from a Numba kernel")


def tx_burst(state, queue, pool, bufs, nb):  # pragma: no cover - replaced in kernels
    """Send up to ``nb`` packets on ``queue`` (callable from kernels only)."""
    raise NotImplementedError("tx_burst is only callable from a Numba kernel")


def _lookup(table: dict, state) -> Callable | None:
    return table.get(getattr(state, "instance_class", None))


def _has_stats(state) -> bool:
    """The state carries a ``stats`` array (``pmd.ethdev.new_stats``) to count sizes into."""
    return "stats" in getattr(state, "fields", ())


@overload(rx_burst, jit_options={"nogil": True, "_nrt": False}, inline="always")
def _rx_burst_impl(state, queue, pool, bufs, nb):
    impl = _lookup(_RX, state)
    if impl is None:
        return None
    if not _has_stats(state):
        def rx_plain(state, queue, pool, bufs, nb):
            return impl(state, queue, pool, bufs, nb)

        return rx_plain

    def rx(state, queue, pool, bufs, nb):
        n = impl(state, queue, pool, bufs, nb)
        count_sizes(state.stats, queue, ST_RX_SIZE, pool.data_len, bufs, 0, n, 1)
        return n

    return rx


@overload(tx_burst, jit_options={"nogil": True, "_nrt": False}, inline="always")
def _tx_burst_impl(state, queue, pool, bufs, nb):
    impl = _lookup(_TX, state)
    if impl is None:
        return None
    if not _has_stats(state):
        def tx_plain(state, queue, pool, bufs, nb):
            return impl(state, queue, pool, bufs, nb)

        return tx_plain

    def tx(state, queue, pool, bufs, nb):
        # counted before the call (an accepted buffer may be freed and reused
        # by then), the refused tail taken back after (still the caller's)
        count_sizes(state.stats, queue, ST_TX_SIZE, pool.data_len, bufs, 0, nb, 1)
        sent = impl(state, queue, pool, bufs, nb)
        if sent < nb:
            count_sizes(state.stats, queue, ST_TX_SIZE, pool.data_len, bufs, sent, nb, -1)
        return sent

    return tx


# ---- deferred tx ------------------------------------------------------------
# ``tx_flush(state, queue, pool) -> pending``: a port whose tx_burst may accept
# packets it cannot place yet (the vhost-pci port while VM1's IOMMU answers a
# miss: the packet is kept, not dropped) sends what it holds and returns how
# many it still holds.  The forwarding loop calls it on passes where the
# stream received nothing, and a non-zero answer keeps the lcore polling.
# Drivers without such a queue register nothing: it compiles to 0.
_FLUSH: dict[type, Callable] = {}


def register_tx_flush(state_cls: type, flush: Callable) -> None:
    """Make ``flush`` (an njit function (state, queue, pool) -> held) the
    deferred-tx flush of ``state_cls``."""
    _FLUSH[state_cls] = flush


def tx_flush(state, queue, pool):  # pragma: no cover - replaced in kernels
    """Send what ``queue`` holds back; returns how many it still holds (kernels only)."""
    raise NotImplementedError("tx_flush is only callable from a Numba kernel")


@overload(tx_flush, jit_options={"nogil": True, "_nrt": False})
def _tx_flush_impl(state, queue, pool):
    impl = _lookup(_FLUSH, state)
    if impl is None:
        def nothing_held(state, queue, pool):
            return 0

        return nothing_held

    def flush(state, queue, pool):
        return impl(state, queue, pool)

    return flush


# ---- back-pressure -----------------------------------------------------------
# ``tx_room(state, queue) -> n``: how many packets ``tx_burst`` on ``queue``
# would take right now without refusing any (sent or held).  Forwarding
# engines receive no more than that (``pmd.fwd.common.receive_for``), so a
# port that cannot place packets yet (the vhost-pci port waiting for VM1's
# IOMMU) pushes back to the source: its frames stay in the source's ring,
# and only that ring drops when it is full (counted there, as a NIC's
# imissed).  Drivers without a limit register nothing: it compiles to
# ``NO_LIMIT``.
NO_LIMIT = 1 << 30
_ROOM: dict[type, Callable] = {}


def register_tx_room(state_cls: type, room: Callable) -> None:
    """Make ``room`` (an njit function (state, queue) -> int) the tx room of ``state_cls``."""
    _ROOM[state_cls] = room


def tx_room(state, queue):  # pragma: no cover - replaced in kernels
    """Packets ``tx_burst`` would take now (kernels only)."""
    raise NotImplementedError("tx_room is only callable from a Numba kernel")


@overload(tx_room, jit_options={"nogil": True, "_nrt": False}, inline="always")
def _tx_room_impl(state, queue):
    impl = _lookup(_ROOM, state)
    if impl is None:
        def no_limit(state, queue):
            return NO_LIMIT

        return no_limit

    def room(state, queue):
        return impl(state, queue)

    return room


# ---- fallback interrupts (pmd/fwd/power.py) --------------------------------
# ``intr_arm(state, queue) -> pending`` re-enables the peer's notifications
# for rx queue ``queue``, issues a seq_cst fence and re-checks the ring: > 0
# means work arrived meanwhile (do not sleep), 0 means armed and empty (a
# notification will signal the driver's ``intr_fds(queue)``), < 0 means it
# cannot be armed now (ring not ready or not mapped: keep polling).
# ``intr_disarm(state, queue)`` suppresses notifications again.  A state
# class without registered kernels arms to -1: its lcore never sleeps.
_ARM: dict[type, Callable] = {}
_DISARM: dict[type, Callable] = {}


def register_intr(state_cls: type, arm: Callable, disarm: Callable) -> None:
    """Make ``arm``/``disarm`` (njit functions) the interrupt kernels of ``state_cls``."""
    _ARM[state_cls] = arm
    _DISARM[state_cls] = disarm


def has_intr(state) -> bool:
    """True if ``state``'s driver registered interrupt kernels (Python side)."""
    return type(state) in _ARM


def intr_arm(state, queue):  # pragma: no cover - replaced in kernels
    """Arm rx notifications on ``queue``; returns pending work (kernels only)."""
    raise NotImplementedError("intr_arm is only callable from a Numba kernel")


def intr_disarm(state, queue):  # pragma: no cover - replaced in kernels
    """Suppress rx notifications on ``queue`` again (kernels only)."""
    raise NotImplementedError("intr_disarm is only callable from a Numba kernel")


@overload(intr_arm, jit_options={"nogil": True, "_nrt": False})
def _intr_arm_impl(state, queue):
    impl = _lookup(_ARM, state)
    if impl is None:
        def unsupported(state, queue):
            return -1
        return unsupported

    def arm(state, queue):
        return impl(state, queue)

    return arm


@overload(intr_disarm, jit_options={"nogil": True, "_nrt": False})
def _intr_disarm_impl(state, queue):
    impl = _lookup(_DISARM, state)
    if impl is None:
        def unsupported(state, queue):
            return None
        return unsupported

    def disarm(state, queue):
        impl(state, queue)

    return disarm
