"""The local APIC: one per vCPU, xAPIC registers at 0xFEE00000 and x2APIC MSRs 0x800-0x8FF.

A state machine over register offsets (Intel SDM vol. 3A, chapter 11).  It
holds the three 256-bit vectors (IRR, ISR, TMR) as Python integers, so the
highest pending or in-service vector is one ``bit_length()``.  What leaves
the device goes through injected callables:

* ``notify()`` - something new may be deliverable (an IRR bit, NMI, INIT or
  SIPI): the machine wakes or kicks the vCPU;
* ``send_ipi(message)`` - a write of ICR low (or the x2APIC ICR, or SELF_IPI):
  the machine's APIC bus routes the :class:`Ipi` to the destination LAPICs;
* ``eoi_broadcast(vector)`` - an EOI of a level-triggered vector (its TMR
  bit set): the IOAPIC clears the remote IRR of the entries with it.

The vCPU takes an interrupt with :meth:`Lapic.acknowledge` when
:meth:`Lapic.pending_vector` is not None (the highest IRR vector's priority
class is above the PPR's, SDM 11.8.3).  Priority: PPR = TPR when TPR's class
is at least the highest in-service vector's, else that vector's class.

The timer counts the APIC bus clock (1 GHz, as KVM and QEMU take it) divided
by TDCR, in one-shot or periodic mode from TMICT, or fires when the TSC
reaches ``IA32_TSC_DEADLINE`` (MSR 0x6E0) in TSC-deadline mode.  It owns no
thread: :meth:`next_deadline` and :meth:`tick` are the timer service's face
(:mod:`kvmlite.vmm.timers`); late periods are coalesced into one interrupt,
as the PIT does.  The TSC is an injected clock (``tsc()`` ticking at
``tsc_hz``).

Reset state (KVM's ``kvm_lapic_reset``): software disabled (SVR 0xFF), every
LVT masked, except that the boot CPU's LINT0 is ExtINT, unmasked: the PIC's
virtual wire, which is how a guest that never touches the APIC keeps
getting the 8259's interrupts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvmlite.devices.base import (
    MIN_PERIODIC_NS,
    Clock,
    DeviceState,
    checked_state,
    monotonic_ns,
    state_from_attrs,
    warn_once,
)

log = logging.getLogger(__name__)

APIC_DEFAULT_BASE = 0xFEE0_0000
BASE_BSP, BASE_EXTD, BASE_ENABLE = 1 << 8, 1 << 10, 1 << 11

# Register offsets (xAPIC MMIO; the x2APIC MSR is 0x800 + offset >> 4)
ID, VERSION, TPR, APR, PPR, EOI, RRD, LDR, DFR, SVR = (
    0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0, 0xE0, 0xF0,
)  # fmt: skip
ISR_BASE, TMR_BASE, IRR_BASE = 0x100, 0x180, 0x200
ESR, LVT_CMCI, ICR_LOW, ICR_HIGH = 0x280, 0x2F0, 0x300, 0x310
LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = 0x320, 0x330, 0x340, 0x350, 0x360, 0x370
TMICT, TMCCT, TDCR, SELF_IPI = 0x380, 0x390, 0x3E0, 0x3F0
X2APIC_MSR_BASE, X2APIC_MSR_END = 0x800, 0x900
MSR_TSC_DEADLINE = 0x6E0

#: The LVT registers in the order of :attr:`Lapic.lvt`.
LVT_OFFSETS = (LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR, LVT_CMCI)
L_TIMER, L_THERMAL, L_PERF, L_LINT0, L_LINT1, L_ERROR, L_CMCI = range(7)
#: Version 0x14, six LVT entries past the first (max LVT 6: CMCI included), as KVM's.
VERSION_VALUE = 0x14 | (6 << 16)

# LVT and ICR fields
LVT_MASKED = 1 << 16
LVT_LEVEL = 1 << 15
LVT_REMOTE_IRR = 1 << 14
DELIVERY_STATUS = 1 << 12
TIMER_MODE_SHIFT = 17
TIMER_ONESHOT, TIMER_PERIODIC, TIMER_TSC_DEADLINE = 0, 1, 2
#: Writable bits of each LVT (vector, delivery mode, polarity, trigger, mask, timer mode).
LVT_WRITABLE = (0x000700FF, 0x000107FF, 0x000107FF, 0x0001A7FF, 0x0001A7FF, 0x000100FF, 0x000107FF)
ICR_DEST_LOGICAL = 1 << 11
ICR_LEVEL_ASSERT = 1 << 14
ICR_TRIGGER_LEVEL = 1 << 15
ICR_WRITABLE = 0x000CCFFF

# Delivery modes (LVT, ICR, IOAPIC, MSI)
DM_FIXED, DM_LOWEST, DM_SMI, DM_NMI, DM_INIT, DM_SIPI, DM_EXTINT = 0, 1, 2, 4, 5, 6, 7
# Destination shorthands (ICR bits 18-19)
SH_NONE, SH_SELF, SH_ALL, SH_OTHERS = 0, 1, 2, 3

SVR_ENABLE = 1 << 8
SVR_WRITABLE = 0x3FF  # vector, enable, focus-processor checking (EOI-broadcast suppression unsupported)
# ESR bits
ESR_SEND_ILLEGAL_VECTOR, ESR_RECEIVE_ILLEGAL_VECTOR, ESR_ILLEGAL_REGISTER = 0x20, 0x40, 0x80

APIC_BUS_HZ = 1_000_000_000
NS_PER_S = 1_000_000_000
BROADCAST_XAPIC, BROADCAST_X2APIC = 0xFF, 0xFFFF_FFFF


@dataclass(frozen=True)
class Ipi:
    """One interrupt message on the APIC bus (an ICR write, an IOAPIC entry or an MSI)."""

    vector: int
    delivery: int = DM_FIXED
    dest: int = 0
    logical: bool = False
    shorthand: int = SH_NONE
    level: bool = False  # level-triggered (an IOAPIC level entry, or INIT de-assert with ``assert_`` False)
    assert_: bool = True
    source: int = -1  # the sending LAPIC's ID (for the shorthands)


@dataclass
class LapicState(DeviceState):
    """What the guest sees of one LAPIC; the timer as the time left to its next expiry."""

    apic_id: int = 0
    base: int = APIC_DEFAULT_BASE | BASE_ENABLE
    tpr: int = 0
    ldr: int = 0
    dfr: int = 0xFFFF_FFFF
    svr: int = 0xFF
    isr: int = 0
    tmr: int = 0
    irr: int = 0
    esr: int = 0
    esr_pending: int = 0
    icr: int = 0
    lvt: list[int] = field(default_factory=lambda: [LVT_MASKED] * 7)
    tmict: int = 0
    tdcr: int = 0
    tsc_deadline: int = 0
    timer_left_ns: int | None = None  # ns until the timer next fires, None when it is stopped
    timer_period_ns: int = 0
    nmi_pending: bool = False
    init_pending: bool = False
    sipi_vector: int | None = None


class Lapic:
    """One vCPU's local APIC (see the module docstring)."""

    def __init__(
        self,
        apic_id: int = 0,
        bsp: bool = False,
        notify: Callable[[], None] = lambda: None,
        send_ipi: Callable[[Ipi], None] = lambda ipi: None,
        eoi_broadcast: Callable[[int], None] = lambda vector: None,
        clock: Clock = monotonic_ns,
        tsc: Clock = monotonic_ns,
        tsc_hz: int = NS_PER_S,
    ) -> None:
        self.bsp = bsp
        self.notify = notify
        self.send_ipi = send_ipi
        self.eoi_broadcast = eoi_broadcast
        self.clock = clock
        self.tsc = tsc
        self.tsc_hz = tsc_hz
        self._warned: set[str] = set()
        self.missed_irqs = 0
        self.reset(apic_id)

    def reset(self, apic_id: int | None = None) -> None:
        """Power-on/INIT state (INIT keeps the ID and the APIC base, SDM 11.4.7.3)."""
        if apic_id is not None:
            self.apic_id = apic_id
            self.base = APIC_DEFAULT_BASE | BASE_ENABLE | (BASE_BSP if self.bsp else 0)
        self.tpr = self.ldr = self.esr = self.esr_pending = self.icr = 0
        self.dfr = 0xFFFF_FFFF
        self.svr = 0xFF
        self.isr = self.tmr = self.irr = 0
        self.lvt = [LVT_MASKED] * 7
        if self.bsp:
            self.lvt[L_LINT0] = DM_EXTINT << 8  # the PIC's virtual wire (KVM does the same)
        self.tmict = self.tdcr = self.tsc_deadline = 0
        self._timer_due: int | None = None  # monotonic ns of the next expiry
        self.timer_period_ns = 0
        self._timer_start = 0  # when TMICT was loaded (for TMCCT)
        self.nmi_pending = self.init_pending = False
        self.sipi_vector: int | None = None

    # --- state the machine asks about ------------------------------------------------------
    @property
    def hw_enabled(self) -> bool:
        return bool(self.base & BASE_ENABLE)

    @property
    def sw_enabled(self) -> bool:
        return bool(self.svr & SVR_ENABLE)

    @property
    def x2apic(self) -> bool:
        return bool(self.base & BASE_EXTD)

    @property
    def ppr(self) -> int:
        isrv = self.isr.bit_length() - 1
        isr_class = (isrv & 0xF0) if isrv >= 0 else 0
        return self.tpr & 0xFF if (self.tpr & 0xF0) >= isr_class else isr_class

    def pending_vector(self) -> int | None:
        """The vector the CPU would take now (SDM 11.8.3), or None."""
        if not self.irr or not self.hw_enabled:
            return None
        vector = self.irr.bit_length() - 1
        return vector if (vector & 0xF0) > (self.ppr & 0xF0) else None

    def accepts_pic_interrupts(self) -> bool:
        """Whether the 8259's INTR reaches the CPU: APIC off, or LINT0 in ExtINT mode and unmasked."""
        if not self.hw_enabled:
            return True
        lint0 = self.lvt[L_LINT0]
        return not lint0 & LVT_MASKED and (lint0 >> 8) & 7 == DM_EXTINT

    def acknowledge(self) -> int:
        """The INTA cycle: the highest deliverable IRR vector moves to ISR; the spurious vector if none."""
        vector = self.pending_vector()
        if vector is None:
            return self.svr & 0xFF
        bit = 1 << vector
        self.irr &= ~bit
        self.isr |= bit
        return vector

    # --- receiving --------------------------------------------------------------------------
    def matches(self, dest: int, logical: bool) -> bool:
        """Whether a message for ``dest`` (physical ID or logical mask) is for this LAPIC."""
        if self.x2apic:
            if dest == BROADCAST_X2APIC:
                return True
            if not logical:
                return dest == self.apic_id
            ldr = self.x2apic_ldr()
            return dest >> 16 == ldr >> 16 and bool(dest & ldr & 0xFFFF)
        dest &= 0xFF
        if dest == BROADCAST_XAPIC:
            return True
        if not logical:
            return dest == self.apic_id & 0xFF
        ldr = self.ldr >> 24
        if self.dfr >> 28 == 0xF:  # flat model: a bit per APIC
            return bool(dest & ldr)
        return dest >> 4 == ldr >> 4 and bool(dest & ldr & 0xF)  # cluster model

    def accept(self, delivery: int, vector: int, level: bool = False, assert_: bool = True) -> None:
        """An interrupt message arrived (IPI, IOAPIC, MSI, LVT)."""
        if not self.hw_enabled:
            return
        if delivery in (DM_FIXED, DM_LOWEST):
            if not self.sw_enabled:
                return
            if vector < 16:
                self._error(ESR_RECEIVE_ILLEGAL_VECTOR)
                return
            bit = 1 << vector
            self.irr |= bit
            self.tmr = self.tmr | bit if level else self.tmr & ~bit
        elif delivery == DM_NMI:
            self.nmi_pending = True
        elif delivery == DM_INIT:
            if not assert_ and level:
                return  # INIT level de-assert: only arbitration IDs change
            self.init_pending = True
        elif delivery == DM_SIPI:
            self.sipi_vector = vector
        elif delivery == DM_EXTINT:
            pass  # the machine reads the PIC when it sees accepts_pic_interrupts()
        else:
            warn_once(log, self._warned, "lapic %d: delivery mode %d ignored", self.apic_id, delivery)
            return
        self.notify()

    def local_interrupt(self, index: int) -> None:
        """An LVT source fired (timer, error, LINT0/1): deliver its entry if not masked."""
        entry = self.lvt[index]
        if entry & LVT_MASKED or not self.hw_enabled:
            return
        mode = DM_FIXED if index == L_TIMER else (entry >> 8) & 7
        self.accept(mode, entry & 0xFF, bool(entry & LVT_LEVEL) and index in (L_LINT0, L_LINT1))

    def _error(self, bits: int) -> None:
        self.esr_pending |= bits
        self.local_interrupt(L_ERROR)

    # --- registers ----------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        """An xAPIC MMIO read (32-bit registers on 16-byte boundaries)."""
        reg = offset & 0xFF0
        value = self.read_reg(reg)
        if value is None:
            self._error(ESR_ILLEGAL_REGISTER)
            value = 0
        return (value >> ((offset & 3) * 8)) & ((1 << (8 * size)) - 1) if size < 4 else value

    def write(self, offset: int, size: int, value: int) -> None:
        reg = offset & 0xFF0
        if offset & 0xF or size != 4:
            warn_once(log, self._warned, "lapic: %d-byte write at offset %#x ignored", size, offset)
            return
        if reg == SELF_IPI or not self.write_reg(reg, value & 0xFFFF_FFFF):
            self._error(ESR_ILLEGAL_REGISTER)

    def read_reg(self, reg: int) -> int | None:
        """A register's value, or None for an offset that is not a readable register."""
        if reg == ID:
            return self.apic_id if self.x2apic else (self.apic_id & 0xFF) << 24
        if reg == VERSION:
            return VERSION_VALUE
        if reg == TPR:
            return self.tpr
        if reg in (APR, RRD):
            return 0
        if reg == PPR:
            return self.ppr
        if reg == LDR:
            return self.x2apic_ldr() if self.x2apic else self.ldr
        if reg == DFR:
            return None if self.x2apic else self.dfr
        if reg == SVR:
            return self.svr
        if ISR_BASE <= reg < IRR_BASE + 0x80:
            vec = {ISR_BASE >> 7: self.isr, TMR_BASE >> 7: self.tmr, IRR_BASE >> 7: self.irr}[reg >> 7]
            return (vec >> (((reg >> 4) & 7) * 32)) & 0xFFFF_FFFF
        if reg == ESR:
            return self.esr
        if reg == ICR_LOW:
            return self.icr & 0xFFFF_FFFF
        if reg == ICR_HIGH:
            return None if self.x2apic else self.icr >> 32
        if reg in LVT_OFFSETS:
            return self.lvt[LVT_OFFSETS.index(reg)]
        if reg == TMICT:
            return self.tmict
        if reg == TMCCT:
            return self.current_count()
        if reg == TDCR:
            return self.tdcr
        return None

    def write_reg(self, reg: int, value: int) -> bool:
        """Write a register; False for one that is not writable (the caller reports the error)."""
        if reg == ID:
            if not self.x2apic:
                self.apic_id = value >> 24
        elif reg == TPR:
            self.tpr = value & 0xFF
            self.notify()  # a lower TPR may unblock a pending vector
        elif reg == EOI:
            self._eoi()
        elif reg == LDR:
            if self.x2apic:
                return False
            self.ldr = value & 0xFF00_0000
        elif reg == DFR:
            if self.x2apic:
                return False
            self.dfr = value | 0x0FFF_FFFF
        elif reg == SVR:
            self.svr = value & SVR_WRITABLE
            if not self.sw_enabled:
                self.lvt = [e | LVT_MASKED for e in self.lvt]
                self._stop_timer()
        elif reg == ESR:
            self.esr, self.esr_pending = self.esr_pending, 0
        elif reg == ICR_LOW:
            self.icr = (self.icr & ~0xFFFF_FFFF) | (value & ICR_WRITABLE)
            self._send(self.icr)
        elif reg == ICR_HIGH:
            if self.x2apic:
                return False
            self.icr = (self.icr & 0xFFFF_FFFF) | ((value & 0xFF00_0000) << 32)
        elif reg in LVT_OFFSETS:
            self._write_lvt(LVT_OFFSETS.index(reg), value)
        elif reg == TMICT:
            if self._timer_mode() != TIMER_TSC_DEADLINE:
                self.tmict = value
                self._start_timer()
        elif reg == TDCR:
            self.tdcr = value & 0xB
        elif reg == SELF_IPI and self.x2apic:
            self.accept(DM_FIXED, value & 0xFF)
        else:
            return reg in (VERSION, PPR, APR, RRD, TMCCT) or ISR_BASE <= reg < IRR_BASE + 0x80  # read-only
        return True

    def _write_lvt(self, index: int, value: int) -> None:
        value &= LVT_WRITABLE[index]
        if not self.sw_enabled:
            value |= LVT_MASKED
        if index == L_TIMER:
            old_mode = self._timer_mode()
            self.lvt[index] = (self.lvt[index] & LVT_REMOTE_IRR) | value
            if self._timer_mode() != old_mode:  # a mode change stops the timer (as KVM does)
                self.tmict = self.tsc_deadline = 0
                self._stop_timer()
            return
        self.lvt[index] = (self.lvt[index] & LVT_REMOTE_IRR) | value

    def _eoi(self) -> None:
        if not self.isr:
            return
        vector = self.isr.bit_length() - 1
        self.isr &= ~(1 << vector)
        if self.tmr >> vector & 1:
            self.eoi_broadcast(vector)
        self.notify()  # a lower PPR may unblock a pending vector

    def _send(self, icr: int) -> None:
        delivery = (icr >> 8) & 7
        vector = icr & 0xFF
        if delivery in (DM_FIXED, DM_LOWEST) and vector < 16:
            self._error(ESR_SEND_ILLEGAL_VECTOR)
            return
        dest = icr >> 32 if self.x2apic else (icr >> 56) & 0xFF
        self.send_ipi(
            Ipi(
                vector,
                delivery,
                dest,
                bool(icr & ICR_DEST_LOGICAL),
                (icr >> 18) & 3,
                bool(icr & ICR_TRIGGER_LEVEL),
                bool(icr & ICR_LEVEL_ASSERT),
                self.apic_id,
            )
        )

    # --- x2APIC and the APIC base MSR -----------------------------------------------------------
    def x2apic_ldr(self) -> int:
        return ((self.apic_id >> 4) << 16) | (1 << (self.apic_id & 0xF))

    def set_base(self, value: int) -> None:
        """A write of IA32_APIC_BASE (enable, x2APIC mode; the address stays the machine's)."""
        was_enabled = self.hw_enabled
        self.base = (value & (BASE_ENABLE | BASE_EXTD | ~0xFFF)) | (BASE_BSP if self.bsp else 0)
        if was_enabled and not self.hw_enabled:
            self.reset(self.apic_id)
            self.base &= ~(BASE_ENABLE | BASE_EXTD)

    def read_msr(self, index: int) -> int | None:
        """x2APIC register MSRs and TSC_DEADLINE; None where the CPU raises #GP."""
        if index == MSR_TSC_DEADLINE:
            return self.tsc_deadline if self._timer_mode() == TIMER_TSC_DEADLINE else 0
        if not self.x2apic or not X2APIC_MSR_BASE <= index < X2APIC_MSR_END:
            return None
        reg = (index - X2APIC_MSR_BASE) << 4
        if reg == ICR_LOW:
            return self.icr
        if reg in (EOI, SELF_IPI):
            return None
        return self.read_reg(reg)

    def write_msr(self, index: int, value: int) -> bool:
        """False where the CPU raises #GP."""
        if index == MSR_TSC_DEADLINE:
            if self._timer_mode() == TIMER_TSC_DEADLINE:
                self.tsc_deadline = value
                self._start_timer()
            return True
        if not self.x2apic or not X2APIC_MSR_BASE <= index < X2APIC_MSR_END:
            return False
        reg = (index - X2APIC_MSR_BASE) << 4
        if reg == ICR_LOW:
            self.icr = (value & ICR_WRITABLE) | (value & ~0xFFFF_FFFF)
            self._send(self.icr)
            return True
        if reg in (ID, LDR, ICR_HIGH) or (reg == EOI and value):
            return False
        return self.write_reg(reg, value & 0xFFFF_FFFF)

    # --- the timer --------------------------------------------------------------------------------
    def _timer_mode(self) -> int:
        return (self.lvt[L_TIMER] >> TIMER_MODE_SHIFT) & 3

    def _divisor(self) -> int:
        v = (self.tdcr & 3) | ((self.tdcr & 8) >> 1)
        return 1 << ((v + 1) & 7)

    def _tick_ns(self) -> int:
        """ns per timer count."""
        return self._divisor() * NS_PER_S // APIC_BUS_HZ

    def _stop_timer(self) -> None:
        self._timer_due = None
        self.timer_period_ns = 0

    def _start_timer(self) -> None:
        now = self.clock()
        self._timer_start = now
        mode = self._timer_mode()
        if mode == TIMER_TSC_DEADLINE:
            self.timer_period_ns = 0
            if not self.tsc_deadline:
                self._timer_due = None
                return
            left = (self.tsc_deadline - self.tsc()) * NS_PER_S // self.tsc_hz
            self._timer_due = now + max(left, 0)
            return
        if not self.tmict:
            self._stop_timer()
            return
        length = self.tmict * self._tick_ns()
        if mode == TIMER_PERIODIC and length < MIN_PERIODIC_NS:
            warn_once(log, self._warned, "lapic: periodic timer under 200 us: delivered every 200 us")
            length = MIN_PERIODIC_NS
        self._timer_due = now + length
        self.timer_period_ns = length if mode == TIMER_PERIODIC else 0

    def current_count(self) -> int:
        if self._timer_mode() == TIMER_TSC_DEADLINE or not self.tmict or self._timer_due is None:
            return 0
        left = self._timer_due - self.clock()
        return min(max(left, 0) // self._tick_ns(), self.tmict)  # a clamped period counts down from TMICT

    def next_deadline(self) -> int | None:
        return self._timer_due

    def tick(self, now: int) -> None:
        due = self._timer_due
        if due is None or now < due:
            return
        period = self.timer_period_ns
        if period:
            late = (now - due) // period
            self.missed_irqs += late
            self._timer_due = due + (late + 1) * period
        else:
            self._timer_due = None
            if self._timer_mode() == TIMER_TSC_DEADLINE:
                self.tsc_deadline = 0
        self.local_interrupt(L_TIMER)

    # --- snapshots -----------------------------------------------------------------------------
    def state(self) -> LapicState:
        due = self._timer_due
        left = None if due is None else max(due - self.clock(), 0)
        return state_from_attrs(self, LapicState, lvt=list(self.lvt), timer_left_ns=left)

    @classmethod
    def from_state(cls, state: LapicState, /, **injected: Any) -> Lapic:
        st = checked_state(state, LapicState, "lapic")
        injected.pop("apic_id", None)  # the record's ID wins over the device's being replaced
        lapic = cls(apic_id=int(st.apic_id), **injected)
        for name in ("base", "tpr", "ldr", "dfr", "svr", "isr", "tmr", "irr", "esr", "esr_pending", "icr"):
            setattr(lapic, name, int(getattr(st, name)))
        for name in ("tmict", "tdcr", "tsc_deadline", "timer_period_ns"):
            setattr(lapic, name, int(getattr(st, name)))
        if len(st.lvt) != len(LVT_OFFSETS):
            raise ValueError(f"{len(st.lvt)} LVT entries")
        lapic.lvt = [int(v) & 0xFFFF_FFFF for v in st.lvt]
        now = lapic.clock()
        lapic._timer_due = None if st.timer_left_ns is None else now + int(st.timer_left_ns)
        if lapic._timer_due is not None and lapic.tmict:
            lapic._timer_start = lapic._timer_due - lapic.tmict * lapic._tick_ns()
        lapic.nmi_pending, lapic.init_pending = bool(st.nmi_pending), bool(st.init_pending)
        lapic.sipi_vector = None if st.sipi_vector is None else int(st.sipi_vector) & 0xFF
        return lapic

    # --- KVM's register page (kvm_lapic_state) --------------------------------------------------
    def register_page(self) -> bytes:
        """The 1 KiB register page in KVM_GET_LAPIC's layout (xAPIC format)."""
        page = bytearray(1024)
        for reg in range(0, 0x400, 0x10):
            value = self.icr >> 32 if reg == ICR_HIGH else self.read_reg(reg)
            if value is not None:
                page[reg : reg + 4] = (value & 0xFFFF_FFFF).to_bytes(4, "little")
        return bytes(page)
