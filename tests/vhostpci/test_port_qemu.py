"""Real QEMU as VM1 against the net_vhost_pci port in the forwarding runtime
(slow: TCG).  No guest kernel: QEMU's init-time negotiation, then the
firmware's iPXE virtio-net driver sets DRIVER_OK and sends DHCP requests,
which the port dequeues from QEMU's tx ring and (io mode, one port) puts
back into the rx buffers iPXE posted.  On QEMU 7.2 (INTx) and 10.0 (MSI-X)."""
from __future__ import annotations

import os
import subprocess
import time

import numpy as np
import pytest

from pmd.vhost_user.messages import FrontendReq as F
from tests.util import QEMU_SERIES, qemu_or_skip
from tests.util import wait_until as wait

pytestmark = pytest.mark.slow


def qemu_cmd(qemu, path: str, paused: bool, mem: str = "256M") -> list[str]:
    nic = "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56" + ("" if qemu.msix else ",vectors=0")
    return [*qemu.argv(), "-machine", "q35,accel=tcg", "-cpu", "max", "-m", mem,
            "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem",
            "-chardev", f"socket,id=chr0,path={path}", "-netdev", "vhost-user,id=net0,chardev=chr0",
            "-device", nic, "-nographic", "-nodefaults", "-display", "none", "-serial", "none"] + (["-S"] if paused else [])


@pytest.mark.parametrize("series", QEMU_SERIES, ids=[f"qemu-{s}" for s in QEMU_SERIES])
@pytest.mark.parametrize("paused", [True, False], ids=["init-negotiation", "firmware-traffic"])
def test_qemu_front_end_with_the_port(fwd, sockdir, paused, series):
    qemu = qemu_or_skip(series)
    path = os.path.join(sockdir, "qemu.sock")
    port = fwd.attach_port(f"net_vhost_pci0,path={path}")
    port.start()
    fwd.start()  # lcores poll the port before, during and after QEMU
    proc = subprocess.Popen(qemu_cmd(qemu, path, paused), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=qemu.env())
    try:
        srv = port.driver.server
        want = {F.GET_FEATURES, F.SET_OWNER, F.GET_PROTOCOL_FEATURES, F.SET_PROTOCOL_FEATURES, F.GET_QUEUE_NUM,
                F.SET_BACKEND_REQ_FD}
        ok = wait(lambda: (srv.last_session is not None and want <= set(srv.last_session.history))
                  or proc.poll() is not None, 30.0)
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace")
            if "romfile" in out:
                pytest.skip(f"QEMU lacks its option ROMs (install ipxe-qemu): {out.strip()}")
            pytest.fail(f"QEMU exited with {proc.returncode}: {out}")
        assert ok, f"init negotiation incomplete: {list(srv.last_session.history) if srv.last_session else []}"
        if paused:
            time.sleep(2.0)
            assert proc.poll() is None and srv.session is not None and not port.link().up
        else:
            assert wait(lambda: port.link().up, 30.0), "DRIVER_OK / rings never came"
            assert wait(lambda: port.stats().ipackets >= 1 and port.stats().opackets >= 1, 60.0), \
                f"no firmware packet through the port: {port.stats().totals} {port.driver.xstats()}"
            st = port.stats()
            assert st.ierrors == st.oerrors == 0
            xs = port.driver.xstats()
            assert xs["bad_descriptors"] == xs["bad_ring"] == xs["too_big"] == 0, xs
            assert proc.poll() is None
            # the port offers CONFIGURE_MEM_SLOTS: QEMU hands its RAM region by region
            history = list(srv.session.history)
            assert F.GET_MAX_MEM_SLOTS in history and F.ADD_MEM_REG in history, history
            assert F.SET_MEM_TABLE not in history, history
        proc.kill()  # VM1 dies: the port goes down, the app lives on
        proc.wait(10)
        assert wait(lambda: srv.session is None and not port.link().up, 5.0)
        assert fwd.running
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()


@pytest.mark.parametrize("series", QEMU_SERIES, ids=[f"qemu-{s}" for s in QEMU_SERIES])
def test_qemu_memory_hotplug_reaches_the_port(fwd, sockdir, tmp_path, series):
    """QEMU with hotpluggable memory (``-m 256M,slots=4,maxmem=1G``): a memfd
    ``share=on`` pc-dimm added through QMP (object-add + device_add) reaches
    the port as ADD_MEM_REG (CONFIGURE_MEM_SLOTS), and the port's window
    maps VM1's real dimm memory: bytes VM2 writes at the dimm's address are
    what QEMU reads there (QMP pmemsave).  Firmware only (no guest kernel:
    tests/vm1 has the guest that onlines the dimm and receives into it)."""
    from tools.guest.qmp import Qmp

    qemu = qemu_or_skip(series)
    path = os.path.join(sockdir, "qemu.sock")
    qmp_path = os.path.join(sockdir, "qmp.sock")
    port = fwd.attach_port(f"net_vhost_pci0,path={path}")
    port.start()
    fwd.start()
    cmd = qemu_cmd(qemu, path, False, mem="256M,slots=4,maxmem=1G") + ["-qmp", f"unix:{qmp_path},server=on,wait=off"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=qemu.env())
    qmp = Qmp(qmp_path)
    try:
        srv = port.driver.server
        win = port.driver.window
        qmp.connect(30, alive=lambda: proc.poll() is None)
        assert wait(lambda: port.link().up or proc.poll() is not None, 60.0), "DRIVER_OK / rings never came"
        if proc.poll() is not None:
            pytest.fail(f"QEMU exited: {proc.stdout.read().decode(errors='replace')}")
        regions0 = int(win.region_count[0])
        adds0 = list(srv.session.history).count(F.ADD_MEM_REG)
        t0 = time.monotonic()
        qmp.execute("object-add", **{"qom-type": "memory-backend-memfd", "id": "dimm0mem", "size": 128 << 20,
                                     "share": True})
        qmp.execute("device_add", driver="pc-dimm", id="dimm0", memdev="dimm0mem")
        dimm = next(d["data"] for d in qmp.execute("query-memory-devices") if d["data"].get("id") == "dimm0")
        gpa, size = int(dimm["addr"]), int(dimm["size"])
        assert wait(lambda: int(win.region_count[0]) == regions0 + 1, 10.0), \
            f"no region added: {list(srv.session.history)[-20:]}"
        dt = time.monotonic() - t0
        assert list(srv.session.history).count(F.ADD_MEM_REG) == adds0 + 1
        assert any(r.gpa == gpa and r.size == size for r in win.regions_list), (gpa, size, win.regions_list)
        pattern = np.random.default_rng(7).integers(0, 256, 8192, dtype=np.uint8)
        at = gpa + size // 2
        win.array[at:at + len(pattern)] = pattern  # VM2 writes into VM1's hot-added memory...
        dump = tmp_path / "dimm.bin"
        qmp.execute("pmemsave", val=at, size=len(pattern), filename=str(dump))
        assert dump.read_bytes() == pattern.tobytes()  # ...and VM1's QEMU reads the same bytes there
        print(f"\n[{qemu.label} hotplug] pc-dimm of {size >> 20} MiB at gpa {gpa:#x}: ADD_MEM_REG mapped in "
              f"{dt * 1e3:.0f} ms (QMP to window); regions {regions0} -> {int(win.region_count[0])}")
        assert port.link().up and proc.poll() is None
        st = port.stats()
        assert st.ierrors == st.oerrors == 0
    finally:
        qmp.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
