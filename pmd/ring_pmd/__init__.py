"""net_ring: ports backed by in-memory rings of buffer indices.

Alone, a ring port loops back (what it sends it receives, as DPDK's
net_ring).  With ``peer=net_ringM`` two ports are joined back to back: each
one's tx queue feeds the other's rx queue.
"""
from .driver import RingDriver, RingState

__all__ = ["RingDriver", "RingState"]
