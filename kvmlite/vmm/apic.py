"""The userspace APIC irqchip: PIC, IOAPIC and one LAPIC per vCPU in kvmlite (the software backend).

What KVM's in-kernel irqchip is, built from kvmlite's device models
(:mod:`kvmlite.devices.lapic`, :mod:`kvmlite.devices.ioapic`,
:mod:`kvmlite.devices.pic`), for a backend that runs the vCPUs itself and
says so with ``BackendCaps.userspace_apic``:

* every device line is a GSI with KVM's default routing: GSI n goes to PIC
  input n (n < 16) and IOAPIC pin n, so the MADT kvmlite writes (an IOAPIC,
  ISA IRQs identity-mapped, the SCI override) describes this machine too;
* the PIC's INTR reaches the boot vCPU through its LAPIC's LINT0 in ExtINT
  mode (virtual wire; the reset state) or with the LAPIC disabled, and is
  taken before the LAPIC's own vectors, as KVM does;
* the APIC bus (:meth:`ApicIrqChip.send`) carries IPIs, IOAPIC messages and
  EOI broadcasts between them: fixed, lowest priority (to the matching LAPIC
  with the lowest PPR), NMI, INIT and SIPI, physical and logical
  destinations, the shorthands;
* each vCPU's loop injects before every run (``before_run``), waits on HLT
  until its LAPIC or the PIC has something for it, and an AP waits in
  ``before_run`` for INIT and a startup IPI, whose vector is where it then
  starts in real mode;
* the LAPIC timers tick on the timer service; the LAPIC's registers are
  reached by the vCPU itself (:class:`LapicAccess`: the backend routes its
  0xFEE00000 page and the x2APIC and TSC-deadline MSRs there), the IOAPIC's
  through the MMIO bus.

The end of an SMP guest follows the in-kernel irqchip's rule: a vCPU halted
with interrupts off waits (an INIT or NMI could still wake it) and the VM
stops once every vCPU is halted that way or waiting for its startup IPI.

Every LAPIC and the IOAPIC are registry devices (``lapic0``.., ``ioapic``),
so snapshots carry their state like any other device's.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kvmlite.backend import VcpuBackend
from kvmlite.devices.base import IrqLine
from kvmlite.devices.ioapic import NUM_PINS, Ioapic
from kvmlite.devices.lapic import SH_ALL, SH_OTHERS, SH_SELF, Ipi, Lapic
from kvmlite.devices.pic import NUM_IRQS as PIC_IRQS
from kvmlite.kvm import exits as E
from kvmlite.kvm.constants import MpState
from kvmlite.status import ExitStatus
from kvmlite.vmm.irqchip import WAITING_FOR_SIPI, UserspaceIrqChip
from kvmlite.vmm.loop import VcpuLoop, VmControl
from kvmlite.vmm.timers import TimerService

log = logging.getLogger(__name__)

HLT_LENGTH = 1  # F4


def pic_and_ioapic_line(cond: threading.Condition, pic: Any, ioapic: Ioapic, irq: int) -> IrqLine:
    """A device's interrupt line wired to PIC input ``irq`` (if any) and IOAPIC pin ``irq`` (if any)."""

    def set_level(level: bool) -> None:
        with cond:
            if irq < PIC_IRQS:
                pic.set_irq(irq, level)
            if irq < NUM_PINS:
                ioapic.set_irq(irq, level)

    return set_level


class LapicAccess:
    """One LAPIC as its vCPU reaches it: registers under the device lock, the timer service told of new
    deadlines (the software backend calls this from the vCPU thread)."""

    def __init__(self, lapic: Lapic, lock: threading.RLock, timers: TimerService) -> None:
        self.lapic = lapic
        self.lock = lock
        self.timers = timers

    @property
    def base(self) -> int:
        return self.lapic.base

    @property
    def mmio_page(self) -> int | None:
        """The guest-physical page the registers answer at, None while the APIC is disabled or x2APIC."""
        lapic = self.lapic
        return None if not lapic.hw_enabled or lapic.x2apic else lapic.base & ~0xFFF & 0xFFFF_FFFF_FFFF

    def read(self, offset: int, size: int) -> int:
        with self.lock:
            return self.lapic.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        with self.lock:
            before = self.lapic.next_deadline()
            self.lapic.write(offset, size, value)
            if self.lapic.next_deadline() != before:
                self.timers.poke()

    def read_msr(self, index: int) -> int | None:
        with self.lock:
            return self.lapic.read_msr(index)

    def write_msr(self, index: int, value: int) -> bool:
        with self.lock:
            before = self.lapic.next_deadline()
            ok = self.lapic.write_msr(index, value)
            if self.lapic.next_deadline() != before:
                self.timers.poke()
            return ok

    def set_base(self, value: int) -> None:
        with self.lock:
            self.lapic.set_base(value)


class ApicIrqChip(UserspaceIrqChip):
    """PIC + IOAPIC + LAPICs in userspace (see the module docstring)."""

    exits = (E.Hlt,)
    has_ioapic = True
    serves_every_vcpu = True

    def __init__(self, lock: threading.RLock, control: VmControl, timers: TimerService, cpus: int) -> None:
        super().__init__(lock, control)
        self.lock = lock
        self.timers = timers
        self.ioapic = Ioapic(deliver=self.send, id=cpus)
        self.lapics = [
            Lapic(
                i, bsp=i == 0, notify=self._notifier(i), send_ipi=self.send, eoi_broadcast=self.ioapic.eoi
            )
            for i in range(cpus)
        ]
        self._vcpus: dict[int, VcpuBackend] = {}
        self._threads: dict[int, int] = {}  # vCPU id -> its thread
        self._parked: set[int] = set()  # vCPUs halted with interrupts off
        for lapic in self.lapics:
            timers.add(lapic)

    # --- lines and the APIC bus -----------------------------------------------------------------
    def line(self, irq: int) -> IrqLine:
        return pic_and_ioapic_line(self.cond, self.pic, self.ioapic, irq)

    def send(self, ipi: Ipi) -> None:
        """Deliver one message to the LAPICs it is for (called with the device lock held)."""
        lapics = self.lapics
        if ipi.shorthand == SH_SELF:
            targets = [lp for lp in lapics if lp.apic_id == ipi.source]
        elif ipi.shorthand == SH_ALL:
            targets = list(lapics)
        elif ipi.shorthand == SH_OTHERS:
            targets = [lp for lp in lapics if lp.apic_id != ipi.source]
        else:
            targets = [lp for lp in lapics if lp.matches(ipi.dest, ipi.logical)]
            if ipi.delivery == 1 and len(targets) > 1:  # lowest priority: the lowest PPR takes it
                targets = [min(targets, key=lambda lp: lp.ppr)]
        for lapic in targets:
            lapic.accept(ipi.delivery, ipi.vector, ipi.level, ipi.assert_)

    def msi(self, address: int, data: int) -> None:
        """An MSI (address 0xFEExxxxx, data: vector and mode) as a message on the APIC bus."""
        with self.cond:
            self.send(
                Ipi(
                    vector=data & 0xFF,
                    delivery=(data >> 8) & 7,
                    dest=(address >> 12) & 0xFF,
                    logical=bool(address & 4),
                    level=bool(data & (1 << 15)),
                )
            )

    def _notifier(self, index: int) -> Any:
        def notify() -> None:
            self.cond.notify_all()
            vcpu = self._vcpus.get(index)
            if vcpu is not None:
                # it may be running guest code (or, on its own thread, about to go on running it
                # after an EOI or a self-IPI): make it come back for the injection
                vcpu.kick()

        return notify

    def _intr(self, level: bool) -> None:
        """The PIC's INT pin: to the boot vCPU, through LINT0 (virtual wire)."""
        if level and self.lapics[0].accepts_pic_interrupts():
            self.lapics[0].notify()

    # --- the vCPUs' side ----------------------------------------------------------------------------
    def attach(self, loop: VcpuLoop) -> None:
        vcpu = loop.vcpu
        self._vcpus[vcpu.id] = vcpu
        if vcpu.id == 0:
            self._vcpu = vcpu
        attach = getattr(vcpu, "attach_lapic", None)
        if attach is not None:
            attach(LapicAccess(self.lapics[vcpu.id], self.lock, self.timers), len(self.lapics))
        loop.add(self)

    def _extint(self, index: int) -> bool:
        return index == 0 and self.pic.intr_level and self.lapics[0].accepts_pic_interrupts()

    def _has_work(self, index: int) -> bool:
        lapic = self.lapics[index]
        return (
            self._extint(index)
            or lapic.pending_vector() is not None
            or lapic.nmi_pending
            or lapic.init_pending
        )

    def before_run(self, loop: VcpuLoop) -> None:
        vcpu = loop.vcpu
        index = vcpu.id
        self._threads.setdefault(index, threading.get_ident())
        lapic = self.lapics[index]
        if lapic.init_pending or lapic.sipi_vector is not None or vcpu.get_mp_state() in WAITING_FOR_SIPI:
            if not self._start_up(loop):
                return
        if lapic.nmi_pending:
            with self.cond:
                lapic.nmi_pending = False
                vcpu.nmi()
        extint = self._extint(index)
        if not extint and lapic.pending_vector() is None:
            if vcpu.interrupt_window_requested:
                vcpu.request_interrupt_window(False)
            return
        with self.cond:
            if not vcpu.ready_for_interrupt_injection:
                vcpu.request_interrupt_window(True)
                return
            if self._extint(index):
                vcpu.interrupt(self.pic.acknowledge())
            elif lapic.pending_vector() is not None:
                vcpu.interrupt(lapic.acknowledge())
            vcpu.request_interrupt_window(self._extint(index) or lapic.pending_vector() is not None)

    def _start_up(self, loop: VcpuLoop) -> bool:
        """INIT and SIPI (SDM 8.4.4): True once the vCPU may run, False to let the loop see a stop/pause."""
        vcpu, lapic = loop.vcpu, self.lapics[loop.vcpu.id]
        with self.cond:
            while True:
                if lapic.init_pending:
                    sipi = lapic.sipi_vector  # a SIPI latched with the INIT came after it: keep it
                    lapic.reset()
                    lapic.sipi_vector = sipi
                    reset = getattr(vcpu, "reset_for_init", None)
                    if reset is not None:
                        reset()
                    vcpu.set_mp_state(MpState.INIT_RECEIVED)
                    self._parked.discard(vcpu.id)
                state = vcpu.get_mp_state()
                if lapic.sipi_vector is not None:
                    vector, lapic.sipi_vector = lapic.sipi_vector, None
                    if state == MpState.INIT_RECEIVED:
                        regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
                        sregs.cs.selector, sregs.cs.base = vector << 8, vector << 12
                        regs.rip = 0
                        vcpu.set_sregs(sregs)
                        vcpu.set_regs(regs)
                        vcpu.set_mp_state(MpState.RUNNABLE)
                        log.debug("vcpu %d: started at %#x", vcpu.id, vector << 12)
                        return True
                    continue  # a SIPI outside wait-for-SIPI is ignored
                if state not in WAITING_FOR_SIPI:
                    return True
                if self.control.attention:
                    return False
                self._check_parked()
                self.cond.wait()

    def wait_for_interrupt(self, loop: VcpuLoop) -> None:
        index = loop.vcpu.id
        with self.cond:
            while not self._has_work(index) and not self.control.attention:
                self.cond.wait()

    def on_exit(self, loop: VcpuLoop, ex: Any) -> bool:
        """HLT with interrupts off on an SMP machine: wait for INIT or NMI, or end the VM if all parked."""
        vcpu = loop.vcpu
        if len(self.lapics) == 1 or vcpu.if_flag:
            return False
        lapic = self.lapics[vcpu.id]
        with self.cond:
            self._parked.add(vcpu.id)
            try:
                while not (lapic.init_pending or lapic.nmi_pending) and not self.control.attention:
                    if self._check_parked():
                        return True
                    self.cond.wait()
            finally:
                self._parked.discard(vcpu.id)
            if not (lapic.init_pending or lapic.nmi_pending):  # a stop or a pause: HLT again afterwards
                regs = vcpu.get_regs()
                regs.rip -= HLT_LENGTH
                vcpu.set_regs(regs)
        return True

    def _check_parked(self) -> bool:
        """Stop the VM if every vCPU is halted with IF=0 or waiting for SIPI, at least one halted."""
        waiting = {i for i, v in self._vcpus.items() if v.get_mp_state() in WAITING_FOR_SIPI}
        if not self._parked or len(self._parked | waiting) < len(self.lapics):
            return False
        self.control.stop(ExitStatus.OK, "guest halted with interrupts disabled on every CPU")
        return True

    def _wake(self) -> None:
        with self.cond:
            self.cond.notify_all()
