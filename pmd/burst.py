"""The ethdev burst API as it is seen from inside Numba kernels.

``rx_burst(state, queue, pool, bufs, nb)`` fills ``bufs[:n]`` with received
buffer indices and returns n.  ``tx_burst(state, queue, pool, bufs, nb)``
takes ownership of ``bufs[:n]`` and returns n <= nb; the caller still owns
the rest (as in DPDK).  A driver registers its kernels for its own state
class (a NamedTuple of numpy arrays); callers are compiled once per
(state class, ...) combination, so the dispatch costs nothing at run time.
"""
from __future__ import annotations

from typing import Callable

from numba.extending import overload

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


@overload(rx_burst, jit_options={"nogil": True})
def _rx_burst_impl(state, queue, pool, bufs, nb):
    impl = _lookup(_RX, state)
    if impl is None:
        return None

    def rx(state, queue, pool, bufs, nb):
        return impl(state, queue, pool, bufs, nb)

    return rx


@overload(tx_burst, jit_options={"nogil": True})
def _tx_burst_impl(state, queue, pool, bufs, nb):
    impl = _lookup(_TX, state)
    if impl is None:
        return None

    def tx(state, queue, pool, bufs, nb):
        return impl(state, queue, pool, bufs, nb)

    return tx
