"""A telemetry socket speaking DPDK's v2 protocol, so ``dpdk-telemetry.py``
and dashboards built on it work unchanged.

Protocol (DPDK's): a unix SOCK_SEQPACKET socket at
``<runtime dir>/dpdk_telemetry.v2``; on connect the server sends
``{"version", "pid", "max_output_len"}``; each request is one message
``/command[,params]`` and each reply one JSON object ``{"/command": data}``
(``null`` data for an unknown command or bad parameters).  The runtime dir
is DPDK's: ``$RUNTIME_DIRECTORY``, else ``/var/run`` for root or
``$XDG_RUNTIME_DIR`` (``/tmp``) otherwise, then ``dpdk/<file-prefix>``.  A
socket another live process holds is left alone: this one takes the next
instance name (``dpdk_telemetry.v2:1``, as ``dpdk-telemetry.py -i 1`` finds).

Commands: ``/``, ``/info``, ``/help``, ``/ethdev/list``, ``/ethdev/stats``,
``/ethdev/xstats``, ``/ethdev/info``, ``/ethdev/link_status`` and
``/vhostpci/info`` (any port's driver information, e.g. the vhost-pci
port's negotiated features, window and IOTLB counters).
"""
from __future__ import annotations

import json
import logging
import os
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

from .eal import EalConfig, version
from .ethdev import Port, format_mac
from .xstats import port_xstats

log = logging.getLogger(__name__)

SOCKET_NAME = "dpdk_telemetry.v2"
MAX_OUTPUT_LEN = 16384  # as DPDK's; a longer reply is an error object
MAX_CLIENTS = 16
MAX_INSTANCES = 32
_POLL_S = 0.2

Handler = Callable[[str], Any]  # params -> JSON-able data (None: bad parameters)


def runtime_dir(file_prefix: str) -> str:
    """DPDK's runtime directory for ``file_prefix`` (where its sockets live)."""
    base = os.environ.get("RUNTIME_DIRECTORY") or (
        "/var/run" if os.getuid() == 0 else os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
    return os.path.join(base, "dpdk", file_prefix)


class TelemetryServer:
    """The listening socket and one thread per client; ``close`` removes it."""

    def __init__(self, path_base: str, commands: dict[str, tuple[Handler, str]]) -> None:
        self.commands = dict(commands)
        self.commands.setdefault("/", (lambda _: sorted(self.commands), "Returns list of available commands"))
        self.commands.setdefault("/info", (lambda _: self._info(), "Returns DPDK Telemetry information"))
        self.commands.setdefault("/help", (self._help, "Returns help text for a command. Parameters: string command"))
        self._stop = threading.Event()
        self._created_dir = not os.path.isdir(os.path.dirname(path_base))
        os.makedirs(os.path.dirname(path_base), mode=0o700, exist_ok=True)
        self.sock, self.path = _bind(path_base)
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, name="telemetry", daemon=True)
        self._accept.start()

    def _info(self) -> dict[str, Any]:
        return {"version": f"vhostpci {version()}", "pid": os.getpid(), "max_output_len": MAX_OUTPUT_LEN}

    def _help(self, params: str) -> Any:
        entry = self.commands.get(params)
        return {params: entry[1]} if entry else None

    def reply(self, request: str) -> bytes:
        """The JSON reply to one request (also used by tests without a socket)."""
        cmd, _, params = request.strip().partition(",")
        entry = self.commands.get(cmd)
        try:
            data = entry[0](params) if entry else None
        except (ValueError, KeyError, IndexError):
            data = None
        out = json.dumps({cmd: data}).encode()
        if len(out) > MAX_OUTPUT_LEN:
            out = json.dumps({cmd: {"error": f"reply longer than {MAX_OUTPUT_LEN} bytes"}}).encode()
        return out

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], _POLL_S)
            if not ready:
                continue
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self._threads = [t for t in self._threads if t.is_alive()]
            if len(self._threads) >= MAX_CLIENTS:
                conn.close()
                continue
            t = threading.Thread(target=self._client, args=(conn,), name="telemetry-client", daemon=True)
            self._threads.append(t)
            t.start()

    def _client(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.send(json.dumps(self._info()).encode())
                while not self._stop.is_set():
                    ready, _, _ = select.select([conn], [], [], _POLL_S)
                    if not ready:
                        continue
                    msg = conn.recv(1024)
                    if not msg:
                        return
                    conn.send(self.reply(msg.decode(errors="replace")))
            except OSError:
                return

    def close(self) -> None:
        """Stop serving and remove the socket (and the prefix directory if it
        was created here and is now empty)."""
        self._stop.set()
        self._accept.join(2 * _POLL_S + 1)
        for t in self._threads:
            t.join(2 * _POLL_S + 1)
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self._created_dir:
            try:
                os.rmdir(os.path.dirname(self.path))
            except OSError:
                pass


def _in_use(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _bind(base: str) -> tuple[socket.socket, str]:
    """Bind the first free instance name; a stale socket file is replaced."""
    for n in range(MAX_INSTANCES):
        path = base if n == 0 else f"{base}:{n}"
        if os.path.exists(path):
            if _in_use(path):
                continue
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.bind(path)
            sock.listen(MAX_CLIENTS)
        except OSError:
            sock.close()
            raise
        return sock, path
    raise OSError(f"{base}: {MAX_INSTANCES} instances in use")


# ---- ethdev commands ------------------------------------------------------

def _port(ports: Callable[[], dict[int, Port]], params: str) -> Port:
    pid = int(params)  # ValueError -> null reply, as DPDK's
    return ports()[pid]


def _stats(port: Port) -> dict[str, Any]:
    st = port.stats()
    q = st.per_queue
    out: dict[str, Any] = {k: st.totals[k] for k in
                           ("ipackets", "opackets", "ibytes", "obytes", "imissed", "ierrors", "oerrors", "rx_nombuf")}
    for name, key in (("q_ipackets", "ipackets"), ("q_opackets", "opackets"), ("q_ibytes", "ibytes"),
                      ("q_obytes", "obytes"), ("q_errors", "ierrors")):
        out[name] = [row[key] for row in q] + [0] * (16 - len(q))  # RTE_ETHDEV_QUEUE_STAT_CNTRS
    return out


def _info(port: Port) -> dict[str, Any]:
    return {"name": port.name, "state": 0 if port.closed else 1, "nb_rx_queues": port.nb_rxq,
            "nb_tx_queues": port.nb_txq, "port_id": port.port_id, "mtu": port.driver.mtu(),
            "mac_addr": format_mac(port.mac()), "promiscuous": 1, "all_multicast": 1,
            "dev_started": int(port.started), "driver": port.driver.prefix, "devargs": port.spec.text,
            "rxq_state": [int(port.started)] * port.nb_rxq, "txq_state": [int(port.started)] * port.nb_txq,
            "numa_node": 0}


def _link(port: Port) -> dict[str, Any]:
    link = port.link()
    if not link.up:
        return {"status": "DOWN"}
    return {"status": "UP", "speed": link.speed_mbps, "duplex": "full-duplex" if link.full_duplex else "half-duplex"}


def _driver_info(port: Port) -> dict[str, Any]:
    info = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in port.driver.info().items()}
    return {"port_id": port.port_id, "name": port.name, "driver": port.driver.prefix, **info,
            "xstats": port.driver.xstats()}


def ethdev_commands(ports: Callable[[], dict[int, Port]]) -> dict[str, tuple[Handler, str]]:
    """DPDK's ``/ethdev/*`` commands (and ``/vhostpci/info``) over ``ports()``."""
    def per_port(fn: Callable[[Port], Any]) -> Handler:
        return lambda params: fn(_port(ports, params))

    return {
        "/ethdev/list": (lambda _: sorted(ports()), "Returns list of available ethdev ports. Takes no parameters"),
        "/ethdev/stats": (per_port(_stats), "Returns the common stats for a port. Parameters: int port_id"),
        "/ethdev/xstats": (per_port(port_xstats), "Returns the extended stats for a port. Parameters: int port_id"),
        "/ethdev/info": (per_port(_info), "Returns the device info for a port. Parameters: int port_id"),
        "/ethdev/link_status": (per_port(_link), "Returns the link status for a port. Parameters: int port_id"),
        "/vhostpci/info": (per_port(_driver_info),
                           "Returns a port's driver information and counters (vhost-pci: negotiated features,"
                           " window, IOTLB). Parameters: int port_id"),
    }


def start_telemetry(eal: EalConfig, ports: Callable[[], dict[int, Port]]) -> TelemetryServer | None:
    """The telemetry socket for an app's ports, unless ``--no-telemetry``.
    A socket that cannot be created is reported and the app runs without."""
    if not eal.telemetry:
        return None
    base = os.path.join(runtime_dir(eal.file_prefix), SOCKET_NAME)
    try:
        server = TelemetryServer(base, ethdev_commands(ports))
    except OSError as e:
        log.warning("no telemetry socket (%s): %s", base, e)
        return None
    log.info("socket %s (dpdk-telemetry.py -f %s%s)", server.path, eal.file_prefix,
             "" if server.path == base else f" -i {server.path.rsplit(':', 1)[1]}")
    return server
