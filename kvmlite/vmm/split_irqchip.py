"""``--irqchip split``: KVM_CAP_SPLIT_IRQCHIP, the LAPICs in KVM, the PIC, IOAPIC and PIT in kvmlite.

QEMU's ``kernel-irqchip=split``.  KVM keeps each vCPU's local APIC (its timer,
IPIs, INIT/SIPI, HLT) and kvmlite the rest, as device models
(:mod:`kvmlite.devices.pic`, :mod:`kvmlite.devices.ioapic`, the PIT):

* every device line is a GSI with KVM's default routing: PIC input n (n < 16)
  and IOAPIC pin n, so the MADT (an IOAPIC, ISA IRQs identity-mapped) is true;
* an IOAPIC message becomes an MSI (KVM_SIGNAL_MSI) to the in-kernel LAPICs;
* the PIC's interrupt goes to the boot vCPU with KVM_INTERRUPT, which with a
  split irqchip KVM holds as a pending ExtINT until the LAPIC's LINT0 takes it
  (``ready_for_interrupt_injection`` and interrupt windows, as for the
  userspace irqchip);
* level-triggered EOIs: KVM learns which vectors the IOAPIC sends
  level-triggered from MSI routes on the IOAPIC's GSIs (KVM_SET_GSI_ROUTING,
  rewritten when the guest changes the redirection table, as QEMU does), and
  exits with KVM_EXIT_IOAPIC_EOI when the guest's LAPIC takes the EOI of one;
  the IOAPIC then clears remote IRR and sends again if the line is still high.

The end of the guest is watched as with the in-kernel irqchip (HLT stays in
KVM): :class:`~kvmlite.vmm.irqchip.KernelIrqChip`'s watchdog rounds.
"""

from __future__ import annotations

import threading
from typing import Any

from kvmlite.backend import VcpuBackend, VmBackend
from kvmlite.devices.base import IrqLine
from kvmlite.devices.ioapic import NUM_PINS, RTE_MASKED, Ioapic, entry_message
from kvmlite.devices.lapic import APIC_DEFAULT_BASE, Ipi
from kvmlite.devices.pic import Pic8259Pair
from kvmlite.kvm import exits as E
from kvmlite.kvm.constants import Cap
from kvmlite.vmm.apic import pic_and_ioapic_line
from kvmlite.vmm.irqchip import KernelIrqChip, inject_from_pic
from kvmlite.vmm.loop import VcpuLoop, VmControl


def msi_message(ipi: Ipi) -> tuple[int, int]:
    """(address, data) of the MSI carrying ``ipi`` (Intel SDM 11.11)."""
    address = APIC_DEFAULT_BASE | ((ipi.dest & 0xFF) << 12) | (4 if ipi.logical else 0)
    data = ipi.vector | (ipi.delivery << 8) | (1 << 14 if ipi.assert_ else 0) | (1 << 15 if ipi.level else 0)
    return address, data


class IoapicWindow:
    """The IOAPIC's MMIO as the bus sees it: after a write that changed the redirection table, the
    split irqchip republishes its MSI routes."""

    def __init__(self, ioapic: Ioapic, changed: Any) -> None:
        self.ioapic = ioapic
        self.changed = changed

    def read(self, offset: int, size: int) -> int:
        return self.ioapic.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        before = list(self.ioapic.redirection)
        self.ioapic.write(offset, size, value)
        if self.ioapic.redirection != before:
            self.changed()


class SplitIrqChip(KernelIrqChip):
    """LAPICs in KVM, PIC/IOAPIC/PIT in kvmlite (see the module docstring)."""

    exits = (E.Interrupted, E.IoapicEoi)
    has_ioapic = True
    serves_every_vcpu = True
    #: No in-kernel PIC or IOAPIC: no KVM irqchip routes, irqfds or KVM_GET_IRQCHIP.
    split = True

    def __init__(self, vm: VmBackend, lock: threading.RLock, control: VmControl, cpus: int) -> None:
        # KernelIrqChip's watchdog state, without its KVM_CREATE_IRQCHIP and PIT
        self.vm = vm
        self.control = control
        self._watch_lock = threading.Lock()
        self._watched: list[int] = []
        self._parked: dict[int, tuple[int, bool]] = {}
        self._round = 0
        vm.enable_cap(Cap.SPLIT_IRQCHIP, NUM_PINS)  # type: ignore[attr-defined]
        self.cond = threading.Condition(lock)
        self.pic = Pic8259Pair(intr=self._intr)
        self.ioapic = Ioapic(deliver=self._deliver, id=cpus)
        self.window = IoapicWindow(self.ioapic, self._publish_routes)
        self._bsp: VcpuBackend | None = None
        self._routes: list[tuple[int, int, int]] | None = None

    def line(self, irq: int) -> IrqLine:
        return pic_and_ioapic_line(self.cond, self.pic, self.ioapic, irq)

    def _deliver(self, ipi: Ipi) -> None:
        address, data = msi_message(ipi)
        self.vm.signal_msi(address, data)

    def _publish_routes(self) -> None:
        """MSI routes on the IOAPIC's GSIs for its unmasked entries: KVM scans them for the
        level-triggered vectors whose EOIs it reports (KVM_EXIT_IOAPIC_EOI)."""
        routes = []
        for pin, entry in enumerate(self.ioapic.redirection):
            if not entry & RTE_MASKED:
                routes.append((pin, *msi_message(entry_message(entry))))
        if routes != self._routes:
            self._routes = routes
            self.vm.set_gsi_routing([], routes)

    def state_reloaded(self) -> None:
        """A snapshot's IOAPIC state was loaded in place: publish the routes it implies."""
        self._routes = None
        self._publish_routes()

    def _intr(self, level: bool) -> None:
        """The PIC's INT pin: make the boot vCPU come back for the injection."""
        if level and self._bsp is not None:
            self._bsp.kick()

    def attach(self, loop: VcpuLoop) -> None:
        if loop.vcpu.id == 0:
            self._bsp = loop.vcpu
        super().attach(loop)

    def before_run(self, loop: VcpuLoop) -> None:
        """The PIC's vector to the boot vCPU when it can take it (LINT0 in ExtINT mode), else a window."""
        vcpu = loop.vcpu
        if vcpu.id != 0:
            return
        inject_from_pic(vcpu, self.pic, self.cond)

    def on_exit(self, loop: VcpuLoop, ex: Any) -> bool:
        if isinstance(ex, E.IoapicEoi):
            with self.cond:
                self.ioapic.eoi(ex.vector)
            return True
        return super().on_exit(loop, ex)
