"""The vhost-pci port: VM2's view of VM1 as a vhost-user back-end.

- ``window``: the "BAR", one reserved virtual area per VM1 connection where
  VM1 memory appears only where granted (regions at their GPA without an
  IOMMU, IOTLB grants at their IOVA with one).
- ``translate``: the kernels' guest-address -> window-offset checks against
  the window's numpy tables.

Import the submodules directly; this package imports nothing on its own.
"""
