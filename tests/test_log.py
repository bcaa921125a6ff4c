"""--log-level forms mapped onto components, DPDK-style prefixes, and the
vhost-user negotiation shown at debug level by a real front-end."""
from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pmd import log as pmdlog

@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    yield out
    pmdlog.reset()


def emit(module_path: str, level: int, msg: str, logger: str | None = None) -> None:
    """A record as if logged from ``module_path`` (pmd/...py) via ``logger``."""
    name = logger or module_path.removesuffix(".py").replace("/", ".")
    lg = logging.getLogger(name)
    if lg.isEnabledFor(level):
        lg.handle(lg.makeRecord(name, level, f"/x/{module_path}", 1, msg, (), None))


def test_default_level_shows_info_with_prefixes(stream: io.StringIO) -> None:
    pmdlog.configure([], stream)
    emit("pmd/vhost_user/server.py", logging.INFO, "vp0: front-end connected (#1)")
    emit("pmd/vhost_user/backend.py", logging.DEBUG, "vp0: read message VHOST_USER_GET_FEATURES")
    emit("pmd/guestmem/window.py", logging.WARNING, "grant refused")
    assert stream.getvalue().splitlines() == ["VHOST_CONFIG: vp0: front-end connected (#1)",
                                              "VHOSTPCI_WINDOW: grant refused"]


def test_shared_logger_name_split_by_module(stream: io.StringIO) -> None:
    pmdlog.configure(["pmd.net.virtio_user:debug"], stream)
    emit("pmd/vhostpci_pmd/driver.py", logging.DEBUG, "vm2 debug", logger="vhostpci.port")
    emit("pmd/virtio_user_pmd/driver.py", logging.DEBUG, "vm1 debug", logger="vhostpci.port")
    assert stream.getvalue() == "VIRTIO_USER: vm1 debug\n"


@pytest.mark.parametrize("specs, shown", [
    (["debug"], {"EAL", "VHOST_CONFIG", "VHOST_PCI", "VF"}),
    (["vhost*:debug"], {"VHOST_CONFIG", "VHOST_PCI"}),  # aliases vhost.config, vhost_pci match the glob
    (["lib.vhost.*:8"], {"VHOST_CONFIG"}),
    (["^pmd\\.net\\.,debug"], {"VHOST_PCI", "VF"}),
    (["debug", "lib.eal:error"], {"VHOST_CONFIG", "VHOST_PCI", "VF"}),  # applied in order
])
def test_forms(stream: io.StringIO, specs: list[str], shown: set[str]) -> None:
    pmdlog.configure(specs, stream)
    for path in ("pmd/shm.py", "pmd/vhost_user/backend.py", "pmd/vhostpci_pmd/driver.py", "pmd/vf_pmd/driver.py"):
        emit(path, logging.DEBUG, "d")
    assert {line.split(":")[0] for line in stream.getvalue().splitlines()} == shown


def test_errors_pass_below_level_filter(stream: io.StringIO) -> None:
    pmdlog.configure(["error"], stream)
    emit("pmd/vf_pmd/driver.py", logging.WARNING, "w")
    emit("pmd/vf_pmd/driver.py", logging.ERROR, "e")
    assert stream.getvalue() == "VF: e\n"


def test_bad_specs() -> None:
    for bad in ("loud", "x:", "(,debug", ":7"):
        with pytest.raises(pmdlog.LogLevelError, match="log level"):
            pmdlog.resolve_levels([bad])


def test_vhost_negotiation_at_debug(tmp_path: Path) -> None:
    """VM2's vhost-pci port at 'vhost*:debug' logs each vhost-user message our
    virtio-user VM1 sends; at the default level only connection, ring and
    link lines."""
    sock = tmp_path / "vp.sock"
    from pmd.ethdev import Port
    from pmd.vdev import parse_vdev

    out = io.StringIO()
    try:
        for specs, expect_debug in ((["vhost*:debug"], True), ([], False)):
            out.seek(0)
            out.truncate()
            pmdlog.configure(specs, out)
            vm2 = Port(0, parse_vdev(f"net_vhost_pci0,path={sock}"))
            vm1 = Port(1, parse_vdev(f"net_virtio_user0,path={sock}"))
            try:
                vm2.start()
                vm1.start()
                deadline = time.monotonic() + 10
                while "ready" not in out.getvalue() and time.monotonic() < deadline:
                    time.sleep(0.02)
            finally:
                vm1.close()
                vm2.close()
            text = out.getvalue()
            assert "VHOST_CONFIG: " in text and "connected" in text, text
            assert ("read message VHOST_USER_SET_FEATURES (2)" in text) == expect_debug, text
            assert "VHOST_PCI: " in text
    finally:
        pmdlog.reset()


@pytest.mark.parametrize("log_level, debug", [(["--log-level", "vhost*:debug"], True), ([], False)])
def test_log_level_on_the_command_line(tmp_path: Path, log_level: list[str], debug: bool) -> None:
    """The acceptance's form: vhostpci-testpmd with ``--log-level 'vhost*:debug'``
    and VM1 (our virtio-user port) on VM2's vhost-pci socket shows every
    vhost-user message of the negotiation; the default level shows the
    connection and the link, not the messages."""
    import os
    import sys

    import pexpect

    root = Path(__file__).resolve().parent.parent
    sock = tmp_path / "vp.sock"
    env = dict(os.environ, PYTHONPATH=str(root), VHOSTPCI_TESTPMD_HISTORY=str(tmp_path / "h"))
    argv = ["-m", "apps.testpmd", "-l", "0-1", "--file-prefix", f"vhostpci-log-{os.getpid()}", *log_level,
            "--vdev", f"net_vhost_pci0,path={sock}", "--vdev", f"net_virtio_user0,path={sock}", "--", "-i"]
    child = pexpect.spawn(sys.executable, argv, cwd=str(root), env=env, encoding="utf-8", timeout=60)
    try:
        child.expect_exact("VHOST_CONFIG: net_vhost_pci0: front-end connected")
        child.expect_exact("VHOST_PCI: net_vhost_pci0: link up")
        seen = child.before
        child.expect_exact("VIRTIO_USER: net_virtio_user0: connected to")  # the last line of the negotiation
        child.sendline("quit")
        child.expect(pexpect.EOF)
        assert "Traceback" not in child.before
    finally:
        if child.isalive():
            child.terminate(force=True)
    messages = ("read message VHOST_USER_SET_FEATURES (2)", "read message VHOST_USER_SET_VRING_ADDR (9)",
                "read message VHOST_USER_SET_VRING_KICK (12)")
    assert all((m in seen) == debug for m in messages), seen
    assert "vring 0 ready" in seen
    assert not sock.exists()
