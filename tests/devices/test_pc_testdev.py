"""QEMU's pc-testdev, register by register (hw/misc/pc-testdev.c is the reference)."""

from __future__ import annotations

import pytest

from kvmlite.devices.pc_testdev import (
    IOMEM_LEN,
    IRQ_OFFSET,
    REG_DATA,
    REG_DATA_BYTE,
    REG_FLUSH,
    PcTestdev,
    PcTestdevIomem,
    PcTestdevState,
    host_page_flusher,
)
from kvmlite.errors import DeviceError
from kvmlite.memory.guest import GuestMemory


def make() -> tuple[PcTestdev, list[tuple[int, bool]], list[int]]:
    raised: list[tuple[int, bool]] = []
    flushed: list[int] = []
    lines = [lambda level, n=n: raised.append((n, level)) for n in range(24)]
    return PcTestdev(lines, flushed.append), raised, flushed


def test_scratch_register_keeps_what_each_width_wrote_at_its_byte_offset() -> None:
    dev, _, _ = make()
    dev.write(REG_DATA, 4, 0x1122_3344)
    assert dev.read(REG_DATA, 4) == 0x1122_3344
    assert [dev.read(REG_DATA + i, 1) for i in range(4)] == [0x44, 0x33, 0x22, 0x11]
    assert dev.read(REG_DATA + 2, 2) == 0x1122
    dev.write(REG_DATA + 1, 1, 0xAB)
    assert dev.read(REG_DATA, 4) == 0x1122_AB44
    dev.write(REG_DATA + 2, 2, 0xBEEF)
    assert dev.read(REG_DATA, 4) == 0xBEEF_AB44
    dev.write(REG_DATA, 1, 0x1FF)  # only the access width counts
    assert dev.read(REG_DATA, 4) == 0xBEEF_ABFF


def test_byte_wise_port_is_the_same_register() -> None:
    dev, _, _ = make()
    dev.write(REG_DATA_BYTE, 4, 0xCAFE_F00D)
    assert dev.read(REG_DATA, 4) == 0xCAFE_F00D
    dev.write(REG_DATA + 3, 1, 0x00)
    assert dev.read(REG_DATA_BYTE + 2, 2) == 0x00FE


def test_flush_port_takes_a_4_byte_address_and_flushes_its_page() -> None:
    dev, _, flushed = make()
    dev.write(REG_FLUSH, 4, 0x0012_3456)
    assert flushed == [0x0012_3000]
    dev.write(REG_FLUSH, 1, 0x5000)  # QEMU accepts only 4-byte writes
    dev.write(REG_FLUSH, 2, 0x5000)
    assert flushed == [0x0012_3000]
    assert dev.read(REG_FLUSH, 4) == 0
    assert dev.read(REG_DATA, 4) == 0  # the scratch register is untouched


def test_irq_ports_set_each_isa_line_to_the_written_truth_value() -> None:
    dev, raised, _ = make()
    dev.write(IRQ_OFFSET + 14, 1, 1)
    dev.write(IRQ_OFFSET + 14, 1, 0)
    dev.write(IRQ_OFFSET + 23, 1, 0x80)
    assert raised == [(14, True), (14, False), (23, True)]
    assert dev.read(IRQ_OFFSET + 14, 1) == 0


def test_wide_irq_port_write_sets_consecutive_lines_byte_by_byte() -> None:
    dev, raised, _ = make()
    dev.write(IRQ_OFFSET + 11, 4, 1)  # QEMU splits it: line 11 from the low byte, 12-14 from the rest
    assert raised == [(11, True), (12, False), (13, False), (14, False)]
    raised.clear()
    dev.write(IRQ_OFFSET + 22, 4, 0x0101)  # lines past 23 are not the device's
    assert raised == [(22, True), (23, True)]


def test_irq_line_the_machine_did_not_wire_is_ignored() -> None:
    raised: list[bool] = []
    dev = PcTestdev([raised.append] * 16)  # a userspace PIC pair: 16 lines
    dev.write(IRQ_OFFSET + 20, 1, 1)
    dev.write(IRQ_OFFSET + 15, 1, 1)
    assert raised == [True]


def test_iomem_is_plain_little_endian_memory_of_64k() -> None:
    mem = PcTestdevIomem()
    mem.write(0x10, 8, 0x0102_0304_0506_0708)
    assert mem.read(0x10, 1) == 0x08
    assert mem.read(0x14, 4) == 0x0102_0304
    assert mem.read(0x10, 8) == 0x0102_0304_0506_0708
    mem.write(IOMEM_LEN - 1, 1, 0x5A)
    assert mem.read(IOMEM_LEN - 1, 1) == 0x5A
    assert mem.read(0x20, 4) == 0


def test_state_round_trip_keeps_the_register_and_the_window() -> None:
    dev, _, _ = make()
    dev.write(REG_DATA, 4, 0xDEAD_BEEF)
    dev.iomem.write(0x100, 2, 0x1234)
    st = dev.state()
    assert isinstance(st, PcTestdevState) and st.version == PcTestdevState().version
    raised: list[bool] = []
    again = PcTestdev.from_state(st, irq_lines=[raised.append])
    assert again.read(REG_DATA, 4) == 0xDEAD_BEEF
    assert again.iomem.read(0x100, 2) == 0x1234
    assert again.state() == st
    again.write(IRQ_OFFSET, 1, 1)
    assert raised == [True]  # the injected line, not the original's
    assert PcTestdev.from_state(PcTestdevState()).state() == PcTestdev().state()
    with pytest.raises(DeviceError):
        PcTestdev.from_state(PcTestdevState(version=99))


def test_host_page_flusher_keeps_the_page_contents_and_ignores_non_ram() -> None:
    memory = GuestMemory([(0, 1 << 20)])
    try:
        memory.write(0x5000, b"still here")
        flush = host_page_flusher(memory)
        flush(0x5000)
        flush(0x4000_0000)  # not RAM: nothing to do, as under QEMU
        assert memory.read(0x5000, 10) == b"still here"
        memory.write(0x5000, b"writable")
        assert memory.read(0x5000, 8) == b"writable"
    finally:
        memory.close()
