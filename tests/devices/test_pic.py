"""Register-level tests of the cascaded 8259A pair and the ELCR."""

from __future__ import annotations

import pytest

from kvmlite.devices import pic as p
from kvmlite.devices.pic import Pic8259, Pic8259Pair
from kvmlite.errors import DeviceError
from tests.devices.conftest import Line


def init_chip(chip: Pic8259, base: int, icw3: int, icw4: int = 0x01, icw1: int = 0x11) -> None:
    chip.write(0, 1, icw1)
    chip.write(1, 1, base)
    chip.write(1, 1, icw3)
    chip.write(1, 1, icw4)


def linux_pair(icw4: int = 0x01) -> tuple[Pic8259Pair, Line]:
    """Initialised as Linux's init_8259A does: vectors 0x30 / 0x38, all unmasked."""
    line = Line()
    pair = Pic8259Pair(intr=line)
    init_chip(pair.master, 0x30, 0x04, icw4)
    init_chip(pair.slave, 0x38, 0x02, icw4)
    pair.master.write(1, 1, 0x00)
    pair.slave.write(1, 1, 0x00)
    return pair, line


def pulse(pair: Pic8259Pair, irq: int) -> None:
    pair.set_irq(irq, True)
    pair.set_irq(irq, False)


def read_isr(chip: Pic8259) -> int:
    chip.write(0, 1, 0x0B)
    value = chip.read(0, 1)
    chip.write(0, 1, 0x0A)
    return value


def eoi(chip: Pic8259) -> None:
    chip.write(0, 1, 0x20)


def test_initialisation_sets_vector_base_and_clears_imr() -> None:
    pair, _ = linux_pair()
    pair.master.write(1, 1, 0xFB)
    assert pair.master.read(1, 1) == 0xFB
    init_chip(pair.master, 0x20, 0x04)
    assert pair.master.read(1, 1) == 0x00
    pulse(pair, 1)
    assert pair.acknowledge() == 0x21


def test_edge_request_raises_intr_and_ack_returns_vector() -> None:
    pair, line = linux_pair()
    assert not pair.has_interrupt()
    pulse(pair, 0)
    assert pair.has_interrupt() and line.high
    assert pair.master.read(0, 1) == 0x01  # IRR
    assert pair.acknowledge() == 0x30
    assert not line.high  # in service: nothing else pending
    assert pair.master.read(0, 1) == 0x00
    assert read_isr(pair.master) == 0x01


def test_masked_request_stays_in_irr_until_unmasked() -> None:
    pair, line = linux_pair()
    pair.master.write(1, 1, 0x02)
    pulse(pair, 1)
    assert not pair.has_interrupt()
    assert pair.master.read(0, 1) == 0x02
    pair.master.write(1, 1, 0x00)
    assert line.high
    assert pair.acknowledge() == 0x31


def test_edge_input_held_high_does_not_retrigger() -> None:
    pair, _ = linux_pair()
    pair.set_irq(4, True)
    assert pair.acknowledge() == 0x34
    eoi(pair.master)
    pair.set_irq(4, True)  # still high: no new edge
    assert not pair.has_interrupt()
    pair.set_irq(4, False)
    pair.set_irq(4, True)
    assert pair.has_interrupt()


def test_higher_priority_request_nests_lower_one_waits() -> None:
    pair, _ = linux_pair()
    pulse(pair, 3)
    assert pair.acknowledge() == 0x33
    pulse(pair, 5)
    assert not pair.has_interrupt()  # IR3 in service blocks IR5
    pulse(pair, 1)
    assert pair.acknowledge() == 0x31  # IR1 outranks IR3
    eoi(pair.master)  # non-specific: ends IR1, the highest in service
    assert read_isr(pair.master) == 0x08
    assert not pair.has_interrupt()
    eoi(pair.master)
    assert pair.acknowledge() == 0x35


def test_pic_specific_eoi_clears_only_that_isr_bit() -> None:
    pair, _ = linux_pair()
    pulse(pair, 5)
    pair.acknowledge()
    pulse(pair, 3)
    pair.acknowledge()
    assert read_isr(pair.master) == 0x28
    pair.master.write(0, 1, 0x60 | 5)  # specific EOI for IR5
    assert read_isr(pair.master) == 0x08


def test_slave_interrupt_cascades_through_master_irq2() -> None:
    pair, line = linux_pair()
    pulse(pair, 12)
    assert line.high
    assert pair.master.read(0, 1) == 0x04  # IR2 requested on the master
    assert pair.acknowledge() == 0x38 + 4
    assert read_isr(pair.slave) == 0x10
    assert read_isr(pair.master) == 0x04
    eoi(pair.slave)
    eoi(pair.master)
    assert read_isr(pair.slave) == 0 and read_isr(pair.master) == 0


def test_masked_cascade_hides_slave_interrupts() -> None:
    pair, _ = linux_pair()
    pair.master.write(1, 1, 0x04)
    pulse(pair, 8)
    assert not pair.has_interrupt()
    pair.master.write(1, 1, 0x00)
    assert pair.acknowledge() == 0x38


def test_second_slave_request_after_eoi_is_delivered() -> None:
    pair, _ = linux_pair()
    pulse(pair, 9)
    pulse(pair, 10)
    assert pair.acknowledge() == 0x39
    eoi(pair.slave)
    eoi(pair.master)
    assert pair.has_interrupt()
    assert pair.acknowledge() == 0x3A


def test_special_fully_nested_lets_higher_slave_irq_through() -> None:
    pair, _ = linux_pair(icw4=0x11)
    pulse(pair, 11)
    assert pair.acknowledge() == 0x3B
    pulse(pair, 9)  # higher priority on the slave while IR2 is in service on the master
    assert pair.has_interrupt()
    assert pair.acknowledge() == 0x39


def test_without_sfnm_slave_in_service_blocks_other_slave_irqs() -> None:
    pair, _ = linux_pair()
    pulse(pair, 11)
    pair.acknowledge()
    pulse(pair, 9)
    assert not pair.has_interrupt()


def test_spurious_irq7_when_request_vanishes_before_inta() -> None:
    pair, _ = linux_pair()
    pair.elcr.write(0, 1, 0x08)  # IRQ 3 level triggered
    pair.set_irq(3, True)
    assert pair.has_interrupt()
    pair.set_irq(3, False)
    assert pair.acknowledge() == 0x37
    assert read_isr(pair.master) == 0  # spurious IRQ 7 is not put in service


def test_spurious_irq15_leaves_master_ir2_in_service() -> None:
    pair, _ = linux_pair()
    pair.elcr.write(1, 1, 0x20)  # IRQ 13 cannot be level: masked off
    assert pair.elcr.read(1, 1) == 0x00
    pair.elcr.write(1, 1, 0x08)  # IRQ 11 level triggered
    pair.set_irq(11, True)
    pair.slave.write(1, 1, 0x08)  # masked after the master latched IR2
    assert pair.acknowledge() == 0x3F
    assert read_isr(pair.slave) == 0
    assert read_isr(pair.master) == 0x04


def test_level_triggered_line_reasserts_after_eoi_while_high() -> None:
    pair, _ = linux_pair()
    pair.elcr.write(0, 2, 0x0800)  # IRQ 11 level
    pair.set_irq(11, True)
    assert pair.acknowledge() == 0x3B
    eoi(pair.slave)
    eoi(pair.master)
    assert pair.has_interrupt()
    pair.acknowledge()
    pair.set_irq(11, False)
    eoi(pair.slave)
    eoi(pair.master)
    assert not pair.has_interrupt()


def test_elcr_masks_reserved_edge_only_lines() -> None:
    pair, _ = linux_pair()
    pair.elcr.write(0, 2, 0xFFFF)
    assert pair.elcr.read(0, 2) == (p.ELCR_SLAVE_MASK << 8) | p.ELCR_MASTER_MASK


def test_ltim_makes_all_inputs_level_triggered() -> None:
    pair = Pic8259Pair()
    init_chip(pair.master, 0x08, 0x04, icw1=0x19)
    init_chip(pair.slave, 0x70, 0x02)
    pair.set_irq(5, True)
    assert pair.acknowledge() == 0x0D
    pair.set_irq(5, False)
    assert pair.master.read(0, 1) & 0x20 == 0  # IRR followed the line down


def test_auto_eoi_does_not_set_isr() -> None:
    pair, _ = linux_pair(icw4=0x03)
    pulse(pair, 6)
    assert pair.acknowledge() == 0x36
    assert read_isr(pair.master) == 0
    pulse(pair, 7)
    assert pair.has_interrupt()


def test_rotate_on_nonspecific_eoi_makes_served_irq_lowest() -> None:
    pair, _ = linux_pair()
    pulse(pair, 0)
    pair.acknowledge()
    pair.master.write(0, 1, 0xA0)  # rotate on non-specific EOI
    pulse(pair, 0)
    pulse(pair, 4)
    assert pair.acknowledge() == 0x34  # IR0 is now the lowest priority
    eoi(pair.master)
    assert pair.acknowledge() == 0x30


def test_set_priority_command() -> None:
    pair, _ = linux_pair()
    pair.master.write(0, 1, 0xC0 | 4)  # IR4 lowest, so IR5 highest
    pulse(pair, 3)
    pulse(pair, 6)
    assert pair.acknowledge() == 0x36


def test_rotate_in_auto_eoi_mode() -> None:
    pair, _ = linux_pair(icw4=0x03)
    pair.master.write(0, 1, 0x80)  # rotate in AEOI set
    pulse(pair, 1)
    pulse(pair, 3)
    assert pair.acknowledge() == 0x31
    pulse(pair, 0)
    assert pair.acknowledge() == 0x33  # IR1 now lowest, IR2.. highest
    pair.master.write(0, 1, 0x00)  # rotate in AEOI clear
    assert not pair.master.rotate_on_auto_eoi


def test_poll_mode_reads_highest_request_and_acknowledges() -> None:
    pair, line = linux_pair()
    pulse(pair, 5)
    pulse(pair, 6)
    pair.master.write(0, 1, 0x0C)  # OCW3 poll
    assert pair.master.read(0, 1) == 0x85
    assert read_isr(pair.master) == 0x20
    assert pair.master.read(0, 1) == 0x40  # poll is one-shot: back to IRR
    pair.master.write(0, 1, 0x0C)
    assert pair.master.read(0, 1) == 0x00  # IR6 blocked by IR5 in service
    assert not line.high


def test_special_mask_mode_allows_lower_priority_while_in_service() -> None:
    pair, _ = linux_pair()
    pulse(pair, 1)
    pair.acknowledge()
    pair.master.write(1, 1, 0x02)  # mask IR1 (in service)
    pair.master.write(0, 1, 0x68)  # set special mask
    pulse(pair, 4)
    assert pair.acknowledge() == 0x34
    pair.master.write(0, 1, 0x48)  # reset special mask
    pulse(pair, 5)
    assert not pair.has_interrupt()


def test_irq2_is_redirected_to_irq9() -> None:
    pair, _ = linux_pair()
    pulse(pair, 2)
    assert pair.acknowledge() == 0x39


def test_out_of_range_irq_is_a_device_error() -> None:
    pair = Pic8259Pair()
    with pytest.raises(DeviceError):
        pair.set_irq(16, True)


def test_bad_access_size_does_not_raise() -> None:
    pair, _ = linux_pair()
    assert pair.master.read(0, 2) == 0xFFFF
    pair.master.write(1, 2, 0)
    assert pair.master.read(1, 1) == 0x00


def test_state_round_trip() -> None:
    pair, _ = linux_pair()
    pair.elcr.write(1, 1, 0x08)
    pair.set_irq(11, True)
    assert pair.acknowledge() == 0x3B
    pulse(pair, 1)  # outranks IR2 in service: pending
    line = Line()
    copy = Pic8259Pair.from_state(pair.state(), intr=line)
    assert copy.state() == pair.state()
    assert line.high
    assert copy.acknowledge() == pair.acknowledge()


def test_from_state_rejects_garbage() -> None:
    with pytest.raises(DeviceError):
        Pic8259Pair.from_state({"master": {}})
    with pytest.raises(DeviceError):
        Pic8259Pair.from_state(p.PicState(master=p.PicChipState(init_state=9)))
    with pytest.raises(DeviceError):
        Pic8259Pair.from_state(p.PicState(version=99))
