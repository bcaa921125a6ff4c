"""`python3 -m tools.guest` / `vhostpci-vm1`: build the guest, or run VM1 by hand.

    vhostpci-vm1 build [--kernel 6.1|6.12]
    vhostpci-vm1 qemu [SERIES]          # e.g. 10.0: fetch it (bookworm-backports) if needed
    vhostpci-vm1 run --socket /tmp/vp.sock [--server] [--iommu intel|virtio]
                     [--ip 10.9.0.2/24] [--peer 10.9.0.1] [--peer-mac MAC]
                     [--scenario FILE] [--kernel 6.12] [--mem 256M] [--shell]
                     [--qemu 7.2|10.0] [--queues N]

`run` prints where the console log is and streams it until QEMU exits
(Ctrl-C stops QEMU). Without --scenario the guest waits (or, with --shell,
gives a shell on the console, typed into from this terminal).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .image import KERNELS, build_image
from .qemu import QemuError, Vm1
from .qemu_binary import SERIES, find_qemu


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vhostpci-vm1", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or find cached) the guest image")
    b.add_argument("--kernel", choices=KERNELS, default="6.1")
    b.add_argument("--cache-dir", type=Path)
    q = sub.add_parser("qemu", help="find (or fetch and cache) a QEMU and print it")
    q.add_argument("series", nargs="?", help=f"MAJOR.MINOR, e.g. {' or '.join(SERIES)} (default: the system's)")
    q.add_argument("--cache-dir", type=Path)
    r = sub.add_parser("run", help="run VM1 over a vhost-user socket")
    r.add_argument("--kernel", choices=KERNELS, default="6.1")
    r.add_argument("--cache-dir", type=Path)
    r.add_argument("--socket", help="vhost-user socket path (omit with --no-net)")
    r.add_argument("--server", action="store_true", help="QEMU is the socket server")
    r.add_argument("--no-net", action="store_true", help="no NIC")
    r.add_argument("--iommu", choices=("intel", "virtio"))
    r.add_argument("--no-strict", action="store_true", help="without iommu.strict=1")
    r.add_argument("--mac", default="52:54:00:00:00:01")
    r.add_argument("--ip", help="guest eth0 address, e.g. 10.9.0.2/24")
    r.add_argument("--peer", help="peer address, e.g. 10.9.0.1")
    r.add_argument("--peer-mac", help="static ARP entry for --peer")
    r.add_argument("--scenario", type=Path, help="shell script sourced by the guest's /init")
    r.add_argument("--shell", action="store_true", help="interactive shell on the console")
    r.add_argument("--mem", default="256M")
    r.add_argument("--qemu", metavar="SERIES", help=f"QEMU to run ({' or '.join(SERIES)}; default: the system's)")
    r.add_argument("--queues", type=int, default=1, help="NIC queue pairs (more than 1: QEMU 10.0)")
    r.add_argument("--append", default="", help="more kernel parameters")
    r.add_argument("--workdir", type=Path, help="console log etc. (default: new /tmp/vm1-*)")
    r.add_argument("--incoming", help="migration URI to wait on, e.g. unix:/tmp/mig.sock")
    return ap


def _run(a: argparse.Namespace) -> int:
    img = build_image(a.kernel, a.cache_dir)
    qemu = find_qemu(a.qemu, a.cache_dir)
    initrd = img.with_scenario(a.scenario.read_text()) if a.scenario else None
    append = a.append + (" vm1.shell=1" if a.shell else "")
    vm = Vm1(img, a.socket, workdir=a.workdir, server=a.server, net=not a.no_net,
             iommu=a.iommu, strict=not a.no_strict, mac=a.mac, ip=a.ip, peer=a.peer,
             peer_mac=a.peer_mac, initrd=initrd, mem=a.mem, incoming=a.incoming,
             append=append.strip(), interactive=a.shell, qemu=qemu, queues=a.queues)
    print(f"vhostpci-vm1: console {vm.console_path}, QEMU stderr {vm.stderr_path}, "
          f"QMP {vm.qmp_path}", file=sys.stderr, flush=True)
    shown = 0
    with vm:
        vm.start()
        print(f"vhostpci-vm1: QEMU pid {vm.pid}: {' '.join(vm.command())}",
              file=sys.stderr, flush=True)
        try:
            while vm.returncode is None:
                time.sleep(0.2)
                if not a.shell:  # with --shell the console is this terminal already
                    text = vm.console()
                    sys.stdout.write(text[shown:])
                    sys.stdout.flush()
                    shown = len(text)
        except KeyboardInterrupt:
            print("\nvhostpci-vm1: stopping QEMU", file=sys.stderr)
    if not a.shell:
        sys.stdout.write(vm.console()[shown:])
    err = vm.stderr().strip()
    if err:
        print(f"vhostpci-vm1: QEMU stderr:\n{err}", file=sys.stderr)
    return vm.returncode or 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python3 -m tools.guest` and `vhostpci-vm1`."""
    a = _parser().parse_args(argv)
    try:
        if a.cmd == "build":
            img = build_image(a.kernel, a.cache_dir)
            print(f"kernel {img.kernel}\ninitrd {img.initrd}\nversion {img.version}")
            for p, v in img.packages.items():
                print(f"package {p} {v}")
            print(f"modules {' '.join(img.modules)}")
            return 0
        if a.cmd == "qemu":
            qemu = find_qemu(a.series, a.cache_dir)
            print(f"version {qemu.version}\nbinary {qemu.binary}\nmsix {'yes' if qemu.msix else 'no'}")
            print(f"command {' '.join(qemu.argv())}")
            if qemu.moduledir:
                print(f"env QEMU_MODULE_DIR={qemu.moduledir}")
            return 0
        return _run(a)
    except (QemuError, RuntimeError, ValueError) as e:
        print(f"vhostpci-vm1: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
