"""QEMU's pci-testdev, register by register (hw/misc/pci-testdev.c is the reference), and on the bus."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvmlite.devices.pci_testdev import (
    DATAMATCH,
    DEVICE_TEST,
    IO_BAR,
    MEM_BAR,
    NOMATCH,
    VENDOR_REDHAT,
    PciTestdev,
    PciTestdevState,
)
from kvmlite.errors import DeviceError
from kvmlite.pci.config import BarKind
from kvmlite.vmm.machine import Machine, MachineConfig
from tests.conftest import KVM_OK, MULTIBOOT_HEADER, build_multiboot


def header(block: object, length: int = 40) -> tuple[tuple[int, ...], str]:
    raw = bytes(block.read(i, 1) for i in range(length))  # type: ignore[attr-defined]
    test, width, offset, data, count = struct.unpack_from("<BB2xIB3xI", raw)
    return (test, width, offset, data, count), raw[16:].split(b"\0")[0].decode()


def test_identity_and_bars_are_qemus() -> None:
    dev = PciTestdev()
    assert (dev.config.get(0, 2), dev.config.get(2, 2)) == (VENDOR_REDHAT, DEVICE_TEST)
    assert dev.config.bars[MEM_BAR].kind is BarKind.MEM32 and dev.config.bars[MEM_BAR].size == 4096
    assert dev.config.bars[IO_BAR].kind is BarKind.IO and dev.config.bars[IO_BAR].size == 256


@pytest.mark.parametrize(
    ("bar", "number", "name", "offset", "data"),
    [
        (MEM_BAR, 0, "mmio-no-eventfd", 2048, DATAMATCH),
        (MEM_BAR, 1, "mmio-wildcard-eventfd", 2049, NOMATCH),
        (MEM_BAR, 2, "mmio-datamatch-eventfd", 2050, DATAMATCH),
        (IO_BAR, 0, "portio-no-eventfd", 131, DATAMATCH),
        (IO_BAR, 2, "portio-datamatch-eventfd", 133, DATAMATCH),
    ],
)
def test_selecting_a_test_shows_its_header(bar: int, number: int, name: str, offset: int, data: int) -> None:
    block = PciTestdev().bar_device(bar)
    assert header(block)[0] == (0, 0, 0, 0, 0)  # nothing selected reads 0
    block.write(0, 1, number)
    fields, shown = header(block)
    assert shown == name and fields == (number + 3 * bar, 1, offset, data, 0)


def test_writes_at_the_offset_count_datamatch_only_with_the_data() -> None:
    block = PciTestdev().bar_device(MEM_BAR)
    block.write(0, 1, 2)  # datamatch
    for value in (DATAMATCH, 0x00, DATAMATCH):
        block.write(2050, 1, value)
    block.write(2051, 1, DATAMATCH)  # elsewhere: not counted
    assert block.read(12, 4) == 2
    block.write(0, 1, 1)  # wildcard: any value; selecting resets the count
    assert block.read(12, 4) == 0
    block.write(2049, 1, 0x12)
    block.write(2049, 4, 0x3456_7812)  # split into bytes: only the one at the offset counts
    assert block.read(12, 4) == 2
    block.write(0, 1, 3)  # no such test: deselects
    assert block.read(12, 4) == 0


def test_state_round_trip() -> None:
    dev = PciTestdev()
    dev.bar_device(IO_BAR).write(0, 1, 0)
    dev.bar_device(IO_BAR).write(131, 1, DATAMATCH)
    again = PciTestdev.from_state(dev.state())
    assert again.state() == dev.state() and again.bar_device(IO_BAR).read(12, 4) == 1
    with pytest.raises(DeviceError):
        PciTestdev.from_state(PciTestdevState(version=99))


def test_machine_puts_it_on_the_pci_bus_with_its_bars_assigned(tmp_path: Path) -> None:
    elf = build_multiboot(tmp_path, "idle", MULTIBOOT_HEADER + ".text\n.globl _start\n_start: hlt\n")
    config = MachineConfig(kernel=elf, backend="kvm" if KVM_OK else "emu", memory_mib=16,
                           serial_out=lambda b: None, extra_devices=["pci-testdev"])  # fmt: skip
    machine = Machine.build(config)
    try:
        record = machine.devices["pci-testdev"]
        assert isinstance(record.device, PciTestdev)
        assert record.device.config.get(0x04, 2) & 0x3 == 0x3  # I/O and memory decoding on
        assert {slot.name for slot in record.pio + record.mmio} >= {"BAR0", "BAR1"}
    finally:
        machine.close()


def test_config_address_low_bits_select_the_register_as_qemu_does(tmp_path: Path) -> None:
    """kvm-unit-tests reads the device ID with CONFIG_ADDRESS = ...|2 and a word read at 0xCFC."""
    elf = build_multiboot(tmp_path, "idle", MULTIBOOT_HEADER + ".text\n.globl _start\n_start: hlt\n")
    config = MachineConfig(kernel=elf, backend="kvm" if KVM_OK else "emu", memory_mib=16,
                           serial_out=lambda b: None, extra_devices=["pci-testdev"])  # fmt: skip
    machine = Machine.build(config)
    try:
        found = {}
        for dev in range(32):
            for reg in (0, 2):
                machine.pio.write(0xCF8, 4, 0x8000_0000 | (dev << 11) | reg)
                found[(dev, reg)] = machine.pio.read(0xCFC, 2)
        testdev = next(dev for dev in range(32) if found[(dev, 0)] == VENDOR_REDHAT)
        assert found[(testdev, 2)] == DEVICE_TEST
        assert machine.pio.read(0xCF8, 4) & 3 == 2  # read back as written
    finally:
        machine.close()
