"""Register-level tests of the 8042 controller, its keyboard, port 0x92 and port 0x80."""

from __future__ import annotations

import logging

import pytest

from kvmlite.devices import i8042 as k
from kvmlite.devices.i8042 import I8042, PortA20Reset, PostCodePort
from kvmlite.errors import DeviceError
from tests.devices.conftest import Calls, Line


def make() -> tuple[I8042, Line, Line, Calls]:
    irq1, irq12, resets = Line(), Line(), Calls()
    return I8042(reset=resets, irq1=irq1, irq12=irq12), irq1, irq12, resets


def status(dev: I8042) -> int:
    return dev.read(k.STATUS_OFFSET, 1)


def cmd(dev: I8042, value: int) -> None:
    dev.write(k.STATUS_OFFSET, 1, value)


def data(dev: I8042, value: int) -> None:
    dev.write(k.DATA_OFFSET, 1, value)


def drain(dev: I8042) -> list[int]:
    out = []
    while status(dev) & k.STR_OBF:
        out.append(dev.read(k.DATA_OFFSET, 1))
    return out


def test_status_idle_has_no_output_and_is_not_all_ones() -> None:
    dev, *_ = make()
    st = status(dev)
    assert st != 0xFF
    assert not st & (k.STR_OBF | k.STR_IBF)


def test_self_test_returns_0x55_and_sets_sys_flag() -> None:
    dev, *_ = make()
    cmd(dev, 0x60)
    data(dev, 0x00)
    assert not status(dev) & k.STR_SYS
    cmd(dev, k.CMD_SELF_TEST)
    assert status(dev) & k.STR_OBF
    assert drain(dev) == [0x55]
    assert status(dev) & k.STR_SYS


def test_command_byte_read_write() -> None:
    dev, *_ = make()
    cmd(dev, 0x20)
    assert drain(dev) == [k.DEFAULT_CTR]
    cmd(dev, 0x60)
    assert status(dev) & k.STR_CMD
    data(dev, 0x74)
    assert not status(dev) & k.STR_CMD
    cmd(dev, 0x20)
    assert drain(dev) == [0x74]


def test_internal_ram_bytes() -> None:
    dev, *_ = make()
    cmd(dev, 0x65)
    data(dev, 0x99)
    cmd(dev, 0x25)
    assert drain(dev) == [0x99]


def test_interface_tests_pass() -> None:
    dev, *_ = make()
    cmd(dev, k.CMD_KBD_TEST)
    cmd(dev, k.CMD_AUX_TEST)
    assert drain(dev) == [0x00, 0x00]


def test_enable_disable_ports_toggle_command_byte_bits() -> None:
    """Linux's i8042_toggle_aux checks exactly this."""
    dev, *_ = make()
    cmd(dev, k.CMD_AUX_DISABLE)
    cmd(dev, 0x20)
    assert drain(dev)[0] & k.CTR_AUX_DISABLE
    cmd(dev, k.CMD_AUX_ENABLE)
    cmd(dev, 0x20)
    assert not drain(dev)[0] & k.CTR_AUX_DISABLE
    cmd(dev, k.CMD_KBD_DISABLE)
    cmd(dev, 0x20)
    assert drain(dev)[0] & k.CTR_KBD_DISABLE
    cmd(dev, k.CMD_KBD_ENABLE)
    cmd(dev, 0x20)
    assert not drain(dev)[0] & k.CTR_KBD_DISABLE


def test_aux_loop_returns_byte_as_aux_data_with_irq12() -> None:
    dev, irq1, irq12, _ = make()
    cmd(dev, k.CMD_WRITE_AUX_OBUF)
    data(dev, 0x5A)
    assert status(dev) & (k.STR_OBF | k.STR_AUX_OBF) == k.STR_OBF | k.STR_AUX_OBF
    assert irq12.high and not irq1.high
    assert dev.read(k.DATA_OFFSET, 1) == 0x5A
    assert not irq12.high


def test_write_to_absent_mouse_times_out_with_nak() -> None:
    dev, *_ = make()
    cmd(dev, k.CMD_WRITE_AUX)
    data(dev, 0xF2)
    st = status(dev)
    assert st & k.STR_TIMEOUT and st & k.STR_AUX_OBF
    assert dev.read(k.DATA_OFFSET, 1) == k.AUX_NO_DEVICE
    assert not status(dev) & k.STR_TIMEOUT


def test_keyboard_reset_acks_then_passes_bat_with_irq1() -> None:
    dev, irq1, _, _ = make()
    data(dev, k.KBD_CMD_RESET)
    assert irq1.high
    assert dev.read(k.DATA_OFFSET, 1) == 0xFA
    assert irq1.levels[-2:] == [False, True]  # a fresh edge for the next byte
    assert dev.read(k.DATA_OFFSET, 1) == 0xAA
    assert not irq1.high


def test_keyboard_identify_with_and_without_translation() -> None:
    dev, *_ = make()
    data(dev, k.KBD_CMD_GET_ID)
    assert drain(dev) == [0xFA, 0xAB, 0x41]
    cmd(dev, 0x60)
    data(dev, k.DEFAULT_CTR & ~k.CTR_XLATE)
    data(dev, k.KBD_CMD_GET_ID)
    assert drain(dev) == [0xFA, 0xAB, 0x83]


def test_keyboard_enable_disable_scanning() -> None:
    dev, *_ = make()
    data(dev, k.KBD_CMD_RESET_DISABLE)
    assert drain(dev) == [0xFA]
    assert dev.enqueue_keyboard(b"\x1c") == 1
    assert drain(dev) == []  # discarded while scanning is off
    data(dev, k.KBD_CMD_ENABLE)
    assert drain(dev) == [0xFA]
    dev.enqueue_keyboard(b"\x1c\x9c")
    assert drain(dev) == [0x1C, 0x9C]


def test_keyboard_leds_and_scanset_two_byte_commands() -> None:
    dev, *_ = make()
    data(dev, k.KBD_CMD_SET_LEDS)
    data(dev, 0x07)
    assert drain(dev) == [0xFA, 0xFA]
    assert dev.kbd_leds == 7
    data(dev, k.KBD_CMD_SCANSET)
    data(dev, 0)
    assert drain(dev) == [0xFA, 0xFA, 0x41]  # set 2 as seen through translation
    data(dev, k.KBD_CMD_SCANSET)
    data(dev, 3)
    assert drain(dev) == [0xFA, 0xFA]
    assert dev.kbd_scanset == 3
    data(dev, k.KBD_CMD_ECHO)
    assert drain(dev) == [0xEE]


def test_unknown_keyboard_command_gets_resend() -> None:
    dev, *_ = make()
    data(dev, 0x01)
    assert drain(dev) == [0xFE]


def test_disabled_keyboard_holds_bytes_until_enabled() -> None:
    dev, *_ = make()
    cmd(dev, k.CMD_KBD_DISABLE)
    dev.enqueue_keyboard(b"\x1e")
    assert not status(dev) & k.STR_OBF
    cmd(dev, k.CMD_KBD_ENABLE)
    assert drain(dev) == [0x1E]


def test_keyboard_irq_needs_command_byte_bit() -> None:
    dev, irq1, _, _ = make()
    cmd(dev, 0x60)
    data(dev, k.CTR_XLATE)
    dev.enqueue_keyboard(b"\x1e")
    assert status(dev) & k.STR_OBF
    assert not irq1.high


def test_controller_reply_goes_before_queued_keys() -> None:
    dev, *_ = make()
    cmd(dev, k.CMD_KBD_DISABLE)
    dev.enqueue_keyboard(b"\x10\x11")
    cmd(dev, k.CMD_KBD_ENABLE)
    cmd(dev, 0x20)
    assert drain(dev) == [0x10, k.DEFAULT_CTR, 0x11]


def test_i8042_reset_command_calls_reset() -> None:
    dev, _, _, resets = make()
    cmd(dev, k.CMD_PULSE_RESET)
    assert resets.count == 1
    cmd(dev, 0xFF)  # pulse nothing
    assert resets.count == 1


def test_output_port_write_controls_a20_and_reset() -> None:
    a20: list[bool] = []
    resets = Calls()
    dev = I8042(reset=resets, on_a20=a20.append)
    cmd(dev, k.CMD_READ_OUTPUT)
    assert drain(dev)[0] & 0x03 == 0x03
    cmd(dev, k.CMD_WRITE_OUTPUT)
    data(dev, 0x01)  # A20 off
    assert a20 == [False] and not dev.a20
    cmd(dev, k.CMD_ENABLE_A20)
    assert a20 == [False, True]
    cmd(dev, k.CMD_WRITE_OUTPUT)
    data(dev, 0x02)  # reset line low
    assert resets.count == 1


def test_reset_without_handler_logs_warning(caplog: pytest.LogCaptureFixture) -> None:
    dev = I8042()
    with caplog.at_level(logging.WARNING):
        cmd(dev, k.CMD_PULSE_RESET)
    assert "no reset handler" in caplog.text


def test_bad_accesses_do_not_raise() -> None:
    dev, *_ = make()
    assert dev.read(1, 1) == 0xFF
    assert dev.read(0, 2) == 0xFFFF
    dev.write(2, 1, 0)
    cmd(dev, 0xC8)  # unknown controller command
    assert dev.read(k.DATA_OFFSET, 1) == 0  # empty output buffer


def test_i8042_state_round_trip() -> None:
    dev, *_ = make()
    cmd(dev, 0x60)
    data(dev, 0x45)
    data(dev, k.KBD_CMD_GET_ID)
    dev.read(k.DATA_OFFSET, 1)
    cmd(dev, k.CMD_WRITE_OUTPUT)  # pending data byte
    irq1 = Line()
    copy = I8042.from_state(dev.state(), irq1=irq1)
    assert copy.state() == dev.state()
    assert irq1.high
    assert drain(copy) == drain(dev)


def test_i8042_from_state_rejects_garbage() -> None:
    with pytest.raises(DeviceError):
        I8042.from_state({"ctr": 1})
    with pytest.raises(DeviceError):
        I8042.from_state(k.I8042State(kbd_scanset=7))


def test_port92_fast_reset_and_a20() -> None:
    a20: list[bool] = []
    resets = Calls()
    port = PortA20Reset(reset=resets, on_a20=a20.append)
    assert port.read(0, 1) == k.PORT_A_A20
    port.write(0, 1, 0x00)
    assert a20 == [False]
    port.write(0, 1, k.PORT_A_A20 | k.PORT_A_RESET)
    assert resets.count == 1
    assert a20 == [False, True]
    assert port.read(0, 1) == k.PORT_A_A20  # reset bit does not stick
    assert PortA20Reset.from_state(port.state()).read(0, 1) == k.PORT_A_A20


def test_post_code_port_records_and_reports(caplog: pytest.LogCaptureFixture) -> None:
    codes: list[int] = []
    port = PostCodePort(on_code=codes.append)
    assert port.read(0, 1) == 0xFF
    with caplog.at_level(logging.DEBUG, logger="kvmlite.devices.i8042"):
        port.write(0, 1, 0x1234)
    assert codes == [0x34]
    assert port.last == 0x34
    assert port.read(0, 1) == 0x34
    assert not caplog.records  # no logging call per write: Linux writes the port constantly
    assert PostCodePort.from_state(port.state()).last == 0x34


def test_split_bus_wiring_maps_0x64_to_the_command_offset() -> None:
    from kvmlite.memory import Bus

    dev, *_ = make()
    bus = Bus("pio")
    bus.insert(dev, 0x60, 1)
    bus.insert(dev, 0x64, 1, offset=4)
    bus.write(0x64, 1, k.CMD_SELF_TEST)
    assert bus.read(0x64, 1) & k.STR_OBF
    assert bus.read(0x60, 1) == 0x55
    assert bus.read(0x65, 1) == 0xFF  # beyond the single port: nobody claims it
