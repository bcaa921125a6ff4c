"""VM1 for the demo: a ``net_virtio_user`` port in its own process sending
sequence-numbered ICMP echo and UDP flows (``python3 -m apps.vm1``), plus the
stdlib-only UDP receiver the demo runs inside the wire's namespace
(``ns_receiver.py``)."""
