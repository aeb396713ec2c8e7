"""Register-level tests of the I/O APIC: indirect registers, edge and level pins, remote IRR, masking."""

from __future__ import annotations

from kvmlite.devices import ioapic as I
from kvmlite.devices.ioapic import Ioapic
from kvmlite.devices.lapic import DM_FIXED, DM_LOWEST, Ipi


def program(ioapic: Ioapic, pin: int, entry: int) -> None:
    ioapic.write(I.IOREGSEL, 1, I.REG_REDTBL + 2 * pin + 1)
    ioapic.write(I.IOWIN, 4, entry >> 32)
    ioapic.write(I.IOREGSEL, 1, I.REG_REDTBL + 2 * pin)
    ioapic.write(I.IOWIN, 4, entry & 0xFFFF_FFFF)


def read_entry(ioapic: Ioapic, pin: int) -> int:
    ioapic.write(I.IOREGSEL, 1, I.REG_REDTBL + 2 * pin)
    low = ioapic.read(I.IOWIN, 4)
    ioapic.write(I.IOREGSEL, 1, I.REG_REDTBL + 2 * pin + 1)
    return (ioapic.read(I.IOWIN, 4) << 32) | low


def test_id_version_and_reset_entries() -> None:
    sent: list[Ipi] = []
    ioapic = Ioapic(sent.append)
    ioapic.write(I.IOREGSEL, 1, I.REG_ID)
    ioapic.write(I.IOWIN, 4, 0x0200_0000)
    assert ioapic.read(I.IOWIN, 4) == 0x0200_0000
    ioapic.write(I.IOREGSEL, 1, I.REG_VERSION)
    assert ioapic.read(I.IOWIN, 4) == 0x0017_0011
    assert all(read_entry(ioapic, pin) == I.RTE_MASKED for pin in range(24))
    ioapic.set_irq(4, True)
    assert sent == []


def test_edge_pin_sends_on_each_rising_edge_only() -> None:
    sent: list[Ipi] = []
    ioapic = Ioapic(sent.append)
    program(ioapic, 4, (0x03 << 56) | I.RTE_LOGICAL | (DM_LOWEST << 8) | 0x34)
    ioapic.set_irq(4, True)
    ioapic.set_irq(4, True)
    ioapic.set_irq(4, False)
    ioapic.set_irq(4, True)
    assert sent == [Ipi(0x34, DM_LOWEST, 3, True)] * 2
    assert read_entry(ioapic, 4) & I.RTE_REMOTE_IRR == 0


def test_level_pin_holds_remote_irr_until_eoi_and_resends_while_asserted() -> None:
    sent: list[Ipi] = []
    ioapic = Ioapic(sent.append)
    program(ioapic, 11, (1 << 56) | I.RTE_LEVEL | 0x51)
    ioapic.set_irq(11, True)
    ioapic.set_irq(11, True)
    assert sent == [Ipi(0x51, DM_FIXED, 1, False, level=True)]
    assert read_entry(ioapic, 11) & I.RTE_REMOTE_IRR
    program(ioapic, 11, (1 << 56) | I.RTE_LEVEL | 0x51)  # a rewrite keeps remote IRR
    assert read_entry(ioapic, 11) & I.RTE_REMOTE_IRR and len(sent) == 1
    ioapic.eoi(0x50)  # another vector: nothing
    assert len(sent) == 1
    ioapic.eoi(0x51)  # the line is still high: sent again
    assert len(sent) == 2 and read_entry(ioapic, 11) & I.RTE_REMOTE_IRR
    ioapic.set_irq(11, False)
    ioapic.eoi(0x51)
    assert len(sent) == 2 and not read_entry(ioapic, 11) & I.RTE_REMOTE_IRR


def test_unmasking_an_asserted_level_pin_sends_and_masked_edges_are_lost() -> None:
    sent: list[Ipi] = []
    ioapic = Ioapic(sent.append)
    program(ioapic, 9, I.RTE_MASKED | I.RTE_LEVEL | 0x61)
    program(ioapic, 1, I.RTE_MASKED | 0x31)
    ioapic.set_irq(9, True)
    ioapic.set_irq(1, True)
    assert sent == []
    program(ioapic, 1, 0x31)
    assert sent == []
    program(ioapic, 9, I.RTE_LEVEL | 0x61)
    assert sent == [Ipi(0x61, DM_FIXED, 0, False, level=True)]


def test_state_round_trip() -> None:
    sent: list[Ipi] = []
    ioapic = Ioapic(sent.append)
    program(ioapic, 9, I.RTE_LEVEL | 0x61)
    ioapic.set_irq(9, True)
    copy = Ioapic.from_state(ioapic.state(), deliver=sent.append)
    assert copy.state() == ioapic.state()
    copy.eoi(0x61)
    assert len(sent) == 2
