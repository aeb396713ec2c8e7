"""ACPI PM1 registers and the 0xCF9 reset register, driven register by register; then in a real VM."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmlite.devices import acpi_pm as PM
from kvmlite.firmware import acpi as A
from kvmlite.vmm import layout as L
from kvmlite.vmm.machine import Machine, MachineConfig
from tests.conftest import MULTIBOOT_HEADER, build_multiboot, requires_kvm

S5_SLEEP = (L.S5_SLP_TYP << PM.SLP_TYP_SHIFT) | PM.SLP_EN


class Recorder:
    def __init__(self) -> None:
        self.power_offs = 0
        self.resets = 0
        self.sci: list[bool] = []

    def power_off(self) -> None:
        self.power_offs += 1

    def reset(self) -> None:
        self.resets += 1


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def pm(rec: Recorder) -> PM.AcpiPm:
    return PM.AcpiPm(power_off=rec.power_off, s5_slp_typ=L.S5_SLP_TYP, sci=rec.sci.append)


# --- PM1_CNT ------------------------------------------------------------------------------------------


def test_slp_en_with_the_s5_type_powers_off(pm: PM.AcpiPm, rec: Recorder) -> None:
    pm.write(PM.REG_PM1_CNT, 2, S5_SLEEP)
    assert rec.power_offs == 1


def test_linux_sequence_type_first_then_slp_en_powers_off_once(pm: PM.AcpiPm, rec: Recorder) -> None:
    # acpi_hw_legacy_sleep writes SLP_TYP alone, then SLP_TYP | SLP_EN
    pm.write(PM.REG_PM1_CNT, 2, L.S5_SLP_TYP << PM.SLP_TYP_SHIFT | PM.SCI_EN)
    assert rec.power_offs == 0
    pm.write(PM.REG_PM1_CNT, 2, S5_SLEEP | PM.SCI_EN)
    assert rec.power_offs == 1


def test_a_byte_write_to_the_high_half_of_pm1_cnt_also_sleeps(pm: PM.AcpiPm, rec: Recorder) -> None:
    pm.write(PM.REG_PM1_CNT + 1, 1, S5_SLEEP >> 8)
    assert rec.power_offs == 1


def test_s5_type_without_slp_en_does_nothing(pm: PM.AcpiPm, rec: Recorder) -> None:
    pm.write(PM.REG_PM1_CNT, 2, L.S5_SLP_TYP << PM.SLP_TYP_SHIFT)
    assert rec.power_offs == 0
    assert pm.read(PM.REG_PM1_CNT, 2) == PM.SCI_EN | (L.S5_SLP_TYP << PM.SLP_TYP_SHIFT)


def test_other_sleep_types_are_refused_and_report_a_wake(pm: PM.AcpiPm, rec: Recorder) -> None:
    pm.write(PM.REG_PM1_CNT, 2, (1 << PM.SLP_TYP_SHIFT) | PM.SLP_EN)
    assert rec.power_offs == 0
    assert pm.read(PM.REG_PM1_STS, 2) & PM.WAK_STS


def test_sci_en_always_reads_set_and_slp_en_reads_clear(pm: PM.AcpiPm) -> None:
    assert pm.read(PM.REG_PM1_CNT, 2) == PM.SCI_EN
    pm.write(PM.REG_PM1_CNT, 2, 0)
    assert pm.read(PM.REG_PM1_CNT, 2) & PM.SCI_EN
    pm.write(PM.REG_PM1_CNT, 2, S5_SLEEP)
    assert not pm.read(PM.REG_PM1_CNT, 2) & PM.SLP_EN


# --- PM1 event block -------------------------------------------------------------------------------------


def test_power_button_raises_the_sci_only_when_enabled(pm: PM.AcpiPm, rec: Recorder) -> None:
    pm.press_power_button()
    assert rec.sci == [] and pm.read(PM.REG_PM1_STS, 2) & PM.PWRBTN_STS
    pm.write(PM.REG_PM1_EN, 2, PM.PWRBTN_EN)
    assert rec.sci == [True] and pm.sci_level


def test_status_bits_clear_on_writing_one_and_the_sci_drops(pm: PM.AcpiPm, rec: Recorder) -> None:
    pm.write(PM.REG_PM1_EN, 2, PM.PWRBTN_EN)
    pm.press_power_button()
    pm.write(PM.REG_PM1_STS, 2, 0)  # writing 0 clears nothing
    assert pm.read(PM.REG_PM1_STS, 2) & PM.PWRBTN_STS
    pm.write(PM.REG_PM1_STS, 2, PM.PWRBTN_STS)
    assert pm.read(PM.REG_PM1_STS, 2) == 0
    assert rec.sci == [True, False]


def test_a_dword_read_of_the_event_block_returns_status_and_enable(pm: PM.AcpiPm) -> None:
    pm.write(PM.REG_PM1_EN, 2, PM.PWRBTN_EN)
    pm.press_power_button()
    assert pm.read(PM.REG_PM1_STS, 4) == PM.PWRBTN_STS | (PM.PWRBTN_EN << 16)


def test_enable_keeps_only_bits_that_exist(pm: PM.AcpiPm) -> None:
    pm.write(PM.REG_PM1_EN, 2, 0xFFFF)
    assert pm.read(PM.REG_PM1_EN, 2) == PM.PM1_EN_MASK


# --- reset control register ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0x06, 0x0E, 0x04])
def test_rst_cpu_resets(rec: Recorder, value: int) -> None:
    rcr = PM.ResetControl(reset=rec.reset)
    rcr.write(0, 1, value)
    assert rec.resets == 1


def test_reset_type_alone_is_stored_without_resetting(rec: Recorder) -> None:
    rcr = PM.ResetControl(reset=rec.reset)
    rcr.write(0, 1, 0x02)
    assert rec.resets == 0 and rcr.read(0, 1) == 0x02
    rcr.write(0, 1, 0x06)
    assert rec.resets == 1 and rcr.read(0, 1) == 0x02  # RST_CPU reads back 0


def test_tables_point_at_the_device(rec: Recorder) -> None:
    fadt = A.build_fadt(A.AcpiPlatform(), dsdt_addr=0, facs_addr=0)
    assert int.from_bytes(fadt[56:60], "little") == L.PM1_EVT_BLK
    assert fadt[128] == L.RESET_VALUE
    rcr = PM.ResetControl(reset=rec.reset)
    rcr.write(0, 1, fadt[128])
    assert rec.resets == 1


# --- in a VM -------------------------------------------------------------------------------------

GUEST = (
    MULTIBOOT_HEADER
    + """
.text
.globl _start
_start:
    mov $PORT, %dx
    mov $VALUE, %ax
    OUT
    cli
1:  hlt
    jmp 1b
"""
)


def run_guest(tmp_path: Path, port: int, value: int, width: str) -> Machine:
    src = GUEST.replace("PORT", str(port)).replace("VALUE", str(value)).replace("OUT", width)
    machine = Machine.build(
        MachineConfig(
            kernel=build_multiboot(tmp_path, "pm", src),
            backend="kvm",
            memory_mib=16,
            serial_out=lambda b: None,
        )
    )
    try:
        machine.run()
    finally:
        machine.close()
    return machine


@requires_kvm
def test_guest_writing_s5_to_pm1_cnt_powers_the_vm_off_with_status_0(tmp_path: Path) -> None:
    machine = run_guest(tmp_path, L.PM1_CNT_BLK, S5_SLEEP, "out %ax, %dx")
    info = machine.control.stop_info
    assert info is not None and info.status == 0 and info.message == "guest powered off (ACPI S5)"
    assert not machine.reset_requested


@requires_kvm
def test_guest_writing_the_fadt_reset_value_to_0xcf9_requests_a_reset(tmp_path: Path) -> None:
    machine = run_guest(tmp_path, L.RESET_PORT, L.RESET_VALUE, "out %al, %dx")
    assert machine.reset_requested


@requires_kvm
def test_machine_writes_tables_an_os_finds(tmp_path: Path) -> None:
    elf = build_multiboot(
        tmp_path, "idle", GUEST.replace("PORT", "0x80").replace("VALUE", "0").replace("OUT", "")
    )
    machine = Machine.build(
        MachineConfig(kernel=elf, backend="kvm", memory_mib=16, serial_out=lambda b: None)
    )
    try:
        assert A.find_rsdp(machine.memory) == machine.rsdp != 0
        assert set(A.read_tables(machine.memory, machine.rsdp)) >= {b"FACP", b"APIC", b"DSDT"}
    finally:
        machine.close()
