"""Launch, wait for and stop lcores (rte_eal_remote_launch / mp_wait_lcore).

Each worker lcore is a thread pinned to its CPU with ``sched_setaffinity``
(on Linux, pid 0 means the calling *thread*).  The function it runs is a
``nogil`` Numba kernel, so workers truly run in parallel; each gets a
control-word array whose LC_STOP slot the kernel reads with an acquire
load, so ``stop()`` is always seen, and a stop eventfd that ``stop()``
signals too, for a body sleeping in epoll (fallback interrupts, power.py).
"""
from __future__ import annotations

import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..atomics_py import store_flag
from ..grace import GraceSet
from ..placement import control_cpus_for, set_control_cpus, set_poller_cpus
from .control import LC_EPOCH, LC_RUNNING, LC_SLEEPING, LC_STOP, N_LC


class LcoreError(Exception):
    """An lcore id is unknown, or its function raised."""


class LcoreBusy(LcoreError):
    """remote_launch on an lcore that is still running."""


@dataclass
class _Lcore:
    lcore_id: int
    cpu: int
    ctl: np.ndarray  # its row of LcoreManager.ctl_table
    row: int
    thread: threading.Thread | None = None
    result: Any = None
    error: BaseException | None = None
    affinity: set[int] = field(default_factory=set)  # as seen by the thread itself
    native_id: int = 0
    stop_fd: int = -1  # eventfd stop() signals (created on first use)


class LcoreManager:
    """The worker lcores of one EAL configuration (the main lcore is the caller)."""

    def __init__(self, lcores: dict[int, int], main_lcore: int) -> None:
        self.main_lcore = main_lcore
        workers = sorted((lid, cpu) for lid, cpu in lcores.items() if lid != main_lcore)
        # every worker's control words, one row each: a grace period reads them from a kernel
        self.ctl_table = np.zeros((max(len(workers), 1), N_LC), np.int64)
        self._lcores = {lid: _Lcore(lid, cpu, self.ctl_table[row], row) for row, (lid, cpu) in enumerate(workers)}
        # control threads (vhost-user, IOTLB) away from the polling workers, as DPDK places them
        set_poller_cpus({cpu for _, cpu in workers})
        set_control_cpus(control_cpus_for({cpu for _, cpu in workers}, lcores.get(main_lcore)))

    @property
    def workers(self) -> list[int]:
        return sorted(self._lcores)

    def cpu_of(self, lcore_id: int) -> int:
        return self._get(lcore_id).cpu

    def ctl(self, lcore_id: int) -> np.ndarray:
        """The lcore's control words (pass them to the kernel you launch)."""
        return self._get(lcore_id).ctl

    def stop_fd(self, lcore_id: int) -> int:
        """An eventfd that ``stop()`` signals after setting LC_STOP: a body
        that sleeps (epoll) waits on it too, so stopping stays prompt."""
        lc = self._get(lcore_id)
        if lc.stop_fd < 0:
            lc.stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            weakref.finalize(lc, os.close, lc.stop_fd)
        return lc.stop_fd

    def rows(self, lcore_ids: list[int]) -> np.ndarray:
        """The rows of ``ctl_table`` that hold these lcores' control words."""
        return np.array([self._get(lid).row for lid in lcore_ids], np.int64)

    def grace_set(self, lcore_ids: list[int]) -> GraceSet:
        """These lcores, for grace periods (``wait_quiescent``, and a port's
        control thread waiting for the lcores that poll it)."""
        return GraceSet(self.ctl_table, self.rows(lcore_ids), lcore_ids)

    def thread_id(self, lcore_id: int) -> int:
        """The native (kernel) thread id of the lcore's current or last thread."""
        return self._get(lcore_id).native_id

    def sleeping(self, lcore_id: int) -> bool:
        """True while the lcore sleeps waiting for rx notifications."""
        return bool(self._get(lcore_id).ctl[LC_SLEEPING])

    def affinity(self, lcore_id: int) -> set[int]:
        """The CPU set the lcore's thread reported for itself when it started."""
        return set(self._get(lcore_id).affinity)

    def _get(self, lcore_id: int) -> _Lcore:
        try:
            return self._lcores[lcore_id]
        except KeyError:
            raise LcoreError(f"lcore {lcore_id} is not a worker lcore (workers: {self.workers})") from None

    def is_running(self, lcore_id: int) -> bool:
        t = self._get(lcore_id).thread
        return t is not None and t.is_alive()

    def remote_launch(self, lcore_id: int, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the lcore's pinned thread; clears its stop flag."""
        lc = self._get(lcore_id)
        if self.is_running(lcore_id):
            raise LcoreBusy(f"lcore {lcore_id} is still running")
        lc.result, lc.error = None, None
        store_flag(lc.ctl, LC_STOP, 0)
        store_flag(lc.ctl, LC_SLEEPING, 0)
        if lc.stop_fd >= 0:
            try:
                os.eventfd_read(lc.stop_fd)  # a stop() from an earlier run
            except BlockingIOError:
                pass
        ready = threading.Event()

        def body() -> None:
            try:
                os.sched_setaffinity(0, {lc.cpu})
                lc.affinity = os.sched_getaffinity(0)
                lc.native_id = threading.get_native_id()
            except OSError as e:
                lc.error = LcoreError(f"lcore {lcore_id}: cannot pin to cpu {lc.cpu}: {e}")
                ready.set()
                return
            store_flag(lc.ctl, LC_RUNNING, 1)  # before the loop's first access to port memory
            ready.set()
            try:
                lc.result = fn(*args)
            except BaseException as e:  # reported by wait()
                lc.error = e
            finally:
                store_flag(lc.ctl, LC_RUNNING, 0)  # after its last one

        lc.thread = threading.Thread(target=body, name=f"lcore-{lcore_id}", daemon=True)
        lc.thread.start()
        ready.wait()

    def stop(self, lcore_id: int) -> None:
        """Ask the lcore's loop to return (it checks once per pass; a sleeping
        body is woken through its stop eventfd)."""
        lc = self._get(lcore_id)
        store_flag(lc.ctl, LC_STOP, 1)
        if lc.stop_fd >= 0:
            os.eventfd_write(lc.stop_fd, 1)

    def stop_all(self) -> None:
        for lid in self._lcores:
            self.stop(lid)

    def wait(self, lcore_id: int, timeout: float | None = None) -> Any:
        """Wait for the lcore's function; returns its result or raises its error.

        Raises TimeoutError if it is still running after ``timeout`` seconds.
        Waits in short slices so signal handlers keep running meanwhile.
        """
        lc = self._get(lcore_id)
        if lc.thread is not None:
            deadline = None if timeout is None else time.monotonic() + timeout
            while lc.thread.is_alive():
                left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                if left <= 0:
                    raise TimeoutError(f"lcore {lcore_id} did not finish within {timeout} s")
                lc.thread.join(left)
        if lc.error is not None:
            err, lc.error = lc.error, None
            raise LcoreError(f"lcore {lcore_id} failed: {err!r}") from err
        return lc.result

    def mp_wait(self, timeout: float | None = None) -> dict[int, Any]:
        """Wait for every worker; results keyed by lcore id."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out = {}
        for lid in self.workers:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            out[lid] = self.wait(lid, left)
        return out

    def epoch(self, lcore_id: int) -> int:
        """The lcore's last published quiescent point."""
        return int(self._get(lcore_id).ctl[LC_EPOCH])

    def wait_quiescent(self, lcore_ids: list[int], timeout: float = 1.0) -> None:
        """Return once every lcore in ``lcore_ids`` has passed a quiescent
        point after this call began (its epoch moved on) or is not running.

        The control thread calls this after changing what kernels may touch
        (a revoked IOTLB grant, a new memory table) and before unmapping:
        a kernel that has since finished a pass can no longer hold an address
        from before the change.  Raises TimeoutError naming the stuck lcores
        (bounded: a stuck lcore is an error, never a deadlock).

        An lcore sleeping in epoll (LC_SLEEPING, fallback interrupts) is
        quiescent too: it set the flag with a release store after its last
        access to port memory, and on waking clears it and issues a seq_cst
        fence before touching tables again.  The wait (``pmd/grace.py``)
        begins with a fence that pairs with that one: the caller's change is
        visible before we read the flag, so an lcore whose flag we still
        read as 1 sees the change once it wakes (see pmd/fwd/power.py).
        """
        self.grace_set(lcore_ids).wait(timeout)
