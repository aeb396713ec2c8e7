"""The I/O APIC (82093AA): 24 input pins turned into messages for the local APICs.

Registers are reached indirectly, as on hardware: the guest writes a
register index to IOREGSEL (offset 0x00) and reads or writes it through
IOWIN (offset 0x10).  Index 0 is the ID, 1 the version (0x11, 23 as the
highest redirection entry: KVM's), 2 the arbitration ID, and 0x10 + 2n /
0x11 + 2n the low and high halves of pin n's redirection entry: vector,
delivery mode, destination mode, delivery status, polarity, remote IRR,
trigger mode, mask and (bits 56-63) the destination.

Inputs: ``set_irq(pin, level)`` with the line's *asserted* state (polarity
is not applied, as in KVM and QEMU: the machine's devices speak in asserted
levels).  An edge-triggered pin sends a message on each rising edge while
unmasked; a level-triggered pin sends one while the line is asserted and
its remote IRR is clear, then sets remote IRR until the LAPIC's EOI of that
vector (:meth:`Ioapic.eoi`, the LAPIC's EOI broadcast) clears it, and sends
again if the line is still asserted.  Unmasking a level pin whose line is
asserted sends at once.  Messages leave through the injected
``deliver(ipi)``: the machine's APIC bus (:mod:`kvmlite.vmm.apic`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvmlite.devices.base import DeviceState, checked_state, state_from_attrs
from kvmlite.devices.lapic import Ipi

log = logging.getLogger(__name__)

IOREGSEL, IOWIN, IOEOI = 0x00, 0x10, 0x40
REG_ID, REG_VERSION, REG_ARB, REG_REDTBL = 0x00, 0x01, 0x02, 0x10
NUM_PINS = 24
VERSION_VALUE = 0x11 | ((NUM_PINS - 1) << 16)

RTE_MASKED = 1 << 16
RTE_LEVEL = 1 << 15
RTE_REMOTE_IRR = 1 << 14
RTE_DELIVERY_STATUS = 1 << 12
RTE_LOGICAL = 1 << 11
#: Bits the guest writes (remote IRR and delivery status are the IOAPIC's own).
RTE_WRITABLE = 0xFF00_0000_0001_AFFF


def entry_message(entry: int) -> Ipi:
    """The message a redirection entry sends."""
    return Ipi(
        vector=entry & 0xFF,
        delivery=(entry >> 8) & 7,
        dest=entry >> 56,
        logical=bool(entry & RTE_LOGICAL),
        level=bool(entry & RTE_LEVEL),
    )


@dataclass
class IoapicState(DeviceState):
    """ID, the selected register, the redirection table (remote IRR included) and the input levels."""

    id: int = 0
    ioregsel: int = 0
    redirection: list[int] = field(default_factory=lambda: [RTE_MASKED] * NUM_PINS)
    irr: int = 0


class Ioapic:
    """The I/O APIC at 0xFEC00000 (see the module docstring)."""

    def __init__(self, deliver: Callable[[Ipi], None] = lambda ipi: None, id: int = 0) -> None:
        self.deliver = deliver
        self.id = id
        self.ioregsel = 0
        self.redirection = [RTE_MASKED] * NUM_PINS
        self.irr = 0  # the asserted input lines
        self.messages = 0  # how many messages went to the LAPICs (statistics)

    # --- inputs -------------------------------------------------------------------------------
    def set_irq(self, pin: int, level: bool) -> None:
        if not 0 <= pin < NUM_PINS:
            return
        bit = 1 << pin
        was = self.irr & bit
        if not level:
            self.irr &= ~bit
            return
        self.irr |= bit
        entry = self.redirection[pin]
        if entry & RTE_LEVEL or not was:
            self._service(pin)

    def _service(self, pin: int) -> None:
        entry = self.redirection[pin]
        if entry & RTE_MASKED:
            return
        level = bool(entry & RTE_LEVEL)
        if level:
            if entry & RTE_REMOTE_IRR:
                return
            self.redirection[pin] = entry | RTE_REMOTE_IRR
        self.messages += 1
        self.deliver(entry_message(entry))

    def eoi(self, vector: int) -> None:
        """A LAPIC's EOI of a level-triggered ``vector``: clear remote IRR, resend if still asserted."""
        for pin, entry in enumerate(self.redirection):
            if entry & 0xFF != vector or not entry & RTE_LEVEL or not entry & RTE_REMOTE_IRR:
                continue
            self.redirection[pin] = entry & ~RTE_REMOTE_IRR
            if self.irr >> pin & 1:
                self._service(pin)

    # --- registers ----------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == IOREGSEL:
            return self.ioregsel
        if offset == IOWIN:
            value = self._read_indirect(self.ioregsel)
            return value & ((1 << (8 * size)) - 1) if size < 4 else value
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == IOREGSEL:
            self.ioregsel = value & 0xFF
        elif offset == IOWIN:
            self._write_indirect(self.ioregsel, value & 0xFFFF_FFFF)
        elif offset == IOEOI:
            self.eoi(value & 0xFF)  # the version 0x20 EOI register: harmless to honour

    def _read_indirect(self, index: int) -> int:
        if index in (REG_ID, REG_ARB):
            return (self.id & 0xF) << 24
        if index == REG_VERSION:
            return VERSION_VALUE
        pin, high = divmod(index - REG_REDTBL, 2)
        if 0 <= pin < NUM_PINS:
            entry = self.redirection[pin]
            return (entry >> 32) if high else entry & 0xFFFF_FFFF
        return 0xFFFF_FFFF

    def _write_indirect(self, index: int, value: int) -> None:
        if index == REG_ID:
            self.id = (value >> 24) & 0xF
            return
        pin, high = divmod(index - REG_REDTBL, 2)
        if not 0 <= pin < NUM_PINS:
            return
        entry = self.redirection[pin]
        if high:
            new = (entry & 0xFFFF_FFFF) | (value << 32)
        else:
            new = (entry & ~0xFFFF_FFFF) | value
        keep = entry & (RTE_REMOTE_IRR | RTE_DELIVERY_STATUS)
        new = (new & RTE_WRITABLE) | keep
        if not new & RTE_LEVEL:
            new &= ~RTE_REMOTE_IRR  # an edge pin has no remote IRR (KVM clears it too)
        self.redirection[pin] = new
        if new & RTE_LEVEL and not new & RTE_MASKED and self.irr >> pin & 1:
            self._service(pin)  # an asserted level line unmasked (or made level): send now

    # --- snapshots -----------------------------------------------------------------------------
    def state(self) -> IoapicState:
        return state_from_attrs(self, IoapicState, redirection=list(self.redirection))

    @classmethod
    def from_state(cls, state: IoapicState, /, **injected: Any) -> Ioapic:
        st = checked_state(state, IoapicState, "ioapic")
        injected.pop("id", None)
        ioapic = cls(id=int(st.id) & 0xF, **injected)
        ioapic.ioregsel = int(st.ioregsel) & 0xFF
        if len(st.redirection) != NUM_PINS:
            raise ValueError(f"{len(st.redirection)} redirection entries")
        ioapic.redirection = [int(v) & 0xFFFF_FFFF_FFFF_FFFF for v in st.redirection]
        ioapic.irr = int(st.irr) & ((1 << NUM_PINS) - 1)
        return ioapic
