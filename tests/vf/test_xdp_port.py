"""The AF_XDP VF port (net_vf_xdp) on a veth pair into a fresh namespace:
exact bytes both ways, multi-queue, MTU limits, the XDP program gone after
stop, after SIGKILL and at restart, and the errors that leave nothing
behind (no native XDP, no permission, a netdev another program owns)."""
from __future__ import annotations

import functools
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apps.wire import ip
from pmd.ethdev import Port, PortError
from pmd.vdev import parse_vdev
from pmd.mbuf import HEADROOM, create_pool
from tests.vf.conftest import make_veth, send_all, xdp_attached
from tests.vf.ns_peer import check_packet, make_packet
from tests.vf.test_vf_port import _mappings, _open_fds, _ours, recv_until
from tests.vhostpci.peer_io import flush, recv, send

pytestmark = pytest.mark.usefixtures("compiled_xdp")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def xdp_on(port_on):
    """Start a net_vf_xdp port on the veth's host end (extra devargs optional)."""
    return functools.partial(port_on, kind="net_vf_xdp")


def _budget_raised(port) -> bool:
    """True on a kernel that took XDP_MAX_TX_SKB_BUDGET (Linux >= 6.17)."""
    return "no XDP_MAX_TX_SKB_BUDGET" not in port.driver.info()["tx per wakeup"]


def test_native_copy_mode_on_a_veth_and_tx_wakeups(veth, xdp_on):
    port = xdp_on()
    assert xdp_attached(veth.host) == "native"
    assert port.driver.info()["zero-copy"] == "no (copy mode)"  # a veth has no zero-copy
    pool = create_pool(512)
    pkts = [make_packet(k, 100) for k in range(100)]
    peer = veth.start_peer("recv", len(pkts), 5)
    assert send_all(port, pool, pkts) == len(pkts)
    assert [bytes.fromhex(h) for h in veth.peer_result(peer)["packets"]] == pkts
    xs = port.driver.xstats()
    if _budget_raised(port):
        # a 100-frame burst is below the kick batch (512 of 2048): it waits
        # in the ring, and the flush's one send() sends all of it
        expected = (1, 0, 0)
    else:
        # one send() per burst or flush; the kernel sends at most 32 frames
        # per wakeup, then says EAGAIN: 32 + 32 + 32 + 4
        expected = (4, 3, 0)
    assert (xs["tx_wakeups"], xs["tx_wakeup_again"], xs["tx_wakeup_errors"]) == expected, xs
    assert xs["tx_invalid_descs"] == 0


def test_full_bursts_gather_short_ones_go_at_once(veth, xdp_on):
    """Copy mode: full bursts wait in the ring for the kick batch (or the
    next flush); a short burst means the source is drained and wakes the
    kernel at once, taking the gathered frames with it."""
    port = xdp_on(",ring_size=512")
    if not _budget_raised(port):
        pytest.skip("kernel without XDP_MAX_TX_SKB_BUDGET (Linux < 6.17): one wakeup per burst")
    assert port.driver.info()["tx per wakeup"].startswith("gathered to 128, up to 512 sent")
    pool = create_pool(1024)
    pkts = [make_packet(k, 80) for k in range(200)]
    peer = veth.start_peer("recv", len(pkts), 5)
    assert send(port, pool, pkts[:32]) == 32
    assert send(port, pool, pkts[32:64]) == 32
    assert port.driver.xstats()["tx_wakeups"] == 0  # 64 < 128 gathered: no syscall yet
    assert send(port, pool, pkts[64:128]) == 64  # the ring holds 128: one wakeup sends them all
    assert port.driver.xstats()["tx_wakeups"] == 1
    assert send(port, pool, pkts[128:192]) == 64
    assert send(port, pool, pkts[192:]) == 8  # short: wake now, with the 64 gathered before it
    xs = port.driver.xstats()
    assert (xs["tx_wakeups"], xs["tx_wakeup_again"], xs["tx_wakeup_errors"]) == (2, 0, 0), xs
    assert [bytes.fromhex(h) for h in veth.peer_result(peer)["packets"]] == pkts  # no flush needed
    assert flush(port, pool) == 0


def test_tx_ring_full_takes_what_fits_and_recovers(veth, xdp_on):
    port = xdp_on(",ring_size=64")
    pool = create_pool(512)
    pkts = [make_packet(k, 200) for k in range(150)]
    peer = veth.start_peer("recv", 150, 5)
    taken = send(port, pool, pkts)  # 64 frames: the rest stays with the caller
    assert taken == 64
    sent = taken
    deadline = time.monotonic() + 5
    while sent < len(pkts) and time.monotonic() < deadline:
        sent += send(port, pool, pkts[sent:])
        flush(port, pool)
    while flush(port, pool) and time.monotonic() < deadline:
        pass
    got = [bytes.fromhex(h) for h in veth.peer_result(peer)["packets"]]
    assert got == pkts
    assert port.driver.xstats()["tx_ring_full"] >= 1
    assert pool.available() == pool.size


def test_kernel_drops_are_imissed_and_survive_a_restart(veth, xdp_on):
    """Frames the kernel had no room for are imissed (XDP_STATISTICS);
    the counters of the next sockets start from zero, the port's go on."""
    port = xdp_on(",ring_size=64")
    pool = create_pool(512)
    # nobody polls: 64 frames fit the rx ring (its fill ring holds 128, all posted)
    veth.run_peer("send", 300, "64", 5000, 0)
    got = recv_until(port, pool, 300, timeout=1)
    st = port.stats()
    assert (len(got), st.ipackets, st.imissed) == (64, 64, 236)
    xs = port.driver.xstats()
    assert (xs["rx_ring_full"], xs["rx_fill_ring_empty_descs"]) == (236, 0)
    assert xs["rx_wakeups"] == 0  # copy mode never asks for a wakeup on the fill ring: no syscall on rx
    port.stop()
    port.start()
    veth.run_peer("send", 10, "64", 5000, 0)
    assert len(recv_until(port, pool, 10)) == 10
    st = port.stats()
    assert (st.ipackets, st.imissed) == (74, 236)


# ---- multi-queue ---------------------------------------------------------------
def _udp_flows(ns: str, peer: str, subnet: int, flows: int) -> None:
    """One datagram per source port from the namespace: the veth spreads the
    flows over its tx queues by hash, so they arrive on several rx queues."""
    dst = f"10.99.{subnet}.2"
    subprocess.run(["ip", "-n", ns, "neigh", "replace", dst, "lladdr", "02:00:00:00:00:02", "dev", peer,
                    "nud", "permanent"], check=True)
    code = ("import socket\n"
            f"for i in range({flows}):\n"
            "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "    s.bind(('', 20000 + i))\n"
            f"    s.sendto(b'flow %05d ' % i + bytes(50), ('{dst}', 9999))\n"
            "    s.close()\n")
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], check=True, timeout=30)


def _flow_ids(pkts: list[bytes]) -> list[int]:
    out = []
    for p in pkts:
        if p[12:14] == b"\x08\x00" and p[23] == 17 and p[42:47] == b"flow ":
            out.append(int(p[47:52]))
    return out


def test_multiqueue_one_xsk_per_queue():
    with make_veth(queues=2) as v:
        port = Port(0, parse_vdev(f"net_vf_xdp0,iface={v.host},queues=2"))
        try:
            port.start()
            assert (port.nb_rxq, port.nb_txq) == (2, 2)
            pool = create_pool(512)
            _udp_flows(v.ns, v.peer, v.subnet, 64)
            per_queue: dict[int, list[int]] = {0: [], 1: []}
            deadline = time.monotonic() + 5
            while sum(map(len, per_queue.values())) < 64 and time.monotonic() < deadline:
                for q in (0, 1):
                    per_queue[q] += _flow_ids(recv(port, pool, queue=q))
            assert sorted(per_queue[0] + per_queue[1]) == list(range(64))
            assert per_queue[0] and per_queue[1], {q: len(f) for q, f in per_queue.items()}
            st = port.stats()
            assert [row["ipackets"] > 0 for row in st.per_queue] == [True, True]
            peer = v.start_peer("recv", 2, 3)
            assert send_all(port, pool, [make_packet(7, 80)], queue=1) == 1
            assert send_all(port, pool, [make_packet(8, 80)], queue=0) == 1
            got = [bytes.fromhex(h) for h in v.peer_result(peer)["packets"]]
            assert sorted(got) == sorted([make_packet(7, 80), make_packet(8, 80)])
            assert [row["opackets"] for row in port.stats().per_queue] == [1, 1]
        finally:
            port.close()
        assert xdp_attached(v.host) == "none"


def test_more_queues_than_the_netdev_has_is_a_port_error(veth):
    port = Port(0, parse_vdev(f"net_vf_xdp0,iface={veth.host},queues=2"))
    with pytest.raises(PortError, match=f"{veth.host} has 1 rx queue"):
        port.start()
    assert xdp_attached(veth.host) == "none"


# ---- MTU ------------------------------------------------------------------------
def test_jumbo_mtu_exact_bytes_both_ways(veth, xdp_on):
    """MTU 3000: 4 KiB UMEM frames; full-size frames both ways."""
    ip("link", "set", veth.host, "mtu", "3000")
    ip("-n", veth.ns, "link", "set", veth.peer, "mtu", "3000")
    port = xdp_on()
    pool = create_pool(256, buf_size=4096 + HEADROOM)
    sizes = [60, 2000, 3014]
    veth.run_peer("send", 9, ",".join(map(str, sizes)), 1000, 0)
    got: list[bytes] = []
    deadline = time.monotonic() + 5
    while len(got) < 9 and time.monotonic() < deadline:
        got += _ours(recv(port, pool, width=4096))
    assert got == [make_packet(k, sizes[k % 3]) for k in range(9)]
    pkts = [make_packet(k, s) for k, s in enumerate([3014, 3015, 1514, 3014])]
    peer = veth.start_peer("recv", 3, 2)
    assert send_all(port, pool, pkts) == 4
    got = [bytes.fromhex(h) for h in veth.peer_result(peer)["packets"]]
    assert got == [pkts[0], pkts[2], pkts[3]]
    assert port.stats().oerrors == 1


def test_mtu_beyond_an_xdp_frame_is_a_port_error(veth):
    ip("link", "set", veth.host, "mtu", "4000")
    fds, maps = _open_fds(), _mappings()
    port = Port(0, parse_vdev(f"net_vf_xdp0,iface={veth.host}"))
    with pytest.raises(PortError, match="MTU 4000 .* does not fit an AF_XDP frame"):
        port.start()
    assert (_open_fds(), _mappings()) == (fds, maps)


def test_mtu_the_netdev_refuses_for_xdp_is_a_port_error(veth):
    """A veth refuses native XDP when its peer's MTU exceeds what fits a page."""
    ip("link", "set", veth.host, "mtu", "3700")
    ip("-n", veth.ns, "link", "set", veth.peer, "mtu", "3700")
    fds, maps = _open_fds(), _mappings()
    port = Port(0, parse_vdev(f"net_vf_xdp0,iface={veth.host}"))
    with pytest.raises(PortError, match=f"{veth.host}.*MTU"):
        port.start()
    assert (_open_fds(), _mappings()) == (fds, maps)
    assert xdp_attached(veth.host) == "none"


# ---- the program's life ----------------------------------------------------------
def test_program_gone_after_stop_and_back_after_start(veth, xdp_on):
    port = xdp_on()
    fds, maps = _open_fds(), _mappings()
    port.stop()
    assert xdp_attached(veth.host) == "none"
    port.start()
    assert xdp_attached(veth.host) == "native"
    pool = create_pool(64)
    veth.run_peer("send", 3, "64", 1000, 0)
    assert [check_packet(p) for p in recv_until(port, pool, 3)] == [0, 1, 2]
    port.stop()
    assert _open_fds() <= fds - 1 and _mappings() < maps  # the started port's fds and rings are gone


_HOLDER = """
import sys, time
from pmd.ethdev import Port
from pmd.vdev import parse_vdev
p = Port(0, parse_vdev('net_vf_xdp0,iface={iface}'))
p.start()
print('ready', flush=True)
time.sleep(60)
"""


def test_sigkill_leaves_no_program_and_a_restart_works(veth, xdp_on):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-c", _HOLDER.format(iface=veth.host)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        assert xdp_attached(veth.host) == "native"
        with pytest.raises(PortError, match="already carries XDP program 'vhostpci_xsk'.*BPF link"):
            xdp_on()  # a live process owns the netdev
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=10)
    deadline = time.monotonic() + 3
    while xdp_attached(veth.host) != "none" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert xdp_attached(veth.host) == "none"
    port = xdp_on()
    pool = create_pool(64)
    veth.run_peer("send", 3, "64", 1000, 0)
    assert [check_packet(p) for p in recv_until(port, pool, 3)] == [0, 1, 2]


def test_stale_program_of_ours_is_removed_at_start(veth, xdp_on, caplog):
    """A program of ours attached without a link (as an older run or a tool
    would leave it) outlives its process: the next start removes it."""
    from pmd.xdp_pmd import bpf, netlink
    from pmd.xdp_pmd import layout as L

    ifindex = socket.if_nametoindex(veth.host)
    map_fd = bpf.create_xskmap(1)
    prog_fd = bpf.load_program(map_fd)
    try:
        netlink.set_xdp_fd(ifindex, prog_fd, L.XDP_FLAGS_DRV_MODE)
    finally:
        os.close(prog_fd)
        os.close(map_fd)
    try:
        assert xdp_attached(veth.host) == "native"  # no fd left: only the netdev holds it
        port = xdp_on()
        assert "removed a stale XDP program 'vhostpci_xsk'" in caplog.text
        pool = create_pool(64)
        veth.run_peer("send", 3, "64", 1000, 0)
        assert [check_packet(p) for p in recv_until(port, pool, 3)] == [0, 1, 2]
    finally:
        if xdp_attached(veth.host) == "native" and not bpf.xdp_links(ifindex):
            netlink.set_xdp_fd(ifindex, -1, L.XDP_FLAGS_DRV_MODE)


def test_foreign_program_is_refused_and_kept(veth):
    from pmd.xdp_pmd import bpf, netlink
    from pmd.xdp_pmd import layout as L

    ifindex = socket.if_nametoindex(veth.host)
    map_fd = bpf.create_xskmap(1)
    prog_fd = bpf.load_program(map_fd, name="someone_else")
    try:
        netlink.set_xdp_fd(ifindex, prog_fd, L.XDP_FLAGS_DRV_MODE)
        port = Port(0, parse_vdev(f"net_vf_xdp0,iface={veth.host}"))
        with pytest.raises(PortError, match="carries XDP program 'someone_else'.*attached by another tool"):
            port.start()
        assert xdp_attached(veth.host) == "native"
    finally:
        netlink.set_xdp_fd(ifindex, -1, L.XDP_FLAGS_DRV_MODE)
        os.close(prog_fd)
        os.close(map_fd)


# ---- errors ---------------------------------------------------------------------
@pytest.fixture
def dummy_iface():
    """An ifb netdev (no native XDP) in the root namespace; always removed."""
    name = f"vfd{os.getpid() % 1000000}"
    ip("link", "add", name, "type", "ifb")
    try:
        ip("link", "set", name, "up")
        yield name
    finally:
        ip("link", "del", name, check=False)


def test_no_native_xdp_is_a_port_error_and_generic_mode_works(dummy_iface, fwd):
    fds, maps = _open_fds(), _mappings()
    bad = fwd.attach_port(f"net_vf_xdp0,iface={dummy_iface}")
    with pytest.raises(PortError, match=f"{dummy_iface} has no native XDP support; xdp_mode=generic"):
        fwd.start_port(bad.port_id)
    fwd.close_port(bad.port_id)
    fwd.detach_port(bad.port_id)
    assert (_open_fds(), _mappings()) == (fds, maps)
    assert xdp_attached(dummy_iface) == "none"
    good = fwd.attach_port(f"net_vf_xdp1,iface={dummy_iface},xdp_mode=generic")
    fwd.start_port(good.port_id)  # the app keeps its other ports
    assert xdp_attached(dummy_iface) == "generic"
    fwd.close_port(good.port_id)
    assert xdp_attached(dummy_iface) == "none"


def test_zero_copy_required_on_a_veth_is_a_port_error(veth):
    port = Port(0, parse_vdev(f"net_vf_xdp0,iface={veth.host},zero_copy=1"))
    with pytest.raises(PortError, match="does not support AF_XDP zero-copy"):
        port.start()
    assert xdp_attached(veth.host) == "none"


def test_permission_denied_is_a_port_error(veth):
    code = (
        "from pmd.ethdev import Port, PortError\nfrom pmd.vdev import parse_vdev\n"
        f"p = Port(0, parse_vdev('net_vf_xdp0,iface={veth.host}'))\n"
        "try:\n    p.start()\nexcept PortError as e:\n    print(e)\n"
    )
    caps = "-net_raw,-net_admin,-bpf,-sys_admin,-perfmon"
    out = subprocess.run(["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", sys.executable, "-c", code],
                         check=False, capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert veth.host in out.stdout and "permission denied" in out.stdout, out.stdout
    assert xdp_attached(veth.host) == "none"


def test_devargs_are_checked():
    from pmd.ethdev import DevargError

    for bad, why in [("ring_size=100", "power of two"), ("xdp_mode=fast", "xdp_mode must be"),
                     ("zero_copy=maybe", "zero_copy must be"), ("queues=0", "queues must be")]:
        with pytest.raises(DevargError, match=why):
            parse_vdev(f"net_vf_xdp0,iface=eth0,{bad}")
    with pytest.raises(PortError, match="iface=<netdev> is required"):
        Port(0, parse_vdev("net_vf_xdp0"))


def test_redirect_program_is_six_instruction_slots():
    """The program the port loads: ctx->rx_queue_index into the XSKMAP,
    XDP_PASS on a miss (struct bpf_insn is 8 bytes)."""
    from pmd.xdp_pmd import bpf

    insns = bpf.redirect_program(7)
    assert len(insns) == 6 * 8
    codes = [insns[k] for k in range(0, len(insns), 8)]
    assert codes == [0x61, 0x18, 0x00, 0xB7, 0x85, 0x95]
    assert struct.unpack_from("<i", insns, 8 + 4)[0] == 7  # the map fd in ld_imm64
    assert struct.unpack_from("<i", insns, 4 * 8 + 4)[0] == bpf.FUNC_REDIRECT_MAP
