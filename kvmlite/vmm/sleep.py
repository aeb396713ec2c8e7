"""ACPI S3 (suspend to RAM) and the wake-up through the FACS waking vector, as QEMU and SeaBIOS do it.

A guest enters S3 by writing the S3 sleep type with SLP_EN to PM1_CNT
(:mod:`kvmlite.devices.acpi_pm` calls :meth:`Sleep.suspend` from the vCPU
thread).  The VM pauses right there: the vCPU runs no instruction after the
``out``.  Devices and timers keep running; the RTC's interrupt line wakes it
(QEMU wakes on the RTC alarm; kvmlite on any RTC interrupt, which a sleeping
guest only gets from the alarm it armed).  The wake-up is what QEMU's reset
plus SeaBIOS' resume path leave: the PM device's WAK_STS and RTC_STS set, and
the boot vCPU in real mode at the FACS's ``firmware_waking_vector``
(CS = vector >> 4, IP = vector & 0xF), its other registers as after a reset.
kvm-unit-tests' ``s3`` test checks exactly this.

One vCPU only: with more, S3 is refused with a warning (the APs would need
INIT/SIPI from the resumed BSP, which a VMM's reset gives and kvmlite's pause
does not).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kvmlite.devices.base import IrqLine
from kvmlite.errors import KvmliteError
from kvmlite.firmware.acpi import SDT_HEADER_LEN, read_tables
from kvmlite.kvm import structs as S
from kvmlite.loaders.base import EntryMode, LoadResult
from kvmlite.memory.guest import GuestMemory
from kvmlite.vmm.cpu_setup import setup_cpu
from kvmlite.vmm.loop import VcpuLoop, VmControl

log = logging.getLogger(__name__)

FACS_WAKING_VECTOR = 12  # the 32-bit firmware_waking_vector
FADT_FIRMWARE_CTRL = SDT_HEADER_LEN

# The reset state firmware resumes from (SDM vol. 3, 9.1.1), for what setup_cpu's real mode leaves alone.
RESET_CR0 = 0x6000_0010  # CD | NW | ET
RESET_DESCRIPTOR_LIMIT = 0xFFFF
TSS_BUSY_16, LDT_TYPE = 0xB, 0x2
PARK_WAIT_S = 5.0


def find_waking_vector_field(memory: GuestMemory, rsdp: int) -> int | None:
    """The guest-physical address of the FACS's 32-bit waking vector, found as firmware finds it."""
    try:
        fadt = read_tables(memory, rsdp).get(b"FACP")
    except KvmliteError as err:
        log.warning("ACPI S3: cannot follow the tables to the FACS: %s", err)
        return None
    facs = int.from_bytes(fadt[FADT_FIRMWARE_CTRL : FADT_FIRMWARE_CTRL + 4], "little") if fadt else 0
    return facs + FACS_WAKING_VECTOR if facs else None


class Sleep:
    """S3 for one machine: :meth:`suspend` (the PM device's), :meth:`wake_line` (around the RTC's IRQ)."""

    def __init__(
        self,
        control: VmControl,
        loops: list[VcpuLoop],
        memory: GuestMemory,
        rsdp: Callable[[], int],
        on_wake: Callable[[], None],
    ) -> None:
        self.control = control
        self.loops = loops
        self.memory = memory
        self.rsdp = rsdp
        self.on_wake = on_wake
        self.asleep = False
        self._lock = threading.Lock()

    def suspend(self) -> bool:
        """The guest entered S3 (vCPU thread, inside its PIO exit): pause here.  False: refused."""
        if len(self.loops) != 1:
            log.warning("ACPI S3 with %d vCPUs is not supported: the guest carries on", len(self.loops))
            return False
        with self._lock:
            self.asleep = True
        log.info("ACPI: the guest entered S3 (suspend to RAM); the RTC wakes it")
        self.control.pause()  # from the vCPU's own thread: it parks once this exit is handled
        return True

    def wake_line(self, line: IrqLine) -> IrqLine:
        """``line``, which also wakes a sleeping guest when it rises."""

        def set_level(level: bool) -> None:
            line(level)
            if level:
                self.wake()

        return set_level

    def wake(self) -> None:
        """Resume a sleeping guest at its waking vector (any thread; does nothing when awake)."""
        with self._lock:
            if not self.asleep:
                return
            self.asleep = False
        if not self.control.pause(timeout=PARK_WAIT_S):  # nests with the suspend's: wait until parked
            log.warning("ACPI S3: the vCPU did not park; waking it where it is")
        try:
            self._enter_waking_vector()
            self.on_wake()
        finally:
            self.control.resume()  # ours
            self.control.resume()  # the suspend's
        log.info("ACPI: the guest woke from S3")

    def _enter_waking_vector(self) -> None:
        field = find_waking_vector_field(self.memory, self.rsdp())
        vector = self.memory.read_u32(field) if field is not None else 0
        vcpu = self.loops[0].vcpu
        regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
        _reset_state(regs, sregs)
        wake = LoadResult(format="S3 resume", entry=vector & 0xF, mode=EntryMode.REAL, cs=vector >> 4)
        setup_cpu(regs, sregs, self.memory, wake)
        vcpu.set_sregs(sregs)
        vcpu.set_regs(regs)


def _reset_state(regs: Any, sregs: S.kvm_sregs) -> None:
    """General and system registers as after INIT, for the parts setup_cpu's real mode leaves alone."""
    for name, *_ in S.kvm_regs._fields_:
        setattr(regs, name, 0)
    sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.cr8, sregs.efer = RESET_CR0, 0, 0, 0, 0, 0
    for table in (sregs.gdt, sregs.idt):
        table.base, table.limit = 0, RESET_DESCRIPTOR_LIMIT
    for seg, kind in ((sregs.tr, TSS_BUSY_16), (sregs.ldt, LDT_TYPE)):
        seg.selector, seg.base, seg.limit, seg.type = 0, 0, RESET_DESCRIPTOR_LIMIT, kind
        seg.present, seg.dpl, seg.s, seg.db, seg.l, seg.g, seg.unusable = 1, 0, 0, 0, 0, 0, 0
    sregs.interrupt_bitmap[:] = [0] * len(sregs.interrupt_bitmap)

