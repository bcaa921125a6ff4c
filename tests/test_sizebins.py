"""Size-bin xstats: every packet an rx burst hands out and a tx burst
accepts lands in the bin of its length, under DPDK's names (per queue as
the vhost library, per port as the net_vhost PMD), for any driver."""
from __future__ import annotations

import pytest

from pmd.sizebins import N_SIZE_BINS, PORT_BIN_NAMES, QUEUE_BIN_NAMES, SIZE_BINS, size_bin
from pmd.xstats import clear_xstats, port_xstats
from tests.util import wait_until


def test_every_length_falls_in_its_bin():
    for length in [*range(0, 2100), 9000, 65535]:
        want = next(b for b, (lo, hi) in enumerate(SIZE_BINS) if lo <= length and (hi < 0 or length <= hi))
        assert size_bin(length) == want, length
    for names in (PORT_BIN_NAMES, QUEUE_BIN_NAMES):  # each scheme covers every bin once
        assert sorted(b for _, which in names for b in which) == list(range(N_SIZE_BINS))


# frame length -> (per-port bin name, per-queue bin name)
CASES = {60: ("undersize_packets", "undersize_packets"), 64: ("size_64_packets", "size_64_packets"),
         100: ("size_65_to_127_packets", "size_65_127_packets"), 200: ("size_128_to_255_packets", "size_128_255_packets"),
         511: ("size_256_to_511_packets", "size_256_511_packets"),
         512: ("size_512_to_1023_packets", "size_512_1023_packets"),
         1518: ("size_1024_to_1522_packets", "size_1024_1518_packets"),
         1520: ("size_1024_to_1522_packets", "size_1519_max_packets"),
         1600: ("size_1523_to_max_packets", "size_1519_max_packets")}


@pytest.mark.parametrize("length", sorted(CASES))
def test_forwarded_frames_are_counted_in_their_bin(fwd, length):
    """tx_first into a ring of 16 (a burst of 24: 8 refused, not counted),
    rxonly on the other side."""
    p0 = fwd.attach_port("net_ring0,size=16")
    p1 = fwd.attach_port("net_ring1")
    for p in (p0, p1):
        p.start()
        clear_xstats(p)
    fwd.config.mode, fwd.config.burst, fwd.config.txpkts = "rxonly", 24, length
    fwd.start(tx_first=True)
    # each ring loops its port's burst back to it: wait until rxonly took all of it
    assert wait_until(lambda: (p0.stats().ipackets, p1.stats().ipackets) == (16, 24), 20)
    fwd.stop()
    port_name, queue_name = CASES[length]
    x0, x1 = port_xstats(p0), port_xstats(p1)
    sent0, sent1 = x0["tx_good_packets"], x1["tx_good_packets"]
    assert (sent0, sent1) == (16, 24), (x0, x1)
    for x, sent in ((x0, sent0), (x1, sent1)):
        assert x[f"tx_{port_name}"] == x[f"tx_q0_{queue_name}"] == sent, x
        assert x[f"rx_{port_name}"] == x[f"rx_q0_{queue_name}"] == x["rx_good_packets"] == sent, x
        others = [k for k, v in x.items() if "size" in k and v and not k.endswith((port_name, queue_name))]
        assert not others, (others, x)
    clear_xstats(p0)
    assert all(v == 0 for k, v in port_xstats(p0).items() if "size" in k)
