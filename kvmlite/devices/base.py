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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

#: Raise (True) or lower (False) an interrupt line.  Edge-triggered users
#: pulse it: ``irq(True); irq(False)``.
IrqLine = Callable[[bool], None]

#: A monotonic clock in nanoseconds.
Clock = Callable[[], int]

monotonic_ns: Clock = time.monotonic_ns


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


@runtime_checkable
class Snapshottable(Protocol):
    def state(self) -> dict[str, Any]: ...
