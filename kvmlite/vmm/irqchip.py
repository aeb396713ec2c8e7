"""Interrupt delivery, two ways (``--irqchip``).

``userspace`` - the seed design of KVM: kvmlite's own i8259 pair and i8254
take the devices' interrupt lines (the software backend adds its IOAPIC and
LAPICs to them: :mod:`kvmlite.vmm.apic`); before each KVM_RUN the loop injects the PIC's vector with
KVM_INTERRUPT when the vCPU can take it (``ready_for_interrupt_injection``) or
asks KVM for an interrupt window exit when it cannot.  HLT exits to
userspace and waits on a condition until the PIC has something.

``kernel`` - KVM_CREATE_IRQCHIP + KVM_CREATE_PIT2: PIC, IOAPIC, LAPIC and PIT
live in the kernel, devices drive GSIs with KVM_IRQ_LINE, timer interrupts
and HLT never reach userspace.  Far fewer exits; the default on KVM, and the
only mode for SMP (the LAPICs deliver INIT/SIPI and IPIs between vCPUs).
KVM's default GSI routing is kept: GSI n to PIC input n and IOAPIC pin n
(the ACPI MADT of :mod:`kvmlite.firmware.acpi` describes exactly that).

Both present the same face to the machine: ``line(irq)`` gives a device its
:data:`~kvmlite.devices.base.IrqLine`.
"""

from __future__ import annotations

import logging
import threading

from kvmlite.backend import VcpuBackend, VmBackend
from kvmlite.devices.base import IrqLine
from kvmlite.devices.pic import Pic8259Pair
from kvmlite.kvm import exits as E
from kvmlite.kvm.constants import MpState
from kvmlite.status import ExitStatus
from kvmlite.vmm.loop import LoopExtension, VcpuLoop, VmControl
from kvmlite.x86 import Rflags

log = logging.getLogger(__name__)

def inject_from_pic(vcpu: VcpuBackend, pic: Pic8259Pair, cond: threading.Condition) -> None:
    """Before KVM_RUN: the PIC's vector into ``vcpu`` when it can take one, else an interrupt window."""
    if not pic.intr_level:
        if vcpu.interrupt_window_requested:
            vcpu.request_interrupt_window(False)
        return
    with cond:
        if not pic.intr_level:
            return
        if vcpu.ready_for_interrupt_injection:
            vcpu.interrupt(pic.acknowledge())
            vcpu.request_interrupt_window(pic.intr_level)
        else:
            vcpu.request_interrupt_window(True)


#: How often the kernel-irqchip mode looks for a vCPU halted with interrupts off.
HALT_WATCH_INTERVAL_S = 0.5
#: An AP in these states has not been started (or was sent INIT): it runs no code until a SIPI.
WAITING_FOR_SIPI = (MpState.UNINITIALIZED, MpState.INIT_RECEIVED)


class UserspaceIrqChip(LoopExtension):
    """kvmlite's PIC pair feeding KVM_INTERRUPT (vCPU 0 only)."""

    #: The MADT lists an IOAPIC, devices get GSIs 16-23 (kvmlite.vmm.layout.SystemAllocator).
    has_ioapic = False
    #: Every vCPU's loop is attached (else only vCPU 0's).
    serves_every_vcpu = False
    split = False  # kvmlite.vmm.split_irqchip

    def __init__(self, lock: threading.RLock, control: VmControl) -> None:
        self.cond = threading.Condition(lock)
        self.control = control
        self.pic = Pic8259Pair(intr=self._intr)
        self._vcpu: VcpuBackend | None = None
        self._vcpu_thread: int | None = None
        control.wakers.append(self._wake)

    def line(self, irq: int) -> IrqLine:
        pic = self.pic

        def set_level(level: bool) -> None:
            with self.cond:
                pic.set_irq(irq, level)

        return set_level

    def attach(self, loop: VcpuLoop) -> None:
        """Wire the boot vCPU's loop: inject before each run, sleep on HLT (the PIC serves vCPU 0)."""
        self._vcpu = loop.vcpu
        loop.add(self)

    def _intr(self, level: bool) -> None:
        """The PIC's INT pin (called with the device lock held)."""
        if not level:
            return
        self.cond.notify_all()
        vcpu = self._vcpu
        if vcpu is not None and threading.get_ident() != self._vcpu_thread:
            vcpu.kick()  # it may be running guest code: make it come back for the injection

    def before_run(self, loop: VcpuLoop) -> None:
        """Inject the PIC's interrupt when the vCPU can take it, else ask for an interrupt window."""
        vcpu = self._vcpu
        assert vcpu is not None, "attach() first"
        if self._vcpu_thread is None:
            self._vcpu_thread = threading.get_ident()
        inject_from_pic(vcpu, self.pic, self.cond)

    def wait_for_interrupt(self, loop: VcpuLoop) -> None:
        with self.cond:
            while not self.pic.intr_level and not self.control.attention:
                self.cond.wait()

    def _wake(self) -> None:
        with self.cond:
            self.cond.notify_all()


class KernelIrqChip(LoopExtension):
    """KVM's in-kernel PIC/IOAPIC/LAPIC and PIT; devices raise GSIs with KVM_IRQ_LINE."""

    exits: tuple[type[E.Exit], ...] = (E.Interrupted,)
    has_ioapic = True
    serves_every_vcpu = True
    split = False  # kvmlite.vmm.split_irqchip

    def __init__(self, vm: VmBackend, control: VmControl) -> None:
        self.vm = vm
        self.control = control
        self._watch_lock = threading.Lock()
        self._watched: list[int] = []  # ids of the attached vCPUs
        self._parked: dict[int, tuple[int, bool]] = {}  # vCPU id -> (round it reported in, halted)
        self._round = 0
        vm.create_irqchip()
        vm.create_pit2()

    def line(self, irq: int) -> IrqLine:
        vm = self.vm

        def set_level(level: bool) -> None:
            vm.irq_line(irq, level)

        return set_level

    def attach(self, loop: VcpuLoop) -> None:
        """Watch one vCPU (every vCPU of the VM is attached) for the end of the guest.

        HLT never leaves the kernel here, so the watchdog kicks every vCPU out
        of KVM_RUN periodically and each one reports, on that
        :class:`~kvmlite.kvm.exits.Interrupted` exit, whether it is *parked*:
        halted with interrupts off (only an NMI, INIT or SMI could wake it)
        or an AP still waiting for its startup IPI.  The VM stops once every
        vCPU reported parked in the same watchdog round, and at least one
        of them halted: with SMP a single parked CPU means nothing (Linux
        parks each AP with ``cli; hlt`` when it stops them for power-off or
        takes a CPU offline, while the boot CPU goes on; an AP parked in one
        round may be woken by INIT/SIPI in the next, which is why reports
        from older rounds do not count).
        """
        with self._watch_lock:
            self._watched.append(loop.vcpu.id)
        loop.add(self)

    def on_exit(self, loop: VcpuLoop, ex: E.Exit) -> bool:
        """A kick (the watchdog's among them): report whether this vCPU is parked."""
        if self.control.stopping:
            return False
        vcpu = loop.vcpu
        state = vcpu.get_mp_state()
        halted = state == MpState.HALTED and not vcpu.get_regs().rflags & Rflags.IF
        parked = halted or state in WAITING_FOR_SIPI
        with self._watch_lock:
            if parked:
                self._parked[vcpu.id] = (self._round, halted)
            else:
                self._parked.pop(vcpu.id, None)
            reports = [self._parked.get(i) for i in self._watched]
            done = all(r is not None and r[0] == self._round for r in reports) and any(
                r is not None and r[1] for r in reports
            )
        if done:
            what = "guest halted with interrupts disabled"
            if len(self._watched) > 1:
                what += " on every CPU"
            self.control.stop(ExitStatus.OK, what, vcpu.id)
        return False

    @property
    def rounds(self) -> int:
        """How many watchdog rounds have started."""
        return self._round

    def watchdog(self) -> None:
        """Start a new round: kick every vCPU out of KVM_RUN once, so :meth:`attach`'s check runs."""
        with self._watch_lock:
            self._round += 1
        for vcpu in self.control.vcpus:
            vcpu.kick()
