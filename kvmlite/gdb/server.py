"""The gdb stub's transport: a TCP or Unix listening socket, one gdb session at a time.

``--gdb [HOST:]PORT`` (localhost by default) or ``--gdb unix:PATH``.  The
server runs in its own thread: it accepts gdb, stops the machine (gdb
expects a stopped target when it connects, as with QEMU), and then moves
bytes between the socket and :class:`~kvmlite.gdb.stub.GdbStub`: acks and
checksums on the way in, framing on the way out, Ctrl-C while the target
runs, the stop reply when it stops.  When gdb goes away without ``k``, the
breakpoints are removed and the guest runs on; the next gdb may connect.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kvmlite.errors import ConfigError
from kvmlite.gdb.packets import Ack, BadPacket, Interrupt, Packet, PacketReader, frame
from kvmlite.gdb.stub import CLOSE, RESUMED, GdbStub
from kvmlite.gdb.target import Target
from kvmlite.vmm import seccomp

if TYPE_CHECKING:
    from kvmlite.gil import GilTurns

log = logging.getLogger(__name__)

#: How long the server sleeps at most while a target runs: a stop or a byte from gdb wakes it sooner.
POLL_S = 0.2
#: How long close() waits for the session thread to end before it releases the target.
CLOSE_WAIT_S = 1.0


@dataclass(frozen=True)
class Endpoint:
    """Where to listen: ``("tcp", host, port)`` or ``("unix", path, 0)``."""

    family: str
    address: str
    port: int = 0

    def describe(self) -> str:
        return f"unix:{self.address}" if self.family == "unix" else f"{self.address}:{self.port}"


def parse_endpoint(spec: str, option: str = "--gdb") -> Endpoint:
    """``1234``, ``HOST:1234`` or ``unix:PATH``; a clear ConfigError otherwise."""
    if spec.startswith("unix:"):
        path = spec[5:]
        if not path:
            raise ConfigError(f"{option} unix:PATH needs a path")
        return Endpoint("unix", path)
    host, sep, port = spec.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"{option} {spec!r}: expected [HOST:]PORT or unix:PATH") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"{option} {spec!r}: port out of range")
    return Endpoint("tcp", host or "127.0.0.1", number)


def listen(endpoint: Endpoint, option: str = "--gdb") -> socket.socket:
    """A listening socket for ``endpoint`` (a stale Unix socket file is replaced)."""
    try:
        if endpoint.family == "unix":
            path = Path(endpoint.address)
            if path.is_socket():
                path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(path))
        else:
            sock = socket.socket(socket.AF_INET6 if ":" in endpoint.address else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((endpoint.address, endpoint.port))
        sock.listen(4)
    except OSError as err:
        raise ConfigError(f"{option} {endpoint.describe()}: cannot listen: {err.strerror or err}") from None
    return sock


class GdbServer:
    """Accepts gdb connections and runs one session at a time in a thread of its own."""

    def __init__(
        self,
        endpoint: Endpoint,
        target: Target,
        on_close: Callable[[], None] | None = None,
        turns: GilTurns | None = None,
    ) -> None:
        """``turns``: the VM's :class:`~kvmlite.gil.GilTurns` where its vCPUs hold the GIL (the
        software backend): gdb's socket is named there, so a Ctrl-C or a packet is read at once."""
        self.endpoint = endpoint
        self.target = target
        self.turns = turns
        self.sock = listen(endpoint)
        if endpoint.family == "tcp":
            self.endpoint = Endpoint("tcp", endpoint.address, self.sock.getsockname()[1])
        self._on_close = on_close
        self._closing = False
        self._thread: threading.Thread | None = None
        self._connected = False
        self._exit_sent = threading.Event()

    def finish(self, timeout: float) -> None:
        """At the VM's end: give a connected gdb up to ``timeout`` s to be told the exit status."""
        if self._connected:
            self._exit_sent.wait(timeout)

    def start(self) -> None:
        log.warning("gdb stub listening on %s", self.endpoint.describe())
        self._thread = seccomp.thread("gdb", self._serve, "gdb-stub")
        self._thread.start()

    def close(self) -> None:
        self._closing = True
        try:
            self.sock.close()
        except OSError:
            pass
        if self.endpoint.family == "unix":
            try:
                os.unlink(self.endpoint.address)
            except OSError:
                pass
        if self._thread is threading.current_thread():
            return  # closed from its own session (a callback): the target stays until the process ends
        if self._thread is not None and self._connected:
            self._thread.join(CLOSE_WAIT_S)  # a session sees _closing at its next wake-up
            if self._thread.is_alive():  # blocked reading a gdb that holds the VM stopped: leave it
                return
        self.target.close()  # no session: the thread waits in accept() and never looks at the target

    @staticmethod
    def _drain(fd: int) -> None:
        """Empty the target's stop descriptor before looking for a stop (it is only a wake-up)."""
        try:
            while os.read(fd, 4096):
                pass
        except OSError:  # BlockingIOError: empty
            pass

    def _serve(self) -> None:
        while not self._closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            log.info("gdb connected")
            self._connected = True
            try:
                with conn:
                    if self._session(conn):
                        if self._on_close is not None:
                            self._on_close()
                        return
            except OSError as err:
                log.info("gdb connection lost: %s", err)
            except Exception:  # a bug in the stub must not take the VM down with it
                log.exception("gdb stub: unexpected error; the session is closed")
            self._connected = False
            self._exit_sent.set()
            log.info("gdb disconnected")

    def _session(self, conn: socket.socket) -> bool:
        """Serve one gdb; True if it killed the VM."""
        stub = GdbStub(self.target)
        reader = PacketReader()
        self.target.interrupt()
        first = self.target.wait(5.0)
        if first is not None:
            stub.stop_reply(first)
        stops = self.target.stop_fd()
        sel = selectors.DefaultSelector()
        sel.register(conn, selectors.EVENT_READ)
        sel.register(stops, selectors.EVENT_READ)
        if self.turns is not None:
            self.turns.watch(conn.fileno())
        try:
            while not self._closing:
                if stub.running:
                    ready = {key.fd for key, _ in sel.select(POLL_S)}
                    if stops in ready:
                        self._drain(stops)
                    event = self.target.wait(0)
                    if event is not None:
                        conn.sendall(frame(stub.stop_reply(event)))
                        if event.exit_status is not None:
                            self._exit_sent.set()
                            return False
                    if conn.fileno() not in ready:
                        continue
                if self.turns is not None:
                    self.turns.busy()
                data = conn.recv(65536)
                if not data:
                    break
                for ev in reader.feed(data):
                    if isinstance(ev, Interrupt):
                        if stub.running:
                            self.target.interrupt()
                    elif isinstance(ev, BadPacket):
                        if not stub.no_ack:
                            conn.sendall(b"-")
                    elif isinstance(ev, Packet):
                        if not stub.no_ack:
                            conn.sendall(b"+")
                        reply = stub.handle(ev.payload)
                        if reply is CLOSE:
                            return True
                        if reply is not RESUMED:
                            assert isinstance(reply, bytes)
                            conn.sendall(frame(reply))
                        if stub.detached:
                            return False
                    elif isinstance(ev, Ack):
                        pass  # replies are not retransmitted: TCP and Unix sockets do not lose bytes
                if self.turns is not None:
                    self.turns.served()
        finally:
            if self.turns is not None:
                self.turns.unwatch(conn.fileno())
                self.turns.served()  # no vCPU waits for a round that will not come
            sel.close()
        if not stub.detached:
            self.target.detach()
        return False
