"""The vhost-pci port: VM2's view of VM1 as a vhost-user back-end.

- ``driver``: the port ops (devargs, start/stop, stats) of ``net_vhost_pci``.
- ``device``: the vhost-user device (session callbacks) and the kernel state.
- ``state``: the kernel state's layout (vring control columns, counters).
- ``vq``: the split-ring device kernels (dequeue, enqueue).
- ``txhold``: the transmit side's hold queue for packets parked on a miss.
- ``iotlb``: IOTLB misses, the whole story (park, ask, ask ahead, retry);
  ``iotlb_ahead``: the pages a parked ring asks for ahead (split and packed).
- ``notify``: fallback-interrupt kernels (kicks).
- ``inflight``: INFLIGHT_SHMFD tracking; ``dirty_log``: migration logging.

VM1's memory is seen through ``pmd.guestmem`` (the window, translation).
Import the submodules directly; this package imports nothing on its own.
"""
