"""net_vf_xdp: a port on a netdev (an SR-IOV VF; a veth end in tests)
through AF_XDP: UMEM and XSK rings walked by Numba kernels, a redirect-by-
queue XDP program loaded with the bpf() syscall."""
from . import driver  # noqa: F401  (registers the driver)
