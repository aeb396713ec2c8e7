"""The PC's platform layout: I/O ports, MMIO windows, ISA IRQs and GSIs, and the allocator over them.

Everything the machine places somewhere is named here once; the builder
(:mod:`kvmlite.vmm.machine`) puts devices at these places, the ACPI tables
(:mod:`kvmlite.firmware.acpi`) and the memory map describe the same numbers,
and no device module knows where it sits.

Guest-physical map (below 4 GiB)::

    0x0000_0000 .. RAM (at most up to PCI_HOLE)
    0xC000_0000    PCI hole: no RAM from here to 4 GiB (RAM beyond it continues at 4 GiB)
      0xC000_0000  PCI_MMIO32     BARs of PCI devices (allocated)
      0xD000_0000  PLATFORM_MMIO  MMIO devices outside PCI, e.g. virtio-mmio (allocated)
      0xE000_0000  ECAM           PCI Express enhanced configuration (MCFG), 1 MiB per bus
      0xFEC0_0000  IOAPIC
      0xFEE0_0000  LAPIC
      0xFF00_0000  PC_TESTDEV_IOMEM  QEMU's pc-testdev window (only with --device pc-testdev)
      0xFFFC_0000  BIOS ROM area (reserved in the e820 map)

I/O ports: the ISA devices at their fixed PC addresses (below), the PCI
configuration mechanism #1 at 0xCF8/0xCFC, and PCI_IO (0xC000-0xFFFF, as in
QEMU) for I/O BARs.

Interrupts: ISA IRQs 0-15 are GSIs 0-15 (KVM's default routing, see
:mod:`kvmlite.firmware.acpi`); the IOAPIC's pins 16-23 are free GSIs the
allocator hands out to PCI and platform devices.  The userspace irqchip has
only the PIC pair, so there the allocator hands out the ISA IRQs no PC device
uses (5, 10, 11) instead.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from kvmlite.errors import ConfigError

# --- I/O ports (fixed ISA/PC addresses) -------------------------------------------------------
PIC_MASTER, PIC_SLAVE, ELCR = 0x20, 0xA0, 0x4D0
PIT_PORT, PORT_B = 0x40, 0x61
I8042_DATA, I8042_CMD, PORT_A = 0x60, 0x64, 0x92
RTC_PORT = 0x70
POST_PORT = 0x80
DEBUG_EXIT_PORT = 0xF4  # QEMU's isa-debug-exit,iobase=0xf4
FW_CFG_PORT = 0x510
COM_PORTS = (0x3F8, 0x2F8, 0x3E8, 0x2E8)
SERIAL_PORT_LEN = 8
#: ACPI PM1a event block (status, enable) and control block, where QEMU's PIIX4 PM puts them.
PM1_EVT_BLK, PM1_EVT_LEN = 0x600, 4
PM1_CNT_BLK, PM1_CNT_LEN = 0x604, 2
RESET_PORT = 0xCF9  # the PIIX/ICH reset control register (the FADT's RESET_REG)
RESET_VALUE = 0x06  # SYS_RST | RST_CPU: the FADT's RESET_VALUE
#: SLP_TYP of S5 (soft off): the DSDT's ``\\_S5_`` announces it, the PM device acts on it (any value but 0,
#: which is what a cleared register holds).
S5_SLP_TYP = 5
#: SLP_TYP of S3 (suspend to RAM): QEMU's PIIX4 value, which kvm-unit-tests' s3 test writes directly.
S3_SLP_TYP = 1
PCI_CONFIG_ADDRESS, PCI_CONFIG_DATA = 0xCF8, 0xCFC  # PCI configuration mechanism #1
#: QEMU's pc-testdev (kvm-unit-tests), only on request: scratch/flush ports at 0xE0, IRQ ports at 0x2000.
PC_TESTDEV_PORT, PC_TESTDEV_IRQ_PORT = 0xE0, 0x2000
#: I/O space handed out to PCI I/O BARs.
PCI_IO_BASE, PCI_IO_END = 0xC000, 0x1_0000

# --- ISA IRQs (= GSIs 0-15) -------------------------------------------------------------------
IRQ_PIT, IRQ_KEYBOARD, IRQ_RTC, IRQ_MOUSE = 0, 1, 8, 12
COM_IRQS = (4, 3, 4, 3)
IRQ_SCI = 9  # the ACPI SCI, as on PIIX4
#: ISA IRQs no PC device uses: where the userspace irqchip (PIC only) routes PCI and platform devices.
FREE_ISA_IRQS = (5, 10, 11)
#: GSIs past the ISA range: IOAPIC pins 16-23 (KVM's IOAPIC has 24).
IOAPIC_PINS = 24
FREE_IOAPIC_GSIS = tuple(range(16, IOAPIC_PINS))

# --- MMIO windows ------------------------------------------------------------------------------
FOUR_GIB = 1 << 32
PCI_HOLE = 0xC000_0000  # RAM below 4 GiB ends here (QEMU's ``pc`` default)
PCI_MMIO32_BASE, PCI_MMIO32_SIZE = 0xC000_0000, 0x1000_0000
PLATFORM_MMIO_BASE, PLATFORM_MMIO_SIZE = 0xD000_0000, 0x1000_0000
#: PCI Express ECAM: 1 MiB of configuration space per bus (32 devices x 8 functions x 4 KiB).
ECAM_BASE, ECAM_BUS_SIZE = 0xE000_0000, 1 << 20
ECAM_BUSES = 256
ECAM_SIZE = ECAM_BUSES * ECAM_BUS_SIZE
IOAPIC_ADDRESS, IOAPIC_SIZE = 0xFEC0_0000, 0x1000
LAPIC_ADDRESS, LAPIC_SIZE = 0xFEE0_0000, 0x1000
PC_TESTDEV_IOMEM = 0xFF00_0000
BIOS_ROM_BASE, BIOS_ROM_SIZE = 0xFFFC_0000, 0x4_0000
#: Where the ACPI tables go: the BIOS area the e820 map reserves.
ACPI_TABLES_BASE, ACPI_TABLES_END = 0xF_0000, 0x10_0000


@dataclass(frozen=True)
class Range:
    """[base, base + length): an I/O port or guest-physical address range."""

    base: int
    length: int

    @property
    def end(self) -> int:
        return self.base + self.length

    def contains(self, addr: int) -> bool:
        return self.base <= addr < self.end

    def overlaps(self, other: Range) -> bool:
        return self.base < other.end and other.base < self.end

    def __str__(self) -> str:
        return f"{self.base:#x}-{self.end - 1:#x}"


class AddressAllocator:
    """First-fit allocation of aligned ranges inside one window (MMIO or I/O ports).

    ``allocate`` hands out a free range, ``reserve`` claims a fixed one,
    ``free`` gives one back; every failure is a :class:`ConfigError` naming
    the window, so a machine that asks for more than fits says so.
    """

    def __init__(self, name: str, base: int, size: int) -> None:
        if size <= 0 or base < 0:
            raise ConfigError(f"allocator {name}: invalid window {base:#x}+{size:#x}")
        self.name = name
        self.window = Range(base, size)
        self._used: list[tuple[int, int, str]] = []  # (base, length, owner), sorted by base

    def allocate(self, size: int, owner: str, align: int = 0) -> Range:
        """The lowest free ``size`` bytes aligned to ``align`` (default: ``size`` up to a power of 2)."""
        if size <= 0:
            raise ConfigError(f"{owner}: cannot allocate {size} bytes from {self.name}")
        align = align or 1 << (size - 1).bit_length()
        if align & (align - 1):
            raise ConfigError(f"{owner}: alignment {align:#x} is not a power of two")
        candidate = _align_up(self.window.base, align)
        for base, length, _ in self._used:
            if candidate + size <= base:
                break
            candidate = max(candidate, _align_up(base + length, align))
        if candidate + size > self.window.end:
            raise ConfigError(f"{owner}: no {size:#x} bytes left in {self.name} ({self.window})")
        self._insert(candidate, size, owner)
        return Range(candidate, size)

    def reserve(self, base: int, size: int, owner: str) -> Range:
        """Claim [base, base+size) inside the window; refuses overlaps."""
        wanted = Range(base, size)
        if size <= 0 or not (self.window.base <= base and wanted.end <= self.window.end):
            raise ConfigError(f"{owner}: {wanted} is not inside {self.name} ({self.window})")
        for b, length, other in self._used:
            if wanted.overlaps(Range(b, length)):
                raise ConfigError(f"{owner}: {wanted} overlaps {other} at {Range(b, length)} in {self.name}")
        self._insert(base, size, owner)
        return wanted

    def free(self, base: int) -> None:
        for i, (b, _, _) in enumerate(self._used):
            if b == base:
                del self._used[i]
                return
        raise ConfigError(f"{self.name}: nothing allocated at {base:#x}")

    def allocations(self) -> list[tuple[Range, str]]:
        return [(Range(b, length), owner) for b, length, owner in self._used]

    def _insert(self, base: int, size: int, owner: str) -> None:
        bisect.insort(self._used, (base, size, owner))


class GsiAllocator:
    """Hands out interrupt lines (GSIs) from a pool, each to one owner."""

    def __init__(self, pool: Iterable[int]) -> None:
        self.pool = tuple(pool)
        self._owners: dict[int, str] = {}

    def allocate(self, owner: str) -> int:
        for gsi in self.pool:
            if gsi not in self._owners:
                self._owners[gsi] = owner
                return gsi
        raise ConfigError(f"{owner}: no free interrupt line left (all of {list(self.pool)} are in use)")

    def release(self, gsi: int) -> None:
        if self._owners.pop(gsi, None) is None:
            raise ConfigError(f"GSI {gsi} was not allocated")

    def owner(self, gsi: int) -> str | None:
        return self._owners.get(gsi)


class SystemAllocator:
    """One machine's allocators over the layout: PCI I/O ports, 32-bit PCI MMIO, platform MMIO, GSIs."""

    def __init__(self, kernel_irqchip: bool = True) -> None:
        self.pio = AddressAllocator("the PCI I/O window", PCI_IO_BASE, PCI_IO_END - PCI_IO_BASE)
        self.pci_mmio = AddressAllocator("the 32-bit PCI MMIO window", PCI_MMIO32_BASE, PCI_MMIO32_SIZE)
        self.platform_mmio = AddressAllocator(
            "the platform MMIO window", PLATFORM_MMIO_BASE, PLATFORM_MMIO_SIZE
        )
        self.gsi = GsiAllocator(FREE_IOAPIC_GSIS if kernel_irqchip else FREE_ISA_IRQS)


def _align_up(value: int, align: int) -> int:
    return -(-value // align) * align
