"""The benchmark runs and prints figures (no thresholds: speed lives in the
bench output, not in tests)."""
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from .conftest import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _plot_args(factory, name: str) -> tuple[list[str], object]:
    """``--plot FILE`` in a directory apart from the bench's TMPDIR (which
    must be left empty), or nothing when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return [], None
    path = factory.mktemp("plot") / f"{name}.png"
    return ["--plot", str(path)], path


def _check_plot(path) -> None:
    if path is not None:
        assert path.read_bytes()[:8] == PNG_MAGIC, path


def test_framework_bench_short_json():
    out = subprocess.run([sys.executable, "-m", "apps.bench", "framework", "--seconds", "0.3",
                          "--rounds", "1", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    print(out.stdout)  # the figures, visible with pytest -s
    results = json.loads(out.stdout)["results"]
    assert {r["scenario"] for r in results} == {"null->null io", "ring<->ring io"}
    assert all(r["mpps_median"] > 0 and r["ns_per_packet"] > 0 for r in results)


def test_bench_rejects_unknown_scenario():
    out = subprocess.run([sys.executable, "-m", "apps.bench", "nope"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------ vhost bench
def _bench_leftovers(pid: int, under: str = "") -> list[str]:
    """Processes and DPDK runtime dirs a bench run with PID ``pid`` left behind
    (its ``vhostpci-fwd`` children: those with a socket under ``under``, the
    run's TMPDIR, when given: another bench on the machine is not this one's)."""
    tag = f"vhostpci-bench-{pid}-"
    left = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if tag in cmd or ("apps.fwd" in cmd and "vhostpci-bench-" in cmd and under in cmd):
            left.append(f"process {p.info['pid']}: {cmd}")
    for base in ("/var/run/dpdk", os.environ.get("XDG_RUNTIME_DIR", "/tmp") + "/dpdk", "/tmp/dpdk"):
        left += glob.glob(os.path.join(base, tag + "*"))
    return left


@contextlib.contextmanager
def _killed_on_exit(proc: subprocess.Popen):
    """SIGKILL ``proc`` and everything below it if the block leaves it running (a test timeout)."""
    tree = psutil.Process(proc.pid)
    try:
        yield
    finally:
        if proc.poll() is None:
            for p in [*tree.children(recursive=True), tree]:
                p.kill()
            proc.wait()


def _run_vhost_bench(tmp_path, *args, path_env=None, timeout=240):
    env = dict(os.environ, TMPDIR=str(tmp_path))  # the bench's private socket dir goes here
    if path_env is not None:
        env["PATH"] = path_env
    proc = subprocess.Popen([sys.executable, "-m", "apps.bench", "vhost", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with _killed_on_exit(proc):
        out, err = proc.communicate(timeout=timeout)
    assert _bench_leftovers(proc.pid, str(tmp_path)) == []
    assert list(tmp_path.iterdir()) == []  # sockets, the hugetlbfs mount point and their directory removed
    assert not _mounts_under(tmp_path)
    return proc.returncode, out, err


def _mounts_under(path) -> list[str]:
    with open("/proc/mounts") as f:
        return [line for line in f if line.split()[1].startswith(str(path))]


@pytest.mark.slow  # ~20-25 s: seven runs, each starting one or two processes
def test_vhost_bench_quick_json(tmp_path, tmp_path_factory):
    """Every scenario at 64 B, one short round: figures for all of them,
    DPDK's beside ours when dpdk-testpmd is installed (and a plot of them);
    nothing left behind."""
    have_dpdk = shutil.which("dpdk-testpmd") is not None
    plot_args, plot = _plot_args(tmp_path_factory, "vhost")
    t0 = time.monotonic()
    # timeout: with a cold Numba cache both sides compile their kernels first (~7 min
    # here for the vhost-pci side alone; a busy or slowed 2-CPU machine takes longer)
    rc, out, err = _run_vhost_bench(tmp_path, "--quick", "--size", "64", "--json", *plot_args, timeout=1200)
    print(err, out, f"{time.monotonic() - t0:.1f} s")  # progress and figures, visible with pytest -s
    assert rc == 0, err
    _check_plot(plot)
    doc = json.loads(out)
    assert doc["rounds"] == 1 and doc["seconds"] == 0.5
    results = doc["results"]
    rows = {(r["scenario"], r["size"], r["ours"]) for r in results}
    expect = {("c", 64, "iommu=off"), ("c", 64, "iommu=buffers"), ("c", 64, "iommu=transient")}
    if have_dpdk:
        expect |= {(sc, 64, f"vhost-pci{row}") for sc in "ab" for row in ("", " split")}
        assert len(doc["notes"]) == 1 and ("best row:" in doc["notes"][0] or "--no-huge" in doc["notes"][0])
    else:
        assert doc["notes"] == ["DPDK dpdk-testpmd not found (install dpdk-dev: tools/setup does)"]
    assert rows == expect
    for r in results:
        assert r["errors"] == [], r
        assert r["ours_mpps"] > 0 and len(r["ours_runs"]) == 1, r
        assert r["ref_mpps"] > 0 and r["ratio"] > 0, r
        if r["scenario"] in "ab":
            assert r["ref"] == r["ours"].replace("vhost-pci", "DPDK vhost")
    if have_dpdk:  # how much of the window the peer set the pace, on each of our rounds
        assert re.search(r"round 1/1 a   64 B vhost-pci .* ours: \d+% of polls empty", err), err
        assert re.search(r"round 1/1 b   64 B vhost-pci .* ours: \d+% of frames found the ring full", err), err


def test_vhost_bench_without_dpdk_says_so(tmp_path):
    """With no dpdk-testpmd on PATH, a and b print why they did not run."""
    empty = tmp_path / "bin"
    empty.mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rc, out, err = _run_vhost_bench(run_dir, "--quick", "--scenarios", "ab", path_env=str(empty), timeout=60)
    assert rc == 0, err
    assert out.splitlines() == ["DPDK dpdk-testpmd not found (install dpdk-dev: tools/setup does)"]


def test_vhost_bench_rejects_bad_size():
    out = subprocess.run([sys.executable, "-m", "apps.bench", "vhost", "--size", "64,9000"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "9000" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_vhost_bench_sigterm_mid_run_leaves_nothing(tmp_path):
    """SIGTERM while VM1 and VM2 are up: the bench ends every process it
    started and removes its sockets and DPDK runtime dirs."""
    scenario = "a" if shutil.which("dpdk-testpmd") else "c"
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "apps.bench", "vhost", "--scenarios", scenario, "--size", "64",
                             "--rounds", "1", "--seconds", "30"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    try:
        deadline = time.monotonic() + 300  # VM2's kernels compile first when Numba's cache is cold
        while not ps.children() and time.monotonic() < deadline:  # VM1 (a: DPDK virtio-user; c: vhostpci-fwd)
            time.sleep(0.05)
        assert ps.children(), "the bench never started VM1"
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # the test failed: SIGTERM first (the bench undoes its mounts and hugepages)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                for child in ps.children(recursive=True):
                    child.kill()
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert _bench_leftovers(proc.pid, str(tmp_path)) == []
    assert list(tmp_path.iterdir()) == [] and not _mounts_under(tmp_path)


# ------------------------------------------------------------ VF bench
def _veths(pid: int) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10).stdout
    return [line for line in out.splitlines() if f"vbf{pid}" in line]


def test_vf_bench_quick_json(tmp_path, tmp_path_factory):
    """Every direction at 64 B, one short round: our VF ports' figures (and
    DPDK af_packet's and af_xdp's beside them when dpdk-testpmd is
    installed), VM1 -> vhost-pci -> net_vf_xdp with one copy and with two
    (and DPDK's vhost + af_xdp); no veth, process or DPDK runtime dir left
    behind (~25 s with a warm Numba cache)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("the VF bench needs root and iproute2 (veth pair)")
    have_dpdk = shutil.which("dpdk-testpmd") is not None
    env = dict(os.environ, TMPDIR=str(tmp_path))
    plot_args, plot = _plot_args(tmp_path_factory, "vf")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "apps.bench", "vf", "--quick", "--size", "64", "--json", *plot_args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with _killed_on_exit(proc):
        out, err = proc.communicate(timeout=600)  # a cold Numba cache compiles the kernels first
    print(err, out, f"{time.monotonic() - t0:.1f} s")  # progress and figures, visible with pytest -s
    assert proc.returncode == 0, err
    _check_plot(plot)
    assert _veths(proc.pid) == []
    assert _bench_leftovers(proc.pid) == []
    assert not any("apps.fwd" in " ".join(p.info["cmdline"] or []) and f"vbf{proc.pid}" in " ".join(p.info["cmdline"])
                   for p in psutil.process_iter(["cmdline"]))
    assert list(tmp_path.iterdir()) == []
    doc = json.loads(out)
    assert doc["scenario"] == "vf" and doc["rounds"] == 1 and doc["seconds"] == 0.5
    rows = {(r["scenario"], r["size"], r["ours"], r["ref"]): r for r in doc["results"]}
    pairs = [("net_vf", "DPDK af_packet"), ("net_vf_xdp", "DPDK af_xdp"), ("net_vf_xdp", "net_vf")]
    chain = [("vhost-pci+xdp", "DPDK vhost+af_xdp")] * have_dpdk + [("vhost-pci+xdp", "umem=own")]
    assert set(rows) == {(d, 64, o, f) for d in ("tx", "rx") for o, f in pairs} | {("vm1", 64, o, f) for o, f in chain}
    if not have_dpdk:
        assert any("dpdk-testpmd not found" in n for n in doc["notes"])
    for r in rows.values():
        assert r["ours_mpps"] > 0 and len(r["ours_runs"]) == 1, r
        if have_dpdk or not r["ref"].startswith("DPDK"):
            assert r["errors"] == [] and r["ref_mpps"] > 0 and r["ratio"] > 0, r
        else:
            assert r["ref_mpps"] is None and r["ratio"] is None, r


def test_vf_bench_not_root_says_so(monkeypatch):
    """Without root: one note saying why, no figures (root faked away)."""
    from apps.bench import vf

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    results, notes = vf.run(seconds=0.1, rounds=1)
    assert results == [] and notes == [vf.NEEDS_ROOT]

# ------------------------------------------------------------ VM1 bench
def _vm1_bench_missing() -> str | None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "the VM1 bench needs root and iproute2 (veth + namespace)"
    for tool, pkg in (("qemu-system-x86_64", "qemu-system-x86"), ("dpdk-testpmd", "dpdk-dev"), ("gcc", "gcc")):
        if shutil.which(tool) is None:
            return f"{tool} not installed ({pkg}; tools/setup installs it)"
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return "no apt-get/dpkg-deb to build the guest from Debian packages"
    return None


@pytest.mark.slow  # ~2-4 min: four TCG boots (ours and DPDK, without and with strict intel-iommu)
@pytest.mark.skipif(_vm1_bench_missing() is not None, reason=str(_vm1_bench_missing()))
def test_vm1_bench_quick_json(tmp_path, tmp_path_factory):
    """One short round: guest -> namespace figures and namespace -> guest
    delivery for ours and DPDK in both IOMMU modes (no thresholds: losses are
    reported, not judged); no QEMU, testpmd, vhostpci-fwd, veth, namespace or
    socket left behind."""
    plot_args, plot = _plot_args(tmp_path_factory, "vm1")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "apps.bench", "vm1", "--quick", "--json", "--iommu", "none,intel-strict",
                             *plot_args],
                            cwd=ROOT,
                            env=dict(os.environ, TMPDIR=str(tmp_path)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    with _killed_on_exit(proc):
        out, err = proc.communicate(timeout=1200)  # boots take minutes when the machine is shared; cold caches
    print(err, out, f"{time.monotonic() - t0:.1f} s")  # progress and figures, visible with pytest -s
    assert proc.returncode == 0, err
    _check_plot(plot)
    tag = str(proc.pid % 10_000_000)
    links = subprocess.run(["ip", "-o", "link", "show"], check=True, capture_output=True, text=True, timeout=10).stdout
    assert f"vbm{tag}h" not in links
    netns = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True, timeout=10).stdout
    assert f"vhostpci-bench-vm1-{tag}" not in netns
    assert _bench_leftovers(proc.pid) == []
    assert not [p.info for p in psutil.process_iter(["pid", "cmdline"])
                if str(tmp_path) in " ".join(p.info["cmdline"] or [])]  # QEMU, vhostpci-fwd: sockets live there
    assert list(tmp_path.iterdir()) == []
    doc = json.loads(out)
    assert doc["scenario"] == "vm1" and doc["rounds"] == 1 and doc["sizes"] == [64] and doc["notes"] == []
    assert doc["iotlb_lcore"] == "auto" and doc["iotlb_revoke"] == "auto"
    rows = {(r["scenario"], r["size"]): r for r in doc["results"]}
    assert set(rows) == {("none", 64), ("intel-strict", 64)}
    for r in rows.values():
        assert r["errors"] == [], r
        for side in ("ours", "ref"):
            assert len(r[f"{side}_runs"]) == 1 and r[f"{side}_mpps"] is not None, r
            (s,) = r[f"{side}_samples"]
            assert s["sent"] > 0 and s["seconds"] > 0, r
            assert 0.0 <= s["vm1_cpu_idle"] <= 1.0 and s["vm1_wake_ipis"] >= 0, r  # VM1's CPU meanwhile
    assert doc["what"] == ["throughput", "delivery"] and doc["rates"] == [500, 5000] and doc["count"] == 1000
    delivery = {(r["iommu"], r["rate"]): r for r in doc["delivery"]}
    assert set(delivery) == {(i, rate) for i in ("none", "intel-strict") for rate in (500, 5000)}
    for r in delivery.values():
        assert r["errors"] == [], r
        for side in ("ours", "ref"):
            assert len(r[f"{side}_runs"]) == 1 and r[f"{side}_delivered_pct"] is not None, r
            (d,) = r[f"{side}_samples"]
            assert d["sent"] > 0 and 0 <= d["received"] <= d["sent"], r


def test_vm1_bench_passes_the_iotlb_placement_to_our_port():
    """``--iotlb-lcore`` and ``--iotlb-revoke`` become our vhost-pci port's devargs of those names."""
    from apps.bench.vm1 import OursVm2

    for mode in ("auto", "1", "0"):
        for revoke in ("auto", "control"):
            vm2 = OursVm2("/tmp/x.sock", "veth0", 1, "/dev/null", 10, mode, revoke)
            vdevs = [a for a in vm2.argv if "vhost_pci" in a]
            assert vdevs == [f"net_vhost_pci0,path=/tmp/x.sock,iommu_support=1,iotlb_lcore={mode},iotlb_revoke={revoke}"]
    for opt, bad in (("--iotlb-lcore", "2"), ("--iotlb-revoke", "lcore")):
        out = subprocess.run([sys.executable, "-m", "apps.bench", "vm1", opt, bad], cwd=ROOT, check=False,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and opt in out.stderr


def test_vm1_bench_without_qemu_says_so(tmp_path):
    """No qemu-system-x86_64 on PATH: one line saying so, no figures, exit 0."""
    empty = tmp_path / "bin"
    empty.mkdir()
    out = subprocess.run([sys.executable, "-m", "apps.bench", "vm1", "--quick"], cwd=ROOT, check=False,
                         env=dict(os.environ, PATH=str(empty)), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "qemu-system-x86_64 not found (tools/setup installs qemu-system-x86): the VM1 bench did not run"]


PROC_INTERRUPTS = """\
           CPU0       CPU1       CPU2
  0:         11          0          0   IO-APIC    2-edge      timer
LOC:        500        600        700   Local timer interrupts
RES:         10         20         30   Rescheduling interrupts
CAL:          1          2          3   Function call interrupts
TLB:          4          5          6   TLB shootdowns
"""


def test_wake_ipis_are_a_cpus_rescheduling_and_function_call_interrupts():
    from apps.bench.cpuwindow import parse_interrupts
    assert parse_interrupts(PROC_INTERRUPTS, 0) == 11
    assert parse_interrupts(PROC_INTERRUPTS, 2) == 33
    assert parse_interrupts(PROC_INTERRUPTS, 1, ("TLB",)) == 5
    with pytest.raises(ValueError, match="no column for CPU 3"):
        parse_interrupts(PROC_INTERRUPTS, 3)


def test_cpu_window_sees_a_busy_cpu_busy():
    """A thread spinning on the watched CPU for the whole window: (almost) no idle time."""
    from apps.bench.cpuwindow import CpuWindow
    cpu = max(os.sched_getaffinity(0))
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        window = CpuWindow(cpu)
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            pass
        use = window.close()
    finally:
        os.sched_setaffinity(0, old)
    assert use.idle < 0.5 and use.wake_ipis >= 0


def test_iotlb_bench_prints_latencies_for_each_placement():
    """vhostpci-bench iotlb: UPDATE, INVALIDATE, the MISS round trip and the
    machine's wake-up floor, p50/p99, for both placements of VM2's control
    thread (figures only, no thresholds)."""
    out = subprocess.run([sys.executable, "-m", "apps.bench", "iotlb", "--samples", "5", "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    got = {(r["placement"], r["measure"]) for r in doc["results"]}
    assert got == {(p, m) for p in ("split", "shared") for m in ("update", "invalidate", "miss", "wake")}
    for r in doc["results"]:
        assert 0 < r["p50_us"] <= r["p99_us"] and r["samples"] == 5, r


def test_xdp_steps_quick_json(tmp_path):
    """ns per packet by step of net_vf_xdp's tx burst, both paths, one short
    round; the veth pair is gone afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("the xdp-steps bench needs root and iproute2 (veth pair)")
    proc = subprocess.Popen([sys.executable, "-m", "apps.bench", "xdp-steps", "--quick", "--size", "64", "--json"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with _killed_on_exit(proc):
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert [(r["path"], r["size"]) for r in doc["results"]] == [("copy", 64), ("one copy", 64)]
    for r in doc["results"]:
        assert set(r["ns_per_packet"]) == {"alloc+header", "reap", "post", "wakeup"}
        assert all(v > 0 for v in r["ns_per_packet"].values()), r
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10).stdout
    assert f"vbs{proc.pid}" not in links


# ------------------------------------------------------------ hugepages
def _nr_hugepages() -> int:
    with open("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages") as f:
        return int(f.read())


def test_hugepages_made_and_undone(tmp_path):
    """The bench's hugepage set-up: pages added and a hugetlbfs mounted;
    close() unmounts (removing what a process left there) and takes the pages back."""
    from apps.bench.hugepages import Hugepages, HugepagesUnavailable, is_mounted

    before = _nr_hugepages() if os.path.exists("/sys/kernel/mm/hugepages/hugepages-2048kB") else None
    try:
        huge = Hugepages(8, parent=str(tmp_path))
    except HugepagesUnavailable as e:
        assert os.geteuid() != 0 or before is None, e  # as root with 2 MiB pages it must work
        pytest.skip(str(e))
    try:
        assert is_mounted(huge.dir) and _nr_hugepages() >= before + 8
        fd = os.open(os.path.join(huge.dir, "left-behind"), os.O_CREAT | os.O_RDWR)
        os.ftruncate(fd, 2 << 20)
        os.close(fd)
        mount_dir = huge.dir
    finally:
        huge.close()
    assert not is_mounted(mount_dir) and not os.path.exists(mount_dir)
    assert list(tmp_path.iterdir()) == []
    huge.close()  # twice: nothing more happens


_KILLED_RUN = """
import sys, time
from apps.bench.hugepages import Hugepages, HugepagesUnavailable
try:
    h = Hugepages(4, parent=sys.argv[1])
except HugepagesUnavailable as e:
    print("unavailable:", e, flush=True)
else:
    print(h.dir, flush=True)
    time.sleep(60)
"""


def test_hugepages_left_by_a_killed_run_are_reclaimed_at_the_next_set_up(tmp_path, caplog):
    """A run SIGKILLed before its close() leaves a mount and its pages; the
    next set-up finds its record, sees its process gone, and undoes both."""
    from apps.bench.hugepages import Hugepages, is_mounted

    if os.geteuid() != 0 or not os.path.exists("/sys/kernel/mm/hugepages/hugepages-2048kB"):
        pytest.skip("hugepages need root and 2 MiB pages")
    before = _nr_hugepages()
    p = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                         text=True)
    try:
        left = p.stdout.readline().strip()
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    if not left.startswith("/"):
        pytest.skip(left)
    assert is_mounted(left) and _nr_hugepages() == before + 4  # what the killed run could not undo
    huge = Hugepages(2, parent=str(tmp_path))
    try:
        assert not is_mounted(left) and not os.path.exists(left)
        assert _nr_hugepages() == before + 2
        assert f"killed run (pid {p.pid})" in caplog.text
    finally:
        huge.close()
    assert _nr_hugepages() == before
    assert list(tmp_path.iterdir()) == []


def test_hugepages_not_root_says_so(monkeypatch):
    from apps.bench import hugepages

    monkeypatch.setattr(hugepages.os, "geteuid", lambda: 1000)
    with pytest.raises(hugepages.HugepagesUnavailable, match="not root"):
        hugepages.Hugepages(8)


def test_plot_draws_ours_beside_the_reference_with_the_spread(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (the 'plot' extra)")
    from apps.bench import plot
    from apps.bench.common import Result
    from apps.bench.vm1 import DeliveryResult

    rows = [Result("a", "x", 64, "vhost-pci", "DPDK vhost", 2.0, 1.0, 2.0, [1.9, 2.0, 2.2], [0.9, 1.0, 1.1]),
            Result("b", "x", 1518, "vhost-pci", "DPDK vhost", 1.5, None, None, [1.5], [], errors=["no DPDK"])]
    delivery = [DeliveryResult("none", "x", 500, 100, "ours", "DPDK", 100.0, 43.0, [100.0], [43.0])]
    panels = [plot.throughput_panel(rows, "vhost"), plot.delivery_panel(delivery, "delivery")]
    assert [(c.label, c.ours, c.ref) for c in panels[0].cells] == [("a 64 B\nvhost-pci\nvs DPDK vhost", 2.0, 1.0),
                                                                  ("b 1518 B\nvhost-pci\nvs DPDK vhost", 1.5, None)]
    out = tmp_path / "p.png"
    plot.save(str(out), panels)
    assert out.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(plot.PlotError, match="nothing was measured"):
        plot.save(str(tmp_path / "q.png"), [plot.throughput_panel([], "empty")])
    with pytest.raises(plot.PlotError, match="no-such-dir"):
        plot.save(str(tmp_path / "no-such-dir" / "p.png"), panels)


def test_plot_without_matplotlib_is_a_clear_error_before_measuring(tmp_path, monkeypatch, capsys):
    from apps.bench import main as bench_main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit) as e:
        bench_main.main(["vhost", "--quick", "--plot", str(tmp_path / "p.png")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--plot needs matplotlib" in err[0] and "vhostpci[plot]" in err[0], err
    assert list(tmp_path.iterdir()) == []
