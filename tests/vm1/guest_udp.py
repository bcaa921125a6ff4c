"""The guest side of the real-VM1 UDP exchanges: VM1 built for a test, and
what its scenarios report about the datagrams they received."""
from __future__ import annotations

import re

from tests.vm1.conftest import NS_IP, VM1_IP, VM1_MAC

GUEST_UDP, NS_UDP_PORT = 9001, 9000

# The guest's view of what it received on GUEST_UDP: datagrams the kernel
# delivered, checksum errors (a stale or torn page fails the UDP checksum),
# lines of the ns_udp.py form "ns SEQ xxx", and unique lines.
REPORT = r'''
report_rx() {
    marker "udp_rx datagrams=$(snmp Udp InDatagrams) csum_errors=$(snmp Udp InCsumErrors)" \
        "rcvbuf_errors=$(snmp Udp RcvbufErrors) lines=$(grep -c . /tmp/rx)" \
        "good=$(grep -c '^ns [0-9]* x*$' /tmp/rx) unique=$(sort -u /tmp/rx | grep -c .)" \
        "(eth0 rx $(nstat rx_packets) dropped $(nstat rx_dropped) errors $(nstat rx_errors);" \
        "ip in $(snmp Ip InReceives) discards $(snmp Ip InDiscards) hdr_errors $(snmp Ip InHdrErrors);" \
        "udp no_ports $(snmp Udp NoPorts) in_errors $(snmp Udp InErrors))"
}
'''

RX_REPORT = re.compile(r"VM1: udp_rx datagrams=(\d+) csum_errors=(\d+) rcvbuf_errors=(\d+) lines=(\d+) "
                       r"good=(\d+) unique=(\d+) ")


# The rest of report_rx's line: where the guest's own stack counted frames.
GUEST_STACK = re.compile(r"\(eth0 rx (\d+) dropped (\d+) errors (\d+); ip in (\d+) discards (\d+) hdr_errors (\d+); "
                         r"udp no_ports (\d+) in_errors (\d+)\)")


def rx_report(m: re.Match) -> dict[str, int]:
    keys = ("datagrams", "csum_errors", "rcvbuf_errors", "lines", "good", "unique")
    return dict(zip(keys, map(int, m.groups())))


def stack_report(m: re.Match) -> dict[str, int]:
    """GUEST_STACK's counters by name."""
    keys = ("eth0_rx", "eth0_dropped", "eth0_errors", "ip_in", "ip_discards", "ip_hdr_errors",
            "udp_no_ports", "udp_in_errors")
    return dict(zip(keys, map(int, m.groups())))


def make_vm1(image, vm2, workdir, script: str, qemu, **kw):
    """VM1 on QEMU ``qemu`` (the parametrized fixture: 7.2 with INTx, 10.0 with MSI-X)."""
    from tools.guest import Vm1
    workdir.mkdir(parents=True, exist_ok=True)
    initrd = image.with_scenario(script, dest_dir=workdir)
    return Vm1(image, vm2.sock, workdir=workdir, initrd=initrd, mac=VM1_MAC, ip=f"{VM1_IP}/24", peer=NS_IP,
               peer_mac=vm2.ns_mac, guest_timeout=400, qemu=qemu, **kw)


