"""What the gdb stub asks of a target: the operations a VMM implements per backend.

The stub (:mod:`kvmlite.gdb.stub`) speaks the protocol and knows nothing of
KVM; a target (:class:`Target`) knows the machine and nothing of the
protocol, as in the ``gdbstub`` crate.  vCPUs are numbered from 0 here; the
stub turns them into gdb's thread ids (from 1).

Run control is all-stop: ``resume`` lets the listed vCPUs go (``"c"``
continue, ``"s"`` one instruction) while the others stay stopped, ``wait``
returns the first stop (after which every vCPU is stopped again), and
``interrupt`` stops all of them (Ctrl-C).
"""

from __future__ import annotations

import enum
import os
import queue
import signal
from dataclasses import dataclass
from typing import Protocol

from kvmlite.errors import KvmliteError

SIGINT = int(signal.SIGINT)
SIGTRAP = int(signal.SIGTRAP)


class TargetError(KvmliteError):
    """A target operation failed in a way gdb is told about (an ``E`` reply): unmapped memory, ..."""

    def __init__(self, message: str, errno: int = 14) -> None:
        super().__init__(message)
        self.errno = errno  # 14 = EFAULT, what gdb shows as "Cannot access memory"


class BreakKind(enum.IntEnum):
    """The ``Z``/``z`` packet types."""

    SOFTWARE = 0
    HARDWARE = 1
    WRITE = 2
    READ = 3
    ACCESS = 4


@dataclass(frozen=True, slots=True)
class StopEvent:
    """Why the target stopped; ``exit_status`` set means the guest ended (a ``W`` reply)."""

    cpu: int = 0
    signal: int = SIGTRAP
    #: "swbreak", "hwbreak", "watch", "rwatch", "awatch" or "" (a step, an interrupt)
    reason: str = ""
    addr: int = 0
    exit_status: int | None = None


class StopQueue:
    """The stops a target reports, and a descriptor that turns readable when one is put.

    The stub's server waits on that descriptor beside gdb's socket, so a stop (a breakpoint hit,
    the end of a step) is sent the moment a vCPU reports it rather than at the next poll.  The
    descriptor stays readable after the stop was taken: the server empties it before each look.
    """

    def __init__(self) -> None:
        self._events: queue.Queue[StopEvent] = queue.Queue()
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self._read

    def put(self, event: StopEvent) -> None:
        self._events.put(event)
        try:
            os.write(self._write, b"!")
        except (BlockingIOError, OSError):  # full: readable already; closed: nobody waits
            pass

    def get(self, timeout: float) -> StopEvent | None:
        """The oldest stop, waiting up to ``timeout`` seconds (0: only look)."""
        try:
            return self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait()
        except queue.Empty:
            return None

    def empty(self) -> bool:
        return self._events.empty()

    def close(self) -> None:
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass


class Target(Protocol):
    def arch(self) -> str:
        """``"i386:x86-64"`` or ``"i386"`` (see :mod:`kvmlite.gdb.registers`)."""
        ...

    def cpus(self) -> list[int]: ...

    def read_registers(self, cpu: int) -> dict[str, int]: ...

    def write_registers(self, cpu: int, values: dict[str, int]) -> None: ...

    def read_memory(self, cpu: int, addr: int, length: int) -> bytes:
        """Guest-virtual memory through ``cpu``'s page tables; raises :class:`TargetError` if unmapped."""
        ...

    def write_memory(self, cpu: int, addr: int, data: bytes) -> None: ...

    def add_breakpoint(self, kind: BreakKind, addr: int, length: int) -> None:
        """Raises :class:`TargetError` when it cannot be set (no free debug register, ...)."""
        ...

    def remove_breakpoint(self, kind: BreakKind, addr: int, length: int) -> None: ...

    def resume(self, actions: dict[int, str]) -> None:
        """Let the vCPUs in ``actions`` run (``"c"``) or step (``"s"``); the rest stay stopped."""
        ...

    def wait(self, timeout: float) -> StopEvent | None:
        """The stop that ended the last ``resume``, or None if the target still runs after ``timeout`` s."""
        ...

    def interrupt(self) -> None:
        """Stop every vCPU; ``wait`` then reports a SIGINT stop."""
        ...

    def stop_fd(self) -> int:
        """A descriptor that turns readable when ``wait`` may have a stop (a :class:`StopQueue`'s)."""
        ...

    def detach(self) -> None:
        """Remove every breakpoint and let the guest run on without a debugger."""
        ...

    def kill(self) -> None:
        """End the VM."""
        ...

    def close(self) -> None:
        """The stub is done with the target: release what it holds (its stop descriptor)."""
        ...

    def monitor(self, command: str) -> str:
        """A ``monitor`` command's output (``info registers``, ``info devices``)."""
        ...
