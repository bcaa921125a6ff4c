"""pmd.byref: NamedTuple states passed to kernels as one pointer."""
from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
from numba import njit

from pmd.byref import Ref, ref_of, refs_of


class Inner(NamedTuple):
    a: np.ndarray
    b: np.ndarray


class State(NamedTuple):
    inner: Inner
    vq: np.ndarray
    k: int


@njit(nogil=True, _nrt=False)
def _work(st, n):
    s = 0
    for i in range(n):
        st.inner.a[i] = i  # a write through a field reached by reference
        s += st.vq[i % 3, 1] + st.inner.b[i] + st.k
    return s


@njit(nogil=True, _nrt=False)
def _through_refs(states, n):
    refs = refs_of(states)
    total = 0
    for _ in range(3):
        total += _work(refs[0], n) + refs[1]
    return total


@njit(nogil=True, _nrt=False)
def _through_ref(st, n):
    return _work(ref_of(st), n)


def _state() -> State:
    return State(Inner(np.zeros(10, np.int64), np.arange(10, 20)), np.arange(12).reshape(3, 4), 5)


def test_a_ref_reads_and_writes_like_its_value():
    st = _state()
    expect = sum(range(10, 20)) + sum(int(st.vq[i % 3, 1]) for i in range(10)) + 10 * 5
    assert _through_refs((st, 7), 10) == 3 * (expect + 7)
    assert list(st.inner.a) == list(range(10))
    st.inner.a[:] = 0
    assert _through_ref(st, 10) == expect == _work(st, 10)
    assert list(st.inner.a) == list(range(10))


def test_a_kernel_on_a_ref_takes_one_pointer_instead_of_every_array_field():
    st = _state()
    _through_ref(st, 10)
    _work(st, 10)
    by_ref = [a for a in _work.signatures if isinstance(a[0], Ref)]
    by_value = [a for a in _work.signatures if not isinstance(a[0], Ref)]
    assert by_ref and by_value

    def nargs(sig) -> int:
        ir = _work.inspect_llvm(sig)
        define = next(line for line in ir.splitlines()
                      if line.startswith("define") and "_work" in line and "cpython" not in line)
        return len(re.findall(r"%\"?arg\.", define))

    # the value: two 1-d arrays, a 2-d array and an int, each field an
    # argument (7 + 7 + 9 + 1 words); the reference: one pointer and n
    assert nargs(by_ref[0]) == 2
    assert nargs(by_value[0]) > 20
