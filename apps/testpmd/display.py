"""Text blocks printed by testpmd: NIC statistics, forward statistics, port
info and the forwarding configuration, laid out as DPDK's testpmd does."""
from __future__ import annotations


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
        _banner("#", f"NIC statistics for port {port.port_id} "),
        f"  RX-packets: {t['ipackets']:<10} RX-missed: {t['imissed']:<10} RX-bytes:  {t['ibytes']}",
        f"  RX-errors: {t['ierrors']}",
        f"  RX-nombuf:  {t['rx_nombuf']}",
        f"  TX-packets: {t['opackets']:<10} TX-errors: {t['oerrors']:<10} TX-bytes:  {t['obytes']}",
        "",
        "  Throughput (since last show)",
        f"  Rx-pps: {rx_pps:>12}          Rx-bps: {rx_bps:>12}",
        f"  Tx-pps: {tx_pps:>12}          Tx-bps: {tx_bps:>12}",
        "  " + "#" * _RULE,
    ])


def _fwd_lines(rx: int, tx: int, dropped: int) -> list[str]:
    return [
        f"  RX-packets: {rx:<14} RX-dropped: {0:<14} RX-total: {rx}",
        f"  TX-packets: {tx:<14} TX-dropped: {dropped:<14} TX-total: {tx + dropped}",
    ]


def fwd_stats(stats: dict[int, dict[str, int]]) -> str:
    """The block ``stop`` prints: per port, then accumulated over all ports."""
    lines: list[str] = []
    total = {"rx": 0, "tx": 0, "dropped": 0}
    for pid in sorted(stats):
        s = stats[pid]
        for k in total:
            total[k] += s[k]
        lines += ["", _banner("-", f"Forward statistics for port {pid} "), *_fwd_lines(s["rx"], s["tx"], s["dropped"]),
                  "  " + "-" * _RULE]
    lines += ["", _banner("+", "Accumulated forward statistics for all ports"),
              *_fwd_lines(total["rx"], total["tx"], total["dropped"]), "  " + "+" * _RULE, "", "Done."]
    return "\n".join(lines)


def port_info(port: Port) -> str:
    """testpmd's ``show port info N`` block."""
    link = port.link()
    lines = [
        f"\n********************* Infos for port {port.port_id}  *********************",
        f"MAC address: {format_mac(port.mac())}",
        f"Device name: {port.name}",
        f"Driver name: {port.driver.prefix}",
        f"Devargs: {port.spec.text}",
        f"Link status: {'up' if link.up else 'down'}",
        f"Link speed: {link.speed_mbps} Mbps",
        f"Link duplex: {'full' if link.full_duplex else 'half'}-duplex",
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
    """testpmd's ``show port xstats``: the basic counters, then the driver's own."""
    lines = [f"###### NIC extended statistics for port {port.port_id}"]
    lines += [f"{k}: {v}" for k, v in port.stats().totals.items()]
    lines += [f"{k}: {v}" for k, v in port.driver.xstats().items()]
    return "\n".join(lines)


def fwd_config(mode: str, burst: int, nb_cores: int, ports: list[int], streams: list[StreamInfo]) -> str:
    """testpmd's ``show config fwd`` block (also printed by ``start``)."""
    lcores = sorted({s.lcore for s in streams})
    lines = [f"{mode} packet forwarding - ports={len(ports)} - cores={len(lcores)} - streams={len(streams)}"]
    for lc in lcores:
        mine = [s for s in streams if s.lcore == lc]
        lines.append(f"Logical Core {lc} (socket 0) forwards packets on {len(mine)} streams:")
        lines += [
            f"  RX P={s.rx_port}/Q={s.rxq} (socket 0) -> TX P={s.tx_port}/Q={s.txq} (socket 0)"
            f" peer={format_mac(peer_mac(s.tx_port))}"
            for s in mine
        ]
    lines += ["", f"  {mode} packet forwarding packets/burst={burst}",
              f"  nb forwarding cores={nb_cores} - nb forwarding ports={len(ports)}"]
    return "\n".join(lines)
