"""``--metrics [HOST:]PORT``: every port's stats and xstats over HTTP in
Prometheus' text exposition format (``GET /metrics``), for a Prometheus
server or anything that scrapes it.  Off by default; bound to loopback
unless a host is given.  The standard library's HTTP server in one thread:
a scrape reads the counters the lcores publish, never stops them.

Metrics (labels ``port`` = port id, ``name`` = vdev name):

- ``vhostpci_port_info{driver=...} 1`` and ``vhostpci_port_link_up``,
  ``vhostpci_port_link_speed_mbps`` (gauges);
- ``vhostpci_<xstat>_total`` for each of ethdev's and DPDK's vhost xstats
  (``rx_good_packets``, ``rx_q0_size_64_packets``, ...; counters: they
  restart at 0 after ``clear port xstats``, which Prometheus reads as a
  reset);
- ``vhostpci_driver_<xstat>`` for each driver's own counter (untyped: a
  driver may report a level as well as a count).
"""
from __future__ import annotations

import errno
import logging
import re
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .ethdev import Port
from .xstats import ethdev_xstats, port_xstats

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "vhostpci_"


class MetricsError(RuntimeError):
    """The metrics endpoint cannot be served (the message names the address)."""


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _metric_name(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def render(ports: dict[int, Port]) -> str:
    """The text exposition of every open port's counters."""
    families: dict[str, tuple[str, str, list[str]]] = {}  # name -> (type, help, samples)

    def add(name: str, kind: str, help_: str, labels: dict[str, object], value: int | float) -> None:
        fam = families.setdefault(name, (kind, help_, []))
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        fam[2].append(f"{name}{{{text}}} {value}")

    for pid, port in sorted(ports.items()):
        if port.closed:
            continue
        base = {"port": pid, "name": port.name}
        add(PREFIX + "port_info", "gauge", "A port and its driver", {**base, "driver": port.driver.prefix}, 1)
        link = port.link()
        add(PREFIX + "port_link_up", "gauge", "1 if the port's link is up", base, int(link.up))
        add(PREFIX + "port_link_speed_mbps", "gauge", "Link speed in Mbps", base, link.speed_mbps)
        ethdev = ethdev_xstats(port)
        for key, value in port_xstats(port).items():
            if key in ethdev:
                add(f"{PREFIX}{_metric_name(key)}_total", "counter", f"ethdev xstat {key}", base, value)
            else:
                add(f"{PREFIX}driver_{_metric_name(key)}", "untyped", f"driver xstat {key}", base, value)
    out: list[str] = []
    for name, (kind, help_, samples) in families.items():
        out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *samples]
    return "\n".join(out) + "\n"


class MetricsServer:
    """The HTTP endpoint; ``ports`` (a callable) may be set after binding,
    so an address in use fails before any port exists.  ``close`` stops it."""

    def __init__(self, host: str, port: int, ports: Callable[[], dict[int, Port]] = dict) -> None:
        self.ports = ports
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                body = render(outer.ports()).encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("%s %s", self.address_string(), format % args)

        server_cls = ThreadingHTTPServer
        if ":" in host:  # an IPv6 address
            class server_cls(ThreadingHTTPServer):  # noqa: N801
                address_family = socket.AF_INET6
        try:
            self._httpd = server_cls((host, port), Handler)
        except OSError as e:
            why = "address already in use (another process serves it)" if e.errno == errno.EADDRINUSE else e.strerror
            raise MetricsError(f"--metrics {host}:{port}: cannot listen: {why}") from None
        self._httpd.daemon_threads = True
        self.host, self.port = host, self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics", daemon=True)
        self._thread.start()
        log.info("Prometheus metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        """Stop serving and close the listening socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def start_metrics(address: tuple[str, int] | None) -> MetricsServer | None:
    """The endpoint ``--metrics`` asked for (``EalConfig.metrics``; None
    without it); MetricsError when it cannot listen."""
    return MetricsServer(*address) if address is not None else None
