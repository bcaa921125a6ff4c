"""The ``testpmd>`` command shell: one ``do_*`` method per command, a tree
for tab completion, and one place (``onecmd``) that turns any error into a
one-line message so the prompt always comes back."""
from __future__ import annotations

import cmd
import os
import sys
from collections.abc import Iterable
from typing import IO

from pmd.rates import RateTracker
from pmd.ethdev import PortError, format_mac
from pmd.fwd.common import MODE_NAMES
from pmd.fwd.runtime import Forwarding, FwdError
from pmd.lcore import LcoreError

from . import display

# VHOSTPCI_TESTPMD_HISTORY overrides the path (tests keep $HOME, where the
# Numba cache lives, and still leave the user's history alone).
HISTORY_FILE = os.environ.get("VHOSTPCI_TESTPMD_HISTORY") or os.path.expanduser("~/.vhostpci_testpmd_history")
HISTORY_LENGTH = 1000

_PORT_LIST = "PORTS"  # completion placeholder: "all" plus the port ids
# command -> subcommand -> ... ; a leaf is None (free text), a tuple of words,
# or _PORT_LIST.
_TREE: dict = {
    "start": ("tx_first",),
    "stop": None,
    "show": {"port": {"stats": _PORT_LIST, "info": _PORT_LIST, "xstats": _PORT_LIST}, "config": ("fwd",)},
    "clear": {"port": {"stats": _PORT_LIST}},
    "set": {"fwd": MODE_NAMES, "burst": None, "txpkts": None, "nbcore": None},
    "port": {"start": _PORT_LIST, "stop": _PORT_LIST, "close": _PORT_LIST, "attach": None, "detach": _PORT_LIST},
    "help": None,
    "quit": None,
}


class BadArguments(ValueError):
    """The command's words do not match its syntax."""


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
        """``all`` or a port id -> port ids; an unknown id raises PortError."""
        if text == "all":
            return [pid for pid, p in sorted(self.fwd.ports.items()) if include_closed or not p.closed]
        self.fwd.port(_int(text, "port id"))
        return [int(text)]

    @staticmethod
    def _words(arg: str, n: int, usage: str) -> list[str]:
        words = arg.split()
        if len(words) != n:
            raise BadArguments(f"usage: {usage}")
        return words

    # ---- forwarding ----------------------------------------------------
    def do_start(self, arg: str) -> None:
        """start [tx_first]: start packet forwarding (tx_first: send one burst first)."""
        words = arg.split()
        if words not in ([], ["tx_first"]):
            raise BadArguments("usage: start [tx_first]")
        if self.fwd.running:
            print("Packet forwarding already started")
            return
        self.fwd.start(tx_first=bool(words))
        self._print_fwd_config()

    def do_stop(self, arg: str) -> None:
        """stop: stop packet forwarding and show the forward statistics."""
        self._words(arg, 0, "stop")
        if not self.fwd.running:
            print("Packet forwarding not started")
            return
        print("Telling cores to stop...\nWaiting for lcores to finish...")
        print(display.fwd_stats(self.fwd.stop()))

    # ---- show / clear --------------------------------------------------
    def do_show(self, arg: str) -> None:
        """show port stats|info|xstats all|N, show config fwd."""
        words = arg.split()
        if words == ["config", "fwd"]:
            self._print_fwd_config()
        elif len(words) == 3 and words[:2] == ["port", "stats"]:
            for pid in self._ports(words[2]):
                print(display.nic_stats(self.fwd.ports[pid], self.rates))
        elif len(words) == 3 and words[:2] == ["port", "info"]:
            for pid in self._ports(words[2]):
                print(display.port_info(self.fwd.ports[pid]))
        elif len(words) == 3 and words[:2] == ["port", "xstats"]:
            for pid in self._ports(words[2]):
                print(display.port_xstats(self.fwd.ports[pid]))
        else:
            raise BadArguments("usage: show port stats|info|xstats all|N, show config fwd")

    def _print_fwd_config(self) -> None:
        c = self.fwd.config
        streams = self.fwd.streams if self.fwd.running else self.fwd.layout()
        print(display.fwd_config(c.mode, c.burst, c.nb_cores, self.fwd.fwd_ports(), streams))

    def do_clear(self, arg: str) -> None:
        """clear port stats all|N: zero the port counters."""
        words = self._words(arg, 3, "clear port stats all|N")
        if words[:2] != ["port", "stats"]:
            raise BadArguments("usage: clear port stats all|N")
        for pid in self._ports(words[2]):
            self.fwd.ports[pid].clear_stats()
            self.rates.forget(pid)
            print(f"\n  NIC statistics for port {pid} cleared")

    # ---- settings ------------------------------------------------------
    def do_set(self, arg: str) -> None:
        """set fwd MODE | set burst N | set txpkts N | set nbcore N."""
        what, value = self._words(arg, 2, "set fwd|burst|txpkts|nbcore VALUE")
        self._require_stopped()
        c = self.fwd.config
        if what == "fwd":
            if value not in MODE_NAMES:
                raise BadArguments(f"unknown forwarding mode {value!r} (available: {' '.join(MODE_NAMES)})")
            c.mode = value
            print(f"Set {value} packet forwarding mode")
            return
        field = {"burst": "burst", "txpkts": "txpkts", "nbcore": "nb_cores"}.get(what)
        if field is None:
            raise BadArguments(f"unknown setting {what!r} (fwd, burst, txpkts, nbcore)")
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
        print(f"Number of forwarding cores set to {n}" if field == "nb_cores" else f"{what} set to {n}")

    # ---- ports ---------------------------------------------------------
    def do_port(self, arg: str) -> None:
        """port start|stop|close all|N, port attach VDEV, port detach N."""
        words = self._words(arg, 2, "port start|stop|close|detach all|N, port attach VDEV")
        action, target = words
        self._require_stopped()
        if action == "attach":
            print("Attaching a new port...")
            port = self.fwd.attach_port(target)
            print(f"Port {port.port_id} is attached. Now total ports is {len(self.fwd.ports)}\nDone")
        elif action == "detach":
            print("Removing a device...")
            name = self.fwd.detach_port(_int(target, "port id"))
            print(f"Device {name} is detached\nNow total ports is {len(self.fwd.ports)}\nDone")
        elif action == "start":
            for pid in self._ports(target, include_closed=target != "all"):
                print(f"Configuring Port {pid} (socket 0)")
                self.fwd.start_port(pid)
                print(f"Port {pid}: {format_mac(self.fwd.ports[pid].mac())}")
            print("Done")
        elif action == "stop":
            print("Stopping ports...")
            for pid in self._ports(target):
                self.fwd.stop_port(pid)
            print("Done")
        elif action == "close":
            print("Closing ports...")
            for pid in self._ports(target, include_closed=target != "all"):
                self.fwd.close_port(pid)
                print(f"Port {pid} is closed")
            print("Done")
        else:
            raise BadArguments("usage: port start|stop|close|detach all|N, port attach VDEV")

    # ---- leaving -------------------------------------------------------
    def shutdown(self) -> None:
        """Stop forwarding (printing its stats) and close every port; idempotent."""
        if self.fwd.running:
            self.do_stop("")
        for pid, port in sorted(self.fwd.ports.items()):
            if not port.closed:
                print(f"\nShutting down port {pid}...")
                self.fwd.close_port(pid)
                print(f"Port {pid} is closed")

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


def make_shell(fwd: Forwarding, script_stdin: bool) -> TestpmdShell:
    """An interactive shell, or one that reads commands from a non-tty stdin."""
    if script_stdin:
        return TestpmdShell(fwd, stdin=sys.stdin, echo=True)
    return TestpmdShell(fwd)


__all__: list[str] = ["BadArguments", "TestpmdShell", "make_shell"]
