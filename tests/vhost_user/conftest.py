"""Fixtures shared by the vhost-user tests: a hang guard, a short socket
directory, and a BackendServer with a FakeDevice."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile

import pytest

from pmd.vhost_user.server import BackendServer

from .fakes import IOMMU_PLATFORM, MRG_RXBUF, VERSION_1, FakeDevice


@pytest.fixture(autouse=True)
def no_hang(request):
    mark = request.node.get_closest_marker("alarm")
    seconds = float(mark.args[0]) if mark else float(os.environ.get("VHOSTPCI_TEST_ALARM", 60))

    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="vu", dir="/tmp")  # short: sun_path is 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def served(sockdir):
    """(server, device, path) in server mode; stopped at the end."""
    dev = FakeDevice(features=VERSION_1 | MRG_RXBUF | IOMMU_PLATFORM)
    path = os.path.join(sockdir, "vhost.sock")
    srv = BackendServer(path, dev)
    srv.start()
    yield srv, dev, path
    srv.stop()
