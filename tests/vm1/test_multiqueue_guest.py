"""A multi-queue guest (slow; QEMU 10.0: a multi-queue virtio-net needs
MSI-X, which QEMU 7.2 cannot give a vhost-user NIC under TCG).

VM1's NIC has two queue pairs (``queues=2`` on the netdev, ``mq=on,vectors=6``
on the device) and the guest enables both (``ethtool -L eth0 combined 2``);
VM2's ports have two queues each (``net_vhost_pci0,...,queues=2`` <-io->
``net_vf0,...,queues=2``, the VF spreading flows over its queues by hash).
Traffic runs both ways on many flows, so both pairs carry some: the guest
picks a transmit queue per socket (one per datagram here), VM2's VF queue
(and so the guest's receive queue) follows the flow's hash.  Every datagram
arrives intact once, and each queue's count is exact: what the guest sent on
transmit queue q is what the port received on rx queue q, what the port
wrote into receive queue q is what the guest received there (ethtool -S).
"""
from __future__ import annotations

import re

import pytest

from tests.util import qemu_or_skip
from tests.vm1.conftest import BOOT_TIMEOUT, missing_part, port_up
from tests.vm1.guest_udp import GUEST_UDP, NS_UDP_PORT, REPORT, RX_REPORT, make_vm1, rx_report, undelivered

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing_part() is not None, reason=str(missing_part()))]

QUEUES = 2
FLOWS = 32  # namespace -> guest: destination ports; P(all on one queue) = 2^-31
TX, RX = 64, 320  # guest -> namespace datagrams (each from its own socket), namespace -> guest

# IPv6 off first: its router solicitations and MLD reports would come at
# any time; after it, the guest sends only the test's datagrams.
MQ_GUEST = r'''
echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6
ethtool -L eth0 combined {queues} 2>&1 | head -3
marker "combined $(ethtool -l eth0 | awk '/^Combined:/ {{c = $2}} END {{print c}}')"
_p=0
while [ "$_p" -lt {flows} ]; do udp_recv $(({guest_port} + _p)) /tmp/rx.$_p; _p=$((_p + 1)); done
marker "udp_rx ready"
_i=1
while [ "$_i" -le {tx} ]; do udp_send_one "$VM1_PEER" {ns_port} "$_i" 64 $((40000 + _i)); _i=$((_i + 1)); done
marker "udp_tx done"
_n=0
while [ "$(snmp Udp InDatagrams)" -lt {rx} ] && [ "$_n" -lt 600 ]; do usleep 100000; _n=$((_n + 1)); done
marker "queues $(ethtool -S eth0 | awk '$1 ~ /^[rt]x_queue_[0-9]+_packets:$/ {{printf "%s%s ", $1, $2}}')"
cat /tmp/rx.* > /tmp/rx
report_rx
'''


def test_two_queue_pairs_each_carry_traffic_with_exact_counts(vm2_mq, image61, workdir, capsys):
    qemu = qemu_or_skip("10.0")
    vm2 = vm2_mq
    script = REPORT + MQ_GUEST.format(queues=QUEUES, flows=FLOWS, guest_port=GUEST_UDP, ns_port=NS_UDP_PORT,
                                      tx=TX, rx=RX)
    ns_rx = vm2.udp_receiver(NS_UDP_PORT)
    with make_vm1(image61, vm2, workdir, script, qemu, queues=QUEUES) as vm:
        vm.start()
        assert int(vm.wait_console(r"VM1: combined (\d+)\s", BOOT_TIMEOUT).group(1)) == QUEUES, vm.console()[-2000:]
        assert port_up(vm2, 60)
        assert vm2.vp.driver.info()["rings ready"] == 2 * QUEUES
        vm.wait_console(r"VM1: udp_rx ready", 120)
        sent = vm2.udp_send(GUEST_UDP, RX, rate=100, ports=FLOWS)
        assert sent["sent"] == RX, sent
        vm.wait_console(r"VM1: udp_tx done", 300)
        m = vm.wait_console(r"VM1: queues (.*)\r?\n", 120)
        got = rx_report(vm.wait_console(RX_REPORT, 60))
        per_q = [dict(r) for r in vm2.vp.stats().per_queue]  # the guest sends nothing after its ethtool -S
        vm.wait_console(r"VM1: done", 60)
        assert vm.wait(30) == 0
    guest = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", m.group(1))}
    ours = ns_rx.result()
    assert (ours["unique"], ours["bad"], ours["duplicates"]) == (TX, 0, 0), ours
    assert undelivered(got, RX) is None, undelivered(got, RX)
    for q in range(QUEUES):
        # guest transmit queue q -> the port's rx queue q; the port's tx queue q -> guest receive queue q
        assert guest[f"tx_queue_{q}_packets"] == per_q[q]["ipackets"] > 0, (guest, per_q)
        assert guest[f"rx_queue_{q}_packets"] == per_q[q]["opackets"] > 0, (guest, per_q)
    assert sum(r["ipackets"] for r in per_q) >= TX and sum(r["opackets"] for r in per_q) == RX, per_q
    st = vm2.vp.stats()
    assert st.ierrors == st.oerrors == 0, st
    with capsys.disabled():
        print(f"\n[{qemu.label}, {QUEUES} queue pairs] guest -> port per queue "
              f"{[r['ipackets'] for r in per_q]} ({TX} datagrams from {TX} sockets), port -> guest per queue "
              f"{[r['opackets'] for r in per_q]} ({RX} datagrams on {FLOWS} flows); all intact, counts equal "
              "on both sides")
