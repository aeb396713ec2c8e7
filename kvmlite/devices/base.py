"""What every device model is, and what it is given.

A device is a state machine that sees register *offsets* relative to where a
bus placed it, never absolute ports or addresses (the rust-vmm ``vm-superio``
shape).  It owns no thread, socket or file descriptor: interrupts leave
through an injected :data:`IrqLine`, output through an injected sink, and
time comes from an injected clock, so unit tests drive it register by
register with fakes.

Devices that keep time (PIT, RTC, UART transmit pacing) expose
:meth:`TimedDevice.next_deadline` and :meth:`TimedDevice.tick`; the VMM's
timer service calls ``tick(now)`` at or after the deadline.  No device
busy-waits or sleeps.

Snapshots: ``state()`` returns a :class:`DeviceState` (a dataclass of plain
values holding what the guest can observe, nothing of the host side), and
``cls.from_state(state, **injected)`` rebuilds the device with new callables.
Every field has a default, so a record written before a field existed still
loads; ``version`` says which layout wrote it (Firecracker's versioned device
states, vm-superio's ``SerialState``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, Self, TypeVar, runtime_checkable

from kvmlite.errors import DeviceError

#: Raise (True) or lower (False) an interrupt line.  Edge-triggered users
#: pulse it: ``irq(True); irq(False)``.
IrqLine = Callable[[bool], None]

#: A monotonic clock in nanoseconds.
Clock = Callable[[], int]

monotonic_ns: Clock = time.monotonic_ns

#: The shortest period a periodic timer interrupt (PIT modes 2 and 3, the LAPIC's periodic mode) is
#: delivered at: 200 us, KVM's ``min_timer_period_us`` default, which clamps its in-kernel PIT and LAPIC
#: the same way.  A guest asking for a period of a few counts would otherwise have the timer thread
#: deliver back to back, holding the device lock the vCPUs need (a hostile-guest stall on the software
#: backend).  Counter reads keep the programmed rate; only interrupt delivery is spaced.
MIN_PERIODIC_NS = 200_000


def no_irq(level: bool) -> None:
    """An :data:`IrqLine` connected to nothing."""


def warn_once(logger: logging.Logger, warned: set[str], msg: str, *args: object) -> None:
    """Log a guest-triggerable problem as a warning the first time, then at DEBUG (no log floods)."""
    if msg in warned:
        logger.debug(msg, *args)
    else:
        warned.add(msg)
        logger.warning(msg + " (repeats are logged at DEBUG)", *args)


@runtime_checkable
class Device(Protocol):
    """A device on a PIO or MMIO bus.

    ``size`` is the access width in bytes (1, 2, 4 or 8).  ``read`` returns an
    unsigned integer of that width; ``write`` receives one.
    """

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


@runtime_checkable
class TimedDevice(Protocol):
    """A device with internal time-driven events."""

    def next_deadline(self) -> int | None:
        """Monotonic ns at which :meth:`tick` must next be called, or None."""
        ...

    def tick(self, now: int) -> None:
        """Advance internal state to ``now`` (raising interrupts that fell due)."""
        ...


@dataclass
class DeviceState:
    """Base of every device's snapshot record.  A subclass that changes its layout raises the
    default of ``version``; :func:`checked_state` refuses records newer than the code."""

    version: int = 1


StateT = TypeVar("StateT", bound=DeviceState)


def checked_state(state: object, cls: type[StateT], device: str) -> StateT:
    """``state`` if it is a ``cls`` record this kvmlite can read; otherwise a :class:`DeviceError`."""
    if not isinstance(state, cls):
        raise DeviceError(f"{device}: snapshot state is a {type(state).__name__}, not a {cls.__name__}")
    current = cls().version  # every field has a default
    if not isinstance(state.version, int) or not 1 <= state.version <= current:
        version = state.version
        raise DeviceError(f"{device}: snapshot state version {version!r}; this kvmlite reads 1-{current}")
    return state


def state_from_attrs(obj: object, cls: type[StateT], **given: Any) -> StateT:
    """A ``cls`` record whose fields (bar ``version`` and those ``given``) are ``obj``'s
    attributes of the same names."""
    names = [f.name for f in dataclasses.fields(cls) if f.name != "version" and f.name not in given]
    return cls(**{name: getattr(obj, name) for name in names}, **given)


@runtime_checkable
class Snapshottable(Protocol):
    """A device that can be saved and rebuilt: ``type(d).from_state(d.state(), **injected)``
    behaves, register for register, like ``d``."""

    def state(self) -> DeviceState: ...

    @classmethod
    def from_state(cls, state: Any, /, **injected: Any) -> Self: ...
