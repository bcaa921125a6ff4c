"""vhostpci-fwd: the forwarding app."""
