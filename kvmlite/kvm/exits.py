"""Typed vCPU exits: what ``Vcpu.run()`` returns.

Each exit is a small object whose data fields are *views* into the shared
``kvm_run`` page where the kernel expects userspace to answer: an
:class:`IoIn` handler writes the value into ``exit.data`` and the next
``run()`` hands it to the guest; an :class:`MmioRead` likewise.  Exits are only
valid until the next ``run()``.

The software backend returns the same classes, so a VMM loop is written once.
"""

from __future__ import annotations

__all__ = [
    "Debug", "Exit", "FailEntry", "Hlt", "InternalErrorExit", "Interrupted", "IoIn", "IoOut",
    "IrqWindowOpen", "MmioRead", "MmioWrite", "RdMsr", "Shutdown", "SystemEvent", "SystemEventExit",
    "Unsupported", "WrMsr",
]

from dataclasses import dataclass
from typing import ClassVar

from kvmlite.kvm.constants import ExitReason, InternalError, SystemEvent


@dataclass(slots=True)
class Exit:
    """Base of all exits."""

    reason: ClassVar[ExitReason] = ExitReason.UNKNOWN


@dataclass(slots=True)
class IoOut(Exit):
    """The guest executed OUT/OUTS: ``count`` items of ``size`` bytes to ``port`` in ``data``."""

    port: int
    size: int
    count: int
    data: memoryview

    reason: ClassVar[ExitReason] = ExitReason.IO


@dataclass(slots=True)
class IoIn(Exit):
    """The guest executed IN/INS: fill ``data`` (``count`` items of ``size`` bytes) before the next run."""

    port: int
    size: int
    count: int
    data: memoryview

    reason: ClassVar[ExitReason] = ExitReason.IO


@dataclass(slots=True)
class MmioWrite(Exit):
    addr: int
    data: memoryview

    reason: ClassVar[ExitReason] = ExitReason.MMIO


@dataclass(slots=True)
class MmioRead(Exit):
    """Fill ``data`` (``len(data)`` bytes) before the next run."""

    addr: int
    data: memoryview

    reason: ClassVar[ExitReason] = ExitReason.MMIO


@dataclass(slots=True)
class Hlt(Exit):
    reason: ClassVar[ExitReason] = ExitReason.HLT


@dataclass(slots=True)
class Shutdown(Exit):
    """Triple fault (or another shutdown condition) in the guest."""

    reason: ClassVar[ExitReason] = ExitReason.SHUTDOWN


@dataclass(slots=True)
class FailEntry(Exit):
    hardware_entry_failure_reason: int
    cpu: int

    reason: ClassVar[ExitReason] = ExitReason.FAIL_ENTRY


@dataclass(slots=True)
class InternalErrorExit(Exit):
    """KVM could not go on.  For ``suberror == EMULATION`` ``insn_bytes`` may hold the instruction."""

    suberror: int
    data: tuple[int, ...]
    insn_bytes: bytes
    detail: str = ""  # the software backend says what it could not do

    reason: ClassVar[ExitReason] = ExitReason.INTERNAL_ERROR

    def describe(self) -> str:
        if self.detail:
            text = f"emulation failed: {self.detail}"
            if self.insn_bytes:
                text += f" (bytes at RIP {self.insn_bytes.hex(' ')})"
            return text
        try:
            name = InternalError(self.suberror).name
        except ValueError:
            name = f"suberror {self.suberror}"
        text = f"KVM internal error: {name}"
        if self.insn_bytes:
            text += f", instruction bytes {self.insn_bytes.hex(' ')}"
        if self.data:
            text += ", data " + " ".join(f"{d:#x}" for d in self.data)
        return text


@dataclass(slots=True)
class Debug(Exit):
    """A single step, breakpoint or watchpoint under KVM_SET_GUEST_DEBUG."""

    exception: int
    pc: int
    dr6: int
    dr7: int

    reason: ClassVar[ExitReason] = ExitReason.DEBUG


@dataclass(slots=True)
class SystemEventExit(Exit):
    type: int
    data: tuple[int, ...]

    reason: ClassVar[ExitReason] = ExitReason.SYSTEM_EVENT

    @property
    def kind(self) -> SystemEvent | None:
        """The event as :class:`SystemEvent` (``RESET``, ``SHUTDOWN``, ...); None for a type this
        kvmlite does not know."""
        try:
            return SystemEvent(self.type)
        except ValueError:
            return None

    def describe(self) -> str:
        kind = self.kind
        return kind.name.lower() if kind is not None else f"system event {self.type}"


@dataclass(slots=True)
class IrqWindowOpen(Exit):
    """The guest can take an interrupt now (after ``request_interrupt_window``)."""

    reason: ClassVar[ExitReason] = ExitReason.IRQ_WINDOW_OPEN


@dataclass(slots=True)
class IoapicEoi(Exit):
    """With KVM_CAP_SPLIT_IRQCHIP: the guest's in-kernel LAPIC took the EOI of a vector the userspace
    IOAPIC sent level-triggered (KVM_EXIT_IOAPIC_EOI)."""

    vector: int
    reason: ClassVar[ExitReason] = ExitReason.IOAPIC_EOI


@dataclass(slots=True)
class Interrupted(Exit):
    """KVM_RUN returned early: a signal, or ``immediate_exit`` was set."""

    reason: ClassVar[ExitReason] = ExitReason.INTR


@dataclass(slots=True)
class RdMsr(Exit):
    """RDMSR of an MSR KVM leaves to userspace: call :meth:`reply` (or :meth:`fail` to inject #GP)."""

    index: int
    msr_reason: int
    _run: object  # the kvm_run structure (or a backend's equivalent)

    reason: ClassVar[ExitReason] = ExitReason.X86_RDMSR

    def reply(self, value: int) -> None:
        self._run.exit.msr.data = value  # type: ignore[attr-defined]
        self._run.exit.msr.error = 0  # type: ignore[attr-defined]

    def fail(self) -> None:
        self._run.exit.msr.error = 1  # type: ignore[attr-defined]


@dataclass(slots=True)
class WrMsr(Exit):
    """WRMSR of an MSR KVM leaves to userspace: accept (default) or :meth:`fail` to inject #GP."""

    index: int
    value: int
    msr_reason: int
    _run: object

    reason: ClassVar[ExitReason] = ExitReason.X86_WRMSR

    def fail(self) -> None:
        self._run.exit.msr.error = 1  # type: ignore[attr-defined]


@dataclass(slots=True)
class Unsupported(Exit):
    """An exit reason kvmlite does not model; ``code`` is the raw exit_reason."""

    code: int

    @property
    def reason(self) -> ExitReason:  # type: ignore[override]  # the one reason that is per instance
        try:
            return ExitReason(self.code)
        except ValueError:
            return ExitReason.UNKNOWN
