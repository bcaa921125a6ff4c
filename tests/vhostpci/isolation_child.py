"""Isolation through the real ports, in a process that is allowed to die.

VM1 (virtio-user, iommu=transient or buffers) and VM2 (vhost-pci) in one
process.  Prints one line per check, then touches the window where the
action says; the test expects SIGSEGV there:

- ``invalidated``: a transmit buffer VM2 already forwarded; VM1 revoked it
  (INVALIDATE acked) once the device returned it.
- ``never_granted``: a page of VM1 RAM no grant ever covered, reached
  through a rogue descriptor VM1 puts on its tx ring.
- ``granted``: a ring page VM1 did grant (must NOT fault; control case).
"""
from __future__ import annotations

import os
import sys

import numpy as np

from pmd.ethdev import Port
from pmd.vdev import parse_vdev
from pmd.mbuf import create_pool
from pmd.guestmem.translate import translate
from pmd.guestmem.views import mem_views
from pmd.virtio.split import set_avail_entry, set_desc
from pmd.virtio_user_pmd.vq import DRV_AVAIL_IDX, DRV_DONE_TAIL, DRV_UNMAP_DONE
from tests.vhostpci.peer_io import _send, check_packet, make_packet, recv, send
from tests.util import wait_until as wait

ROGUE_GPA = 0x1800000  # low region, past the rings: never granted


def main(action: str, mode: str, sockdir: str) -> None:
    sock = os.path.join(sockdir, "vp.sock")  # the parent's directory: it removes it, however we end
    vp = Port(0, parse_vdev(f"net_vhost_pci0,path={sock}"))
    vu = Port(1, parse_vdev(f"net_virtio_user0,path={sock},iommu={mode}"))
    vp.start()
    vu.start()
    assert wait(lambda: vp.link().up and vu.driver.session is not None), "no link"
    pool = create_pool(1024)
    win = vp.driver.window
    tx = vu.driver.places[1]  # VM1's transmit ring
    assert send(vu, pool, [make_packet(s, 200) for s in range(4)]) == 4
    got = []
    # VM1's rx poll posts tx buffers once granted (transient); VM2 forwards them.
    assert wait(lambda: recv(vu, pool) == [] and (got.extend(recv(vp, pool)) or len(got) == 4)), got
    print("forwarded:", sorted(check_packet(p) for p in got), flush=True)
    row = vu.driver.vq[1]
    empty = np.zeros((1, 1), np.uint8)

    def reaped() -> bool:  # a transmit call reaps what the device returned
        # (with inflight tracking VM2 returns a burst's descriptors on its next poll)
        assert recv(vp, pool) == []
        _send(vu.kernel_state(), 0, pool, empty, np.zeros(1, np.int64), 0)
        return row[DRV_DONE_TAIL] == 4 and (mode != "transient" or row[DRV_UNMAP_DONE] == 4)

    assert wait(reaped), "not returned/revoked"
    buf0 = tx.buf  # descriptor 0's buffer went first
    print("translate sent buffer:", translate(win.table, win.table_count, buf0, 1, False), flush=True)
    print("translate ring:", translate(win.table, win.table_count, tx.desc, 1, False) >= 0, flush=True)
    # A rogue descriptor: VM1 points its tx ring at a page it never granted.
    m = mem_views(vu.driver.view.array)
    idx = int(row[DRV_AVAIL_IDX])
    set_desc(m, tx.desc, 100, ROGUE_GPA, 64, 0, 0)
    set_avail_entry(m, tx.avail, idx & (tx.num - 1), 100)
    m.u16[(tx.avail + 2) >> 1] = (idx + 1) & 0xFFFF
    for _ in range(3):
        assert recv(vp, pool) == []
    assert wait(lambda: vu.driver.misses_refused >= 1), "miss not refused"
    print("translate rogue:", translate(win.table, win.table_count, ROGUE_GPA, 64, False), flush=True)
    print("port misses:", vp.driver.xstats()["iotlb_misses"] >= 1, flush=True)
    target = {"invalidated": buf0, "never_granted": ROGUE_GPA, "granted": tx.desc}[action]
    print("touching:", hex(target), flush=True)
    print("read:", int(win.array[target]), flush=True)  # SIGSEGV unless granted
    vu.close()
    vp.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
