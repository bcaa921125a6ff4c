"""Text blocks printed by testpmd: NIC statistics, forward statistics, port
info and the forwarding configuration, laid out as DPDK's testpmd does."""
from __future__ import annotations

from collections.abc import Callable

from pmd import xstats
from pmd.ethdev import Port, format_mac
from pmd.fwd.runtime import StreamInfo, peer_mac
from pmd.rates import RateTracker

_RULE = 76


def _banner(fill: str, title: str) -> str:
    side = (_RULE - len(title) - 2) // 2
    return f"  {fill * side} {title} {fill * (_RULE - len(title) - 2 - side)}"


def nic_stats(port: Port, rates: RateTracker) -> str:
    """testpmd's ``show port stats N`` block."""
    t = port.stats().totals
    rx_pps, rx_bps, tx_pps, tx_bps = rates.rates(port.port_id, t)
    return "\n".join([
        "",
        _banner("#", f"NIC statistics for port {port.port_id} "),
        f"  RX-packets: {t['ipackets']:<10} RX-missed: {t['imissed']:<10} RX-bytes:  {t['ibytes']}",
        f"  RX-errors: {t['ierrors']}",
        f"  RX-nombuf:  {t['rx_nombuf']:<10}",
        f"  TX-packets: {t['opackets']:<10} TX-errors: {t['oerrors']:<10} TX-bytes:  {t['obytes']}",
        "",
        "  Throughput (since last show)",
        f"  Rx-pps: {rx_pps:>12}          Rx-bps: {rx_bps:>12}",
        f"  Tx-pps: {tx_pps:>12}          Tx-bps: {tx_bps:>12}",
        "  " + "#" * _RULE,
    ])


def _fwd_lines(rx: int, tx: int, dropped: int) -> list[str]:
    # testpmd's columns: a 14-wide count, then the next label with no space of its own
    return [
        f"  RX-packets: {rx:<14} RX-dropped: {0:<14}RX-total: {rx}",
        f"  TX-packets: {tx:<14} TX-dropped: {dropped:<14}TX-total: {tx + dropped}",
    ]


def burst_line(what: str, empty: int, bursts: int, full: int, burst: int) -> str | None:
    """testpmd's ``RX-bursts : TOTAL [a% of 0 pkts + b% of 32 pkts + c% of other]``:
    every burst call counted, the empty ones first; here the sizes besides 0 and
    a full burst are summed as ``other`` (the loop counts no finer). None when
    nothing was counted (testpmd prints no line then)."""
    total = empty + bursts
    if not total:
        return None
    terms = [(empty, "0 pkts")]
    terms += [(full, f"{burst} pkts")] if full else []
    terms += [(bursts - full, "other")] if bursts > full else []
    parts: list[str] = []
    seen = shown = 0
    for count, label in terms:
        seen += count
        if label == "other":  # the remainder, as testpmd rounds it
            parts.append(f"{100 - shown}% of other")
            break
        pct = count * 100 // total
        parts.append(f"{pct}% of {label}")
        if seen == total:
            break
        shown += pct
    return f"  {what}-bursts : {total} [{' + '.join(parts)}]"


def fwd_stats(stats: dict[int, dict[str, int]], burst: int = 32, bursts: bool = False, done: bool = True) -> str:
    """The block ``stop`` (and ``show fwd stats all``) prints: per port, then
    accumulated over all ports; ``bursts``: record-burst-stats lines."""
    lines: list[str] = []
    total = {"rx": 0, "tx": 0, "dropped": 0}
    for pid in sorted(stats):
        s = stats[pid]
        for k in total:
            total[k] += s[k]
        lines += ["", _banner("-", f"Forward statistics for port {pid} "), *_fwd_lines(s["rx"], s["tx"], s["dropped"])]
        if bursts:
            lines += [line for line in (
                burst_line("RX", s.get("rx_empty", 0), s.get("rx_bursts", 0), s.get("rx_full", 0), burst),
                burst_line("TX", 0, s.get("tx_bursts", 0), s.get("tx_full", 0), burst)) if line]
        lines.append("  " + "-" * _RULE)
    # testpmd's banner has no space after the title here
    lines += ["", f"  {'+' * 15} Accumulated forward statistics for all ports{'+' * 15}",
              *_fwd_lines(total["rx"], total["tx"], total["dropped"]), "  " + "+" * _RULE]
    if done:
        lines += ["", "Done."]
    return "\n".join(lines)


def link_speed(mbps: int) -> str:
    """As DPDK's rte_eth_link_speed_to_str: ``10 Gbps``, ``100 Mbps``, ``None``."""
    if mbps <= 0:
        return "None"
    if mbps >= 1000 and mbps % 1000 == 0:
        return f"{mbps // 1000} Gbps"
    return f"{mbps} Mbps"


def port_summary(ports: dict[int, Port]) -> str:
    """testpmd's ``show port summary all``."""
    lines = [f"Number of available ports: {len(ports)}",
             "Port MAC Address       Name         Driver         Status   Link"]
    for pid, port in sorted(ports.items()):
        link = port.link() if not port.closed else None
        up = bool(link and link.up)
        lines.append(f"{pid:<4} {format_mac(port.mac())} {port.name:<12} {port.driver.prefix:<14} "
                     f"{'up' if up else 'down':<8} {link_speed(link.speed_mbps) if up else 'None'}")
    return "\n".join(lines)


def _devargs(port: Port) -> str:
    """The vdev's devargs without its name, as testpmd shows them."""
    return ",".join(port.spec.text.split(",")[1:])


def port_info(port: Port) -> str:
    """testpmd's ``show port info N`` block."""
    link = port.link()
    lines = [
        f"\n********************* Infos for port {port.port_id}  *********************",
        f"MAC address: {format_mac(port.mac())}",
        f"Device name: {port.name}",
        f"Driver name: {port.driver.prefix}",
        f"Devargs: {_devargs(port)}",
        "Connect to socket: 0",
        f"Link status: {'up' if link.up else 'down'}",
        f"Link speed: {link_speed(link.speed_mbps)}",
        f"Link duplex: {'full' if link.full_duplex else 'half'}-duplex",
        f"MTU: {port.driver.mtu()}",
        "Promiscuous mode: enabled",  # no port here filters by address
        "Allmulticast mode: enabled",
        f"Started: {'yes' if port.started else 'no'}{' (closed)' if port.closed else ''}",
        f"Current number of RX queues: {port.nb_rxq}",
        f"Current number of TX queues: {port.nb_txq}",
    ]
    info = port.driver.info()
    if info:
        lines.append("Driver info:")
        lines += [f"  {k}: {v}" for k, v in info.items()]
    return "\n".join(lines)


def port_xstats(port: Port) -> str:
    """testpmd's ``show port xstats``: DPDK's names, then the driver's own counters."""
    lines = [f"###### NIC extended statistics for port {port.port_id} "]
    lines += [f"{k}: {v}" for k, v in xstats.port_xstats(port).items()]
    return "\n".join(lines)


def _descs(port: Port, rx: bool) -> int:
    """The ring size a driver takes from a devarg (0: set by the peer)."""
    key = port.driver.desc_devargs[0 if rx else 1]
    return int(port.spec.args.get(key, 0)) if key else 0


def config_rxtx(mode: str, burst: int, nb_cores: int, ports: list[int], all_ports: dict[int, Port]) -> str:
    """testpmd's ``show config rxtx``."""
    lines = [f"  {mode} packet forwarding packets/burst={burst}",
             f"  nb forwarding cores={nb_cores} - nb forwarding ports={len(ports)}"]
    for pid in ports:
        port = all_ports[pid]
        lines += [f"  port {pid}: RX queue number: {port.nb_rxq} Tx queue number: {port.nb_txq}",
                  "    Rx offloads=0x0 Tx offloads=0x0"]
        for q in range(port.nb_rxq):
            lines += [f"    RX queue: {q}", f"      RX desc={_descs(port, True)} - RX free threshold=0",
                      "      RX threshold registers: pthresh=0 hthresh=0  wthresh=0", "      RX Offloads=0x0"]
        for q in range(port.nb_txq):
            lines += [f"    TX queue: {q}", f"      TX desc={_descs(port, False)} - TX free threshold=0",
                      "      TX threshold registers: pthresh=0 hthresh=0  wthresh=0",
                      "      TX offloads=0x0 - TX RS bit threshold=0"]
    return "\n".join(lines)


def queue_info(port: Port, rx: bool, q: int) -> str:
    """testpmd's ``show rxq|txq info P Q``."""
    what = "RX" if rx else "TX"
    n = port.nb_rxq if rx else port.nb_txq
    if not 0 <= q < n:
        raise ValueError(f"invalid {what.lower()} queue {q} for port {port.port_id} ({n} configured)")
    state = "started" if port.started else "stopped"
    return "\n".join([
        f"\n********************* Infos for port {port.port_id} , {what} queue {q}  *********************",
        f"Number of {what}Ds: {_descs(port, rx)}",
        f"{what} queue state: {state}",
        "Burst mode: " + ("Numba kernel" if port.started else "not started"),
    ])


def device_info(port: Port) -> str:
    """testpmd's ``show device info`` block for one vdev."""
    return "\n".join([
        f"\n********************* Infos for device {port.name} *********************",
        "Bus name: vdev",
        "Bus information: ",
        f"Driver name: {port.driver.prefix}",
        f"Devargs: {_devargs(port)}",
        "Connect to socket: -1",  # a vdev is on no NUMA node (SOCKET_ID_ANY)
        "",
        f"\tPort id: {port.port_id} ",
        f"\tMAC address: {format_mac(port.mac())}",
        f"\tDevice name: {port.name}",
    ])


def fwd_config(mode: str, ports: list[int], streams: list[StreamInfo],
               peer_of: Callable[[int], bytes] = peer_mac) -> str:
    """testpmd's ``show config fwd`` block (``start`` prints it, then ``show config rxtx``'s)."""
    lcores = sorted({s.lcore for s in streams})
    lines = [f"{mode} packet forwarding - ports={len(ports)} - cores={len(lcores)} - streams={len(streams)}"]
    for lc in lcores:
        mine = [s for s in streams if s.lcore == lc]
        lines.append(f"Logical Core {lc} (socket 0) forwards packets on {len(mine)} streams:")
        lines += [
            f"  RX P={s.rx_port}/Q={s.rxq} (socket 0) -> TX P={s.tx_port}/Q={s.txq} (socket 0)"
            f" peer={format_mac(peer_of(s.tx_port))}"
            for s in mine
        ]
    lines.append("")
    return "\n".join(lines)
