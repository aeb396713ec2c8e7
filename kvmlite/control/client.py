"""``kvmlite ctl PATH COMMAND [JSON]``: one command to a control socket, for people and scripts.

Prints the command's ``return`` value as JSON on stdout and exits 0; a QMP
error is printed on stderr (``kvmlite: CLASS: desc``) with status 1; a
socket that cannot be reached or an argument that is not a JSON object is
status 2.  ``dump-guest-memory FILE`` may name the file directly.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any

from kvmlite.errors import ConfigError

TIMEOUT_S = 60.0


class _Lines:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def next(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConfigError("the control socket closed the connection")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        msg = json.loads(line)
        if not isinstance(msg, dict):
            raise ConfigError("the control socket sent something that is not a JSON object")
        return msg


def execute(path: str, command: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """Connect, negotiate, run one command; the reply object (``return`` or ``error``)."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT_S)
        sock.connect(path)
    except OSError as err:
        raise ConfigError(f"cannot connect to {path}: {err.strerror or err}") from None
    with sock:
        lines = _Lines(sock)
        lines.next()  # the greeting
        for request in ({"execute": "qmp_capabilities"}, {"execute": command, "arguments": arguments or {}}):
            sock.sendall(json.dumps(request).encode() + b"\n")
            while True:
                reply = lines.next()
                if "return" in reply or "error" in reply:
                    break
            if "error" in reply:
                return reply
        return reply


def _arguments(command: str, text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        if command == "dump-guest-memory":
            return {"file": str(Path(text).resolve())}
        raise ConfigError(f"arguments {text!r} are not JSON") from None
    if not isinstance(value, dict):
        raise ConfigError("arguments must be a JSON object, e.g. '{\"cpu\": 0}'")
    if command == "dump-guest-memory" and isinstance(value.get("file"), str):
        value["file"] = str(Path(value["file"]).resolve())
    return value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kvmlite ctl", description="send one command to a control socket")
    parser.add_argument("path", help="the socket given to kvmlite run --api unix:PATH")
    parser.add_argument("command", help="e.g. query-status, stop, cont, query-regs, dump-guest-memory")
    parser.add_argument("arguments", nargs="?", help="a JSON object (dump-guest-memory: a file name)")
    args = parser.parse_args(argv)
    try:
        reply = execute(args.path, args.command, _arguments(args.command, args.arguments))
    except (OSError, ValueError) as err:
        raise ConfigError(f"control socket {args.path}: {err}") from None
    if "error" in reply:
        error = reply["error"]
        print(f"kvmlite: {error.get('class')}: {error.get('desc')}", file=sys.stderr)
        return 1
    print(json.dumps(reply["return"], indent=2))
    return 0
