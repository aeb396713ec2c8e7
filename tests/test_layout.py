"""The platform layout's allocator, the builder's device registry, and ACPI tables drawn from them."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvmlite.errors import BusError, ConfigError
from kvmlite.firmware import acpi as A
from kvmlite.memory.guest import GuestMemory
from kvmlite.vmm import layout as L
from kvmlite.vmm.layout import AddressAllocator, GsiAllocator, Range, SystemAllocator
from kvmlite.vmm.machine import Machine, MachineConfig, slot
from kvmlite.vmm.registry import DeviceRecord, DeviceRegistry

# --- the allocator ------------------------------------------------------------------------------


def test_allocations_are_aligned_to_their_size_and_do_not_overlap() -> None:
    alloc = AddressAllocator("win", 0x1000, 0x10000)
    a = alloc.allocate(0x100, "a")
    b = alloc.allocate(0x1000, "b")
    c = alloc.allocate(0x100, "c")
    assert (a, b, c) == (Range(0x1000, 0x100), Range(0x2000, 0x1000), Range(0x1100, 0x100))
    assert alloc.allocate(0x3000, "d").base == 0x4000  # 0x3000 rounds up to a 0x4000 alignment


def test_explicit_alignment_and_first_fit_after_free() -> None:
    alloc = AddressAllocator("win", 0, 0x1000)
    first = alloc.allocate(0x10, "first", align=0x100)
    second = alloc.allocate(0x10, "second", align=0x100)
    assert (first.base, second.base) == (0, 0x100)
    alloc.free(first.base)
    assert alloc.allocate(0x20, "third", align=0x100).base == 0
    assert [owner for _, owner in alloc.allocations()] == ["third", "second"]


def test_running_out_names_the_window_and_the_owner() -> None:
    alloc = AddressAllocator("the tiny window", 0, 0x100)
    alloc.allocate(0x80, "a")
    alloc.allocate(0x80, "b")
    with pytest.raises(ConfigError, match=r"c: no 0x1 bytes left in the tiny window"):
        alloc.allocate(1, "c")


def test_reserve_refuses_overlaps_and_ranges_outside_the_window() -> None:
    alloc = AddressAllocator("win", 0x1000, 0x2000)
    alloc.reserve(0x1800, 0x10, "fixed")
    with pytest.raises(ConfigError, match="overlaps fixed"):
        alloc.reserve(0x180F, 4, "other")
    with pytest.raises(ConfigError, match="not inside"):
        alloc.reserve(0xFFF, 2, "edge")
    assert alloc.allocate(0x800, "big").base == 0x1000  # below the reservation
    assert alloc.allocate(0x800, "next").base == 0x2000  # past it, aligned
    with pytest.raises(ConfigError, match="power of two"):
        alloc.allocate(0x10, "odd", align=3)
    with pytest.raises(ConfigError, match="nothing allocated"):
        alloc.free(0x1234)


def test_gsis_come_from_the_pool_once_each() -> None:
    gsi = GsiAllocator([16, 17])
    assert [gsi.allocate("a"), gsi.allocate("b")] == [16, 17]
    with pytest.raises(ConfigError, match="c: no free interrupt line"):
        gsi.allocate("c")
    gsi.release(16)
    assert gsi.allocate("d") == 16 and gsi.owner(16) == "d"


def test_system_allocator_windows_follow_the_irqchip() -> None:
    kernel, user = SystemAllocator(kernel_irqchip=True), SystemAllocator(kernel_irqchip=False)
    assert kernel.gsi.allocate("x") == 16  # IOAPIC pins past the ISA IRQs
    assert user.gsi.allocate("x") == 5  # the PIC's free ISA IRQs
    assert kernel.pci_mmio.allocate(0x4000, "bar").base == L.PCI_MMIO32_BASE
    assert kernel.pio.allocate(0x40, "io bar").base == L.PCI_IO_BASE


def test_layout_windows_do_not_overlap_each_other_or_ram() -> None:
    windows = [
        Range(L.PCI_MMIO32_BASE, L.PCI_MMIO32_SIZE),
        Range(L.PLATFORM_MMIO_BASE, L.PLATFORM_MMIO_SIZE),
        Range(L.ECAM_BASE, L.ECAM_SIZE),
        Range(L.IOAPIC_ADDRESS, L.IOAPIC_SIZE),
        Range(L.LAPIC_ADDRESS, L.LAPIC_SIZE),
        Range(L.BIOS_ROM_BASE, L.BIOS_ROM_SIZE),
    ]
    for i, a in enumerate(windows):
        assert L.PCI_HOLE <= a.base and a.end <= L.FOUR_GIB
        for b in windows[i + 1 :]:
            assert not a.overlaps(b), (a, b)
    mem = GuestMemory.for_pc(4 << 30, L.PCI_HOLE)
    try:
        assert all(not any(r.start < w.end and w.base < r.end for r in mem) for w in windows)
    finally:
        mem.close()


# --- the registry -------------------------------------------------------------------------------


@pytest.fixture
def machine():  # type: ignore[no-untyped-def]
    m = Machine(MachineConfig(kernel=Path("unused"), backend="emu", memory_mib=4, serial_out=lambda b: None))
    yield m
    m.close()


def test_every_attached_device_is_in_the_registry_where_the_bus_has_it(machine: Machine) -> None:
    machine.attach_pc_devices()
    names = [r.name for r in machine.devices]
    assert names == [
        "pic", "pit", "lapic0", "ioapic", "rtc", "i8042", "port92", "post", "fw_cfg", "serial0", "debug-exit",
        "acpi-pm", "reset-control", "pcihost",
    ]  # fmt: skip  (the software backend's userspace LAPIC and IOAPIC: kvmlite.vmm.apic)
    serial = machine.devices["serial0"]
    assert (serial.type, serial.pio[0].range, serial.irqs) == ("isa-serial", Range(0x3F8, 8), [4])
    assert serial.device is machine.serial
    described = machine.devices.describe()[names.index("serial0")]
    assert described == "serial0 (isa-serial): pio 0x3f8-0x3ff, irq 4"
    # the buses hold exactly the registry's ranges, no more and no fewer
    recorded = sorted((s.base, s.length) for r in machine.devices for s in r.pio)
    assert recorded == sorted((r.base, r.length) for r in machine.pio)
    mmio = sorted((s.base, s.length) for r in machine.devices for s in r.mmio)
    assert mmio == sorted((r.base, r.length) for r in machine.mmio)
    assert machine.devices["ioapic"].mmio[0].base == L.IOAPIC_ADDRESS
    assert machine.pio.find(0x64).name == "i8042 command"  # type: ignore[union-attr]


def test_a_second_serial_gets_the_next_name(machine: Machine) -> None:
    machine.attach_serial()
    machine.attach_serial(L.COM_PORTS[1], L.COM_IRQS[1])
    assert machine.devices["serial1"].pio[0].base == 0x2F8


def test_an_overlapping_device_leaves_neither_the_bus_nor_the_registry_changed(machine: Machine) -> None:
    machine.attach_debug_exit()
    before = list(machine.pio)
    with pytest.raises(BusError, match="overlaps debug-exit"):
        machine.place("clash", "test", object(), pio=[slot(0x500, 1, "a"), slot(L.DEBUG_EXIT_PORT, 1, "b")])
    assert "clash" not in machine.devices and list(machine.pio) == before
    with pytest.raises(ConfigError, match="already attached"):
        machine.place("debug-exit", "test", object(), pio=[slot(0x700, 1)])


def test_acpi_tables_describe_the_registry_not_fixed_constants() -> None:
    """Move the PM blocks, the SCI and the reset register: the FADT follows."""

    class Pm:
        s5_slp_typ = 3

    registry = DeviceRegistry()
    evt, cnt = slot(0xB000, 4, "pm1_evt"), slot(0xB010, 2, "pm1_cnt", offset=4)
    registry.add(DeviceRecord("acpi-pm", "PIIX4_PM", Pm(), pio=[evt, cnt], irqs=[11]))
    registry.add(DeviceRecord("reset-control", "rcr", object(), pio=[slot(0xB100, 1)]))
    platform = A.AcpiPlatform.from_registry(registry, cpus=2)
    fadt = A.build_fadt(platform, dsdt_addr=0, facs_addr=0)
    assert struct.unpack_from("<H", fadt, 46)[0] == 11  # SCI_INT
    assert struct.unpack_from("<III", fadt, 56) == (0xB000, 0, 0xB010)  # PM1a_EVT, PM1b_EVT, PM1a_CNT
    assert struct.unpack_from("<Q", fadt, 120)[0] == 0xB100  # RESET_REG's address
    s5_package = b"_S5_\x12\x08\x04\x0a\x03\x0a\x03\x00\x00"  # Name (_S5, Package () {3, 3, 0, 0})
    assert s5_package in A.build_dsdt(platform)
