"""A small synchronous QMP client over a unix socket (JSON lines)."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any


class QmpError(RuntimeError):
    """QMP failed: no connection, a closed socket, or an "error" reply."""


class Qmp:
    """One QMP session: greeting, qmp_capabilities, then `execute`."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.sock: socket.socket | None = None
        self.buf = b""
        self.events: list[dict[str, Any]] = []  #: asynchronous events seen so far
        self.greeting: dict[str, Any] = {}

    def connect(self, timeout: float = 10.0, alive: Any = None) -> None:
        """Connect (retrying until TIMEOUT while ALIVE() is true) and negotiate."""
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
                break
            except OSError as e:
                s.close()
                if time.monotonic() > deadline or (alive is not None and not alive()):
                    raise QmpError(f"cannot connect to QMP at {self.path}: {e}") from e
                time.sleep(0.05)
        s.settimeout(max(1.0, deadline - time.monotonic()))
        self.sock = s
        try:
            self.greeting = self._read()
            # A client that connects while QEMU is still starting may see an
            # event (RESUME) queued before the greeting: kept, then skipped.
            while "event" in self.greeting and "QMP" not in self.greeting:
                self.events.append(self.greeting)
                self.greeting = self._read()
        except QmpError:
            self.close()
            raise
        s.settimeout(30.0)
        if "QMP" not in self.greeting:
            raise QmpError(f"expected a QMP greeting, got {self.greeting}")
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        assert self.sock is not None
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError as e:
                raise QmpError("timed out waiting for QMP") from e
            if not chunk:
                raise QmpError("QMP connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run COMMAND; return its "return" value, raise QmpError on "error"."""
        if self.sock is None:
            raise QmpError("QMP not connected")
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                err = reply["error"]
                raise QmpError(f"QMP {command}: {err.get('class')}: {err.get('desc')}")
            return reply.get("return")

    def close(self) -> None:
        """Close the socket (QEMU keeps running)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
