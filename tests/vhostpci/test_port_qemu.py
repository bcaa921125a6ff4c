"""Real QEMU as VM1 against the net_vhost_pci port in the forwarding runtime
(slow: TCG).  No guest kernel: QEMU's init-time negotiation, then the
firmware's iPXE virtio-net driver sets DRIVER_OK and sends DHCP requests,
which the port dequeues from QEMU's tx ring and (io mode, one port) puts
back into the rx buffers iPXE posted.  On QEMU 7.2 (INTx) and 10.0 (MSI-X)."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from pmd.vhost_user.messages import FrontendReq as F
from tests.util import QEMU_SERIES, qemu_or_skip
from tests.util import wait_until as wait

pytestmark = pytest.mark.slow


def qemu_cmd(qemu, path: str, paused: bool) -> list[str]:
    nic = "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56" + ("" if qemu.msix else ",vectors=0")
    return [*qemu.argv(), "-machine", "q35,accel=tcg", "-cpu", "max", "-m", "256M",
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
