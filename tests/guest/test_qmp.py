"""The QMP client against a scripted server: what QEMU may send on connect."""
from __future__ import annotations

import json
import os
import socket
import tempfile
import threading

from tools.guest.qmp import Qmp

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}
RESUME = {"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}


def _serve(listener: socket.socket, first: list[dict]) -> None:
    conn, _ = listener.accept()
    with conn:
        for msg in first:
            conn.sendall(json.dumps(msg).encode() + b"\n")
        f = conn.makefile("rb")
        for line in f:  # every command answered with an empty return
            if json.loads(line).get("execute"):
                conn.sendall(b'{"return": {}}\n')


def _connected(first: list[dict]) -> Qmp:
    d = tempfile.mkdtemp(prefix="qmp", dir="/tmp")
    path = os.path.join(d, "qmp.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    threading.Thread(target=_serve, args=(listener, first), daemon=True).start()
    q = Qmp(path)
    try:
        q.connect(timeout=5)
    finally:
        listener.close()
        os.unlink(path)
        os.rmdir(d)
    return q


def test_greeting_then_capabilities():
    q = _connected([GREETING])
    assert q.greeting == GREETING and q.events == []
    q.close()


def test_an_event_before_the_greeting_is_kept_and_skipped():
    """QEMU 7.2 sent RESUME before the greeting to a client that connected while it started."""
    q = _connected([RESUME, GREETING])
    assert q.greeting == GREETING and q.events == [RESUME]
    assert q.execute("query-status") == {}
    q.close()
