"""Packet and bit rates from successive snapshots of a port's counters."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class RateTracker:
    """Per-port (time, counters) of the previous ``show port stats``, so each
    show can print packets/bits per second since the one before."""

    last: dict[int, tuple[float, int, int, int, int]] = field(default_factory=dict)

    def rates(self, port_id: int, t: dict[str, int], now: float | None = None) -> tuple[int, int, int, int]:
        """(rx pps, rx bps, tx pps, tx bps) since the previous call for this port."""
        now = time.monotonic() if now is None else now
        cur = (now, t["ipackets"], t["ibytes"], t["opackets"], t["obytes"])
        prev = self.last.get(port_id)
        self.last[port_id] = cur
        if prev is None or now <= prev[0]:
            return 0, 0, 0, 0
        dt = now - prev[0]
        # Counters may go backwards after a clear: report 0, not a negative rate.
        d = [max(0, c - p) for c, p in zip(cur[1:], prev[1:])]
        return int(d[0] / dt), int(d[1] * 8 / dt), int(d[2] / dt), int(d[3] * 8 / dt)

    def forget(self, port_id: int) -> None:
        self.last.pop(port_id, None)
