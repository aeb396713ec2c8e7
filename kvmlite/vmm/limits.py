"""Bounds a batch user puts on a run: ``--timeout SECONDS`` and ``--max-output BYTES``.

Both stop the VM through :meth:`VmControl.stop` with one of kvmlite's own (even) statuses, so a
guest cannot fake them: :attr:`ExitStatus.TIMEOUT` when the wall-time deadline passes (the main
thread checks it while it waits for the vCPU threads; a guest spinning at CPL 0 with interrupts
off is kicked out of KVM_RUN like any stop), :attr:`ExitStatus.OUTPUT_LIMIT` when the console
has been handed more bytes than allowed (the bytes up to the limit are delivered, the rest
dropped).  The deadline is one instant for the whole ``kvmlite run``: restarts under
``--on-reset restart`` share it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from kvmlite.status import ExitStatus
from kvmlite.vmm.loop import VmControl


def deadline_after(seconds: float) -> float | None:
    """The :func:`time.monotonic` instant ``seconds`` from now; None for no limit (0)."""
    return time.monotonic() + seconds if seconds > 0 else None


def stop_if_past(control: VmControl, deadline: float | None, seconds: float) -> bool:
    """Stop the VM with :attr:`ExitStatus.TIMEOUT` once ``deadline`` has passed; True if it did."""
    if deadline is None or time.monotonic() < deadline:
        return False
    control.stop(ExitStatus.TIMEOUT, f"--timeout: the guest ran for {seconds:g} s")
    return True


def wait_slice(deadline: float | None, most: float = 0.5) -> float:
    """How long the main thread may sleep before it looks at ``deadline`` again."""
    if deadline is None:
        return most
    return max(0.0, min(most, deadline - time.monotonic()))


class OutputLimit:
    """A console sink that passes on at most ``limit`` bytes and then stops the VM."""

    def __init__(self, sink: Callable[[bytes], None], limit: int, control: VmControl) -> None:
        self.sink = sink
        self.limit = limit
        self.control = control
        self.written = 0
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            room = self.limit - self.written
            take = data[: max(room, 0)]
            self.written += len(take)
            over = len(data) > room
        if take:
            self.sink(take)
        if over:
            self.control.stop(
                ExitStatus.OUTPUT_LIMIT, f"--max-output: the guest wrote more than {self.limit} bytes"
            )
