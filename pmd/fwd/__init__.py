"""Forwarding engines (testpmd's fwd modes) and the one loop that runs them."""
