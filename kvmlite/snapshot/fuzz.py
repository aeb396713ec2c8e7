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

:meth:`FuzzHarness.run` hands each input from the caller's thread to the vCPU's
and back (two thread switches, about a millisecond on a loaded host).
:meth:`FuzzHarness.run_many` takes a whole batch instead: the vCPU thread
itself, in the DONE port's handler, completes the exit, resets the machine,
writes the next input and goes on, so the caller's thread sleeps until the
batch is done (or an input hangs past the timeout).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
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
    """The READY/DONE ports: the vCPU writing one pauses the VM from its own thread and says so.

    During :meth:`FuzzHarness.run_many` a DONE goes to ``on_done`` instead, on the vCPU's thread;
    it returns True to go on with the next input, False to pause and report as usual.
    """

    def __init__(self, machine: Machine) -> None:
        self.control = machine.control
        self.arrived = threading.Event()
        self.value = 0
        self.ready = False
        self.on_done: Callable[[int], bool] | None = None

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.ready = self.ready or offset == 0
        self.value = value
        if offset != 0 and self.on_done is not None and self.on_done(value):
            return
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
        return time.monotonic() > self._deadline

    def _pause(self) -> None:
        """Take over the mailbox's pause: hold one of our own, then end the vCPU's."""
        control = self.machine.control
        control.pause()
        control.resume()

    def run(self, data: bytes) -> RunResult:
        """Run the guest function on ``data`` from the snapshot, then reset to the snapshot."""
        control = self.machine.control
        if control.stopping:
            raise SnapshotError("the VM has ended; no more inputs can run")
        self._write_input(data)
        control.resume()
        done = self._wait()
        if not done:
            info = control.stop_info
            if info is None:  # a hang: stop it (the VM ends: a fuzzer restarts from the snapshot file)
                control.stop(0, "fuzz input timed out")
                return RunResult(None, None, "timed out")
            return RunResult(None, info.status, info.message)
        self._pause()
        return self._reset(self.mailbox.value)

    def run_many(self, inputs: Iterable[bytes]) -> list[RunResult]:
        """:meth:`run` for each input, the resets done on the vCPU's own thread; one result per input run.

        The batch ends early when an input crashes the VM or hangs past the timeout
        (its result says so, as with :meth:`run`); the remaining inputs are not run.
        """
        machine, control = self.machine, self.machine.control
        if control.stopping:
            raise SnapshotError("the VM has ended; no more inputs can run")
        if len(machine.loops) != 1:
            raise SnapshotError("run_many resets on the vCPU's thread: it needs a machine with one vCPU")
        batch = iter(inputs)
        first = next(batch, None)
        if first is None:
            return []
        results: list[RunResult] = []
        self._write_input(first)
        self.mailbox.on_done = lambda value: self._next_input(value, batch, results)
        try:
            control.resume()
            done = self._wait()
        finally:
            self.mailbox.on_done = None
        if not done:
            info = control.stop_info
            if info is None:
                control.stop(0, "fuzz input timed out")
                results.append(RunResult(None, None, "timed out"))
            else:
                results.append(RunResult(None, info.status, info.message))
            return results
        self._pause()
        results.append(self._reset(self.mailbox.value))
        return results

    def _write_input(self, data: bytes) -> None:
        memory = self.machine.memory
        memory.write_u32(self.input_addr, len(data))
        memory.write(self.input_addr + 4, data)
        self._deadline = time.monotonic() + self.timeout

    def _next_input(self, value: int, batch: Iterator[bytes], results: list[RunResult]) -> bool:
        """On the vCPU's thread, at DONE: reset, start the next input; False when there is none."""
        data = next(batch, None)
        if data is None:
            return False  # the last one: pause and let run_many's thread reset as run() does
        loop = self.machine.loops[0]
        vcpu = loop.vcpu
        vcpu.kick()  # complete the OUT (KVM finishes an exit at the next entry) before the state goes
        vcpu.run()
        vcpu.clear_kick()
        results.append(self._reset(value))
        loop.state_reloaded = False  # this thread runs what was loaded: nothing parked to tell
        self._write_input(data)
        return True

    def _reset(self, value: int) -> RunResult:
        dirty = self.point.restore()
        self.runs += 1
        return RunResult(value, dirty_pages=dirty)

    def close(self) -> None:
        control = self.machine.control
        control.stop(0, "fuzzing done")
        self._thread.join(10)
        self.point.close()
