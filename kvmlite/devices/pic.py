"""The PC's pair of 8259A programmable interrupt controllers, cascaded on IRQ 2, plus the ELCR.

Three small bus devices come out of one :class:`Pic8259Pair`:

* ``pair.master`` at ports 0x20-0x21 and ``pair.slave`` at 0xa0-0xa1, each a
  :class:`Pic8259` answering offsets 0 (ICW1, OCW2, OCW3 / IRR, ISR, poll)
  and 1 (ICW2-4, OCW1 / IMR);
* ``pair.elcr`` at 0x4d0-0x4d1, the PIIX edge/level control registers that
  make individual lines level triggered (PCI interrupts share lines, so they
  must be level triggered; ISA lines stay edge triggered).

The slave's INT output feeds the master's IR2 input, as on every AT.  The
master's INT output goes to the CPU through the injected ``intr`` line; the
VMM delivers the interrupt with :meth:`Pic8259Pair.acknowledge`, which plays
the two INTA cycles and returns the vector.

Edge-triggered inputs latch a request into IRR on a rising edge; lowering the
line afterwards does not withdraw it, so a device may pulse its line
(``irq(True); irq(False)``).  Level-triggered inputs make IRR follow the line.
A request that vanishes between INT and INTA yields the spurious IRQ 7 (or
15 on the slave, with the master's IR2 in service) just as on hardware.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from kvmlite.devices.base import DeviceState, IrqLine, checked_state, no_irq, state_from_attrs, warn_once
from kvmlite.errors import DeviceError

log = logging.getLogger(__name__)

# Offsets inside each chip's two-port window
PIC_COMMAND = 0
PIC_DATA = 1

# ICW1 (offset 0, bit 4 set)
ICW1_IC4 = 0x01  # ICW4 follows
ICW1_SNGL = 0x02  # single chip, no ICW3
ICW1_LTIM = 0x08  # all inputs level triggered
ICW1_INIT = 0x10

# ICW4
ICW4_UPM = 0x01  # 8086 mode (the only one modelled)
ICW4_AEOI = 0x02
ICW4_SFNM = 0x10  # special fully nested mode

# OCW3 (offset 0, bit 4 clear, bit 3 set)
OCW3_SELECT = 0x08
OCW3_RIS = 0x01  # read ISR (else IRR)
OCW3_RR = 0x02  # the RIS bit is valid
OCW3_POLL = 0x04
OCW3_SMM = 0x20  # special mask mode on/off
OCW3_ESMM = 0x40  # the SMM bit is valid

# OCW2 commands (offset 0, bits 3-4 clear), in bits 5-7
OCW2_ROTATE_AEOI_CLEAR = 0
OCW2_NONSPECIFIC_EOI = 1
OCW2_NOP = 2
OCW2_SPECIFIC_EOI = 3
OCW2_ROTATE_AEOI_SET = 4
OCW2_ROTATE_NONSPECIFIC_EOI = 5
OCW2_SET_PRIORITY = 6
OCW2_ROTATE_SPECIFIC_EOI = 7

CASCADE_IRQ = 2
SPURIOUS_IRQ = 7
NUM_IRQS = 16
#: On the AT bus the old IRQ 2 pin is wired to IRQ 9.
ISA_IRQ2_REDIRECT = 9

# ELCR: IRQ 0, 1, 2 (timer, keyboard, cascade) and 8, 13 (RTC, FPU) are always edge.
ELCR_MASTER_MASK = 0xF8
ELCR_SLAVE_MASK = 0xDE

# Initialisation sequence state
_READY, _WANT_ICW2, _WANT_ICW3, _WANT_ICW4 = range(4)


@dataclass
class PicChipState(DeviceState):
    """One 8259A: input levels, IRR/ISR/IMR, the ELCR, and the modes ICW1-4/OCW2-3 chose."""

    lines: int = 0
    elcr: int = 0
    irr: int = 0
    isr: int = 0
    imr: int = 0
    vector_base: int = 0
    priority_add: int = 0
    read_isr: bool = False
    poll: bool = False
    special_mask: bool = False
    auto_eoi: bool = False
    rotate_on_auto_eoi: bool = False
    special_fully_nested: bool = False
    ltim: bool = False
    single: bool = False
    want_icw4: bool = False
    init_state: int = _READY


@dataclass
class PicState(DeviceState):
    """The master and slave of a :class:`Pic8259Pair` (the INT level follows from them)."""

    master: PicChipState = field(default_factory=PicChipState)
    slave: PicChipState = field(default_factory=PicChipState)


class Pic8259:
    """One 8259A.  Reach it through :class:`Pic8259Pair`, which wires the cascade and the CPU."""

    def __init__(self, name: str, elcr_mask: int, on_change: Any) -> None:
        self.name = name
        self._warned: set[str] = set()
        self.elcr_mask = elcr_mask
        self._on_change = on_change
        self.lines = 0  # input pin levels
        self.elcr = 0
        self.irr = 0
        self.isr = 0
        self.imr = 0
        self.vector_base = 0
        self.priority_add = 0  # the IR level with highest priority (rotation)
        self.read_isr = False
        self.poll = False
        self.special_mask = False
        self.auto_eoi = False
        self.rotate_on_auto_eoi = False
        self.special_fully_nested = False
        self.ltim = False
        self.single = False
        self.want_icw4 = False
        self.init_state = _READY
        self.is_master = False

    # ---------------------------------------------------------------- priorities

    @property
    def level_mask(self) -> int:
        """Inputs that are level triggered (ELCR, or every input when ICW1.LTIM)."""
        return 0xFF if self.ltim else self.elcr

    def _priority(self, mask: int) -> int:
        """Rank (0 = highest) of the highest-priority bit set in ``mask``, or 8 for none."""
        if not mask & 0xFF:
            return 8
        for rank in range(8):
            if mask & (1 << ((rank + self.priority_add) & 7)):
                return rank
        return 8  # pragma: no cover - unreachable for a non-zero mask

    def pending_irq(self) -> int:
        """The IR input this chip would deliver now, or -1."""
        rank = self._priority(self.irr & ~self.imr)
        if rank == 8:
            return -1
        in_service = self.isr
        if self.special_mask:
            in_service &= ~self.imr
        if self.special_fully_nested and self.is_master:
            # The slave nests its own priorities: let it interrupt its own service.
            in_service &= ~(1 << CASCADE_IRQ)
        if rank < self._priority(in_service):
            return (rank + self.priority_add) & 7
        return -1

    # ---------------------------------------------------------------- inputs

    def set_line(self, pin: int, level: bool) -> None:
        mask = 1 << pin
        if level:
            if self.level_mask & mask or not self.lines & mask:
                self.irr |= mask
            self.lines |= mask
        else:
            if self.level_mask & mask:
                self.irr &= ~mask
            self.lines &= ~mask

    def set_elcr(self, value: int) -> None:
        self.elcr = value & self.elcr_mask
        # Level inputs mirror their pins at once.
        lv = self.level_mask
        self.irr = (self.irr & ~lv) | (self.lines & lv)

    def intack(self, pin: int) -> None:
        """Record the acknowledgement of ``pin`` (an INTA cycle or a poll read)."""
        mask = 1 << pin
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self.priority_add = (pin + 1) & 7
        else:
            self.isr |= mask
        if not self.level_mask & mask:
            self.irr &= ~mask

    # ---------------------------------------------------------------- registers

    def read(self, offset: int, size: int) -> int:
        if size != 1 or offset not in (PIC_COMMAND, PIC_DATA):
            warn_once(log, self._warned, "pic %s: %d-byte read at offset %d ignored", self.name, size, offset)
            return (1 << (8 * size)) - 1 if 0 < size <= 8 else 0
        if self.poll:
            return self._poll_read()
        if offset == PIC_COMMAND:
            return self.isr if self.read_isr else self.irr
        return self.imr

    def _poll_read(self) -> int:
        self.poll = False
        pin = self.pending_irq()
        if pin < 0:
            return 0
        self.intack(pin)
        self._on_change()
        return 0x80 | pin

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 1 or offset not in (PIC_COMMAND, PIC_DATA):
            warn_once(
                log,
                self._warned,
                "pic %s: %d-byte write %#x at offset %d",
                self.name,
                size,
                value,
                offset,
            )
            return
        value &= 0xFF
        if offset == PIC_COMMAND:
            if value & ICW1_INIT:
                self._icw1(value)
            elif value & OCW3_SELECT:
                self._ocw3(value)
            else:
                self._ocw2(value)
        else:
            self._write_data(value)
        self._on_change()

    def _icw1(self, value: int) -> None:
        # Initialisation clears the edge-sense latches, IMR and ISR, and
        # restores the default priority (IR0 highest) and IRR reads.
        self.isr = 0
        self.imr = 0
        self.priority_add = 0
        self.read_isr = False
        self.poll = False
        self.special_mask = False
        self.auto_eoi = False
        self.rotate_on_auto_eoi = False
        self.special_fully_nested = False
        self.ltim = bool(value & ICW1_LTIM)
        self.single = bool(value & ICW1_SNGL)
        self.want_icw4 = bool(value & ICW1_IC4)
        self.irr = self.lines & self.level_mask
        self.init_state = _WANT_ICW2
        if self.single:
            msg = "pic %s: ICW1 asks for single mode; the cascade is wired anyway"
            warn_once(log, self._warned, msg, self.name)

    def _write_data(self, value: int) -> None:
        state = self.init_state
        if state == _READY:
            self.imr = value
        elif state == _WANT_ICW2:
            self.vector_base = value & 0xF8
            if not self.single:
                self.init_state = _WANT_ICW3
            else:
                self.init_state = _WANT_ICW4 if self.want_icw4 else _READY
        elif state == _WANT_ICW3:
            # Cascade wiring is fixed on a PC: nothing to configure.
            self.init_state = _WANT_ICW4 if self.want_icw4 else _READY
        else:
            if not value & ICW4_UPM:
                msg = "pic %s: ICW4 %#x selects 8080 mode; treating as 8086 mode"
                warn_once(log, self._warned, msg, self.name, value)
            self.auto_eoi = bool(value & ICW4_AEOI)
            self.special_fully_nested = bool(value & ICW4_SFNM)
            self.init_state = _READY

    def _ocw3(self, value: int) -> None:
        if value & OCW3_POLL:
            self.poll = True
        if value & OCW3_RR:
            self.read_isr = bool(value & OCW3_RIS)
        if value & OCW3_ESMM:
            self.special_mask = bool(value & OCW3_SMM)

    def _ocw2(self, value: int) -> None:
        cmd = value >> 5
        pin = value & 7
        if cmd in (OCW2_NONSPECIFIC_EOI, OCW2_ROTATE_NONSPECIFIC_EOI):
            rank = self._priority(self.isr)
            if rank != 8:
                pin = (rank + self.priority_add) & 7
                self.isr &= ~(1 << pin)
                if cmd == OCW2_ROTATE_NONSPECIFIC_EOI:
                    self.priority_add = (pin + 1) & 7
        elif cmd == OCW2_SPECIFIC_EOI:
            self.isr &= ~(1 << pin)
        elif cmd == OCW2_ROTATE_SPECIFIC_EOI:
            self.isr &= ~(1 << pin)
            self.priority_add = (pin + 1) & 7
        elif cmd == OCW2_SET_PRIORITY:
            self.priority_add = (pin + 1) & 7
        elif cmd == OCW2_ROTATE_AEOI_SET:
            self.rotate_on_auto_eoi = True
        elif cmd == OCW2_ROTATE_AEOI_CLEAR:
            self.rotate_on_auto_eoi = False
        # OCW2_NOP: nothing

    def state(self) -> PicChipState:
        return state_from_attrs(self, PicChipState)

    def load_state(self, state: PicChipState) -> None:
        try:
            for f in dataclasses.fields(PicChipState):
                if f.name == "version":
                    continue
                v = getattr(state, f.name)
                setattr(self, f.name, bool(v) if isinstance(f.default, bool) else int(v) & 0xFF)
        except (AttributeError, TypeError, ValueError) as err:
            raise DeviceError(f"pic {self.name}: invalid snapshot state: {err!r}") from err
        if self.init_state not in (_READY, _WANT_ICW2, _WANT_ICW3, _WANT_ICW4):
            raise DeviceError(f"pic {self.name}: invalid init_state {self.init_state}")
        self.elcr &= self.elcr_mask


class Elcr:
    """The two edge/level control registers (ports 0x4d0 master, 0x4d1 slave)."""

    def __init__(self, pair: Pic8259Pair) -> None:
        self._pair = pair
        self._warned: set[str] = set()

    def read(self, offset: int, size: int) -> int:
        chips = (self._pair.master, self._pair.slave)
        value = 0
        for i in range(size):
            byte = chips[offset + i].elcr if 0 <= offset + i < 2 else 0xFF
            value |= byte << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        chips = (self._pair.master, self._pair.slave)
        for i in range(size):
            if 0 <= offset + i < 2:
                chips[offset + i].set_elcr((value >> (8 * i)) & 0xFF)
            else:
                warn_once(log, self._warned, "elcr: write past offset 1 (%d, %d bytes)", offset, size)
        self._pair._update()


class Pic8259Pair:
    """Master and slave 8259A with the cascade wired, the ELCR, and the CPU-side INTA."""

    def __init__(self, intr: IrqLine = no_irq) -> None:
        self._intr = intr
        self._intr_level = False
        self._updating = False
        self._warned_irq2 = False
        self.master = Pic8259("master", ELCR_MASTER_MASK, self._update)
        self.master.is_master = True
        self.slave = Pic8259("slave", ELCR_SLAVE_MASK, self._update)
        self.elcr = Elcr(self)

    def set_irq(self, irq: int, level: bool) -> None:
        """Drive ISA/PCI interrupt line ``irq`` (0-15); 2 is the cascade and goes to 9 as on an AT."""
        if not 0 <= irq < NUM_IRQS:
            raise DeviceError(f"pic: no interrupt line {irq} (0-15)")
        if irq == CASCADE_IRQ:
            if not self._warned_irq2:
                log.warning("pic: IRQ 2 is the cascade; routing it to IRQ 9 as an AT does")
                self._warned_irq2 = True
            irq = ISA_IRQ2_REDIRECT
        if irq < 8:
            self.master.set_line(irq, level)
        else:
            self.slave.set_line(irq - 8, level)
        self._update()

    def has_interrupt(self) -> bool:
        """Whether the master asks the CPU for an interrupt (the INT pin)."""
        return self.master.pending_irq() >= 0

    def acknowledge(self) -> int:
        """Run the INTA cycles: mark the winning request in service and return its vector."""
        pin = self.master.pending_irq()
        if pin < 0:
            vector = self.master.vector_base + SPURIOUS_IRQ
        else:
            self.master.intack(pin)
            if pin == CASCADE_IRQ:
                spin = self.slave.pending_irq()
                if spin >= 0:
                    self.slave.intack(spin)
                    # The slave drops INT during INTA: a further request that
                    # still outranks it raises a fresh edge on master IR2.
                    self.master.set_line(CASCADE_IRQ, False)
                else:
                    spin = SPURIOUS_IRQ
                vector = self.slave.vector_base + spin
            else:
                vector = self.master.vector_base + pin
        self._update()
        return vector

    @property
    def intr_level(self) -> bool:
        return self._intr_level

    def _update(self) -> None:
        """Propagate the slave's INT to master IR2, then the master's INT to the CPU."""
        if self._updating:
            return
        self._updating = True
        try:
            self.master.set_line(CASCADE_IRQ, self.slave.pending_irq() >= 0)
            level = self.master.pending_irq() >= 0
        finally:
            self._updating = False
        if level != self._intr_level:
            self._intr_level = level
            self._intr(level)

    def state(self) -> PicState:
        return PicState(master=self.master.state(), slave=self.slave.state())

    @classmethod
    def from_state(cls, state: PicState, /, **injected: Any) -> Pic8259Pair:
        """Rebuild from :meth:`state`; the INT line is driven to the level the registers give."""
        st = checked_state(state, PicState, "pic")
        pair = cls(**injected)
        pair.master.load_state(checked_state(st.master, PicChipState, "pic master"))
        pair.slave.load_state(checked_state(st.slave, PicChipState, "pic slave"))
        pair._update()
        return pair
