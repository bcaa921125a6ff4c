"""vhostpci-fwd as a user runs it: figures printed, clean SIGINT, bad input."""
import os
import re
import signal
import subprocess
import sys
import time

from .conftest import ROOT

FWD = [sys.executable, "-m", "apps.fwd"]


def test_duration_run_prints_mpps_and_exits_0():
    out = subprocess.run(FWD + ["-l", "0-1", "--vdev", "net_ring0", "--vdev", "net_ring1", "--",
                                "--tx-first", "--duration", "1.5", "--stats-period", "0.5"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("port 0 net_ring0")]
    assert lines and all("Mpps" in ln for ln in lines)
    assert "Stopped after" in out.stdout


def test_sigint_stops_within_a_second():
    p = subprocess.Popen(FWD + ["-l", "0-1", "--vdev", "net_null0", "--vdev", "net_null1", "--",
                                "--stats-period", "0.2"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # wait until forwarding runs (first stats line), compile included
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if line.startswith("port 0"):
                break
        p.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        p.wait(timeout=5)
        assert time.monotonic() - t0 < 3.0  # prompt (typically ~0.2 s), with room for a loaded 2-core machine
        assert p.returncode == 0
        assert "Stopped after" in p.stdout.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_bad_eal_and_app_options_exit_2_with_one_line():
    for args in (["-c", "0x0", "--vdev", "net_ring0"], ["-l", "0-1", "--vdev", "net_bogus0"],
                 ["-l", "0-1", "--vdev", "net_ring0,bogus=1"], ["-l", "0-1", "--", "--duration", "0"],
                 ["-l", "0-1", "--vdev", "net_ring0", "--", "--forward-mode", "nope"]):
        out = subprocess.run(FWD + args, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, (args, out.stderr)
        assert out.stdout == ""


def test_testpmd_reader_leaving_early_is_not_a_traceback():
    """Like `... | head -1`: stdout's reader goes away; testpmd still closes
    its ports and exits 0 without a traceback."""
    p = subprocess.Popen([sys.executable, "-m", "apps.testpmd", "-l", "0-1", "--vdev", "net_ring0",
                          "--vdev", "net_null0"], cwd=ROOT, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().startswith("Configuring Port 0")
        p.stdout.close()
        _, err = p.communicate("show port info all\nshow port stats all\nquit\n", timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0 and "Traceback" not in err, err


def test_no_worker_lcore_is_one_clear_line_before_any_port():
    out = subprocess.run(FWD + ["-l", "0", "--vdev", "net_ring0"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == ("vhostpci-fwd: error: no worker lcore to forward on: lcores 0 are all the main"
                                  " lcore (give at least two, e.g. -l 0-1)")
    assert "nb-cores" not in out.stderr and out.stdout == ""


def test_sigint_during_start_is_honoured():
    """SIGINT right after the ports are up (while the kernels compile or load):
    the app leaves within seconds, no traceback, no rate over a zero window."""
    p = subprocess.Popen(FWD + ["-l", "0-1", "--no-telemetry", "--vdev", "net_null0", "--vdev", "net_null1", "--",
                                "--stats-period", "0"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().startswith("Port 0:")
        p.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        out, err = p.communicate(timeout=10)
        assert time.monotonic() - t0 < 5
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert "Traceback" not in err, err
    assert p.returncode in (0, 130), (p.returncode, out, err)
    if p.returncode == 130:
        assert "Interrupted before forwarding started." in out
    else:  # the start won the race: stopped at once, no Mpps over ~0 s
        elapsed = float(re.search(r"Stopped after ([0-9.]+) s", out).group(1))
        assert "Mpps rx" not in out or elapsed >= 0.1, out


def test_vhost_pci_socket_someone_listens_on_exits_1(tmp_path):
    """Both apps refuse a server-mode socket a live process listens on (one
    line, exit 1) and leave that process's socket in place."""
    import socket

    path = str(tmp_path / "taken.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
        s.listen(4)
        for cmd in (FWD, [sys.executable, "-m", "apps.testpmd"]):
            out = subprocess.run(cmd + ["-l", "0-1", "--vdev", f"net_vhost_pci0,path={path}"], cwd=ROOT,
                                 capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
            assert out.returncode == 1, (cmd, out.returncode, out.stderr)
            err = out.stderr.strip().splitlines()
            assert len(err) == 1 and f"another process is listening on {path}" in err[0], out.stderr
            assert os.path.exists(path)
