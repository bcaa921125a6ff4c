"""net_vf: a port on a netdev (an SR-IOV VF; a veth end in tests) through
AF_PACKET rings mmap'd and walked by Numba kernels."""
from . import driver  # noqa: F401  (registers the driver)
