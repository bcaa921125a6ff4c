"""The net_vf port on a veth pair: exact bytes both ways, sustained load with
no loss, oversize frames, start errors that leak nothing, and forwarding
through the runtime.  The tests marked BOTH_VF_PORTS run on the AF_XDP port
(net_vf_xdp) too; its own tests are in test_xdp_port.py."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pmd.ethdev import Port, PortError
from pmd.vdev import parse_vdev
from pmd.mbuf import create_pool
from tests.vf.conftest import send_all
from tests.vf.ns_peer import ETHERTYPE, check_packet, make_packet
from tests.vhostpci.peer_io import recv, send

pytestmark = pytest.mark.usefixtures("compiled_vf")
BOTH_VF_PORTS = pytest.mark.parametrize("kind", ["net_vf", "net_vf_xdp"])


def _ours(pkts):
    return [p for p in pkts if p[12:14] == ETHERTYPE]


def recv_until(port, pool, count: int, timeout: float = 5.0, queues=(0,)) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        for q in queues:
            got += _ours(recv(port, pool, queue=q))
    return got


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _promiscuity(iface: str) -> int:
    out = subprocess.run(["ip", "-d", "link", "show", iface], capture_output=True, text=True, check=True).stdout
    return int(out.split("promiscuity ")[1].split()[0])


def _mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


@BOTH_VF_PORTS
def test_rx_from_namespace_exact_bytes(veth, port_on, kind):
    port = port_on(kind=kind)
    pool = create_pool(512)
    sizes = [60, 64, 128, 1000, 1514]
    assert veth.run_peer("send", 40, ",".join(map(str, sizes)), 2000, 100) == {"sent": 40}
    got = recv_until(port, pool, 40)
    assert got == [make_packet(100 + k, sizes[(100 + k) % len(sizes)]) for k in range(40)]
    st = port.stats()
    assert st.ipackets >= 40 and st.ierrors == 0 and st.imissed == 0
    assert pool.available() == pool.size


def test_rx_vlan_tag_stripped_by_the_kernel_is_put_back(veth, port_on):
    port = port_on()
    pool = create_pool(64)
    dst, src = bytes.fromhex("020000000009"), bytes.fromhex("02000000000a")
    frames = [dst + src + bytes.fromhex("8100" "2064") + ETHERTYPE + bytes(range(60)),
              dst + src + bytes.fromhex("88a8" "0005" "8100" "0007") + ETHERTYPE + bytes(range(40))]
    veth.run_peer("sendhex", *(f.hex() for f in frames))
    got: list[bytes] = []
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        got += [p for p in recv(port, pool) if p[:6] == dst]
    assert got == frames
    assert port.driver.xstats()["rx_vlan_reinserted"] == 2


@BOTH_VF_PORTS
def test_tx_to_namespace_exact_bytes(veth, port_on, kind):
    port = port_on(kind=kind)
    pool = create_pool(512)
    # 100 frames in one burst: more than AF_XDP's copy mode sends per wakeup
    pkts = [make_packet(k, size) for k, size in enumerate([60, 61, 64, 100, 512, 1513, 1514] * 14 + [77, 99])]
    peer = veth.start_peer("recv", len(pkts), 5)
    assert send_all(port, pool, pkts) == len(pkts)
    got = [bytes.fromhex(h) for h in veth.peer_result(peer)["packets"]]
    assert got == pkts
    st = port.stats()
    assert (st.opackets, st.obytes, st.oerrors) == (len(pkts), sum(map(len, pkts)), 0)
    assert pool.available() == pool.size


RATE_PPS = 10_000  # each direction; the Python peer in the namespace is the limit
LOAD_S = 3
SIZE = 256
# Rings sized to ride out multi-second scheduling stalls on a loaded test box
# (a retired-by-timer block holds only a few ms of traffic at these rates).
BIG_RX = ",blocksize=65536,blocks=1024"


def test_both_directions_under_load_no_loss(veth, port_on):
    port = port_on(BIG_RX)
    pool = create_pool(2048)
    count = RATE_PPS * LOAD_S
    peer = veth.start_peer("both", count, SIZE, RATE_PPS, 5)
    pkts = [make_packet(k, SIZE) for k in range(count)]
    seen: set[int] = set()
    bad = 0
    burst = 32
    sent = 0
    t0 = time.perf_counter()
    deadline = time.monotonic() + LOAD_S + 8
    while (sent < count or len(seen) < count) and time.monotonic() < deadline:
        if sent < count and time.perf_counter() >= t0 + sent / RATE_PPS:
            sent += send(port, pool, pkts[sent:sent + burst])
        for p in _ours(recv(port, pool, nb=128)):
            seq = check_packet(p)
            if seq < 0 or len(p) != SIZE:
                bad += 1
            else:
                seen.add(seq)
    elapsed = time.perf_counter() - t0
    res = veth.peer_result(peer)
    # namespace -> port
    assert bad == 0 and len(seen) == count and max(seen) == count - 1, (bad, count - len(seen))
    # port -> namespace
    assert res == {"sent": count, "received": count, "bad": 0, "dup": 0, "missing": 0, "out_of_range": 0}
    st = port.stats()
    assert st.opackets == count and st.oerrors == 0 and st.imissed == 0
    assert pool.available() == pool.size
    print(f"\n{count} x {SIZE} B each way at {RATE_PPS} pps in {elapsed:.2f} s, no loss")


@BOTH_VF_PORTS
def test_oversize_frame_counted_not_sent(veth, port_on, kind):
    subprocess.run(["ip", "link", "set", veth.host, "mtu", "1000"], check=True)
    port = port_on(kind=kind)
    pool = create_pool(64)
    ok, big = make_packet(1, 1014), make_packet(2, 1015)
    peer = veth.start_peer("recv", 2, 0.7)
    assert send_all(port, pool, [big, ok, big]) == 3  # taken: the oversize ones are dropped
    got = [bytes.fromhex(h) for h in veth.peer_result(peer)["packets"]]
    assert got == [ok]
    st = port.stats()
    assert (st.opackets, st.obytes, st.oerrors) == (1, 1014, 2)
    assert port.driver.xstats()["tx_too_big"] == 2
    assert pool.available() == pool.size


@BOTH_VF_PORTS
def test_missing_interface_is_a_port_error_and_leaks_nothing(kind):
    fds, maps = _open_fds(), _mappings()
    port = Port(0, parse_vdev(f"{kind}0,iface=vfnosuch0"))
    with pytest.raises(PortError, match="vfnosuch0 does not exist"):
        port.start()
    assert not port.started
    port.close()
    assert (_open_fds(), _mappings()) == (fds, maps)


def test_failure_half_way_through_start_leaks_nothing(veth, monkeypatch):
    from pmd.vf_pmd import netdev

    def refuse(*args, **kw):
        raise OSError(105, "No buffer space available")

    monkeypatch.setattr(netdev, "tx_socket", refuse)  # after the rx sockets and both ring areas
    fds, maps = _open_fds(), _mappings()
    port = Port(0, parse_vdev(f"net_vf0,iface={veth.host},queues=2"))
    with pytest.raises(PortError, match=f"{veth.host}.*No buffer space"):
        port.start()
    assert (_open_fds(), _mappings()) == (fds, maps)
    assert _promiscuity(veth.host) == 0
    with pytest.raises(PortError, match="not started"):
        port.kernel_state()


def test_interface_down_is_a_port_error_and_link_is_live(veth, port_on):
    veth.set_host_up(False)
    fds, maps = _open_fds(), _mappings()
    port = Port(0, parse_vdev(f"net_vf0,iface={veth.host}"))
    with pytest.raises(PortError, match=f"{veth.host} is down"):
        port.start()
    assert not port.link().up
    assert (_open_fds(), _mappings()) == (fds, maps)
    veth.set_host_up(True)
    deadline = time.monotonic() + 3
    while not port.link().up and time.monotonic() < deadline:
        time.sleep(0.02)
    port.start()  # the same Port works once the interface is up
    assert _promiscuity(veth.host) == 1
    address = Path(f"/sys/class/net/{veth.host}/address").read_text().strip()
    assert port.link().up and port.mac() == bytes.fromhex(address.replace(":", ""))
    veth.set_host_up(False)
    assert not port.link().up
    port.close()
    assert (_open_fds(), _mappings()) == (fds, maps)
    assert _promiscuity(veth.host) == 0


def test_permission_denied_is_a_port_error(veth):
    code = (
        "import sys; sys.path.insert(0, '.')\n"
        "from pmd.ethdev import Port, PortError\nfrom pmd.vdev import parse_vdev\n"
        f"p = Port(0, parse_vdev('net_vf0,iface={veth.host}'))\n"
        "try:\n    p.start()\nexcept PortError as e:\n    print(e)\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw", sys.executable, "-c", code],
                         check=False, capture_output=True, text=True, timeout=30, cwd=root)
    assert out.returncode == 0, out.stderr
    assert veth.host in out.stdout and "permission denied" in out.stdout, out.stdout


def test_other_ports_survive_a_failed_vf_port(veth, fwd):
    fds, maps = _open_fds(), _mappings()
    bad = fwd.attach_port("net_vf0,iface=vfnosuch1")
    good = fwd.attach_port(f"net_vf1,iface={veth.host}")
    with pytest.raises(PortError, match="vfnosuch1"):
        fwd.start_port(bad.port_id)
    fwd.close_port(bad.port_id)
    fwd.detach_port(bad.port_id)
    assert (_open_fds(), _mappings()) == (fds, maps)
    fwd.start_port(good.port_id)
    veth.run_peer("send", 3, "64", 1000, 0)
    got = recv_until(good, fwd.pool, 3)
    assert [check_packet(p) for p in got] == [0, 1, 2]


def test_multiqueue_fanout_receives_everything(veth, port_on):
    port = port_on(",queues=2")
    assert (port.nb_rxq, port.nb_txq) == (2, 2)
    pool = create_pool(512)
    veth.run_peer("send", 50, "100", 5000, 0)
    got = recv_until(port, pool, 50, queues=(0, 1))
    assert sorted(check_packet(p) for p in got) == list(range(50))
    peer = veth.start_peer("recv", 2, 3)
    assert send(port, pool, [make_packet(7, 80)], queue=1) == 1
    assert send(port, pool, [make_packet(8, 80)], queue=0) == 1
    got = [bytes.fromhex(h) for h in veth.peer_result(peer)["packets"]]
    assert sorted(got) == sorted([make_packet(7, 80), make_packet(8, 80)])
    # what the port sent is not received back by its own queues (the fanout group ignores outgoing frames)
    assert recv_until(port, pool, 1, timeout=0.5, queues=(0, 1)) == []


@BOTH_VF_PORTS
def test_io_forwarding_loops_namespace_traffic_back(veth, fwd, kind, request):
    if kind == "net_vf_xdp":
        request.getfixturevalue("compiled_xdp")
    port = fwd.attach_port(f"{kind}0,iface={veth.host}{BIG_RX if kind == 'net_vf' else ''}")
    port.start()
    fwd.config.mode = "io"
    fwd.start()
    count = 10_000
    try:
        res = veth.run_peer("both", count, 512, 10_000, 5)
    finally:
        stats = fwd.stop()
    assert res == {"sent": count, "received": count, "bad": 0, "dup": 0, "missing": 0, "out_of_range": 0}
    assert stats[port.port_id]["rx"] == stats[port.port_id]["tx"] >= count
    assert stats[port.port_id]["dropped"] == 0


def _udp_checksum_ok(frame: bytes) -> bool:
    """IPv4/UDP checksum of an Ethernet frame verifies (pseudo-header included)."""
    import struct
    ip = frame[14:]
    ihl = (ip[0] & 0xF) * 4
    length = struct.unpack("!H", ip[2:4])[0]
    udp = ip[ihl:length]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    data = pseudo + udp + (b"\0" if len(udp) % 2 else b"")
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def test_rx_completes_checksums_a_local_sender_left_to_the_nic(veth, port_on):
    """A UDP socket in the namespace sends over the veth with its checksum left
    to "hardware" (TP_STATUS_CSUMNOTREADY): the port finishes it, so a VM
    behind it does not drop every such datagram as corrupt."""
    port = port_on()
    pool = create_pool(512)
    dst = f"10.99.{veth.subnet}.2"
    subprocess.run(["ip", "-n", veth.ns, "neigh", "replace", dst, "lladdr", "02:00:00:00:00:02", "dev", veth.peer,
                    "nud", "permanent"], check=True)
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for i in range(10): s.sendto(b'partial %d ' % i + b'x' * (100 + i), ('{dst}', 9999))")
    subprocess.run(["ip", "netns", "exec", veth.ns, sys.executable, "-c", code], check=True, timeout=30)
    got: list[bytes] = []
    deadline = time.monotonic() + 5
    while len(got) < 10 and time.monotonic() < deadline:
        got += [p for p in recv(port, pool) if p[12:14] == b"\x08\x00" and p[23] == 17]
    assert len(got) == 10
    assert all(_udp_checksum_ok(p) for p in got)
    assert port.driver.xstats()["rx_csum_completed"] == 10


def test_complete_partial_l4_checksum_kernel():
    """UDP/IPv4, TCP/IPv6 and VLAN-tagged frames whose L4 checksum field holds
    the pseudo-header sum come out with the full checksum; others untouched."""
    import struct

    import numpy as np

    from pmd.csum import complete_partial_l4_checksum, inet_checksum

    def fold(data: bytes) -> int:
        data += b"\0" * (len(data) % 2)
        total = sum(struct.unpack(f"!{len(data) // 2}H", data))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return total

    def frame(v6: bool, proto: int, vlan: bool, payload: bytes) -> tuple[bytes, int, int]:
        l4 = (struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0) if proto == 17
              else struct.pack("!HHIIBBHHH", 1000, 2000, 1, 0, 0x50, 0x18, 512, 0, 0)) + payload
        if v6:
            src, dst = bytes(range(16)), bytes(range(16, 32))
            l3 = struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + src + dst
            pseudo = src + dst + struct.pack("!IxxxB", len(l4), proto)
        else:
            src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
            l3 = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0) + src + dst
            pseudo = src + dst + struct.pack("!BBH", 0, proto, len(l4))
        field = 6 if proto == 17 else 16
        full = ~fold(pseudo + l4) & 0xFFFF
        partial = fold(pseudo)  # what CHECKSUM_PARTIAL leaves in the field
        eth = bytes(12) + (b"\x81\x00\x00\x05" if vlan else b"") + (b"\x86\xdd" if v6 else b"\x08\x00")
        off = len(eth) + len(l3) + field
        put = lambda v: eth + l3 + l4[:field] + struct.pack("!H", v) + l4[field + 2:]
        return put(partial), off, full or 0xFFFF

    for v6, proto, vlan in [(False, 17, False), (True, 6, False), (False, 6, True), (True, 17, True)]:
        pkt, off, want = frame(v6, proto, vlan, b"hello, partial checksum!" * 3)
        buf = np.zeros(4096, np.uint8)
        buf[100:100 + len(pkt)] = np.frombuffer(pkt, np.uint8)
        assert complete_partial_l4_checksum(buf, 100, len(pkt))
        assert int(buf[100 + off]) << 8 | int(buf[100 + off + 1]) == want, (v6, proto, vlan)
    arp = np.zeros(64, np.uint8)
    arp[12:14] = (0x08, 0x06)
    assert not complete_partial_l4_checksum(arp, 0, 60)
    assert inet_checksum(np.frombuffer(b"\x45\x00\x00\x1c", np.uint8), 0, 4) == ~(0x4500 + 0x001c) & 0xFFFF


def test_idle_lcore_sleeps_with_a_vf_and_a_vhost_pci_port_without_front_end(veth, fwd):
    """The VM-to-VM demo's layout (net_vf <-> net_vhost_pci on one lcore)
    before any VM1 connects: nothing to poll, so the lcore sleeps (the VF on
    its AF_PACKET socket, the vhost-pci port on its start fd) at ~0% CPU,
    and frames arriving on the VF wake it."""
    import shutil
    import tempfile

    from pmd.lcore.control import LC_WAKEUPS
    from tests.util import thread_cpu_percent, wait_until

    d = tempfile.mkdtemp(prefix="vfidle", dir="/tmp")
    try:
        vf = fwd.attach_port(f"net_vf0,iface={veth.host}")
        vp = fwd.attach_port(f"net_vhost_pci1,path={d}/vp.sock")
        vf.start()
        vp.start()
        fwd.config.mode = "io"
        fwd.start()
        assert fwd.sleepy_lcores() == [1]
        assert wait_until(lambda: fwd.lcores.sleeping(1), 3.0), "the lcore never went to sleep"
        cpu = thread_cpu_percent(fwd.lcores.thread_id(1), 2.0)
        ctl = fwd.lcores.ctl(1)
        wakeups = int(ctl[LC_WAKEUPS])
        veth.run_peer("send", 50, "128", 1000, 0)
        assert wait_until(lambda: vf.stats().ipackets >= 50, 3.0), vf.stats()
        print(f"\n[idle] lcore CPU with net_vf + net_vhost_pci and no VM1: {cpu:.1f}%; "
              f"wake-ups for 50 frames: {int(ctl[LC_WAKEUPS]) - wakeups}")
        assert cpu < 5.0, cpu
        assert int(ctl[LC_WAKEUPS]) > wakeups
        stats = fwd.stop()
        assert stats[vf.port_id]["rx"] == 50  # forwarded to a port with no link: counted as dropped there
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_send_rarp_announces_vm1_out_of_the_vf(veth, fwd):
    """After a migration VM1's front-end sends SEND_RARP: the port hands a
    RARP broadcast for VM1's MAC to the forwarding engine, which carries it
    out of the VF into the network (here: the namespace), counted in xstats."""
    import shutil
    import tempfile

    from pmd.vhostpci_pmd.announce import rarp_frame
    from pmd.vhost_user.messages import FrontendReq
    from tests.util import wait_until

    d = tempfile.mkdtemp(prefix="vfrarp", dir="/tmp")
    vm1 = None
    try:
        vp = fwd.attach_port(f"net_vhost_pci0,path={d}/vp.sock")
        vf = fwd.attach_port(f"net_vf1,iface={veth.host}")
        vp.start()
        vf.start()
        fwd.config.mode = "io"
        fwd.start()
        vm1 = Port(9, parse_vdev(f"net_virtio_user9,path={d}/vp.sock"))
        vm1.start()
        assert vm1.driver.wait_link(True, 10)
        peer = veth.start_peer("recvtype", "8035", 2, 10)
        vm1.driver.announce()
        vm1.driver.announce()  # QEMU announces a few times
        got = veth.peer_result(peer)["packets"]
        assert got == [rarp_frame(vm1.mac()).hex()] * 2, got
        xs = vp.driver.xstats()
        assert (xs["rarp_announcements"], xs["rarp_requests"]) == (2, 2), xs
        assert FrontendReq.SEND_RARP in vp.driver.server.session.history
        assert wait_until(lambda: vf.stats().opackets >= 2, 2.0)
    finally:
        if vm1 is not None:
            vm1.close()
        shutil.rmtree(d, ignore_errors=True)
