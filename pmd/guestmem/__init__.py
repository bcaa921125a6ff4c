"""Guest memory as another VM's process sees it: neutral, owned by no driver.

- ``window``: the IOMMU-limited window ("BAR"): one reserved area where the
  peer's memory appears only where it was granted.
- ``translate``: the kernels' checked guest address -> window offset lookups.
- ``grants``: grant rows, the compiled table merge, the writer's seqlock.
- ``region``: one memory region of a vhost-user memory table.
- ``vmem``: reserve / map-at / revoke primitives (mmap(2) through ctypes).

The vhost-user session drives a window through the device contract, VM2's
vhost-pci port reads VM1 through one, and VM1's virtio-user port reads its
own RAM through one.  Import the submodules directly.
"""
