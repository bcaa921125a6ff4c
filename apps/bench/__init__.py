"""vhostpci-bench: throughput scenarios that print figures (no thresholds)."""
