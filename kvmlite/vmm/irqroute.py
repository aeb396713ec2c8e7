"""Device interrupts without an ioctl each: irqfd, KVM_SET_GSI_ROUTING and resampled level lines.

With the in-kernel irqchip, a device that runs in the I/O thread raises its
interrupt by writing an eventfd that KVM watches (KVM_IRQFD); KVM injects the
interrupt itself, at once, and the I/O thread never calls into KVM:

* **MSI-X** (:class:`MsiVectors`): each vector of a function gets its own
  GSI above the IOAPIC's pins and an eventfd bound to it.  The GSI's route
  (:class:`GsiRouter`, KVM_SET_GSI_ROUTING) carries the message (address,
  data) the guest programmed in the vector's table entry; the table is
  rewritten only when a message changes (the guest moved the interrupt to
  another CPU), not for each interrupt.  Masking stays in
  :class:`kvmlite.pci.msix.Msix`: a masked vector is never signalled.
* **INTx and virtio-mmio lines** (:class:`ResampledLine`): a level-triggered
  irqfd with a resample eventfd.  Raising the line writes the eventfd, which
  asserts the IOAPIC pin; at the guest's EOI KVM lowers the pin and signals
  the resample eventfd, and the line is asserted again if the device still
  holds it high (QEMU and VFIO drive INTx this way).  Lowering the line costs
  nothing: the guest's EOI lowers the pin.

KVM_SET_GSI_ROUTING replaces the whole table, so the table kvmlite writes
always starts with KVM's default routes (GSI n to PIC input n for n < 16 and
to IOAPIC pin n for n < 24), which KVM_IRQ_LINE, the in-kernel PIT and the
ACPI MADT rely on.

The userspace irqchip and the software backend have none of this: there the
devices' lines go to kvmlite's PIC and virtio-pci falls back to INTx.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

from kvmlite.backend import VmBackend
from kvmlite.errors import ConfigError
from kvmlite.kvm.constants import IrqchipId
from kvmlite.vmm import layout as L
from kvmlite.vmm.iothread import IoThread

log = logging.getLogger(__name__)

PIC_PINS = 8
ISA_IRQS = 16
#: GSIs the router hands out for MSI routes: above the IOAPIC's pins, below KVM's table size (4096 on x86).
FIRST_MSI_GSI = L.IOAPIC_PINS
MAX_MSI_ROUTES = 1024


def default_routes() -> list[tuple[int, int, int]]:
    """KVM's default irqchip routes (``kvm_setup_default_irq_routing``) as (gsi, irqchip, pin)."""
    routes = []
    for gsi in range(L.IOAPIC_PINS):
        if gsi < ISA_IRQS:
            chip = IrqchipId.PIC_MASTER if gsi < PIC_PINS else IrqchipId.PIC_SLAVE
            routes.append((gsi, int(chip), gsi % PIC_PINS))
        routes.append((gsi, int(IrqchipId.IOAPIC), gsi))
    return routes


class GsiRouter:
    """The VM's GSI routing table: the default irqchip routes plus kvmlite's MSI routes."""

    def __init__(self, vm: VmBackend) -> None:
        self.vm = vm
        self._msi: dict[int, tuple[int, int]] = {}  # gsi -> (address, data)
        self._next = FIRST_MSI_GSI
        #: How often the table was written (each write is one KVM_SET_GSI_ROUTING).
        self.commits = 0

    def allocate(self, owner: str) -> int:
        """A GSI for one MSI vector."""
        if self._next >= FIRST_MSI_GSI + MAX_MSI_ROUTES:
            raise ConfigError(f"{owner}: all {MAX_MSI_ROUTES} MSI routes are in use")
        gsi, self._next = self._next, self._next + 1
        return gsi

    def set_msi(self, gsi: int, address: int, data: int) -> None:
        """Route ``gsi`` to the MSI message (address, data) from now on."""
        self._msi[gsi] = (address, data)
        self.commits += 1
        self.vm.set_gsi_routing(default_routes(), [(g, a, d) for g, (a, d) in sorted(self._msi.items())])


class MsiVectors:
    """One PCI function's MSI-X vectors as irqfds: call it with (vector, address, data) to send one.

    Each vector's GSI and eventfd are made and bound (KVM_IRQFD) here, on the
    thread that builds the machine; the I/O thread that sends only writes
    eventfds and, when the guest programmed a new message, rewrites the
    routing table (both within its seccomp list).
    """

    def __init__(
        self, router: GsiRouter, owner: str, vectors: int, closing: list[Callable[[], None]]
    ) -> None:
        self.router = router
        self._vectors: list[tuple[int, int]] = []  # vector -> (gsi, eventfd)
        self._messages: list[tuple[int, int] | None] = [None] * vectors  # the message each GSI routes to
        for vector in range(vectors):
            gsi = router.allocate(f"{owner} MSI-X vector {vector}")
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            closing.append(functools.partial(os.close, fd))
            router.vm.irqfd(fd, gsi)  # no route yet: KVM binds it when set_msi adds one
            self._vectors.append((gsi, fd))

    def __call__(self, vector: int, address: int, data: int) -> None:
        gsi, fd = self._vectors[vector]
        if self._messages[vector] != (address, data):
            self.router.set_msi(gsi, address, data)
            self._messages[vector] = (address, data)
        os.eventfd_write(fd, 1)


class ResampledLine:
    """A level-triggered GSI driven through irqfd with KVM_IRQFD_FLAG_RESAMPLE (an ``IrqLine``).

    Calls come with the machine's device lock held, as do the I/O thread's
    callbacks (the resample handler), so ``level`` needs no lock of its own.
    """

    def __init__(
        self, vm: VmBackend, gsi: int, iothread: IoThread, closing: list[Callable[[], None]]
    ) -> None:
        self.gsi = gsi
        self.level = False
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._resample = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        closing.append(functools.partial(os.close, self._fd))
        closing.append(functools.partial(os.close, self._resample))
        vm.irqfd(self._fd, gsi, resamplefd=self._resample)
        iothread.watch(self._resample, self._resampled)

    def __call__(self, level: bool) -> None:
        if level and not self.level:
            os.eventfd_write(self._fd, 1)
        self.level = level

    def _resampled(self) -> None:
        """The guest EOI'd the interrupt and KVM lowered the pin: raise it again if still held high."""
        try:
            os.eventfd_read(self._resample)
        except BlockingIOError:
            return
        if self.level:
            os.eventfd_write(self._fd, 1)
