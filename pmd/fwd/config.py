"""Forwarding configuration as the user sets it (testpmd's ``set`` commands)."""
from __future__ import annotations

from dataclasses import dataclass

from .common import MAX_BURST, MODE_NAMES
from .pktgen import MIN_FRAME

MAX_IDLE_WAIT_NS = 1_000_000  # an idle wait is a spin, not a sleep: at most 1 ms


@dataclass
class FwdConfig:
    mode: str = "io"
    burst: int = 32
    txpkts: int = 64
    nb_cores: int = 1
    nb_flows: int = 1024
    # Fallback interrupts (l3fwd-power style, pmd/fwd/power.py): after
    # ``idle_polls`` empty passes an lcore arms rx notifications and sleeps in
    # epoll, if every rx queue it polls can wake it; else it keeps polling.
    interrupts: bool = True
    idle_polls: int = 2000  # empty passes before sleeping (~2-3 ms of polling)
    # how long an lcore waits after a pass that found nothing, before polling
    # again (pmd/fwd/loop.py: why); 0 polls back to back
    idle_wait_ns: int = 1000
    port_list: list[int] | None = None  # set portlist: forwarding ports in this order (None: all)
    nb_ports: int = 0  # set nbport: only the first N forwarding ports (0: all)
    verbose: int = 0  # set verbose (levels above 0 turn on debug logs)
    record_burst_stats: bool = False  # show RX/TX-bursts lines in forward stats

    def validate(self) -> None:
        """Raise ValueError naming the bad setting."""
        if self.mode not in MODE_NAMES:
            raise ValueError(f"unknown forwarding mode {self.mode!r} (available: {' '.join(MODE_NAMES)})")
        if not 1 <= self.burst <= MAX_BURST:
            raise ValueError(f"burst must be 1..{MAX_BURST}, got {self.burst}")
        if not MIN_FRAME <= self.txpkts <= 9000:
            raise ValueError(f"txpkts must be {MIN_FRAME}..9000, got {self.txpkts}")
        if self.nb_cores < 1:
            raise ValueError(f"nb-cores must be >= 1, got {self.nb_cores}")
        if self.idle_polls < 1:
            raise ValueError(f"idle-polls must be >= 1, got {self.idle_polls}")
        if not 0 <= self.idle_wait_ns <= MAX_IDLE_WAIT_NS:
            raise ValueError(f"idle-wait must be 0..{MAX_IDLE_WAIT_NS} ns, got {self.idle_wait_ns}")
        if self.nb_flows < 1:
            raise ValueError(f"nb-flows must be >= 1, got {self.nb_flows}")
