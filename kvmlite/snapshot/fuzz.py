"""Reset-to-snapshot driving for fuzzers: run a guest function on one input, collect its result, reset.

The guest and the harness meet at two ports::

    out %eax, $READY_PORT    the guest is at its snapshot point (once, after its set-up)
    out %eax, $DONE_PORT     one input done; %eax is the result

:class:`FuzzHarness` runs the machine until READY, takes a
:class:`~kvmlite.snapshot.machine.ResetPoint` there, and then for each input
writes it into guest memory (a 32-bit length, then the bytes), resumes the
guest, waits for DONE (or the end of the VM: a crash is a result too) and
resets the machine to the snapshot: only the pages the run dirtied are copied
back.  ``examples/snapshot_fuzz.py`` is a complete example; ``bench/snapshot_bench.py``
measures resets per second with it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from kvmlite.snapshot import SnapshotError
from kvmlite.snapshot.machine import ResetPoint
from kvmlite.vmm.machine import Machine

READY_PORT = 0x700
DONE_PORT = 0x704
DEFAULT_TIMEOUT_S = 10.0


@dataclass
class RunResult:
    """What one input did: the guest's DONE value, or how the VM ended (status and message)."""

    value: int | None
    status: int | None = None
    message: str = ""
    dirty_pages: int = 0


class _Mailbox:
    """The READY/DONE ports: the vCPU writing one pauses the VM from its own thread and says so."""

    def __init__(self, machine: Machine) -> None:
        self.control = machine.control
        self.arrived = threading.Event()
        self.value = 0
        self.ready = False

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.ready = self.ready or offset == 0
        self.value = value
        self.control.pause()  # parks this vCPU as soon as the exit is handled
        self.arrived.set()


class FuzzHarness:
    """``harness = FuzzHarness(machine, input_addr)``; ``harness.run(data)`` per input; ``close()``."""

    def __init__(self, machine: Machine, input_addr: int, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.machine = machine
        self.input_addr = input_addr
        self.timeout = timeout
        self.mailbox = _Mailbox(machine)
        machine.pio.insert(self.mailbox, READY_PORT, 8, name="fuzz mailbox")
        self._thread = threading.Thread(target=machine.run, name="fuzz-machine", daemon=True)
        self._thread.start()
        if not self._wait() or not self.mailbox.ready:
            raise SnapshotError("the guest never reached its snapshot point (an OUT to the READY port)")
        self._pause()
        self.point = ResetPoint(machine)
        self.runs = 0

    def _wait(self) -> bool:
        """Wait for the mailbox or the end of the VM; True if the mailbox was written."""
        box, control = self.mailbox, self.machine.control
        while not box.arrived.wait(0.05):
            if control.stopping or not self._thread.is_alive():
                return False
            if self.timeout and self._deadline_passed():
                return False
        box.arrived.clear()
        return True

    def _deadline_passed(self) -> bool:
        import time

        return time.monotonic() > self._deadline

    def _pause(self) -> None:
        """Take over the mailbox's pause: hold one of our own, then end the vCPU's."""
        control = self.machine.control
        control.pause()
        control.resume()

    def run(self, data: bytes) -> RunResult:
        """Run the guest function on ``data`` from the snapshot, then reset to the snapshot."""
        import time

        machine, control = self.machine, self.machine.control
        if control.stopping:
            raise SnapshotError("the VM has ended; no more inputs can run")
        machine.memory.write_u32(self.input_addr, len(data))
        machine.memory.write(self.input_addr + 4, data)
        self._deadline = time.monotonic() + self.timeout
        control.resume()
        done = self._wait()
        if not done:
            info = control.stop_info
            if info is None:  # a hang: stop it (the VM ends: a fuzzer restarts from the snapshot file)
                control.stop(0, "fuzz input timed out")
                return RunResult(None, None, "timed out")
            return RunResult(None, info.status, info.message)
        self._pause()
        value = self.mailbox.value
        dirty = self.point.restore()
        self.runs += 1
        return RunResult(value, dirty_pages=dirty)

    def close(self) -> None:
        control = self.machine.control
        control.stop(0, "fuzzing done")
        self._thread.join(10)
        self.point.close()
