"""A real VM1 for tests and by hand: QEMU (TCG) + a Debian kernel + busybox.

    from tools.guest import build_image, Vm1
    img = build_image("6.1")                   # cached in ~/.cache/vhostpci/guest
    initrd = img.with_scenario('marker "hello $(uname -r)"')
    with Vm1(img, socket="/tmp/vp.sock", server=True, initrd=initrd,
             ip="10.9.0.2/24", peer="10.9.0.1", workdir=tmp_path) as vm:
        vm.start()
        vm.wait_console(r"VM1: eth0 up", 120)
        vm.wait_console(r"VM1: done", 120)

By hand: `python3 -m tools.guest build [--kernel 6.12]`, `python3 -m
tools.guest run --socket /tmp/vp.sock --server --ip 10.9.0.2/24` (also the
`vhostpci-vm1` script). The guest's /init, its kernel command line parameters
(`vm1.ip=`...), console markers and scenario helpers: `tools.guest.init_script`.
"""
from __future__ import annotations

from .image import GuestImage, ImageError, build_image, default_cache_dir
from .qemu import QemuError, Vm1

__all__ = ["GuestImage", "ImageError", "QemuError", "Vm1", "build_image", "default_cache_dir"]
