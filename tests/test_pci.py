"""PCI: configuration space, BAR sizing and moves, mechanism #1 and ECAM, the machine's PCI devices."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvmlite.errors import DeviceError
from kvmlite.firmware import acpi as A
from kvmlite.memory.bus import Bus
from kvmlite.pci import config as C
from kvmlite.pci.bus import ConfigAddress, ConfigData, Ecam, PciBus, devfn
from kvmlite.pci.device import PciFunction
from kvmlite.vmm import layout as L
from kvmlite.vmm.machine import Machine, MachineConfig


class Regs:
    """A BAR's device: remembers writes, reads back offset-tagged values."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return 0xA000 + offset

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


class Toy(PciFunction):
    """A function with a 4 KiB memory BAR 0, a 64-bit 16 KiB BAR 2 and a 32-port I/O BAR 4."""

    def __init__(self) -> None:
        super().__init__(C.ConfigSpace(0x1234, 0x5678, 0xFF0000, revision=3, interrupt_pin=1))
        self.config.add_bar(C.BarSpec(0, 0x1000))
        self.config.add_bar(C.BarSpec(2, 0x4000, C.BarKind.MEM64, prefetchable=True))
        self.config.add_bar(C.BarSpec(4, 32, C.BarKind.IO))
        self.regs = {0: Regs(), 2: Regs(), 4: Regs()}

    def bar_device(self, index: int) -> Regs:
        return self.regs[index]


# --- configuration space ------------------------------------------------------------------------


def test_header_fields_and_read_only_bits() -> None:
    cfg = Toy().config
    assert cfg.read(C.VENDOR_ID, 4) == 0x5678_1234
    assert cfg.read(C.REVISION_ID, 4) == 0xFF00_0003  # revision 3, class ff/00/00
    cfg.write(C.VENDOR_ID, 4, 0)
    assert cfg.read(C.VENDOR_ID, 2) == 0x1234
    cfg.write(C.COMMAND, 2, 0xFFFF)
    assert cfg.command == C.COMMAND_WRITABLE
    cfg.write(C.INTERRUPT_LINE, 2, 0xFFFF)
    assert cfg.read(C.INTERRUPT_LINE, 2) == 0x01FF  # the line is writable, the pin (INTA) is not


def test_status_error_bits_are_write_one_to_clear() -> None:
    cfg = Toy().config
    cfg.set(C.STATUS, 2, 0x8000 | C.STATUS_INTERRUPT)
    cfg.write(C.STATUS, 2, C.STATUS_INTERRUPT)  # not W1C: stays
    assert cfg.read(C.STATUS, 2) == 0x8000 | C.STATUS_INTERRUPT
    cfg.write(C.STATUS, 2, 0x8000)
    assert cfg.read(C.STATUS, 2) == C.STATUS_INTERRUPT


def test_bar_sizing_reads_back_the_size_and_the_type_bits() -> None:
    cfg = Toy().config
    for reg in range(C.BAR0, C.BAR0 + 24, 4):
        cfg.write(reg, 4, 0xFFFF_FFFF)
    bars = [cfg.read(reg, 4) for reg in range(C.BAR0, C.BAR0 + 24, 4)]
    assert bars == [0xFFFF_F000, 0, 0xFFFF_C00C, 0xFFFF_FFFF, 0xFFFF_FFE1, 0]
    cfg.write(C.BAR0 + 8, 4, 0x1234_5678)
    cfg.write(C.BAR0 + 12, 4, 0x9)
    assert cfg.bar_address(2) == 0x9_1234_4000


def test_capabilities_are_linked_from_0x34() -> None:
    cfg = Toy().config
    assert cfg.capabilities() == [] and not cfg.read(C.STATUS, 2) & C.STATUS_CAP_LIST
    first = cfg.add_capability(C.CAP_ID_VENDOR, bytes([6, 1, 2, 3]))
    second = cfg.add_capability(C.CAP_ID_MSIX, bytes(10), wmask=b"\x00\xc0")
    assert (first, second) == (0x40, 0x48)
    assert cfg.read(C.STATUS, 2) & C.STATUS_CAP_LIST and cfg.read(C.CAPABILITY_LIST, 1) == 0x40
    assert cfg.capabilities() == [(0x40, C.CAP_ID_VENDOR), (0x48, C.CAP_ID_MSIX)]
    cfg.write(second + 2, 2, 0xFFFF)
    assert cfg.read(second + 2, 2) == 0xC000  # only the masked bits took the write


def test_bad_bars_are_refused() -> None:
    cfg = Toy().config
    with pytest.raises(DeviceError, match="already in use"):
        cfg.add_bar(C.BarSpec(3, 0x1000))  # the upper half of the 64-bit BAR 2
    with pytest.raises(DeviceError, match="power of 2"):
        C.BarSpec(1, 0x1800)


# --- the bus ----------------------------------------------------------------------------------------


@pytest.fixture
def buses() -> tuple[Bus, Bus, PciBus]:
    pio, mmio = Bus("pio"), Bus("mmio")
    return pio, mmio, PciBus(pio, mmio)


def cf8(bus: int, dev: int, fn: int, reg: int) -> int:
    return 1 << 31 | bus << 16 | dev << 11 | fn << 8 | reg


def test_mechanism_1_reads_functions_and_floats_ones_where_none_is(buses: tuple[Bus, Bus, PciBus]) -> None:
    _, _, pci = buses
    toy = Toy()
    pci.add(toy, 3)
    address = ConfigAddress()
    data = ConfigData(pci, address)
    address.write(0, 4, cf8(0, 3, 0, C.VENDOR_ID))
    assert address.read(0, 4) == cf8(0, 3, 0, 0) and data.read(0, 4) == 0x5678_1234
    assert data.read(2, 2) == 0x5678  # 0xCFE: the upper half
    address.write(0, 4, cf8(0, 3, 0, C.INTERRUPT_LINE))
    data.write(0, 1, 11)
    assert toy.config.read(C.INTERRUPT_LINE, 1) == 11
    for absent in (cf8(0, 4, 0, 0), cf8(1, 3, 0, 0), cf8(0, 3, 1, 0), cf8(0, 3, 0, 0) & ~(1 << 31)):
        address.write(0, 4, absent)
        assert data.read(0, 4) == 0xFFFF_FFFF
    address.write(0, 1, 0x12)  # a byte write is not CONFIG_ADDRESS
    assert address.read(0, 4) == cf8(0, 3, 0, 0) & ~(1 << 31)


def test_ecam_reaches_the_same_registers(buses: tuple[Bus, Bus, PciBus]) -> None:
    _, _, pci = buses
    pci.add(Toy(), 3)
    ecam = Ecam(pci)
    assert ecam.read(3 << 15 | C.DEVICE_ID, 2) == 0x5678
    assert ecam.read(3 << 15 | 0x100, 4) == 0  # extended space of a conventional function
    assert ecam.read(4 << 15, 4) == 0xFFFF_FFFF


def test_bars_decode_only_with_the_command_bit_and_move_when_reprogrammed(
    buses: tuple[Bus, Bus, PciBus],
) -> None:
    pio, mmio, pci = buses
    toy = Toy()
    where = pci.add(toy, 2)
    toy.config.set_bar_address(0, 0xC000_1000)
    toy.config.set_bar_address(4, 0xC040)
    pci.update_bars(where)
    assert mmio.read(0xC000_1004, 4) == 0xFFFF_FFFF  # memory space still off
    pci.config_write(0, where, C.COMMAND, 2, C.COMMAND_MEMORY)
    assert mmio.read(0xC000_1004, 4) == 0xA004 and pio.read(0xC044, 2) == 0xFFFF
    pci.config_write(0, where, C.COMMAND, 2, C.COMMAND_MEMORY | C.COMMAND_IO)
    assert pio.read(0xC044, 2) == 0xA004
    pci.config_write(0, where, C.BAR0, 4, 0xC000_8000)  # the guest moves BAR 0
    assert mmio.read(0xC000_1004, 4) == 0xFFFF_FFFF and mmio.read(0xC000_8008, 4) == 0xA008
    assert pci.mapped(where, 0) == 0xC000_8000
    pci.config_write(0, where, C.COMMAND, 2, 0)
    assert mmio.read(0xC000_8008, 4) == 0xFFFF_FFFF and pci.mapped(where, 4) is None


def test_a_bar_on_top_of_another_device_stays_unmapped(buses: tuple[Bus, Bus, PciBus]) -> None:
    _, mmio, pci = buses
    mmio.insert(Regs(), 0xC000_0000, 0x1000, "other")
    toy = Toy()
    where = pci.add(toy, 2)
    pci.config_write(0, where, C.BAR0, 4, 0xC000_0000)
    pci.config_write(0, where, C.COMMAND, 2, C.COMMAND_MEMORY)
    assert pci.mapped(where, 0) is None and mmio.find(0xC000_0000).name == "other"  # type: ignore[union-attr]


# --- in the machine -----------------------------------------------------------------------------


@pytest.fixture
def machine():  # type: ignore[no-untyped-def]
    m = Machine(MachineConfig(kernel=Path("unused"), backend="emu", memory_mib=4, serial_out=lambda b: None))
    yield m
    m.close()


def test_machine_assigns_bars_and_an_interrupt_like_firmware(machine: Machine) -> None:
    machine.attach_acpi()
    machine.attach_pci()
    toy = Toy()
    where = machine.attach_pci_device("toy0", "toy", toy)
    assert where == devfn(1)
    cfg = toy.config
    assert cfg.command == C.COMMAND_MEMORY | C.COMMAND_IO
    assert cfg.bar_address(2) == L.PCI_MMIO32_BASE  # the largest alignment first
    assert cfg.bar_address(0) == L.PCI_MMIO32_BASE + 0x4000
    assert cfg.bar_address(4) == L.PCI_IO_BASE
    gsi = cfg.read(C.INTERRUPT_LINE, 1)
    assert gsi == L.FREE_IOAPIC_GSIS[0]  # the software backend has an IOAPIC (kvmlite.vmm.apic)
    record = machine.devices["toy0"]
    assert record.irqs == [gsi]
    assert sorted(s.base for s in record.mmio) == [L.PCI_MMIO32_BASE, L.PCI_MMIO32_BASE + 0x4000]
    # through the machine's ports, as a guest does
    machine.pio.write(L.PCI_CONFIG_ADDRESS, 4, cf8(0, 1, 0, C.BAR0))
    machine.pio.write(L.PCI_CONFIG_DATA, 4, 0xC010_0000)
    assert machine.mmio.read(0xC010_0010, 4) == 0xA010
    assert [s.base for s in record.mmio if s.name == "BAR0"] == [0xC010_0000]
    assert machine.mmio.read(L.ECAM_BASE + (1 << 15), 4) == 0x5678_1234
    assert machine.mmio.read(L.ECAM_BASE, 4) == 0x29C0_8086  # the host bridge at 00.0


def test_mcfg_and_the_dsdt_describe_the_bus_as_attached(machine: Machine) -> None:
    machine.attach_acpi()
    machine.attach_pci()
    machine.attach_pci_device("toy0", "toy", Toy())
    gsi = machine.devices["toy0"].irqs[0]
    assert machine.devices["toy0"].describe().startswith("toy0 (toy): pci 00:01.0, ")
    rsdp = machine.write_acpi_tables()
    tables = A.read_tables(machine.memory, rsdp)
    assert struct.unpack_from("<QHBB", tables[b"MCFG"], 44) == (L.ECAM_BASE, 0, 0, 0)
    dsdt = tables[b"DSDT"]
    assert b"PCI0" in dsdt and b"_PRT" in dsdt and b"MRES" in dsdt
    assert A.aml_package([(1 << 16) | 0xFFFF, 0, 0, gsi]) in dsdt  # slot 1's INTA# -> its GSI
