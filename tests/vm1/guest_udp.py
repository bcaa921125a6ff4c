"""The guest side of the real-VM1 UDP exchanges: VM1 built for a test, and
what its scenarios report about the datagrams they received."""
from __future__ import annotations

import re

from tests.vm1.conftest import NS_IP, VM1_IP, VM1_MAC

GUEST_UDP, NS_UDP_PORT = 9001, 9000

# The guest's view of what it received on GUEST_UDP: datagrams the kernel
# delivered, checksum errors (a stale or torn page fails the UDP checksum),
# lines of the ns_udp.py form "ns SEQ xxx", and unique lines.
#
# Its sockets get 8 MiB receive buffers: a TCG guest on a busy 2-core host may
# read late, and a full buffer (RcvbufErrors) is the guest's own drop.
REPORT = r'''
echo 8388608 > /proc/sys/net/core/rmem_max
echo 8388608 > /proc/sys/net/core/rmem_default
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


def undelivered(got: dict[str, int], count: int) -> str | None:
    """Why ``got`` (``rx_report``) breaks the port's promise for ``count``
    datagrams sent to the guest, or None.  The promise: each one reached the
    guest's stack intact, once.  Those the guest's own socket had no room for
    (RcvbufErrors) reached it too: counted apart, never hidden."""
    if got["csum_errors"] != 0:
        return f"{got['csum_errors']} datagram(s) failed the UDP checksum: {got}"
    if got["datagrams"] + got["rcvbuf_errors"] != count:
        return f"{count - got['datagrams'] - got['rcvbuf_errors']} of {count} datagram(s) never reached the guest: {got}"
    if not got["good"] == got["lines"] == got["unique"] == got["datagrams"]:
        return f"damaged or duplicate datagrams: {got}"
    return None


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


