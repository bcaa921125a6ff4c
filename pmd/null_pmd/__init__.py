"""net_null: rx hands out generated packets of a set size, tx frees them.

Measures the framework's own overhead (mbuf alloc/free, loop, engines) with
no device behind it, like DPDK's net_null.
"""
from .driver import NullDriver, NullState

__all__ = ["NullDriver", "NullState"]
