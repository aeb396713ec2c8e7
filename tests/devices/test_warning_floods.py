"""A guest repeating one odd action gets one WARNING, not one per action (issue 17, finding 4)."""

from __future__ import annotations

import logging

import pytest

from kvmlite.devices import acpi_pm as PM
from kvmlite.devices import i8042 as K
from kvmlite.devices import pic as P
from kvmlite.devices.pit import Pit8254
from tests.devices.conftest import Calls, FakeClock

REPEATS = 2000


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_unsupported_sleep_type_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    pm = PM.AcpiPm(power_off=Calls(), s5_slp_typ=5)
    with caplog.at_level(logging.DEBUG):
        for _ in range(REPEATS):
            pm.write(PM.REG_PM1_CNT, 2, (3 << PM.SLP_TYP_SHIFT) | PM.SLP_EN)
    assert len(warnings(caplog)) == 1
    assert "sleep type 3" in warnings(caplog)[0]


def test_a20_off_through_port_92_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    port = K.PortA20Reset()
    with caplog.at_level(logging.DEBUG):
        for _ in range(REPEATS):
            port.write(0, 1, 0)
            port.write(0, 1, K.PORT_A_A20)
    assert len(warnings(caplog)) == 1


def test_a20_off_through_the_i8042_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    kbc = K.I8042(reset=Calls())
    with caplog.at_level(logging.DEBUG):
        for _ in range(REPEATS):
            for value in (K.DEFAULT_OUTPUT_PORT & ~K.OUT_A20, K.DEFAULT_OUTPUT_PORT):
                kbc.write(K.STATUS_OFFSET, 1, K.CMD_WRITE_OUTPUT)
                kbc.write(K.DATA_OFFSET, 1, value)
    assert len(warnings(caplog)) == 1


def test_pit_count_one_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    pit = Pit8254(clock=FakeClock())
    with caplog.at_level(logging.DEBUG):
        for _ in range(REPEATS):
            pit.write(3, 1, 0x34)  # channel 0, LSB then MSB, mode 2
            pit.write(0, 1, 1)
            pit.write(0, 1, 0)
    assert len(warnings(caplog)) == 1


def test_pic_single_mode_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    pair = P.Pic8259Pair()
    with caplog.at_level(logging.DEBUG):
        for _ in range(REPEATS):
            pair.master.write(0, 1, P.ICW1_INIT | P.ICW1_SNGL | P.ICW1_IC4)
            pair.master.write(1, 1, 0x20)
            pair.master.write(1, 1, P.ICW4_UPM)
    assert len(warnings(caplog)) == 1
