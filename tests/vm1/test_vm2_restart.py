"""VM2 killed and started again under a live guest (slow): how an operator
upgrades or restarts the vhost-user back-end without touching VM1.

QEMU owns the socket (chardev ``server=on,wait=off``: it listens again as
soon as a back-end is gone) and VM2 is ``vhostpci-fwd`` in a child process
with ``net_vhost_pci0,path=SOCK,client=1`` (it connects, and would retry with
back-off).  While the namespace sends sequence-numbered datagrams to the
guest (100/s) and the guest sends its own to the namespace (as fast as one
nc.openbsd per datagram goes), VM2 is SIGKILLed and a new one started at
once.  QEMU notices the hang-up, stops the rings (taking last_avail_idx from
the guest's used->idx) and sets the guest's link down; the new VM2 connects,
QEMU replays the set-up, the rings start from where the guest is and the
link comes back.

What must hold, both ways: no datagram twice, none damaged, and the ones lost
are one run inside the outage (from a little before the kill, for what VM2
held in flight, to when the new VM2 forwarded again); after it everything
arrives.  Namespace -> guest: the sender's clock places each datagram.
Guest -> namespace: the namespace notes when each datagram arrived; the
lost ones lie between one the old VM2 delivered before the kill and one the
new VM2 delivered (QEMU drops what the guest queues between the kill and
the guest's link going down, and while it is down; the guest notes which it
sent with the link down, for the report).
"""
from __future__ import annotations

import json
import re
import time

import pytest

from tests.util import qemu_or_skip
from tests.vm1.conftest import BOOT_TIMEOUT, VM1_IP, missing_part
from tests.vm1.guest_udp import (
    GUEST_UDP,
    NS_UDP_PORT,
    REPORT,
    RX_REPORT,
    make_vm1,
    rx_report,
)
from tests.vm1.vm2_app import Vm2App

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing_part() is not None, reason=str(missing_part()))]

RATE, COUNT = 100, 1600  # namespace -> guest: 16 s of traffic
KILL_AFTER = 5.0  # s of traffic before the kill
SLACK = 0.5  # s: what VM2 held when killed was sent this long before at most (TCG, loaded machine)

# The guest receives on GUEST_UDP and sends to the namespace until the
# namespace's last datagram arrived (at most TX_MAX), noting each one it sent
# while eth0 had no carrier; then reports what it got, with the gaps.
RESTART_GUEST = r'''
udp_recv {guest_port} /tmp/rx
marker "udp_rx ready"
: > /tmp/down
_i=1
while [ "$_i" -le {tx_max} ] && ! tail -n 1 /tmp/rx | grep -q "^ns {last} "; do
    [ "$(cat /sys/class/net/eth0/carrier)" = 1 ] || echo "$_i" >> /tmp/down
    udp_send_one "$VM1_PEER" {ns_port} "$_i" 64
    _i=$((_i + 1))
done
marker "udp_tx sent=$((_i - 1)) down=$(tr '\n' ' ' < /tmp/down)"
_n=0
while [ "$(snmp Udp InDatagrams)" -lt {count} ] && [ "$_n" -lt 30 ]; do usleep 100000; _n=$((_n + 1)); done
marker "ns_gaps $(sed -n 's/^ns \([0-9]*\) .*/\1/p' /tmp/rx | sort -n -u | awk -v last={last} \
    'BEGIN {{e = 0}} {{if ($1 > e) printf "%d-%d ", e, $1 - 1; e = $1 + 1}} END {{if (e <= last) printf "%d-%d ", e, last}}')"
report_rx
'''


def _ranges(text: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(r"(\d+)-(\d+)", text)]


# Both QEMUs, and behind a strict intel-iommu on 10.0 (7.2 behaves the same
# there; left out to keep the suite's time down).
CASES = [("10.0", None), ("10.0", "intel"), ("7.2", None)]


@pytest.mark.parametrize(("series", "iommu"), CASES,
                         ids=[f"qemu-{s}-{'intel-strict' if i else 'no-iommu'}" for s, i in CASES])
def test_vm2_killed_and_restarted_under_a_live_guest(wire, image61, workdir, capsys, series, iommu):
    qemu = qemu_or_skip(series)
    script = REPORT + RESTART_GUEST.format(guest_port=GUEST_UDP, ns_port=NS_UDP_PORT, tx_max=2000,
                                           last=COUNT - 1, count=COUNT)
    app = Vm2App(wire.sock, wire.wire.host, workdir / "vm2.log")
    ns_rx = wire.udp_receiver(NS_UDP_PORT)
    vm = make_vm1(image61, wire, workdir / "vm1", script, qemu, server=True, iommu=iommu)
    try:
        vm.start()  # QEMU listens; its start-up waits for the first back-end
        app.start()
        vm.wait_console(r"VM1: udp_rx ready", BOOT_TIMEOUT)
        sender = wire.ns_popen("send", VM1_IP, str(GUEST_UDP), str(COUNT), str(RATE), "64")
        assert app.wait_forwarding(30) is not None, "the first VM2 never wrote into VM1"
        time.sleep(KILL_AFTER)
        before = app.port_counts()
        t_kill = app.kill()
        app.start()
        t_up = app.wait_forwarding(60)
        assert t_up is not None, f"the restarted VM2 never wrote into VM1 (log: {app.log})"
        out, _ = sender.communicate(timeout=120)
        sent = json.loads(out.strip().splitlines()[-1])
        tx = vm.wait_console(r"VM1: udp_tx sent=(\d+) down=([\d ]*)\r?\n", 300)
        ns_gaps = _ranges(vm.wait_console(r"VM1: ns_gaps ([\d -]*)\r?\n", 60).group(1))
        got = rx_report(vm.wait_console(RX_REPORT, 60))
        vm.wait_console(r"VM1: done", 60)
        after = app.port_counts()
    finally:
        vm.stop()
        app.close()
    ours = ns_rx.result()
    outage = t_up - t_kill
    assert sent["sent"] == COUNT, sent

    # namespace -> guest: nothing twice or damaged; one run lost, inside the outage
    assert got["csum_errors"] == got["rcvbuf_errors"] == 0 and got["good"] == got["lines"] == got["unique"], got
    lost_in = sum(b - a + 1 for a, b in ns_gaps)
    assert got["unique"] + lost_in == COUNT, (got, ns_gaps)
    assert len(ns_gaps) <= 1, f"datagrams lost outside one outage: {ns_gaps}"
    for a, b in ns_gaps:
        first_t, last_t = sent["t0"] + sent["t"][a] / 1000, sent["t0"] + sent["t"][b] / 1000  # as sent, not as due
        assert t_kill - SLACK <= first_t and last_t <= t_up + SLACK, \
            (f"lost {a}-{b} sent at {first_t - t_kill:+.2f}..{last_t - t_kill:+.2f} s from the kill, "
             f"VM2 forwarded again at {outage:+.2f} s")

    # guest -> namespace: nothing twice or damaged; lost: one run between a datagram the old VM2
    # delivered and one the new VM2 delivered.  QEMU drops (marks used, unsent) what the guest
    # queues between the kill and the guest's link going down, and while it is down.
    n_tx = int(tx.group(1))
    down = [int(s) for s in tx.group(2).split()]
    arrived = dict(ours["arrived"])
    assert ours["bad"] == ours["duplicates"] == 0, ours
    assert (ours["first"], ours["last"]) == (1, n_tx), ours  # the first and the last got through
    assert len(ours["gaps"]) <= 1, f"guest datagrams lost outside one outage: {ours['gaps']}"
    lost_out = sum(b - a + 1 for a, b in ours["gaps"])
    for a, b in ours["gaps"]:
        assert arrived[a - 1] <= t_kill + SLACK and arrived[b + 1] >= t_up - SLACK, \
            (f"lost {a}-{b}, between {a - 1} (arrived {arrived[a - 1] - t_kill:+.2f} s from the kill) and "
             f"{b + 1} (arrived {arrived[b + 1] - t_kill:+.2f} s); VM2 forwarded again at {outage:+.2f} s")

    with capsys.disabled():
        print(f"\n[{qemu.label}, VM2 restart, {iommu or 'no'} iommu] outage {outage:.2f} s (SIGKILL -> the new "
              f"VM2 writes into VM1); namespace -> guest: {lost_in} of {COUNT} lost ({lost_in / RATE:.2f} s at "
              f"{RATE}/s), ranges {ns_gaps}; guest -> namespace: {lost_out} of {n_tx} lost {ours['gaps']}, "
              f"{len(down)} sent with the link down; no duplicates; VM2 port counts before the kill {before}, "
              f"the new one's {after}")
