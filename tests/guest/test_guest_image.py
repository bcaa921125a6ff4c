"""tools.guest: the cached Debian guest image and QEMU VM1 (TCG) without a NIC."""
from __future__ import annotations

import hashlib
import shutil
import stat
from pathlib import Path

import pytest

from tests.util import QEMU_SERIES, qemu_or_skip
from tools.guest import GuestImage, Vm1, build_image, cpio
from tools.guest.image import default_cache_dir
from tools.guest.qemu_binary import Qemu

pytestmark = pytest.mark.skipif(
    shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None,
    reason="the guest image is built from Debian packages: needs apt-get and dpkg-deb")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86_64 missing (tools/setup installs it)")
BOOT_TIMEOUT = 120  # ~5 s alone under TCG; the machine is shared with other runs


def _image(kernel: str) -> GuestImage:
    try:
        return build_image(kernel)
    except RuntimeError as e:  # e.g. no network and nothing cached
        pytest.skip(f"cannot build the {kernel} guest: {e}")


def test_cpio_round_trip():
    a = cpio.Archive()
    a.add_file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
    a.add_symlink("usr/bin/awk", "../../bin/busybox")
    a.add_chardev("dev/console", 5, 1)
    entries = {e.name: e for e in cpio.read(a.to_gzip() + a.to_bytes())}
    assert entries["bin"].kind == "dir" and entries["usr/bin"].kind == "dir"
    assert entries["bin/tool"].data == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(entries["bin/tool"].mode) == 0o755
    assert entries["usr/bin/awk"].kind == "link" and entries["usr/bin/awk"].data == b"../../bin/busybox"
    assert entries["dev/console"].kind == "chr" and entries["dev/console"].rdev == (5, 1)


def test_image_is_cached_and_complete(tmp_path):
    first = _image("6.1")
    again = build_image("6.1")
    assert again == first  # the same cache entry, not a rebuild
    assert first.initrd.parent.parent == default_cache_dir() / "images"
    mtime = first.initrd.stat().st_mtime_ns
    assert build_image("6.1").initrd.stat().st_mtime_ns == mtime
    assert first.version.startswith("6.1.") and first.kernel.stat().st_size > 5_000_000
    assert any(p.startswith("linux-image-6.1.") for p in first.packages)

    entries = {e.name: e for e in cpio.read(first.initrd.read_bytes())}
    assert entries["init"].kind == "file" and stat.S_IMODE(entries["init"].mode) == 0o755
    assert entries["bin/busybox"].kind == "file"
    links = {n.rsplit("/", 1)[-1] for n, e in entries.items() if e.kind == "link"}
    for applet in ("sh", "ping", "nc", "awk", "md5sum", "arp", "ip", "insmod", "poweroff",
                   "sleep", "usleep", "setsid"):
        assert applet in links, applet
    assert entries["bin/sh"].data.endswith(b"bin/busybox")
    assert entries["usr/bin/nc.openbsd"].kind == "file"
    assert entries["usr/sbin/ethtool"].kind == "file" and "lib/x86_64-linux-gnu/libmnl.so.0" in entries
    assert entries["lib64/ld-linux-x86-64.so.2"].kind == "link"
    assert entries["dev/console"].rdev == (5, 1)
    load = entries["etc/modules.load"].data.decode().split()
    assert load == list(first.modules)
    for m in ("virtio_ring", "virtio", "virtio_pci", "failover", "net_failover", "virtio_net",
              "scsi_common", "scsi_mod", "libata", "libahci", "ahci"):
        assert f"lib/modules/{m}.ko" in entries, m
        assert entries[f"lib/modules/{m}.ko"].data[:4] == b"\x7fELF"
    # dependencies before dependents
    assert load.index("virtio_ring") < load.index("virtio") < load.index("virtio_pci")
    assert load.index("failover") < load.index("net_failover") < load.index("virtio_net")
    assert load.index("libata") < load.index("ahci")

    initrd = first.with_scenario("marker hi", {"/data/x.bin": b"\x01\x02"}, tmp_path)
    assert initrd.parent == tmp_path
    assert first.with_scenario("marker hi", {"/data/x.bin": b"\x01\x02"}, tmp_path) == initrd
    both = {e.name: e for e in cpio.read(initrd.read_bytes())}
    assert both["scenario.sh"].data == b"marker hi" and both["data/x.bin"].data == b"\x01\x02"
    assert "init" in both  # the base is still there


@pytest.mark.slow
@needs_qemu
@pytest.mark.parametrize("series", QEMU_SERIES, ids=[f"qemu-{s}" for s in QEMU_SERIES])
def test_boot_61_without_net_runs_scenario(tmp_path, series):
    img = _image("6.1")
    qemu = qemu_or_skip(series)
    initrd = img.with_scenario('marker "sum $(echo hi | md5sum)"\n'
                               'udp_recv 5000 /tmp/rx; usleep 300000\n'
                               'udp_send 127.0.0.1 5000 3 100; sleep 1\n'
                               'marker "udp $(wc -c < /tmp/rx) $(snmp Udp InDatagrams)"\n',
                               dest_dir=tmp_path)
    with Vm1(img, net=False, initrd=initrd, workdir=tmp_path, guest_timeout=110, qemu=qemu) as vm:
        vm.start()
        assert vm.pid is not None and vm.returncode is None
        assert vm.qmp("query-status")["status"] == "running"
        assert vm.wait_console(r"VM1: boot ok (\S+)\s", BOOT_TIMEOUT).group(1) == img.version
        m = vm.wait_console(r"VM1: sum (\w+)", BOOT_TIMEOUT)
        assert m.group(1) == hashlib.md5(b"hi\n").hexdigest()
        assert vm.wait_console(r"VM1: udp (\d+) (\d+)", BOOT_TIMEOUT).groups() == ("300", "3")
        vm.wait_console(r"VM1: scenario end rc=0", BOOT_TIMEOUT)
        vm.wait_console(r"VM1: done", BOOT_TIMEOUT)
        assert vm.wait(60) == 0  # poweroff -f + -no-reboot: QEMU exits by itself
    assert "insmod failed" not in vm.console()


@pytest.mark.slow
@needs_qemu
def test_boot_612_with_virtio_iommu(tmp_path):
    img = _image("6.12")
    assert "virtio_iommu" in img.modules
    initrd = img.with_scenario('marker "iommu $(ls /sys/class/iommu | tr "\\n" " ")"\n'
                               'dmesg | grep -q "virtio_iommu virtio" && marker "virtio-iommu probed"\n',
                               dest_dir=tmp_path)
    with Vm1(img, net=False, iommu="virtio", initrd=initrd, workdir=tmp_path,
             guest_timeout=110) as vm:
        vm.start()
        assert vm.wait_console(r"VM1: boot ok (\S+)\s", BOOT_TIMEOUT).group(1).startswith("6.12.")
        assert vm.wait_console(r"VM1: iommu (.*)", BOOT_TIMEOUT).group(1).strip()
        vm.wait_console(r"VM1: virtio-iommu probed", BOOT_TIMEOUT)
        vm.wait_console(r"VM1: done", BOOT_TIMEOUT)
        assert vm.wait(60) == 0
    assert "iommu.strict=1" in vm.append


@needs_qemu
def test_stop_kills_a_guest_that_waits(tmp_path):
    img = _image("6.1")
    vm = Vm1(img, net=False, workdir=tmp_path)
    try:
        vm.start()
        vm.wait_console("VM1: boot ok", BOOT_TIMEOUT)
        assert vm.returncode is None
    finally:
        vm.stop(timeout=10)
    assert vm.returncode is not None


def test_vm1_command_lines(tmp_path):
    img = GuestImage(kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd.img", version="x")
    vm = Vm1(img, tmp_path / "vp.sock", server=True, iommu="intel", ip="10.9.0.2/24",
             peer="10.9.0.1", peer_mac="02:00:00:00:00:01", workdir=tmp_path,
             qemu=Qemu(Path("/usr/bin/qemu-system-x86_64"), "7.2.22"))
    cmd = " ".join(vm.command())
    assert "path=" + str(tmp_path / "vp.sock") + ",server=on,wait=off" in cmd
    assert "intel-iommu,intremap=on,device-iotlb=on" in cmd
    assert "bus=rp1,iommu_platform=on,ats=on" in cmd and "vectors=0" in cmd
    assert "memory-backend-memfd,id=mem,size=256M,share=on" in cmd
    assert "intel_iommu=on iommu.strict=1" in vm.append
    assert "vm1.ip=10.9.0.2/24 vm1.peer=10.9.0.1 vm1.peer_mac=02:00:00:00:00:01" in vm.append
    dest = vm.replace(incoming="unix:/tmp/x.sock", workdir=tmp_path / "dst")
    assert dest.command()[-2:] == ["-incoming", "unix:/tmp/x.sock"]
    assert "rp1" in " ".join(dest.command())
    plain = Vm1(img, net=False, workdir=tmp_path)
    assert "vhost-user" not in " ".join(plain.command())
