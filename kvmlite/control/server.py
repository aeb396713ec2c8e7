"""The control socket, ``--api unix:PATH``: JSON lines in the shape of QEMU's QMP.

A client connects and receives the greeting::

    {"QMP": {"version": {"kvmlite": "0.1"}, "capabilities": []}}

It must send ``{"execute": "qmp_capabilities"}`` first (anything else gets
``CommandNotFound``, as in QMP), then commands.  Input is a stream of JSON
objects as QMP reads it: no newline is needed between them (``qemu.qmp``
sends none), an object may span lines, several may share one; replies and
events are one JSON object per line::

    {"execute": "query-regs", "arguments": {"cpu": 0}, "id": 7}
    -> {"return": {"rax": 0, ...}, "id": 7}
    -> {"error": {"class": "GenericError", "desc": "..."}, "id": 7}

Events arrive on their own lines: ``{"event": "STOP", "data": {},
"timestamp": {"seconds": ..., "microseconds": ...}}`` (STOP, RESUME,
POWERDOWN, RESET, SHUTDOWN, GUEST_PANICKED).  Malformed JSON, a line that
is not an object, an unknown command and bad arguments get an ``error``
reply; the connection stays open.  Any number of clients are served at once
by one thread with a selector; commands run one at a time in that thread.  On the software
backend the server names its sockets to the VM's :class:`~kvmlite.gil.GilTurns`, so that a
running emulated vCPU lets it have the GIL when a client writes (``query-status`` in about 2 ms
instead of 10-100 ms while the guest runs, the first ``snapshot-save`` in 40 ms instead of 0.3-0.8 s).
"""

from __future__ import annotations

import json
import logging
import re
import selectors
import socket
import threading
import time
from pathlib import Path
from typing import Any

from kvmlite.control.api import GENERIC, NOT_FOUND, CommandError, MachineApi
from kvmlite.gdb.server import Endpoint, listen
from kvmlite.gil import GilTurns
from kvmlite.vmm import seccomp

log = logging.getLogger(__name__)

GREETING = {"QMP": {"version": {"kvmlite": "0.1"}, "capabilities": []}}
MAX_LINE = 1 << 20


def parse_api_spec(spec: str) -> Endpoint:
    from kvmlite.errors import ConfigError

    if not spec.startswith("unix:") or len(spec) <= 5:
        raise ConfigError(f"--api {spec!r}: expected unix:PATH")
    return Endpoint("unix", spec[5:])


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.negotiated = False


class ControlServer:
    """Serves :class:`MachineApi` on a Unix socket to any number of clients.

    ``turns``: the VM's :class:`~kvmlite.gil.GilTurns` where its vCPUs hold the GIL (the
    software backend), else None.
    """

    def __init__(self, path: str, api: MachineApi, turns: GilTurns | None = None) -> None:
        self.endpoint = Endpoint("unix", path)
        self.api = api
        self.turns = turns
        self.sock = listen(self.endpoint, "--api")
        self.sock.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ, None)
        if turns is not None:
            turns.watch(self.sock.fileno())
        self._clients: dict[socket.socket, _Client] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._thread: threading.Thread | None = None
        api.on_event.append(self.broadcast)

    def start(self) -> None:
        self._thread = seccomp.thread("control", self._serve, "control-socket")
        self._thread.start()

    def close(self) -> None:
        self._closing = True
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            for client in list(self._clients.values()):
                self._unwatch(client.sock)
                client.sock.close()
            self._clients.clear()
        self._sel.close()
        self._unwatch(self.sock)
        self.sock.close()
        Path(self.endpoint.address).unlink(missing_ok=True)

    def broadcast(self, event: str, data: dict[str, Any] | None = None) -> None:
        """An asynchronous event to every client past capability negotiation."""
        now = time.time()
        msg = {"event": event, "data": data or {},
               "timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1e6)}}  # fmt: skip
        with self._lock:
            clients = [c for c in self._clients.values() if c.negotiated]
        for client in clients:
            self._send(client, msg)

    # --- the server thread ---------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            while not self._closing:
                try:
                    ready = self._sel.select(0.2)
                except (OSError, ValueError):
                    return
                if ready and self.turns is not None:
                    self.turns.busy()
                for key, _ in ready:
                    if key.fileobj is self.sock:
                        self._accept()
                    else:
                        self._read(key.data)
                if self.turns is not None:
                    self.turns.served()
        finally:
            if self.turns is not None:
                self.turns.served()  # no vCPU waits for a round that will not come

    def _unwatch(self, sock: socket.socket) -> None:
        if self.turns is not None and sock.fileno() >= 0:
            self.turns.unwatch(sock.fileno())

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        conn.setblocking(True)
        client = _Client(conn)
        with self._lock:
            self._clients[conn] = client
        self._sel.register(conn, selectors.EVENT_READ, client)
        if self.turns is not None:
            self.turns.watch(conn.fileno())
        self._send(client, GREETING)

    def _drop(self, client: _Client) -> None:
        with self._lock:
            self._clients.pop(client.sock, None)
        try:
            self._sel.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        self._unwatch(client.sock)
        client.sock.close()

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        messages, client.buf = split_messages(client.buf + data)
        for message in messages:
            self._send(client, self.handle_line(client, message))
        if len(client.buf) > MAX_LINE:
            client.buf = b""
            self._send(client, _error(GENERIC, f"input of more than {MAX_LINE} bytes with no end dropped"))

    def _send(self, client: _Client, msg: dict[str, Any]) -> None:
        try:
            client.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError:
            self._drop(client)

    # --- one request ---------------------------------------------------------------------------
    def handle_line(self, client: _Client, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as err:
            return _error(GENERIC, f"JSON parse error: {err}")
        if not isinstance(request, dict):
            return _error(GENERIC, "QMP input must be a JSON object")
        ident = request.get("id")
        reply = self._execute(client, request)
        if ident is not None:
            reply["id"] = ident
        return reply

    def _execute(self, client: _Client, request: dict[str, Any]) -> dict[str, Any]:
        name = request.get("execute")
        if not isinstance(name, str):
            return _error(GENERIC, "QMP input lacks member 'execute' (a string)")
        extra = set(request) - {"execute", "arguments", "id"}
        if extra:
            return _error(GENERIC, f"QMP input member '{sorted(extra)[0]}' is unexpected")
        if name == "qmp_capabilities":
            if client.negotiated:
                return _error(NOT_FOUND, "Capabilities negotiation is already complete, command ignored")
            client.negotiated = True
            return {"return": {}}
        if not client.negotiated:
            return _error(NOT_FOUND, "Expecting capabilities negotiation with 'qmp_capabilities'")
        try:
            result = self.api.execute(name, request.get("arguments"))
        except CommandError as err:
            return _error(err.error_class, err.desc)
        except Exception as err:  # a bug must cost one reply, not the connection or the VM
            log.exception("control socket: %s failed", name)
            return _error(GENERIC, f"{name} failed: {err}")
        return {"return": result}


def _error(cls: str, desc: str) -> dict[str, Any]:
    return {"error": {"class": cls, "desc": desc}}


_STRUCTURE = re.compile(rb'[{}\[\]"]')  # what changes the nesting outside a string
_STRING_END = re.compile(rb'["\\]')  # the end of a string, or an escape inside it
_GARBAGE_END = re.compile(rb"[\n{]")  # where text that cannot start an object or array stops
_OPENERS = b"{["
_SPACE = b" \t\r\n"


def split_messages(buf: bytes) -> tuple[list[bytes], bytes]:
    """The complete top-level JSON texts at the start of ``buf``, and what is left (incomplete).

    QMP's framing: an object or array ends where its brackets balance (outside strings); text that
    cannot start one (``this is not json``, a bare number) runs to the end of its line or to the next
    ``{`` and is returned as one message, for the parser to refuse.
    """
    out: list[bytes] = []
    pos, size = 0, len(buf)
    while True:
        while pos < size and buf[pos] in _SPACE:
            pos += 1
        if pos >= size:
            return out, b""
        if buf[pos] not in _OPENERS:
            stop = _GARBAGE_END.search(buf, pos)
            if stop is None:
                return out, buf[pos:]
            end = stop.start() if buf[stop.start()] == 0x7B else stop.end()  # a "{" starts the next one
            out.append(buf[pos:end])
            pos = end
            continue
        depth, i = 0, pos
        while True:
            token = _STRUCTURE.search(buf, i)
            if token is None:
                return out, buf[pos:]
            i = token.end()
            char = buf[token.start()]
            if char == 0x22:  # a string: skip to its closing quote, past escapes
                while True:
                    quote = _STRING_END.search(buf, i)
                    if quote is None:
                        return out, buf[pos:]
                    if buf[quote.start()] == 0x5C:
                        i = quote.start() + 2
                        continue
                    i = quote.end()
                    break
                continue
            depth += 1 if char in _OPENERS else -1
            if depth == 0:
                out.append(buf[pos:i])
                pos = i
                break
