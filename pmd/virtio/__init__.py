"""Virtio definitions shared by the device side (vhost-pci) and the driver
side (virtio-user): split-ring layout, feature bits, the net header."""
