"""ACPI S3: the PM device suspends, the RTC alarm wakes the guest at the FACS waking vector."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from kvmlite.devices import acpi_pm as PM
from kvmlite.firmware import acpi as A
from kvmlite.memory.guest import GuestMemory
from kvmlite.vmm import layout as L
from kvmlite.vmm.machine import Machine, MachineConfig
from kvmlite.vmm.sleep import find_waking_vector_field
from tests.conftest import MULTIBOOT_HEADER, build_multiboot, requires_kvm

S3_SLEEP = (L.S3_SLP_TYP << PM.SLP_TYP_SHIFT) | PM.SLP_EN
RESUME_AT = 0x1000
RESUME_EXIT_VALUE = 0x42


def make_pm(suspend: Callable[[], bool]) -> PM.AcpiPm:
    return PM.AcpiPm(
        power_off=lambda: None, s5_slp_typ=L.S5_SLP_TYP, s3_slp_typ=L.S3_SLP_TYP, suspend=suspend
    )


def test_s3_type_with_slp_en_suspends_and_a_wake_sets_wak_and_rtc_status() -> None:
    calls: list[int] = []
    pm = make_pm(lambda: calls.append(1) is None)
    pm.write(PM.REG_PM1_CNT, 2, S3_SLEEP)
    assert calls == [1] and pm.read(PM.REG_PM1_STS, 2) == 0  # asleep: no wake reported yet
    pm.woken(by_rtc=True)
    assert pm.read(PM.REG_PM1_STS, 2) == PM.WAK_STS | PM.RTC_STS


def test_refused_s3_reports_an_immediate_wake_as_before() -> None:
    pm = make_pm(lambda: False)
    pm.write(PM.REG_PM1_CNT, 2, S3_SLEEP)
    assert pm.read(PM.REG_PM1_STS, 2) == PM.WAK_STS


def test_waking_vector_is_found_through_rsdp_fadt_and_facs() -> None:
    memory = GuestMemory([(0, 2 << 20)])
    try:
        rsdp = A.write_tables(memory, A.AcpiPlatform())
        field = find_waking_vector_field(memory, rsdp)
        assert field is not None
        assert memory.read(field - 12, 4) == b"FACS"
        memory.write(rsdp, b"garbage!")  # no valid RSDP: no vector, no exception
        assert find_waking_vector_field(memory, rsdp) is None
    finally:
        memory.close()


DEADLINE_S = 30
TIMED_OUT = 99


def run_with_deadline(machine: Machine) -> int:
    """machine.run(), stopped with TIMED_OUT if the guest is still running after DEADLINE_S."""
    timer = threading.Timer(DEADLINE_S, machine.control.stop, args=(TIMED_OUT, "test deadline"))
    timer.start()
    try:
        return machine.run()
    finally:
        timer.cancel()


# The guest arms the RTC alarm (every second), enters S3, then marks memory at 0 if it ever runs on.
GUEST = (
    MULTIBOOT_HEADER
    + """
.text
.globl _start
_start:
    mov $0x0b, %al          # RTC register B: alarm interrupt enable
    out %al, $0x70
    in $0x71, %al
    or $0x20, %al
    mov %al, %ah
    mov $0x0b, %al
    out %al, $0x70
    mov %ah, %al
    out %al, $0x71
    mov $1, %al             # alarm seconds, minutes, hours: don't care
    call alarm
    mov $3, %al
    call alarm
    mov $5, %al
    call alarm
    mov $0x0c, %al          # clear register C
    out %al, $0x70
    in $0x71, %al
    mov $PM1_CNT, %dx
    mov $S3_SLEEP, %ax
    out %ax, %dx            # S3: nothing after this may run before the wake
1:  movl $0xbad, 0
    jmp 1b
alarm:
    out %al, $0x70
    mov $0xc0, %al
    out %al, $0x71
    ret
"""
)
RESUME_CODE = "mov al, RESUME_EXIT_VALUE\nout 0xf4, al\nhlt\n"  # real mode, Intel syntax (the asm fixture)


@requires_kvm
def test_guest_sleeps_in_s3_and_resumes_in_real_mode_at_its_waking_vector(
    tmp_path: Path, asm: Callable[..., bytes]
) -> None:
    src = GUEST.replace("PM1_CNT", str(L.PM1_CNT_BLK)).replace("S3_SLEEP", str(S3_SLEEP))
    resume = asm(RESUME_CODE.replace("RESUME_EXIT_VALUE", str(RESUME_EXIT_VALUE)), bits=16, org=RESUME_AT)
    machine = Machine.build(
        MachineConfig(kernel=build_multiboot(tmp_path, "s3", src), backend="kvm", memory_mib=16,
                      serial_out=lambda b: None)
    )  # fmt: skip
    try:
        field = find_waking_vector_field(machine.memory, machine.rsdp)
        assert field is not None
        machine.memory.write_u32(field, RESUME_AT)  # what an OS does before sleeping
        machine.memory.write(RESUME_AT, resume)
        status = run_with_deadline(machine)
        assert status == (RESUME_EXIT_VALUE << 1) | 1
        assert machine.memory.read_u32(0) == 0  # the vCPU stopped right after its S3 write
        assert machine.acpi_pm is not None and machine.acpi_pm.status & PM.WAK_STS
    finally:
        machine.close()


@requires_kvm
def test_s3_is_refused_with_more_than_one_vcpu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = GUEST.replace("PM1_CNT", str(L.PM1_CNT_BLK)).replace("S3_SLEEP", str(S3_SLEEP))
    carry_on = "    movl $0xbad, 0\n    mov $0x21, %eax\n    out %eax, $0xf4"
    src = src.replace("1:  movl $0xbad, 0\n    jmp 1b", carry_on)
    machine = Machine.build(
        MachineConfig(kernel=build_multiboot(tmp_path, "s3smp", src), backend="kvm", memory_mib=16, cpus=2,
                      serial_out=lambda b: None)
    )  # fmt: skip
    try:
        assert run_with_deadline(machine) == 0x43
        assert machine.memory.read_u32(0) == 0xBAD and "not supported" in caplog.text
    finally:
        machine.close()
