"""Fallback interrupts (pmd/fwd/power.py): VM2's forwarding lcore sleeps
when VM1 goes quiet, a kick wakes it, stop and quiescence stay prompt, and
an lcore that also polls a port without notifications never sleeps.

VM2 is the ``fwd`` fixture (io mode, one lcore) with a net_vhost_pci port;
VM1 is a net_virtio_user port driven from this thread (peer_io).  Run with
``-s`` to see the measured idle CPU and wake-up latencies.
"""
from __future__ import annotations

import os
import select
import statistics
import time

import pytest

from pmd.ethdev import Port
from pmd.vdev import parse_vdev
from pmd.lcore.control import LC_SLEEPS, LC_WAKEUPS
from pmd.fwd.power import arm_queue, disarm_queue
from pmd.mbuf import create_pool
from tests.vhostpci.peer_io import check_packet, make_packet, recv, send
from tests.util import thread_cpu_percent, wait_until as wait_for

LCORE = 1  # the fwd fixture's worker
IDLE_POLLS = 2000
CYCLES = 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


def thread_cpu_share(tid: int, seconds: float = 1.0) -> float:
    """CPU time (user + system) of thread ``tid`` over ``seconds`` of wall time, in %."""
    def ticks() -> int:
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)

    t0, w0 = ticks(), time.monotonic()
    time.sleep(seconds)
    t1, w1 = ticks(), time.monotonic()
    return 100.0 * (t1 - t0) / CLK_TCK / (w1 - w0)


def round_trip(vm1, pool, seq: int, timeout: float = 1.0) -> tuple[float, list[int]]:
    """Send packet ``seq`` from VM1 and wait for it in interrupt mode too (arm
    VM1's rx, sleep on its call eventfd: the GIL stays free for VM2's lcore);
    returns the seconds until it came back, and the seqs received."""
    st = vm1.kernel_state()
    (fd,) = vm1.driver.intr_fds(0)
    ep = select.epoll()
    ep.register(fd, select.EPOLLIN)
    try:
        t0 = time.perf_counter()
        assert send(vm1, pool, [make_packet(seq, 64)]) == 1
        while (left := timeout - (time.perf_counter() - t0)) > 0:
            if arm_queue(st, 0) == 0 and ep.poll(left):
                os.eventfd_read(fd)
            disarm_queue(st, 0)
            got = recv(vm1, pool)
            if got:
                return time.perf_counter() - t0, [check_packet(p) for p in got]
        return time.perf_counter() - t0, []
    finally:
        ep.close()


def asleep(fwd) -> bool:
    return fwd.lcores.sleeping(LCORE)


@pytest.fixture(params=["split", "packed"])
def vm1(sockdir, request):
    """Connects later (the fixture only builds it): start it after VM2 listens.
    Each test runs with split and with packed rings (both sides arm their
    own event structures)."""
    path = os.path.join(sockdir, "vp.sock")
    port = Port(9, parse_vdev(f"net_virtio_user9,path={path},packed_vq={int(request.param == 'packed')}"))
    pool = create_pool(1024)
    yield path, port, pool
    port.close()


def connect(fwd, vm1, *extra_vdevs: str, interrupts: bool = True):
    path, port, pool = vm1
    vp = fwd.attach_port(f"net_vhost_pci0,path={path}")
    vp.start()
    for vdev in extra_vdevs:
        fwd.attach_port(vdev).start()
    fwd.config.interrupts = interrupts
    fwd.config.idle_polls = IDLE_POLLS
    port.start()
    assert port.driver.wait_link(True, 10)
    deadline = time.monotonic() + 5
    while port.driver.rx_buffers_posted() < port.driver.args["queue_size"]:
        assert time.monotonic() < deadline, "VM1 rx buffers never posted"
        recv(port, pool)  # posts the receive buffers
        time.sleep(0.001)
    fwd.start()
    return vp, port, pool


def test_sleeps_when_idle_wakes_on_kick_no_loss(fwd, vm1):
    vp, port, pool = connect(fwd, vm1)
    assert fwd.sleepy_lcores() == [LCORE]
    ctl = fwd.lcores.ctl(LCORE)
    # warm-up: a first packet (and its way back) before measuring
    dt, seqs = round_trip(port, pool, 1000)
    assert seqs == [1000], (dt, seqs)
    assert wait_for(lambda: asleep(fwd), 2), "the lcore never went to sleep"
    idle_cpu = thread_cpu_share(fwd.lcores.thread_id(LCORE), 1.0)

    lat = []
    received = []
    wakeups0 = int(ctl[LC_WAKEUPS])
    for seq in range(CYCLES):
        assert wait_for(lambda: asleep(fwd), 2), f"cycle {seq}: not asleep"
        time.sleep(0.002)  # well inside the sleep, not at its edge
        dt, seqs = round_trip(port, pool, seq)
        assert seqs, f"packet {seq} not forwarded back within 1 s"
        lat.append(dt)
        received += seqs
    wakeups = int(ctl[LC_WAKEUPS]) - wakeups0
    assert received == list(range(CYCLES)), received  # none lost, none duplicated, in order
    assert wakeups >= CYCLES // 2, wakeups  # woken by kicks, not by polling through
    assert max(lat) < 0.050, lat

    # the same with pure polling
    fwd.stop()
    fwd.config.interrupts = False
    fwd.start()
    assert fwd.sleepy_lcores() == []
    poll_lat = []
    for seq in range(100, 110):
        dt, seqs = round_trip(port, pool, seq)
        assert seqs == [seq]
        poll_lat.append(dt)
    time.sleep(0.05)
    poll_cpu = thread_cpu_share(fwd.lcores.thread_id(LCORE), 1.0)
    assert not asleep(fwd)
    print(f"\n[interrupts] lcore CPU idle: {idle_cpu:.1f}% asleep vs {poll_cpu:.1f}% polling (--no-interrupts); "
          f"wake-up round trip over {CYCLES} sleep/wake cycles: median {statistics.median(lat) * 1e6:.0f} us, "
          f"max {max(lat) * 1e6:.0f} us (polling: median {statistics.median(poll_lat) * 1e6:.0f} us, "
          f"max {max(poll_lat) * 1e6:.0f} us); sleeps {int(ctl[LC_SLEEPS])}, kick wake-ups {wakeups}")
    assert idle_cpu < 10.0, idle_cpu
    assert poll_cpu > max(20.0, 3 * idle_cpu), poll_cpu  # ~100% on an idle machine
    st = vp.stats()
    assert st.ierrors == st.oerrors == 0


def test_stop_while_sleeping_is_prompt(fwd, vm1):
    connect(fwd, vm1)
    assert wait_for(lambda: asleep(fwd), 2)
    time.sleep(0.02)
    t0 = time.monotonic()
    fwd.stop()
    dt = time.monotonic() - t0
    print(f"\n[interrupts] stop while sleeping: {dt * 1e3:.1f} ms")
    assert dt < 1.0
    assert not fwd.lcores.is_running(LCORE)
    assert not asleep(fwd)


def test_wait_quiescent_while_sleeping(fwd, vm1):
    vp, port, pool = connect(fwd, vm1)
    assert wait_for(lambda: asleep(fwd), 2)
    time.sleep(0.02)
    epoch = fwd.lcores.epoch(LCORE)
    t0 = time.monotonic()
    fwd.lcores.wait_quiescent([LCORE], 1.0)
    vp.driver.quiesce()  # the port's hook: what the vhost-user session calls
    dt = time.monotonic() - t0
    print(f"\n[interrupts] wait_quiescent while sleeping: {dt * 1e6:.0f} us")
    assert dt < 0.05
    assert fwd.lcores.epoch(LCORE) == epoch  # it really slept through it
    dt, seqs = round_trip(port, pool, 7)  # and still wakes and forwards afterwards
    assert seqs == [7]


def test_port_without_interrupts_keeps_lcore_polling(fwd, vm1):
    # ports 0 (vhost-pci) and 1 (ring, loopback) are paired on the one lcore:
    # VM1 -> vhost-pci -> ring -> ring rx -> vhost-pci -> VM1
    vp, port, pool = connect(fwd, vm1, "net_ring0")
    assert fwd.sleepy_lcores() == []
    ctl = fwd.lcores.ctl(LCORE)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        assert not asleep(fwd)
        time.sleep(0.001)
    assert ctl[LC_SLEEPS] == 0
    for seq in range(5):
        dt, seqs = round_trip(port, pool, seq)
        assert seqs == [seq], (seq, seqs)
    assert ctl[LC_SLEEPS] == 0


def test_virtio_user_arm_gets_called(fwd, vm1):
    """VM1's side: armed, the device calls its call eventfd for a returned
    packet; disarmed, it does not."""
    vp, port, pool = connect(fwd, vm1, interrupts=False)
    st = port.kernel_state()
    (fd,) = port.driver.intr_fds(0)
    readable = select.epoll()
    readable.register(fd, select.EPOLLIN)
    try:
        while readable.poll(0):
            os.eventfd_read(fd)
        assert arm_queue(st, 0) == 0
        assert send(port, pool, [make_packet(1, 64)]) == 1
        assert readable.poll(1.0), "armed, but the device did not call"
        os.eventfd_read(fd)
        assert arm_queue(st, 0) > 0  # the packet is pending: do not sleep
        disarm_queue(st, 0)
        assert [check_packet(p) for p in recv(port, pool)] == [1]
        assert send(port, pool, [make_packet(2, 64)]) == 1
        got: list[bytes] = []
        deadline = time.monotonic() + 1.0
        while not got and time.monotonic() < deadline:
            got = recv(port, pool)
        assert [check_packet(p) for p in got] == [2]
        assert not readable.poll(0.05), "disarmed, but the device called"
    finally:
        readable.close()


def test_app_options():
    from apps.fwd.main import parse_app_args as fwd_args
    from apps.testpmd.main import parse_app_args as testpmd_args
    from pmd.fwd.config import MAX_IDLE_WAIT_NS, FwdConfig

    assert FwdConfig().interrupts and FwdConfig().idle_polls > 0
    for parse in (fwd_args, testpmd_args):
        a = parse([])
        assert not a.no_interrupts and a.idle_polls == FwdConfig().idle_polls
        a = parse(["--no-interrupts", "--idle-polls", "500"])
        assert a.no_interrupts and a.idle_polls == 500
        with pytest.raises(SystemExit):
            parse(["--idle-polls", "0"])
        assert a.idle_wait == FwdConfig().idle_wait_ns > 0
        assert parse(["--idle-wait", "0"]).idle_wait == 0
        for bad in ("-1", str(MAX_IDLE_WAIT_NS + 1), "1us"):
            with pytest.raises(SystemExit):
                parse(["--idle-wait", bad])


def lcore_cpu_percent(fwd, seconds: float) -> float:
    """The forwarding lcore thread's CPU use over ``seconds`` (psutil), in %."""
    return thread_cpu_percent(fwd.lcores.thread_id(LCORE), seconds)


def test_no_front_end_lcore_sleeps_until_a_vring_starts(fwd, vm1):
    """No VM1 connected: the lcore polling the port sleeps on the device's
    rx queue's wake-up eventfd (~0% CPU instead of a core); VM1 connecting wakes it and traffic
    flows; VM1 gone, it sleeps again."""
    path, port, pool = vm1
    vp = fwd.attach_port(f"net_vhost_pci0,path={path}")
    vp.start()
    fwd.config.interrupts = True
    fwd.config.idle_polls = IDLE_POLLS
    fwd.start()
    assert fwd.sleepy_lcores() == [LCORE]
    assert wait_for(lambda: asleep(fwd), 2), "the lcore never went to sleep without a front-end"
    idle = lcore_cpu_percent(fwd, 2.0)
    ctl = fwd.lcores.ctl(LCORE)
    sleeps = int(ctl[LC_SLEEPS])

    port.start()  # VM1 connects and starts its rings
    assert port.driver.wait_link(True, 10)
    deadline = time.monotonic() + 5
    while port.driver.rx_buffers_posted() < port.driver.args["queue_size"]:
        assert time.monotonic() < deadline, "VM1 rx buffers never posted"
        recv(port, pool)
        time.sleep(0.001)
    dt, seqs = round_trip(port, pool, 1)
    assert seqs == [1], (dt, seqs)

    port.stop()  # VM1 goes away: back to sleep
    assert wait_for(lambda: not vp.link().up, 3)
    assert wait_for(lambda: asleep(fwd), 2), "the lcore did not sleep again after VM1 left"
    idle_after = lcore_cpu_percent(fwd, 2.0)
    print(f"\n[interrupts] lcore CPU without a front-end: {idle:.1f}% (after VM1 left: {idle_after:.1f}%); "
          f"sleeps {sleeps}, round trip after connect {dt * 1e3:.1f} ms")
    assert idle < 5.0, idle
    assert idle_after < 5.0, idle_after
    assert int(ctl[LC_SLEEPS]) > sleeps
