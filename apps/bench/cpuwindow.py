"""What one CPU did over a window: the share of it left idle, and the
wake-up interrupts other CPUs sent it.

The ``vm1`` bench watches VM1's CPU while the guest sends.  Behind a strict
vIOMMU every packet costs VM1 two round trips to VM2 (the UPDATE answering
a MISS, the INVALIDATE of an unmap), each waited for by a QEMU thread.  A
back-end serving them on VM1's CPU (DPDK's vhost-events thread runs there)
hands over on that CPU: no idle time, no interrupt.  One serving them from
its own CPU leaves VM1's CPU idle while it works, then wakes it with an
inter-processor interrupt.  These two figures show which of the two a run
was, and how much of it.

Wake-ups are ``/proc/interrupts``' rescheduling (``RES``, a woken thread
preempts a busy CPU) and function-call (``CAL``, how Linux queues a wake-up
to an idle CPU, and cross-CPU calls such as a TLB shootdown to a CPU that
last ran the process) interrupts received by the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

from pmd.cpuload import read_cpu_ticks

WAKE_ROWS = ("RES", "CAL")


def parse_interrupts(text: str, cpu: int, rows: tuple[str, ...] = WAKE_ROWS) -> int:
    """The sum of ``rows`` received by ``cpu`` in ``/proc/interrupts`` text.
    Columns are named ``CPUn`` in the header (offline CPUs have none)."""
    lines = text.splitlines()
    names = lines[0].split() if lines else []
    if f"CPU{cpu}" not in names:
        raise ValueError(f"/proc/interrupts has no column for CPU {cpu}")
    col = names.index(f"CPU{cpu}")
    total = 0
    for line in lines[1:]:
        fields = line.split()
        if fields and fields[0].rstrip(":") in rows:
            total += int(fields[1 + col])
    return total


def _wake_ipis(cpu: int) -> int:
    with open("/proc/interrupts") as f:
        return parse_interrupts(f.read(), cpu)


@dataclass
class CpuUse:
    """One window's figures for one CPU."""
    idle: float  # share of the window the CPU was idle, 0..1
    wake_ipis: int  # RES + CAL interrupts it received


class CpuWindow:
    """``CpuWindow(cpu)`` opens the window; ``close()`` returns its ``CpuUse``."""

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self._ticks = read_cpu_ticks(frozenset({cpu}))
        self._ipis = _wake_ipis(cpu)

    def close(self) -> CpuUse:
        busy, total = read_cpu_ticks(frozenset({self.cpu}))
        d_busy, d_total = busy - self._ticks[0], total - self._ticks[1]
        idle = 1.0 - d_busy / d_total if d_total > 0 else 0.0
        return CpuUse(min(1.0, max(0.0, idle)), _wake_ipis(self.cpu) - self._ipis)
