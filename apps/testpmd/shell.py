"""The ``testpmd>`` command shell: one ``do_*`` method per command, a tree
for tab completion, and one place (``onecmd``) that turns any error into a
one-line message so the prompt always comes back."""
from __future__ import annotations

import cmd
import os
import sys
from collections.abc import Iterable
from typing import IO

from pmd import log as pmdlog
from pmd import xstats
from pmd.ethdev import PortError, format_mac
from pmd.fwd.common import MODE_NAMES, REPLY_MODES
from pmd.rates import RateTracker
from pmd.fwd.runtime import Forwarding, FwdError
from pmd.lcore import LcoreError

from . import display

# VHOSTPCI_TESTPMD_HISTORY overrides the path (tests keep $HOME, where the
# Numba cache lives, and still leave the user's history alone).
HISTORY_FILE = os.environ.get("VHOSTPCI_TESTPMD_HISTORY") or os.path.expanduser("~/.vhostpci_testpmd_history")
HISTORY_LENGTH = 1000

_PORT_LIST = "PORTS"  # completion placeholder: "all" plus the port ids
_ON_OFF = ("on", "off")
# command -> subcommand -> ... ; a leaf is None (free text), a tuple of words,
# or _PORT_LIST.
_TREE: dict = {
    "start": ("tx_first",),
    "stop": None,
    "show": {"port": {"stats": _PORT_LIST, "info": _PORT_LIST, "xstats": _PORT_LIST, "summary": ("all",)},
             "config": ("fwd", "rxtx", "cores", "txpkts"), "fwd": {"stats": ("all",)},
             "rxq": {"info": None}, "txq": {"info": None}, "device": {"info": ("all",)}},
    "clear": {"port": {"stats": _PORT_LIST, "xstats": _PORT_LIST}, "fwd": {"stats": ("all",)}},
    "set": {"fwd": MODE_NAMES, "burst": None, "txpkts": None, "nbcore": None, "nbport": None, "portlist": None,
            "eth-peer": None, "verbose": None, "record-burst-stats": _ON_OFF, "promisc": _PORT_LIST,
            "allmulti": _PORT_LIST, "link-up": ("port",), "link-down": ("port",), "log": ("global",)},
    "mac_addr": {"set": _PORT_LIST},
    "port": {"start": _PORT_LIST, "stop": _PORT_LIST, "close": _PORT_LIST, "reset": _PORT_LIST, "attach": None,
             "detach": _PORT_LIST, "config": {"all": ("rxq", "txq", "rxd", "txd"), "mtu": None}},
    "help": ("control", "display", "config", "ports", "all"),
    "quit": None,
}

# help SECTION, laid out as testpmd's
_HELP_SECTIONS = {
    "control": ("Control forwarding", """
start
    Start packet forwarding with current configuration.

start tx_first [(num)]
    Start packet forwarding, after sending 1 (or num) bursts of packets on each stream.

stop
    Stop packet forwarding, and display accumulated statistics.

quit
    Quit to prompt."""),
    "display": ("Display", """
show port (info|stats|summary|xstats) (port_id|all)
    Display information for port_id, or all.

clear port (stats|xstats) (port_id|all)
    Clear information for port_id, or all.

show (rxq|txq) info (port_id) (queue_id)
show port (port_id) (rxq|txq) (queue_id) info
    Display information for configured RX/TX queue.

show config (rxtx|cores|fwd|txpkts)
    Display the given configuration.

show fwd stats all
    Display statistics for all fwd engines.

clear fwd stats all
    Clear statistics for all fwd engines.

show device info (<identifier>|all)
    Show general information about devices probed."""),
    "config": ("Configuration", """
Configuration changes only become active when forwarding is started/restarted.

set verbose (level)
    Set the debug verbosity level (above 0: debug logs of every component).

set log global|(type) (level)
    Set the log level (see --log-level).

set nbport (num)
    Set number of ports.

set nbcore (num)
    Set number of cores.

set burst (num)
    Set number of packets per burst.

set txpkts (x[,y]*)
    Set the length of TXONLY packets (segments are joined into one buffer).

set portlist (x[,y]*)
    Set the list of forwarding ports.

set fwd (""" + "|".join(MODE_NAMES) + """)
    Set packet forwarding mode.

set record-burst-stats (on|off)
    Show RX/TX burst statistics with the forward statistics.

mac_addr set (port_id) (XX:XX:XX:XX:XX:XX)
    Set the default MAC address for port_id.

set eth-peer (port_id) (peer_addr)
    set the peer address for certain port.

set (promisc|allmulti) (port_id|all) (on|off)
    Set the promiscuous / all-multicast mode (every port here receives all frames).

set link-up port (port_id)
    Set link up for a port.

set link-down port (port_id)
    Set link down for a port."""),
    "ports": ("Port Operations", """
port start (port_id|all)
    Start all ports or port_id.

port stop (port_id|all)
    Stop all ports or port_id.

port close (port_id|all)
    Close all ports or port_id.

port reset (port_id|all)
    Reset all ports or port_id (a fresh driver instance from the same devargs).

port attach (identifier)
    Attach physical or virtual dev by pci address or virtual device name

port detach (port_id)
    Detach physical or virtual dev by port_id

port config (port_id|all) (rxq|txq|rxd|txd) (value)
    Set number of RX/TX queues, or RX/TX ring sizes (where a devarg sets them).

port config mtu (port_id) (value)
    Set MTU for physical port (where the driver can)."""),
}


# ``help``'s index lines, as testpmd words them
_HELP_INDEX = {"control": "Start and stop forwarding", "display": "Displaying port, stats and config information",
               "config": "Configuration information", "ports": "Configuring ports"}


class BadArguments(ValueError):
    """The command's words do not match its syntax."""


class BadPort(ValueError):
    """A port id that does not exist (printed as DPDK's ``Invalid port N``)."""


class TestpmdShell(cmd.Cmd):
    """testpmd's interactive commands over one Forwarding instance."""

    prompt = "testpmd> "
    intro = ""
    doc_header = "Commands (type help <command>):"

    def __init__(self, fwd: Forwarding, stdin: IO[str] | None = None, echo: bool = False) -> None:
        super().__init__(stdin=stdin)
        self.fwd = fwd
        self.rates = RateTracker()
        self.echo = echo  # print each command read (script input has no terminal echo)
        self.finished = False
        self.log_specs: list[str] = []  # --log-level values plus ``set log`` ones, in order
        self.queue_conf: dict[int, tuple[int, int]] = {}  # port config rxq/txq, applied at port start
        if stdin is not None:
            self.use_rawinput = False

    # ---- loop and dispatch ----------------------------------------------
    def run_interactive(self) -> None:
        """The prompt loop with readline history; Ctrl-C cancels the line."""
        try:
            import readline
        except ImportError:  # pragma: no cover - readline is on every Linux Python
            readline = None
        if readline is not None:
            readline.set_completer_delims(" \t\n")
            try:
                readline.read_history_file(HISTORY_FILE)
            except OSError:
                pass
            readline.set_history_length(HISTORY_LENGTH)
        try:
            while not self.finished:
                try:
                    self.cmdloop()
                except KeyboardInterrupt:
                    print("^C")
        finally:
            if readline is not None:
                try:
                    readline.write_history_file(HISTORY_FILE)
                except OSError:
                    pass

    def run_lines(self, lines: Iterable[str]) -> bool:
        """Run script lines, echoing each after the prompt; True once ``quit`` ran."""
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            print(f"{self.prompt}{line}")
            if self.onecmd(line):
                return True
        return False

    def precmd(self, line: str) -> str:
        if self.echo:
            print("" if line == "EOF" else line)
        return line

    def emptyline(self) -> bool:
        return False  # unlike cmd.Cmd, an empty line does not repeat the last command

    def onecmd(self, line: str) -> bool:
        try:
            stop = bool(super().onecmd(line))
        except BadArguments as e:
            print(f"Bad arguments: {e}" if str(e) else "Bad arguments")
            return False
        except BadPort as e:
            print(e)
            return False
        except FwdError as e:
            print(e)
            return False
        except (PortError, LcoreError, ValueError, TimeoutError) as e:
            print(f"Error: {e}")
            return False
        except KeyboardInterrupt:
            print("^C")
            return False
        except Exception as e:  # never a traceback at the prompt
            print(f"Error: {type(e).__name__}: {e}")
            return False
        if stop:
            self.finished = True
        return stop

    def default(self, line: str) -> None:
        print(f"Command not found: {line.split()[0]} (type 'help' for the list)")

    # ---- helpers -------------------------------------------------------
    def _require_stopped(self) -> None:
        if self.fwd.running:
            raise FwdError("Please stop forwarding first")

    def _ports(self, text: str, include_closed: bool = True) -> list[int]:
        """``all`` or a port id -> port ids; an unknown id raises BadPort."""
        if text == "all":
            return [pid for pid, p in sorted(self.fwd.ports.items()) if include_closed or not p.closed]
        return [self._port_id(text)]

    def _port_id(self, text: str) -> int:
        pid = _int(text, "port id")
        if pid not in self.fwd.ports:
            valid = " ".join(map(str, sorted(self.fwd.ports)))
            raise BadPort(f"Invalid port {pid}\nThe valid ports array is [ {valid} ]")
        return pid

    @staticmethod
    def _words(arg: str, n: int, usage: str) -> list[str]:
        words = arg.split()
        if len(words) != n:
            raise BadArguments(f"usage: {usage}")
        return words

    # ---- forwarding ----------------------------------------------------
    def do_start(self, arg: str) -> None:
        """start [tx_first [N]]: start packet forwarding (tx_first: send 1 or N bursts first)."""
        words = arg.split()
        if words[:1] not in ([], ["tx_first"]) or len(words) > 2:
            raise BadArguments("usage: start [tx_first [N]]")
        bursts = (_int(words[1], "tx_first bursts") if len(words) == 2 else 1) if words else 0
        if words and bursts < 1:
            raise BadArguments(f"tx_first bursts must be >= 1, got {bursts}")
        if self.fwd.running:
            print("Packet forwarding already started")
            return
        if any(not p.started for p in self.fwd.ports.values()):
            print("Not all ports were started")
            return
        self.fwd.start(tx_first=bursts)
        self._print_fwd_config()
        self._print_rxtx_config()

    def do_stop(self, arg: str) -> None:
        """stop: stop packet forwarding and show the forward statistics."""
        self._words(arg, 0, "stop")
        if not self.fwd.running:
            print("Packet forwarding not started")
            return
        print("Telling cores to stop...\nWaiting for lcores to finish...")
        stats = self.fwd.stop()
        c = self.fwd.config
        print(display.fwd_stats(stats, c.burst, c.record_burst_stats))

    # ---- show / clear --------------------------------------------------
    def do_show(self, arg: str) -> None:
        """show port info|stats|summary|xstats all|N, show port N rxq|txq Q info,
        show rxq|txq info P Q, show config fwd|rxtx|cores|txpkts, show fwd stats all,
        show device info all|NAME."""
        words = arg.split()
        c = self.fwd.config
        if len(words) == 2 and words[0] == "config":
            what = words[1]
            if what == "fwd":
                self._print_fwd_config()
            elif what == "rxtx":
                self._print_rxtx_config()
            elif what == "cores":
                print("List of forwarding lcores: " + "".join(f" {lc}" for lc in self.fwd.fwd_lcores()))
            elif what == "txpkts":
                print(f"Number of segments: 1\nSegment sizes: {c.txpkts}\nSplit packet: off")
            else:
                raise BadArguments("usage: show config fwd|rxtx|cores|txpkts")
        elif words == ["fwd", "stats", "all"]:
            print(display.fwd_stats(self.fwd.fwd_stats(), c.burst, c.record_burst_stats, done=False))
        elif len(words) == 3 and words[:2] == ["device", "info"]:
            ports = [p for p in self.fwd.ports.values() if words[2] in ("all", p.name)]
            if not ports:
                raise BadPort(f"Invalid device {words[2]}")
            for port in ports:
                print(display.device_info(port))
        elif len(words) == 4 and words[0] in ("rxq", "txq") and words[1] == "info":
            self._queue_info(words[0], words[2], words[3])
        elif len(words) == 5 and words[0] == "port" and words[2] in ("rxq", "txq") and words[4] == "info":
            self._queue_info(words[2], words[1], words[3])
        elif len(words) == 3 and words[0] == "port" and words[1] in ("stats", "info", "xstats", "summary"):
            if words[1] == "summary":
                if words[2] != "all":
                    raise BadArguments("usage: show port summary all")
                print(display.port_summary(self.fwd.ports))
                return
            show = {"stats": lambda p: display.nic_stats(p, self.rates), "info": display.port_info,
                    "xstats": display.port_xstats}[words[1]]
            for pid in self._ports(words[2]):
                print(show(self.fwd.ports[pid]))
        else:
            raise BadArguments("usage: show port info|stats|summary|xstats all|N, show (rxq|txq) info P Q,"
                               " show config fwd|rxtx|cores|txpkts, show fwd stats all, show device info all")

    def _queue_info(self, which: str, port: str, queue: str) -> None:
        pid = self._port_id(port)
        print(display.queue_info(self.fwd.ports[pid], which == "rxq", _int(queue, "queue id")))

    def _print_fwd_config(self) -> None:
        streams = self.fwd.streams if self.fwd.running else self.fwd.layout()
        print(display.fwd_config(self.fwd.config.mode, self.fwd.fwd_ports(), streams, self.fwd.peer_of))

    def _print_rxtx_config(self) -> None:
        c = self.fwd.config
        ports = [pid for pid in (c.port_list or sorted(self.fwd.ports))
                 if pid in self.fwd.ports and not self.fwd.ports[pid].closed]
        print(display.config_rxtx(c.mode, c.burst, c.nb_cores, ports, self.fwd.ports))

    def do_clear(self, arg: str) -> None:
        """clear port stats|xstats all|N, clear fwd stats all."""
        words = arg.split()
        if words == ["fwd", "stats", "all"]:
            self.fwd.clear_fwd_stats()
            return
        if len(words) != 3 or words[:2] not in (["port", "stats"], ["port", "xstats"]):
            raise BadArguments("usage: clear port stats|xstats all|N, clear fwd stats all")
        for pid in self._ports(words[2]):
            port = self.fwd.ports[pid]
            if words[1] == "xstats":
                xstats.clear_xstats(port)
            else:
                port.clear_stats()
                print(f"\n  NIC statistics for port {pid} cleared")
            self.rates.forget(pid)

    # ---- settings ------------------------------------------------------
    def do_set(self, arg: str) -> None:
        """set fwd MODE | burst N | txpkts N[,N...] | nbcore N | nbport N | portlist L |
        eth-peer P MAC | verbose N | record-burst-stats on|off | promisc|allmulti P|all on|off |
        link-up|link-down port P | log global|TYPE LEVEL."""
        words = arg.split()
        what = words[0] if words else ""
        handler = self._SETTERS.get(what)
        if handler is None:
            raise BadArguments(f"unknown setting {what!r} ({', '.join(self._SETTERS)})" if what else
                               f"usage: set {'|'.join(self._SETTERS)} ...")
        handler(self, words[1:])

    def _set_fwd(self, words: list[str]) -> None:
        (value,) = self._args(words, 1, "set fwd MODE")
        self._require_stopped()
        if value not in MODE_NAMES:
            raise BadArguments(f"unknown forwarding mode {value!r} (available: {' '.join(MODE_NAMES)})")
        self.fwd.config.mode = value
        print(f"Set {value} packet forwarding mode")

    def _set_number(self, words: list[str], what: str, field: str) -> None:
        (value,) = self._args(words, 1, f"set {what} N")
        self._require_stopped()
        c = self.fwd.config
        if field == "txpkts":  # testpmd's segment list: one buffer of the total length here
            n = sum(_int(v, "txpkts") for v in value.split(","))
        else:
            n = _int(value, what)
        if field == "nb_cores" and n > len(self.fwd.lcores.workers):
            raise BadArguments(f"nb cores {n} out of configured cores {len(self.fwd.lcores.workers)}")
        old = getattr(c, field)
        setattr(c, field, n)
        try:
            c.validate()
        except ValueError as e:
            setattr(c, field, old)
            raise BadArguments(str(e)) from None
        if field == "nb_cores":
            print(f"Number of forwarding cores set to {n}")
        elif field == "burst":
            print(f"Number of packets per burst set to {n}")
        elif field == "txpkts" and "," in value:
            print(f"txpkts set to {n} (segments {value} joined into one buffer)")
        else:
            print(f"{what} set to {n}")

    def _set_nbport(self, words: list[str]) -> None:
        (value,) = self._args(words, 1, "set nbport N")
        self._require_stopped()
        n = _int(value, "nbport")
        available = len([p for p in self.fwd.ports.values() if not p.closed])
        if not 1 <= n <= available:
            raise BadArguments(f"nb ports {n} out of configured ports {available}")
        self.fwd.config.nb_ports = n
        print(f"Number of forwarding ports set to {n}")
        if n % 2 and self.fwd.config.mode not in REPLY_MODES:
            print("\nWarning! port-topology=paired and odd forward ports number, the last port will pair with itself.")

    def _set_portlist(self, words: list[str]) -> None:
        (value,) = self._args(words, 1, "set portlist X[,Y]*")
        self._require_stopped()
        ids = [self._port_id(v) for v in value.split(",")]
        if len(set(ids)) != len(ids):
            raise BadArguments(f"port list {value!r} names a port twice")
        self.fwd.config.port_list = ids
        self.fwd.config.nb_ports = 0
        print(f"Forwarding ports: {', '.join(map(str, ids))}")

    def _set_eth_peer(self, words: list[str]) -> None:
        port, mac = self._args(words, 2, "set eth-peer P XX:XX:XX:XX:XX:XX")
        self._require_stopped()
        self.fwd.set_peer_mac(self._port_id(port), _mac(mac))

    def _set_verbose(self, words: list[str]) -> None:
        (value,) = self._args(words, 1, "set verbose N")
        level = _int(value, "verbose level")
        print(f"Change verbose level from {self.fwd.config.verbose} to {level}")
        self.fwd.config.verbose = level
        pmdlog.set_all(8 if level > 0 else pmdlog.DPDK_LEVELS[pmdlog.DEFAULT_LEVEL])

    def _set_log(self, words: list[str]) -> None:
        what, level = self._args(words, 2, "set log global|TYPE LEVEL")
        spec = level if what == "global" else f"{what}:{level}"
        try:
            self.log_specs = [*self.log_specs, spec]
            pmdlog.configure(self.log_specs)
        except pmdlog.LogLevelError as e:
            self.log_specs.pop()
            raise BadArguments(str(e)) from None

    def _set_record_burst_stats(self, words: list[str]) -> None:
        (value,) = self._args(words, 1, "set record-burst-stats on|off")
        self.fwd.config.record_burst_stats = _on_off(value)

    def _set_mode_flag(self, words: list[str], what: str) -> None:
        target, value = self._args(words, 2, f"set {what} all|P on|off")
        on = _on_off(value)
        name = "promiscuous" if what == "promisc" else "all-multicast"
        for pid in self._ports(target, include_closed=False):
            if not on:  # no port here filters by address (all are promiscuous)
                print(f"Error during disabling {name} mode for port {pid}: Operation not supported")

    def _set_link(self, words: list[str], up: bool) -> None:
        _, port = self._args(words, 2, f"set link-{'up' if up else 'down'} port P")
        if words[0] != "port":
            raise BadArguments(f"usage: set link-{'up' if up else 'down'} port P")
        pid = self._port_id(port)
        try:
            self.fwd.ports[pid].driver.set_link(up)
        except PortError as e:
            print(f"\nSet link {'up' if up else 'down'} fail. ({e})")

    _SETTERS: dict = {
        "fwd": _set_fwd,
        "burst": lambda self, w: self._set_number(w, "burst", "burst"),
        "txpkts": lambda self, w: self._set_number(w, "txpkts", "txpkts"),
        "nbcore": lambda self, w: self._set_number(w, "nbcore", "nb_cores"),
        "nbport": _set_nbport,
        "portlist": _set_portlist,
        "eth-peer": _set_eth_peer,
        "verbose": _set_verbose,
        "log": _set_log,
        "record-burst-stats": _set_record_burst_stats,
        "promisc": lambda self, w: self._set_mode_flag(w, "promisc"),
        "allmulti": lambda self, w: self._set_mode_flag(w, "allmulti"),
        "link-up": lambda self, w: self._set_link(w, True),
        "link-down": lambda self, w: self._set_link(w, False),
    }

    def do_mac_addr(self, arg: str) -> None:
        """mac_addr set P XX:XX:XX:XX:XX:XX: the port's MAC address as the engines use it."""
        words = self._words(arg, 3, "mac_addr set P XX:XX:XX:XX:XX:XX")
        if words[0] != "set":
            raise BadArguments("usage: mac_addr set P XX:XX:XX:XX:XX:XX")
        self._require_stopped()
        self.fwd.ports[self._port_id(words[1])].mac_override = _mac(words[2])

    # ---- ports ---------------------------------------------------------
    def do_port(self, arg: str) -> None:
        """port start|stop|close|reset all|N, port attach VDEV, port detach N,
        port config all|N rxq|txq|rxd|txd V, port config mtu N V."""
        words = arg.split()
        if words[:1] == ["config"]:
            self._port_config(words[1:])
            return
        action, target = self._words(arg, 2, "port start|stop|close|reset|detach all|N, port attach VDEV")
        self._require_stopped()
        if action == "attach":
            print("Attaching a new port...")
            port = self.fwd.attach_port(target)
            print(f"Port {port.port_id} is attached. Now total ports is {len(self.fwd.ports)}\nDone")
        elif action == "detach":
            print("Removing a device...")
            name = self.fwd.detach_port(self._port_id(target))
            print(f"Device {name} is detached\nNow total ports is {len(self.fwd.ports)}\nDone")
        elif action == "start":
            for pid in self._ports(target, include_closed=target != "all"):
                print(f"Configuring Port {pid} (socket 0)")
                if pid in self.queue_conf:
                    self.fwd.ports[pid].configure(*self.queue_conf.pop(pid))
                self.fwd.start_port(pid)
                print(f"Port {pid}: {format_mac(self.fwd.ports[pid].mac())}")
            print("Checking link statuses...\nDone")
        elif action == "stop":
            print("Stopping ports...")
            for pid in self._ports(target):
                self.fwd.stop_port(pid)
            print("Checking link statuses...\nDone")
        elif action == "close":
            print("Closing ports...")
            for pid in self._ports(target, include_closed=target != "all"):
                self.fwd.close_port(pid)
                print(f"Port {pid} is closed")
            print("Done")
        elif action == "reset":
            pids = self._ports(target)
            if any(self.fwd.ports[pid].started for pid in pids):
                print("Please stop all ports first")
                return
            print("Resetting ports...")
            for pid in pids:
                self.fwd.ports[pid].reset()
            print("Done")
        else:
            raise BadArguments("usage: port start|stop|close|reset|detach all|N, port attach VDEV")

    def _port_config(self, words: list[str]) -> None:
        usage = "port config all|N rxq|txq|rxd|txd VALUE, port config mtu N VALUE"
        if len(words) != 3:
            raise BadArguments(f"usage: {usage}")
        self._require_stopped()
        if words[0] == "mtu":
            pid, mtu = self._port_id(words[1]), _int(words[2], "mtu")
            if not 68 <= mtu <= 65535:
                raise BadArguments(f"mtu must be 68..65535, got {mtu}")
            self.fwd.ports[pid].driver.set_mtu(mtu)
            return
        target, what, value = words
        if what not in ("rxq", "txq", "rxd", "txd"):
            raise BadArguments(f"usage: {usage}")
        n = _int(value, what)
        pids = self._ports(target, include_closed=False)
        if any(self.fwd.ports[pid].started for pid in pids):
            print("Please stop all ports first")
            return
        for pid in pids:
            port = self.fwd.ports[pid]
            if what in ("rxq", "txq"):  # applied at the next port start, as testpmd does
                if not 1 <= n <= 1024:
                    raise BadArguments(f"{what} must be 1..1024, got {n}")
                rxq, txq = self.queue_conf.get(pid, (port.nb_rxq, port.nb_txq))
                self.queue_conf[pid] = (n, txq) if what == "rxq" else (rxq, n)
                continue
            key = port.driver.desc_devargs[0 if what == "rxd" else 1]
            if key is None:
                raise PortError(f"port {pid} ({port.name}): the number of {what[:2].upper()} descriptors is set"
                                " by the peer or other devargs, not here")
            try:
                port.spec.args[key] = port.driver.devargs[key](str(n))
            except ValueError as e:
                raise BadArguments(f"{what} {n}: {e}") from None
            port.configure(port.nb_rxq, port.nb_txq)  # rings rebuilt at the new size

    @staticmethod
    def _args(words: list[str], n: int, usage: str) -> list[str]:
        if len(words) != n:
            raise BadArguments(f"usage: {usage}")
        return words

    # ---- help ----------------------------------------------------------
    def do_help(self, arg: str) -> None:
        """help [control|display|config|ports|all|COMMAND]: testpmd's help sections."""
        words = arg.split()
        if not words:
            print("\nHelp is available for the following sections:\n")
            for name in _HELP_SECTIONS:
                print(f"    help {name:<27}: {_HELP_INDEX[name]}.")
            print(f"    help {'all':<27}: All of the above sections.\n")
            print("Commands: " + ", ".join(_TREE))
            return
        if len(words) == 1 and (words[0] in _HELP_SECTIONS or words[0] == "all"):
            for name in (_HELP_SECTIONS if words[0] == "all" else [words[0]]):
                title, text = _HELP_SECTIONS[name]
                print(f"\n{title}:\n{'-' * (len(title) + 1)}{text}\n")
            return
        super().do_help(arg)

    # ---- leaving -------------------------------------------------------
    def shutdown(self) -> None:
        """Stop forwarding (printing its stats) and close every port; idempotent."""
        if self.fwd.running:
            self.do_stop("")
        for pid, port in sorted(self.fwd.ports.items()):
            if port.started:
                print(f"\nStopping port {pid}...\nStopping ports...")
                self.fwd.stop_port(pid)
                print("Done")
        for pid, port in sorted(self.fwd.ports.items()):
            if not port.closed:
                print(f"\nShutting down port {pid}...\nClosing ports...")
                self.fwd.close_port(pid)
                print(f"Port {pid} is closed\nDone")

    def do_quit(self, arg: str) -> bool:
        """quit: stop forwarding, close ports and exit."""
        self.shutdown()
        print("\nBye...")
        return True

    def do_EOF(self, arg: str) -> bool:
        return self.do_quit(arg)

    def get_names(self) -> list[str]:
        """Method names for ``help``; EOF (end of input) is not a command to list."""
        return [n for n in super().get_names() if n != "do_EOF"]

    # ---- completion ----------------------------------------------------
    def completenames(self, text: str, *ignored: object) -> list[str]:
        return [c + " " for c in _TREE if c.startswith(text)]

    def completedefault(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        """Walk _TREE along the words before the cursor; offer the next level."""
        node: object = _TREE
        for word in line[:begidx].split():
            if not isinstance(node, dict) or word not in node:
                return []
            node = node[word]
        if node == _PORT_LIST:
            node = ["all", *map(str, sorted(self.fwd.ports))]
        if node is None:
            return []
        return [w + " " for w in node if w.startswith(text)]


def _int(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise BadArguments(f"{what} must be an integer, got {text!r}") from None


def _on_off(text: str) -> bool:
    if text not in _ON_OFF:
        raise BadArguments(f"expected on or off, got {text!r}")
    return text == "on"


def _mac(text: str) -> bytes:
    """``XX:XX:XX:XX:XX:XX`` -> 6 bytes."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise BadArguments(f"invalid MAC address {text!r} (expected XX:XX:XX:XX:XX:XX)")
    return bytes(int(p, 16) for p in parts)


def make_shell(fwd: Forwarding, script_stdin: bool) -> TestpmdShell:
    """An interactive shell, or one that reads commands from a non-tty stdin."""
    if script_stdin:
        return TestpmdShell(fwd, stdin=sys.stdin, echo=True)
    return TestpmdShell(fwd)


__all__: list[str] = ["BadArguments", "BadPort", "TestpmdShell", "make_shell"]
