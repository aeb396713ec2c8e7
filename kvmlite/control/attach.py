"""Attach the debugger (``--gdb``, ``--gdb-wait``) and the control socket (``--api``) to a built machine."""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger(__name__)

#: How long the end of the VM waits for gdb to be told the exit status.
EXIT_REPORT_S = 2.0


class Attachments:
    """The servers attached to one machine run: made (sockets bound), ``start()``-ed (threads), and
    ``close()``-d after ``machine.run()``."""

    def __init__(
        self, machine: Any, gdb: str | None = None, gdb_wait: bool = False, api: str | None = None
    ) -> None:
        from kvmlite.errors import ConfigError

        if gdb_wait and gdb is None:
            raise ConfigError("--gdb-wait needs --gdb")
        self._machine = machine
        self.gdb_server: Any = None
        self.control_server: Any = None
        try:
            if gdb is not None:
                from kvmlite.gdb.machine_target import MachineTarget
                from kvmlite.gdb.server import GdbServer, parse_endpoint

                target = MachineTarget(machine, monitor=self._monitor)
                turns = getattr(machine.vm, "gil_turns", None)  # the software backend's (kvmlite.gil)
                self.gdb_server = GdbServer(parse_endpoint(gdb), target, turns=turns)
                if gdb_wait:
                    target.hold_at_start()
            if api is not None:
                from kvmlite.control.server import ControlServer, parse_api_spec

                self.control_server = ControlServer(
                    parse_api_spec(api).address, self.api, getattr(machine.vm, "gil_turns", None)
                )
                machine.control.on_stop.append(self._announce_stop(machine))
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        """Start the servers' threads (their sockets are bound already, by the constructor)."""
        for server in (self.gdb_server, self.control_server):
            if server is not None:
                server.start()

    @functools.cached_property
    def api(self) -> Any:
        """The machine's control API (made on first use: a plain run imports no control code)."""
        from kvmlite.control.api import MachineApi

        return MachineApi(self._machine)

    def _monitor(self, command: str) -> str:
        if command == "info devices":
            return self.api.format_devices()
        return f"unknown monitor command {command!r}; try: info registers, info devices"

    def _announce_stop(self, machine: Any) -> Any:
        sent: list[bool] = []

        def on_stop() -> None:
            info = machine.control.stop_info
            if sent or info is None or self.control_server is None:
                return
            sent.append(True)
            if info.reset:
                self.control_server.broadcast("RESET", {"guest": True})
            elif info.status == 4:
                self.control_server.broadcast("GUEST_PANICKED", {"action": "pause", "info": info.message})
            self.control_server.broadcast("SHUTDOWN", {"guest": True, "reason": info.message})

        return on_stop

    def close(self) -> None:
        if self.gdb_server is not None:
            self.gdb_server.finish(EXIT_REPORT_S)
            self.gdb_server.close()
        if self.control_server is not None:
            self.control_server.close()
