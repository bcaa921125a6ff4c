"""VM2 for test_inflight: a vhost-pci port (client mode) looping every packet
VM1 sends back to VM1 (io forwarding on one port, polling) until it is killed.

    python -m tests.vhostpci.inflight_vm2 SOCK

Prints the port's xstats as one JSON line every 20 ms (a SIGKILL can land
at any time; the last line says what this instance recovered at start).
"""
from __future__ import annotations

import json
import sys
import time

from pmd.fwd.runtime import Forwarding
from pmd.lcore import LcoreManager
from tests.conftest import CPUS, WORKER_CPU


def main(path: str) -> int:
    fw = Forwarding(LcoreManager({0: CPUS[0], 1: WORKER_CPU}, 0), nb_mbufs=4096)
    try:
        fw.config.interrupts = False  # always polling: a kill lands while it works, not while it wakes up
        port = fw.attach_port(f"net_vhost_pci0,path={path},client=1")
        port.start()
        fw.start()
        while True:
            print(json.dumps(port.driver.xstats()), flush=True)
            time.sleep(0.02)
    finally:
        fw.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
