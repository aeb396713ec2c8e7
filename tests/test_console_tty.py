"""``kvmlite run`` on a terminal: typed keys reach the guest, Ctrl-A x quits, the terminal comes back.

kvmlite runs here with its stdin and stdout on a pseudo-terminal, as in an
interactive shell, and the test types into the master side like a user at
the keyboard.  The guest is guests/platform64.S with ``echo=N``: it receives
N bytes through the UART's RX interrupt and echoes them, so what the test
reads back has been through the console's raw-mode input, the 16550's
receive FIFO, IRQ 4 and the guest's handler.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import requires_kvm
from tests.guest_expectations import EXPECTATIONS, load_build_module, missing_build_tools

pytestmark = requires_kvm

GUEST = "platform64"
PROMPT = b"serial: echo "
TYPED = b"ab\x01\x01cd"
"""Keys typed: Ctrl-A Ctrl-A is the escape for one literal Ctrl-A, so the guest gets 5 bytes."""
RECEIVED = b"ab\x01cd"
WAIT_S = 60.0
QUIT_WAIT_S = 10.0
KEY_GAP_S = 0.02
"""Between two typed keys, as a person types (each key then arrives in its own read)."""
CTRL_A_X = b"\x01x"
WAITS_FOREVER = 1000
"""echo=N large enough that the guest never finishes by itself."""


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = missing_build_tools()
    if missing:
        pytest.skip(f"building the test guests needs {', '.join(missing)}")
    out = tmp_path_factory.mktemp("tty-guest")
    built: dict[str, Path] = load_build_module().build_all(out, [GUEST])
    return built[GUEST]


@dataclass
class TtyRun:
    """kvmlite on a pseudo-terminal: the master to type into and read from, the slave to inspect."""

    proc: subprocess.Popen[bytes]
    master: int
    slave: int
    output: bytes = b""

    def read_until(self, wanted: bytes, timeout: float = WAIT_S) -> bytes:
        """Read the terminal until ``wanted`` appears (or fail with what was seen)."""
        deadline = time.monotonic() + timeout
        while wanted not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {wanted!r} on the terminal within {timeout}s; saw {self.output!r}")
            readable, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if readable:
                self.output += os.read(self.master, 4096)
            elif self.proc.poll() is not None:
                pytest.fail(f"kvmlite exited ({self.proc.returncode}) before {wanted!r}; saw {self.output!r}")
        return self.output

    def type(self, keys: bytes) -> None:
        for key in keys:
            os.write(self.master, bytes([key]))
            time.sleep(KEY_GAP_S)

    def wait(self, timeout: float) -> int:
        """Wait for kvmlite to exit, draining the terminal meanwhile so it never blocks on output."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail(f"kvmlite still running {timeout}s later; terminal: {self.output!r}")
            readable, _, _ = select.select([self.master], [], [], 0.1)
            if readable:
                self.output += os.read(self.master, 4096)
        return self.proc.returncode


@pytest.fixture
def tty_kvmlite(image: Path) -> Iterator[Callable[..., TtyRun]]:
    runs: list[TtyRun] = []
    err = tempfile.TemporaryFile()

    def start(cmdline: str, irqchip: str = "auto") -> TtyRun:
        master, slave = os.openpty()
        cmd = [sys.executable, "-m", "kvmlite", "run", "--kernel", str(image), "--cmdline", cmdline]
        cmd += ["--irqchip", irqchip]
        proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=err, start_new_session=True)
        run = TtyRun(proc, master, slave)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        os.close(run.master)
        os.close(run.slave)
    err.close()


def test_typed_keys_reach_the_guest_through_the_serial_interrupt(
    tty_kvmlite: Callable[..., TtyRun],
) -> None:
    run = tty_kvmlite(f"echo={len(RECEIVED)}")
    run.read_until(PROMPT)
    run.type(TYPED)
    run.read_until(b"bytes echoed")
    status = run.wait(WAIT_S)
    # OPOST stays on, as under QEMU: the guest's "\n" reaches the terminal as "\r\n".
    lines = run.output.replace(b"\r\n", b"\n").split(b"\n")
    prompt = next(i for i, line in enumerate(lines) if line.startswith(PROMPT))
    assert lines[prompt + 1] == RECEIVED
    assert lines[prompt + 2] == f"serial: {len(RECEIVED)} bytes echoed".encode()
    assert status == EXPECTATIONS[GUEST].exit_status


def test_ctrl_a_x_quits_with_status_0_and_restores_the_terminal(tty_kvmlite: Callable[..., TtyRun]) -> None:
    run = tty_kvmlite(f"echo={WAITS_FOREVER}")
    before = termios.tcgetattr(run.slave)
    run.read_until(PROMPT)
    raw = termios.tcgetattr(run.slave)
    assert not raw[3] & (termios.ECHO | termios.ICANON | termios.ISIG), (
        "kvmlite should put the tty in raw mode"
    )
    run.type(b"q")  # an ordinary key first: it goes to the guest, nothing quits
    run.read_until(PROMPT + b"%d bytes received by irq\r\nq" % WAITS_FOREVER)
    assert run.proc.poll() is None
    run.type(CTRL_A_X)
    assert run.wait(QUIT_WAIT_S) == 0
    assert termios.tcgetattr(run.slave) == before


def test_output_pump_writes_files_and_dev_null_at_once_and_keeps_a_full_pipe_waiting(tmp_path: Path) -> None:
    import threading

    from kvmlite.vmm import console

    busy: list[bool] = []
    lock = threading.RLock()
    path = tmp_path / "out"
    with open(path, "wb") as f, open(os.devnull, "wb") as null:
        assert console._never_blocks(f.fileno()) and console._never_blocks(null.fileno())
        pump = console.OutputPump(f.fileno(), lock, busy.append)
        for byte in b"hello, file":
            pump.write(bytes([byte]))
        pump.close()
    assert path.read_bytes() == b"hello, file" and busy == []
    r, w = os.pipe()
    try:
        assert not console._never_blocks(w)  # a pipe can fill: writes there go through select()
        os.set_blocking(w, False)
        while True:  # fill the pipe
            try:
                os.write(w, bytes(65536))
            except BlockingIOError:
                break
        pump = console.OutputPump(w, lock, busy.append)
        pump.write(b"x")  # cannot go now: kept, and the UART is told the line is busy
        assert busy == [True] and pump.pending == b"x"
        pump.closed = True
        pump.close()
    finally:
        os.close(r)
        os.close(w)
