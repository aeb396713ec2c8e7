"""irqfd delivery (kvmlite.vmm.irqroute): MSI routes and resampled level lines, checked in KVM's LAPIC."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmlite.kvm.constants import IrqchipId
from kvmlite.vmm import irqroute as R
from tests.conftest import requires_kvm

MSI_ADDRESS = 0xFEE0_0000  # LAPIC ID 0, fixed delivery
APIC_SVR, APIC_IRR = 0xF0, 0x200
SVR_ENABLE = 0x100
IOAPIC_LEVEL = 1 << 15


class Vm:
    """A KVM VM with the in-kernel irqchip and one vCPU whose LAPIC is software-enabled."""

    def __init__(self) -> None:
        from kvmlite.kvm import Kvm

        self.kvm = Kvm()
        self.vm = self.kvm.create_vm()
        if not self.vm.capabilities().irqfd:
            self.close()
            pytest.skip("this KVM has no irqfd/GSI routing")
        self.vm.create_irqchip()
        self.vcpu = self.vm.create_vcpu(0)
        lapic = self.vcpu.get_lapic()
        memoryview(lapic).cast("B")[APIC_SVR : APIC_SVR + 4] = (SVR_ENABLE | 0xFF).to_bytes(4, "little")
        self.vcpu.set_lapic(lapic)
        self.closing: list[Callable[[], None]] = []

    def pending(self, vector: int) -> bool:
        """Whether ``vector`` is in the LAPIC's IRR (waits a little: irqfd injection may be deferred)."""
        deadline = time.monotonic() + 2
        while True:
            regs = bytes(self.vcpu.get_lapic())  # .regs is a char array, cut at its first NUL
            at = APIC_IRR + 0x10 * (vector // 32)
            word = int.from_bytes(regs[at : at + 4], "little")
            if word >> (vector % 32) & 1 or time.monotonic() > deadline:
                return bool(word >> (vector % 32) & 1)
            time.sleep(0.01)

    def close(self) -> None:
        for close in getattr(self, "closing", []):
            close()
        self.vm.close()
        self.kvm.close()


@pytest.fixture
def kvm_vm() -> Iterator[Vm]:
    vm = Vm()
    yield vm
    vm.close()


@requires_kvm
def test_msi_vectors_reach_the_lapic_through_irqfd_and_reroute_only_on_a_new_message(kvm_vm: Vm) -> None:
    router = R.GsiRouter(kvm_vm.vm)
    send = R.MsiVectors(router, "test", 2, kvm_vm.closing)
    assert router.commits == 0  # bound to their GSIs, not routed until the guest's message is known
    send(0, MSI_ADDRESS, 0x41)
    assert kvm_vm.pending(0x41) and router.commits == 1
    send(1, MSI_ADDRESS, 0x52)  # a second vector: its own GSI
    assert kvm_vm.pending(0x52) and router.commits == 2
    send(0, MSI_ADDRESS, 0x41)  # again: an eventfd write, no routing ioctl
    assert router.commits == 2
    send(0, MSI_ADDRESS, 0x63)  # the guest reprogrammed the vector: rerouted once
    assert kvm_vm.pending(0x63) and router.commits == 3


@requires_kvm
def test_a_resampled_line_asserts_its_ioapic_pin(kvm_vm: Vm) -> None:
    from kvmlite.vmm.iothread import IoThread

    # IOAPIC pin 17: vector 0x71, level-triggered, unmasked, to APIC ID 0; the default routes kept
    kvm_vm.vm.set_gsi_routing(R.default_routes(), [])
    chip = kvm_vm.vm.get_irqchip(IrqchipId.IOAPIC)
    chip.chip.ioapic.redirtbl[17] = 0x71 | IOAPIC_LEVEL
    kvm_vm.vm.set_irqchip(chip)
    iothread = IoThread(threading.RLock())
    kvm_vm.closing.append(iothread.close)
    line = R.ResampledLine(kvm_vm.vm, 17, iothread, kvm_vm.closing)
    assert not kvm_vm.pending(0x71) or pytest.fail("pending before the line was raised")
    line(True)
    assert kvm_vm.pending(0x71)
    assert kvm_vm.vm.get_irqchip(IrqchipId.IOAPIC).chip.ioapic.irr >> 17 & 1


class FakeVm:
    def __init__(self) -> None:
        self.irqfds: list[tuple[int, int, int | None]] = []

    def irqfd(self, fd: int, gsi: int, resamplefd: int | None = None, deassign: bool = False) -> None:
        self.irqfds.append((fd, gsi, resamplefd))


class FakeIoThread:
    def __init__(self) -> None:
        self.watched: dict[int, Callable[[], None]] = {}

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.watched[fd] = callback


def test_a_resampled_line_is_raised_again_at_eoi_only_while_the_device_holds_it(tmp_path: Path) -> None:
    vm, iothread, closing = FakeVm(), FakeIoThread(), []  # type: ignore[var-annotated]
    line = R.ResampledLine(vm, 20, iothread, closing)  # type: ignore[arg-type]
    try:
        ((fd, gsi, resample),) = vm.irqfds
        assert gsi == 20 and resample is not None and list(iothread.watched) == [resample]

        def signalled() -> int:
            try:
                return os.eventfd_read(fd)
            except BlockingIOError:
                return 0

        line(True)
        line(True)  # already high: no second assertion
        assert signalled() == 1
        os.eventfd_write(resample, 1)  # the guest's EOI, the device still high
        iothread.watched[resample]()
        assert signalled() == 1
        line(False)  # the driver read the ISR: lowering costs nothing
        os.eventfd_write(resample, 1)
        iothread.watched[resample]()
        assert signalled() == 0
    finally:
        for close in closing:
            close()


def test_the_routing_table_keeps_kvms_default_irqchip_routes() -> None:
    routes: Any = R.default_routes()
    assert (0, int(IrqchipId.PIC_MASTER), 0) in routes and (9, int(IrqchipId.PIC_SLAVE), 1) in routes
    assert all((gsi, int(IrqchipId.IOAPIC), gsi) in routes for gsi in range(24))
    assert len(routes) == 16 + 24
