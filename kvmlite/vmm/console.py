"""The host side of the serial console (the Firecracker ``SerialWrapper`` shape).

The 16550 model knows nothing about file descriptors; this wrapper connects it
to one of ``--serial`` backends:

* ``stdio`` (default): output to stdout, input from stdin.  When stdin is a
  terminal it is put in raw mode (restored on every way out: normal exit,
  error, signal) and ``Ctrl-A x`` quits as in QEMU; ``Ctrl-A Ctrl-A`` sends a
  literal Ctrl-A.
* ``file:PATH``: output appended to PATH, no input.
* ``unix:PATH``: a listening Unix socket; one client at a time gets the output
  and its input reaches the guest.  Output while nobody is connected is
  discarded.
* ``none``: output discarded, no input.

Output is never dropped because the host is slow: when the backend cannot
take a byte right now, :class:`OutputPump` keeps it and tells the UART it is
busy, so the guest sees a full transmitter in LSR and waits, exactly as on a
slow serial line.  Input goes into the UART's RX FIFO only as far as it has
room; the rest waits here.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import select
import stat
import termios
import threading
import tty
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from kvmlite.errors import ConfigError
from kvmlite.status import ExitStatus
from kvmlite.vmm import seccomp
from kvmlite.vmm.loop import VmControl

if TYPE_CHECKING:  # imported by the unix: backend, the one that uses it
    import socket

log = logging.getLogger(__name__)

CTRL_A = 0x01
QUIT_KEY = ord("x")
READ_CHUNK = 4096
#: Input held for the guest beyond what its RX FIFO takes; past this kvmlite stops reading the host side.
MAX_PENDING_INPUT = 64 * 1024
#: How long close() waits for each console thread.
JOIN_TIMEOUT_S = 2.0
#: The longest Unix socket path (sun_path holds 108 bytes with the terminating NUL).
MAX_UNIX_PATH = 107
SHUT_RDWR = 2  # socket.SHUT_RDWR (socket is imported by the unix: backend only)


class ConsoleDevice(Protocol):
    """What a console backend drives: the 16550, or virtio-console's port."""

    def set_tx_busy(self, busy: bool) -> None: ...

    def rx_space(self) -> int: ...

    def enqueue_input(self, data: bytes) -> int: ...


def parse_serial_spec(spec: str) -> tuple[str, str]:
    """``stdio``, ``none``, ``file:PATH``, ``unix:PATH`` -> (kind, path)."""
    if spec in ("stdio", "none"):
        return spec, ""
    kind, _, path = spec.partition(":")
    if kind == "unix" and len(os.fsencode(path)) > MAX_UNIX_PATH:
        raise ConfigError(
            f"--serial unix:{path}: the path is {len(os.fsencode(path))} bytes; "
            f"a Unix socket path has at most {MAX_UNIX_PATH}"
        )
    if kind in ("file", "unix") and path:
        return kind, path
    raise ConfigError(f"--serial {spec!r}: expected stdio, none, file:PATH or unix:PATH")


def _never_blocks(fd: int) -> bool:
    """``fd`` is a regular file or /dev/null: its writes complete at once (a pipe, tty or socket may wait)."""
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            return True
        return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.stat(os.devnull).st_rdev
    except OSError:
        return False


class OutputPump:
    """Writes to a file descriptor without ever blocking the vCPU; backpressure goes to the UART."""

    def __init__(self, fd: int, lock: threading.RLock, set_busy: Callable[[bool], None]) -> None:
        self.fd = fd
        self.lock = lock
        self.set_busy = set_busy
        self.pending = bytearray()
        self.closed = False  # the reader went away (or close()): output is discarded
        #: A regular file or /dev/null never makes a write wait: no select() before each write.
        self._never_blocks = _never_blocks(fd)
        self._shutdown = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread = seccomp.thread("console", self._drain, "serial-out")
        self._thread.start()

    def close(self) -> None:
        """Stop the drain thread and release its pipe (not with the device lock held: it takes it)."""
        if self._shutdown:
            return
        self._shutdown = self.closed = True
        os.write(self._wake_w, b"!")
        self._thread.join(timeout=JOIN_TIMEOUT_S)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def write(self, data: bytes) -> None:
        """Called by the UART (device lock held)."""
        if self.closed:
            return
        if self.pending:
            self.pending += data
            return
        n = self._try_write(data)
        if n < len(data):
            self.pending += data[n:]
            self.set_busy(True)
            os.write(self._wake_w, b"!")

    def _try_write(self, data: bytes | bytearray) -> int:
        try:
            if self._never_blocks:
                return os.write(self.fd, data)
            _, writable, _ = select.select([], [self.fd], [], 0)
            if not writable:
                return 0
            return os.write(self.fd, data[: select.PIPE_BUF])
        except BlockingIOError:
            return 0
        except OSError as err:  # the reader went away: nothing more can be delivered
            log.warning("serial output: %s; discarding further output", err.strerror)
            self.closed = True
            return len(data)

    def _drain(self) -> None:
        while True:
            select.select([self._wake_r], [], [])
            if self._shutdown:
                return
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 64)
            while True:
                with self.lock:
                    if not self.pending or self.closed:
                        self.pending.clear()
                        self.set_busy(False)  # the UART flushes what it held into write()
                        if not self.pending:
                            break
                        continue
                    chunk = bytes(self.pending[: select.PIPE_BUF])
                try:
                    select.select([], [self.fd], [], 1.0)
                    n = os.write(self.fd, chunk)
                except BlockingIOError:
                    n = 0
                except OSError as err:
                    log.warning("serial output: %s; discarding further output", err.strerror)
                    with self.lock:
                        self.closed = True
                    n = len(chunk)
                with self.lock:
                    del self.pending[:n]


class SerialConsole:
    """Connects a console device (the 16550, virtio-console) to a ``--serial``-style backend.

    Built before the UART so the UART can be given :meth:`write` as its output
    sink and :meth:`rx_space_available` as its ``on_rx_space``; :meth:`bind`
    then completes the pair.
    """

    def __init__(self, spec: str, lock: threading.RLock, control: VmControl) -> None:
        self.serial: ConsoleDevice | None = None
        self._sink: Callable[[bytes], None] | None = None
        self.kind, self.path = parse_serial_spec(spec)
        self.lock = lock
        self.control = control
        self._pending_input = bytearray()
        #: Signalled when pending input shrinks or the console closes (the reader waits on it when full).
        self._room = threading.Condition(lock)
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._wake_r, self._wake_w = -1, -1  # wakes the reader threads out of select() at close()
        self._saved_tty: list[Any] | None = None
        self._out_fd: int | None = None
        self._pump: OutputPump | None = None
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self._ctrl_a = False
        control.on_stop.append(self._on_stop)

    # --- the UART's side ----------------------------------------------------------------
    def bind(self, serial: ConsoleDevice) -> None:
        self.serial = serial

    def write(self, data: bytes) -> None:
        """The UART's output sink (device lock held)."""
        if self._sink is not None:
            self._sink(data)

    def rx_space_available(self) -> None:
        """The guest emptied some of the RX FIFO: offer pending input again (device lock held)."""
        if self._pending_input:
            self._feed(b"")
            self._room.notify_all()

    def _set_busy(self, busy: bool) -> None:
        if self.serial is not None:
            self.serial.set_tx_busy(busy)

    # --- set-up ---------------------------------------------------------------------
    def open(self) -> None:
        """Open the backend (the terminal's raw mode, a ``file:``, a ``unix:`` socket) without starting
        any thread: what needs privileges happens here, before kvmlite drops them (kvmlite.vmm.jail)."""
        if self._wake_r >= 0:
            return
        self._wake_r, self._wake_w = os.pipe()
        if self.kind == "stdio":
            self._out_fd = 1
            if os.isatty(0):
                self._enter_raw_mode()
        elif self.kind == "file":
            try:
                self._out_fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError as err:
                raise ConfigError(f"--serial file:{self.path}: {err.strerror}") from err
        elif self.kind == "unix":
            self._listen(Path(self.path))

    def start(self) -> None:
        """:meth:`open` if not done, then the threads that move the bytes."""
        self.open()
        if self._out_fd is not None:
            self._pump = OutputPump(self._out_fd, self.lock, self._set_busy)
            self._sink = self._pump.write
        if self.kind == "stdio":
            self._start_reader(0)
        elif self.kind == "unix":
            self._sink = self._socket_out
            self._start_thread(self._accept_loop, "serial-accept")

    def _enter_raw_mode(self) -> None:
        self._saved_tty = termios.tcgetattr(0)
        mode = termios.tcgetattr(0)
        mode[tty.IFLAG] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
        mode[tty.CFLAG] |= termios.CS8
        mode[tty.LFLAG] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
        mode[tty.CC][termios.VMIN] = 1
        mode[tty.CC][termios.VTIME] = 0
        # OPOST stays on, as QEMU leaves it, so a guest's bare "\n" still returns the carriage
        termios.tcsetattr(0, termios.TCSAFLUSH, mode)
        atexit.register(self.restore_terminal)  # signals are the caller's: a stop restores it too

    def restore_terminal(self) -> None:
        if self._saved_tty is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(0, termios.TCSAFLUSH, self._saved_tty)
            self._saved_tty = None
            atexit.unregister(self.restore_terminal)

    def _listen(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            if path.is_socket():
                path.unlink()
        import socket

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
        except OSError as err:
            sock.close()
            raise ConfigError(f"--serial unix:{path}: {err.strerror or err}") from err
        sock.listen(1)
        self._listener = sock

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self.control.stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            client.setblocking(False)
            with self.lock:
                self._client = client
                self._pump = OutputPump(client.fileno(), self.lock, self._set_busy)
            self._read_loop(client.fileno())
            with self.lock:
                self._client = None
                pump, self._pump = self._pump, None
                self._set_busy(False)
            if pump is not None:
                pump.close()
            client.close()

    def _socket_out(self, data: bytes) -> None:
        if self._pump is not None:
            self._pump.write(data)

    # --- input ------------------------------------------------------------------------
    def _start_thread(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = seccomp.thread("console", target, name, *args)
        self._threads.append(thread)
        thread.start()

    def _start_reader(self, fd: int) -> None:
        self._start_thread(self._read_loop, "serial-in", fd)

    def _read_loop(self, fd: int) -> None:
        """Host input to the guest; reads only while less than MAX_PENDING_INPUT waits for the FIFO."""
        while not self.control.stopping:
            with self._room:
                while len(self._pending_input) >= MAX_PENDING_INPUT and not self._closing:
                    self._room.wait()
            try:
                readable, _, _ = select.select([fd, self._wake_r], [], [], None)
                if self._closing:
                    return
                data = os.read(fd, READ_CHUNK) if fd in readable else b""
            except BlockingIOError:
                data = b""
            except OSError:
                return
            if fd in readable and not data:  # end of file; what is pending still goes in as the FIFO drains
                return
            self._feed(self._filter_escapes(data) if self._saved_tty is not None else data)

    def _filter_escapes(self, data: bytes) -> bytes:
        """Ctrl-A x quits; Ctrl-A Ctrl-A sends one Ctrl-A; Ctrl-A anything else is dropped."""
        out = bytearray()
        for byte in data:
            if self._ctrl_a:
                self._ctrl_a = False
                if byte == QUIT_KEY:
                    self.restore_terminal()
                    self.control.stop(ExitStatus.OK, "quit from the console (Ctrl-A x)")
                    return bytes(out)
                if byte == CTRL_A:
                    out.append(CTRL_A)
            elif byte == CTRL_A:
                self._ctrl_a = True
            else:
                out.append(byte)
        return bytes(out)

    def _feed(self, data: bytes) -> None:
        with self.lock:
            pending = self._pending_input
            pending += data
            if pending and self.serial is not None:
                room = self.serial.rx_space()
                if room:
                    del pending[: self.serial.enqueue_input(bytes(pending[:room]))]

    def _on_stop(self) -> None:
        self.restore_terminal()

    def close(self) -> None:
        """Restore the terminal, end every console thread, release every descriptor, remove the socket."""
        self.restore_terminal()
        with self._room:
            self._closing = True
            self._room.notify_all()
        if self._wake_w >= 0:
            os.write(self._wake_w, b"!")
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(SHUT_RDWR)  # wakes accept(); close() alone does not
            self._listener.close()
            with contextlib.suppress(OSError):
                Path(self.path).unlink()
        with self.lock:
            client, pump = self._client, self._pump
        if client is not None:
            with contextlib.suppress(OSError):
                client.shutdown(SHUT_RDWR)
        if pump is not None:
            pump.close()
        for thread in self._threads:
            thread.join(timeout=JOIN_TIMEOUT_S)
        if self._wake_w >= 0:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
        if self.kind == "file" and self._out_fd is not None:
            os.close(self._out_fd)
            self._out_fd = None
