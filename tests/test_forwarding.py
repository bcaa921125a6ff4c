"""The runtime end to end on worker lcores: exact counters, no mbuf leak,
prompt stop, stream layout and port state errors."""
import time

import pytest

from pmd.ethdev import PortError
from pmd.fwd.runtime import FwdError


def test_tx_first_rxonly_counters_are_exact(fwd):
    for v in ("net_ring0", "net_ring1"):
        fwd.attach_port(v).start()
    fwd.config.mode, fwd.config.burst, fwd.config.txpkts = "rxonly", 24, 100
    fwd.start(tx_first=True)
    time.sleep(0.3)
    stats = fwd.stop()
    # tx_first sends one burst on each stream's tx port; loopback rings bring
    # each back to the same port, where rxonly counts and frees it.
    for pid in (0, 1):
        st = fwd.ports[pid].stats()
        assert (st.opackets, st.obytes, st.ipackets, st.ibytes) == (24, 2400, 24, 2400)
        empty = stats[pid].pop("rx_empty")  # the polls that found nothing, as many as 0.3 s allows
        assert empty > 0
        assert stats[pid] == {"rx": 24, "tx": 24, "dropped": 0, "rx_bursts": 1, "rx_full": 1,
                              "tx_bursts": 1, "tx_full": 1}
    fwd.close()
    assert fwd.pool.available() == fwd.pool.size


def test_million_packets_no_mbuf_leak_and_fast_stop(fwd):
    for v in ("net_ring0", "net_ring1"):
        fwd.attach_port(v).start()
    fwd.config.mode = "macswap"
    fwd.start(tx_first=True)
    deadline = time.monotonic() + 30
    while fwd.ports[0].stats().ipackets < 1_000_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    stats = fwd.stop()
    assert time.monotonic() - t0 < 1.0
    assert stats[0]["rx"] >= 1_000_000
    for pid in (0, 1):  # everything received was sent on
        assert stats[pid]["dropped"] == 0
    fwd.close()  # drains what is still queued in the rings
    assert fwd.pool.available() == fwd.pool.size


def test_null_ports_free_everything(fwd):
    for v in ("net_null0,size=128", "net_null1"):
        fwd.attach_port(v).start()
    fwd.start()
    time.sleep(0.3)
    stats = fwd.stop()
    assert stats[0]["rx"] > 0 and stats[1]["tx"] == stats[0]["rx"]
    assert fwd.ports[1].stats().obytes == 128 * stats[0]["rx"]
    assert fwd.pool.available() == fwd.pool.size


def test_clear_stats_takes_a_baseline(fwd):
    fwd.attach_port("net_null0").start()
    fwd.start()
    time.sleep(0.1)
    fwd.stop()
    port = fwd.ports[0]
    assert port.stats().ipackets > 0
    port.clear_stats()
    assert port.stats().ipackets == 0


def test_layout_pairs_ports_and_single_port_loops():
    from pmd.fwd.runtime import Forwarding
    from pmd.lcore import LcoreManager

    fw = Forwarding(LcoreManager({0: 0, 1: 0, 2: 0}, 0), nb_mbufs=64)
    try:
        for v in ("net_ring0", "net_ring1", "net_ring2"):
            fw.attach_port(v).start()
        fw.config.nb_cores = 2
        pairs = [(s.rx_port, s.tx_port, s.lcore) for s in fw.layout()]
        assert pairs == [(0, 1, 1), (1, 0, 1), (2, 2, 2)]
    finally:
        fw.close()


def test_state_errors(fwd):
    with pytest.raises(FwdError, match="no started ports"):
        fwd.start()
    fwd.attach_port("net_ring0")
    with pytest.raises(PortError, match="already exists"):
        fwd.attach_port("net_ring0")
    with pytest.raises(PortError, match="invalid port id 7"):
        fwd.start_port(7)
    fwd.start_port(0)
    with pytest.raises(FwdError, match="must be closed"):
        fwd.detach_port(0)
    fwd.start()
    with pytest.raises(FwdError, match="already started"):
        fwd.start()
    with pytest.raises(FwdError, match="stop forwarding first"):
        fwd.stop_port(0)
    fwd.stop()
    fwd.close_port(0)
    assert fwd.detach_port(0) == "net_ring0"
    with pytest.raises(FwdError, match="not started"):
        fwd.stop()


def test_ring_peer_joins_two_ports(fwd):
    fwd.attach_port("net_ring0").start()
    fwd.attach_port("net_ring1,peer=net_ring0").start()
    fwd.config.mode = "rxonly"
    fwd.start(tx_first=True)
    time.sleep(0.2)
    fwd.stop()
    # port 0 sends to port 1 (its stream tx) -> arrives at port 0 (the peer)
    assert fwd.ports[0].stats().opackets == 32 and fwd.ports[0].stats().ipackets == 32
    assert fwd.ports[0].driver.info()["peer"] == "net_ring1"


def test_an_idle_pass_waits_idle_wait_before_the_next(fwd):
    """--idle-wait: an lcore that found nothing polls again only after the
    wait (1 ms here: at most one pass a millisecond, where back to back it
    makes millions a second)."""
    for v in ("net_ring0", "net_ring1"):
        fwd.attach_port(v).start()
    fwd.config.mode, fwd.config.idle_wait_ns = "io", 1_000_000
    t0 = time.monotonic()
    fwd.start()
    time.sleep(0.2)
    stats = fwd.stop()
    elapsed_ms = (time.monotonic() - t0) * 1e3
    for pid in (0, 1):
        assert 0 < stats[pid]["rx_empty"] <= elapsed_ms + 1
    assert stats[0]["rx"] == 0
