"""virtio-user: a port that plays VM1 as a vhost-user front-end.

- ``guest_memory``: ``GuestMemory``, VM1's "RAM" as memfd regions at chosen
  guest-physical addresses, shareable over SET_MEM_TABLE.

The protocol side is ``pmd.vhost_user.frontend.FrontendSession``.
"""
