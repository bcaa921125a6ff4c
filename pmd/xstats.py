"""Extended statistics under DPDK's names, built from any port's counters.

The generic part is ethdev's (``rx_good_packets``, ``rx_q0_packets``, ...);
then the per-queue counters DPDK's vhost PMD adds (``rx_q0_good_packets``,
``rx_q0_good_bytes``, ``rx_q0_dropped_pkts``, ...), so dashboards built on DPDK's names work for
every port here, with the size bins (``pmd.sizebins``) under both of DPDK's
schemes: per queue as the vhost library names them (``rx_q0_size_64_packets``
... ``rx_q0_size_1519_max_packets``) and per port as the ``net_vhost`` PMD
did (``rx_size_64_packets`` ... ``rx_size_1523_to_max_packets``); then the
driver's own counters under their own names.
"""
from __future__ import annotations

from .ethdev import Port
from .sizebins import PORT_BIN_NAMES, QUEUE_BIN_NAMES, bin_sums

# ethdev's basic xstats: name -> PortStats totals key.
_BASIC = (
    ("rx_good_packets", "ipackets"), ("tx_good_packets", "opackets"),
    ("rx_good_bytes", "ibytes"), ("tx_good_bytes", "obytes"),
    ("rx_missed_errors", "imissed"), ("rx_errors", "ierrors"), ("tx_errors", "oerrors"),
    ("rx_mbuf_allocation_errors", "rx_nombuf"),
)


def ethdev_xstats(port: Port) -> dict[str, int]:
    """Basic and per-queue counters, as ethdev and the vhost PMD name them."""
    st = port.stats()
    out = {name: st.totals[key] for name, key in _BASIC}
    rows = st.per_queue
    for q in range(port.nb_rxq):
        r = rows[q] if q < len(rows) else {}
        out[f"rx_q{q}_packets"] = r.get("ipackets", 0)
        out[f"rx_q{q}_bytes"] = r.get("ibytes", 0)
        out[f"rx_q{q}_errors"] = r.get("ierrors", 0)
    for q in range(port.nb_txq):
        r = rows[q] if q < len(rows) else {}
        out[f"tx_q{q}_packets"] = r.get("opackets", 0)
        out[f"tx_q{q}_bytes"] = r.get("obytes", 0)
    for q in range(port.nb_rxq):
        r = rows[q] if q < len(rows) else {}
        good, dropped = r.get("ipackets", 0), r.get("imissed", 0) + r.get("ierrors", 0)
        out[f"rx_q{q}_good_packets"] = good
        out[f"rx_q{q}_good_bytes"] = r.get("ibytes", 0)
        out[f"rx_q{q}_total_packets"] = good + dropped
        out[f"rx_q{q}_dropped_pkts"] = dropped
        if q < len(st.rx_sizes):
            out.update((f"rx_q{q}_{name}", v) for name, v in bin_sums(st.rx_sizes[q], QUEUE_BIN_NAMES))
    for q in range(port.nb_txq):
        r = rows[q] if q < len(rows) else {}
        good, dropped = r.get("opackets", 0), r.get("oerrors", 0)
        out[f"tx_q{q}_good_packets"] = good
        out[f"tx_q{q}_good_bytes"] = r.get("obytes", 0)
        out[f"tx_q{q}_total_packets"] = good + dropped
        out[f"tx_q{q}_dropped_pkts"] = dropped
        if q < len(st.tx_sizes):
            out.update((f"tx_q{q}_{name}", v) for name, v in bin_sums(st.tx_sizes[q], QUEUE_BIN_NAMES))
    for side, bins in (("rx", st.rx_sizes), ("tx", st.tx_sizes)):
        out.update((f"{side}_{name}", v) for name, v in bin_sums(bins.sum(axis=0), PORT_BIN_NAMES))
    return out


def port_xstats(port: Port) -> dict[str, int]:
    """Every xstat of ``port`` since its last ``clear port xstats``: ethdev's
    and the vhost PMD's names first, then the driver's own counters."""
    out = ethdev_xstats(port)
    base = port.xstats_baseline
    for name, value in port.driver.xstats().items():
        if name not in out:
            out[name] = value - base.get(name, 0)
    return out


def clear_xstats(port: Port) -> None:
    """``clear port xstats``: the basic counters and the driver's restart at 0
    (a baseline, never a write: lcores keep counting meanwhile)."""
    port.clear_stats()
    port.xstats_baseline = dict(port.driver.xstats())
