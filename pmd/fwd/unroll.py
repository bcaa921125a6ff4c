"""``poll_streams(streams, ctx, mode, burst)``: one pass over a heterogeneous
tuple of streams, as straight-line code with constant tuple indices.

Numba's ``literal_unroll`` would do this, but inside a long-running loop
it crashed here (Numba 0.68: segfault after enough passes, likely refcounts
in its loop versioning), so the unrolled body is generated per tuple length.
"""
from __future__ import annotations

from numba.core import types
from numba.extending import overload

from .dispatch import fwd_one


def poll_streams(streams, ctx, mode, burst):  # pragma: no cover - kernels only
    """Run ``fwd_one`` once on every stream; returns packets handled."""
    raise NotImplementedError("poll_streams is only callable from a Numba kernel")


def tx_first_streams(streams, ctx, burst):  # pragma: no cover - kernels only
    """Send one txonly burst on every stream (testpmd's ``start tx_first``)."""
    raise NotImplementedError("tx_first_streams is only callable from a Numba kernel")


def _unrolled(name: str, params: str, call: str, n: int):
    lines = [f"def {name}({params}):", "    work = 0"]
    lines += [f"    work += {call.format(i=i)}" for i in range(n)]
    lines.append("    return work")
    scope = {"fwd_one": fwd_one, "txonly_fwd": _txonly_fwd()}
    exec("\n".join(lines), scope)  # noqa: S102 - generated from constants only
    return scope[name]


def _txonly_fwd():
    from .txonly import fwd

    return fwd


@overload(poll_streams, jit_options={"nogil": True, "_nrt": False})
def _poll_streams(streams, ctx, mode, burst):
    if not isinstance(streams, types.BaseTuple):
        return None
    return _unrolled("poll", "streams, ctx, mode, burst", "fwd_one(streams[{i}], ctx, mode, burst)", len(streams))


@overload(tx_first_streams, jit_options={"nogil": True, "_nrt": False})
def _tx_first_streams(streams, ctx, burst):
    if not isinstance(streams, types.BaseTuple):
        return None
    return _unrolled("tx_first", "streams, ctx, burst", "txonly_fwd(streams[{i}], ctx, burst)", len(streams))
