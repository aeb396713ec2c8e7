"""Register-level tests of the CMOS RTC with a fake wall clock and a fake monotonic clock."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from kvmlite.devices import rtc as r
from kvmlite.devices.rtc import CmosRtc
from kvmlite.errors import DeviceError
from tests.devices.conftest import FakeClock, Line

# 2024-02-29 13:59:58 UTC (a Thursday), half a second into that second.
WALL = datetime(2024, 2, 29, 13, 59, 58, tzinfo=UTC).timestamp() + 0.5
S = 1_000_000_000



def make(memory_size: int = 0, wall: float = WALL) -> tuple[CmosRtc, FakeClock, Line]:
    clock, line = FakeClock(7 * S), Line()
    rtc = CmosRtc(irq8=line, memory_size=memory_size, now=lambda: wall, clock=clock)
    return rtc, clock, line


def rd(rtc: CmosRtc, index: int) -> int:
    rtc.write(r.INDEX_PORT, 1, index)
    return rtc.read(r.DATA_PORT, 1)


def wr(rtc: CmosRtc, index: int, value: int) -> None:
    rtc.write(r.INDEX_PORT, 1, index)
    rtc.write(r.DATA_PORT, 1, value)


def read_time(rtc: CmosRtc) -> tuple[int, ...]:
    return tuple(rd(rtc, i) for i in (r.REG_CENTURY, r.REG_YEAR, r.REG_MONTH, 7, 4, 2, 0, 6))


def tick_to_deadline(rtc: CmosRtc, clock: FakeClock) -> None:
    deadline = rtc.next_deadline()
    assert deadline is not None
    clock.now = max(clock.now, deadline)
    rtc.tick(clock.now)


def test_default_is_bcd_24h_with_wall_time() -> None:
    rtc, _, _ = make()
    assert read_time(rtc) == (0x20, 0x24, 0x02, 0x29, 0x13, 0x59, 0x58, 0x05)  # Thursday = 5


def test_rtc_bcd_and_binary_agree() -> None:
    rtc, _, _ = make()
    bcd = read_time(rtc)
    wr(rtc, r.REG_B, r.B_24H | r.B_DM_BINARY)
    binary = read_time(rtc)
    assert binary == (20, 24, 2, 29, 13, 59, 58, 5)
    assert tuple(r._unbcd(v) for v in bcd) == binary


def test_12_hour_mode_sets_pm_bit() -> None:
    rtc, _, _ = make()
    wr(rtc, r.REG_B, 0)  # BCD, 12 hour
    assert rd(rtc, r.REG_HOURS) == r.HOUR_PM | 0x01
    wr(rtc, r.REG_B, r.B_DM_BINARY)
    assert rd(rtc, r.REG_HOURS) == r.HOUR_PM | 1


def test_12_hour_mode_midnight_and_noon() -> None:
    rtc, _, _ = make(wall=datetime(2024, 1, 1, 0, 30, tzinfo=UTC).timestamp())
    wr(rtc, r.REG_B, 0)
    assert rd(rtc, r.REG_HOURS) == 0x12  # 12 AM
    rtc, _, _ = make(wall=datetime(2024, 1, 1, 12, 30, tzinfo=UTC).timestamp())
    wr(rtc, r.REG_B, 0)
    assert rd(rtc, r.REG_HOURS) == 0x92  # 12 PM


def test_time_advances_with_monotonic_clock_across_midnight_and_leap_day() -> None:
    rtc, clock, _ = make(wall=datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC).timestamp())
    clock.now += S
    assert read_time(rtc)[:7] == (0x20, 0x24, 0x03, 0x01, 0x00, 0x00, 0x00)


def test_uip_set_only_in_last_244us_before_update() -> None:
    rtc, clock, _ = make()
    assert not rd(rtc, r.REG_A) & r.A_UIP  # .5 s into the second
    clock.now += S // 2 - 200_000
    assert rd(rtc, r.REG_A) & r.A_UIP
    clock.now += 200_000
    assert not rd(rtc, r.REG_A) & r.A_UIP
    assert rd(rtc, r.REG_SECONDS) == 0x59


def test_set_bit_halts_clock_and_guest_sets_time() -> None:
    rtc, clock, _ = make()
    wr(rtc, r.REG_B, r.B_24H | r.B_SET)
    clock.now += 5 * S
    assert rd(rtc, r.REG_SECONDS) == 0x58  # frozen
    assert not rd(rtc, r.REG_A) & r.A_UIP
    for index, value in ((0, 0x00), (2, 0x30), (4, 0x08), (7, 0x31), (8, 0x12), (9, 0x99)):
        wr(rtc, index, value)
    wr(rtc, r.REG_B, r.B_24H)
    assert read_time(rtc)[:7] == (0x20, 0x99, 0x12, 0x31, 0x08, 0x30, 0x00)
    clock.now += S
    assert rd(rtc, r.REG_SECONDS) == 0x01


def test_writing_one_field_of_running_clock() -> None:
    rtc, _, _ = make()
    wr(rtc, r.REG_MINUTES, 0x10)
    assert rd(rtc, r.REG_MINUTES) == 0x10
    assert rd(rtc, r.REG_HOURS) == 0x13


def test_invalid_date_is_refused_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    rtc, _, _ = make()
    with caplog.at_level(logging.WARNING):
        wr(rtc, r.REG_MONTH, 0x13)
    assert "invalid" in caplog.text
    assert rd(rtc, r.REG_MONTH) == 0x02


def test_register_c_flags_visible_when_polling_without_irq() -> None:
    rtc, clock, line = make()
    clock.now += S  # one update happened
    c = rd(rtc, r.REG_C)
    assert c & r.C_UF
    assert c & r.C_PF  # 1024 Hz periodic flag runs regardless of PIE
    assert not c & r.C_IRQF
    assert rd(rtc, r.REG_C) == 0  # cleared on read
    assert line.levels == []


def test_update_ended_interrupt_once_per_second() -> None:
    rtc, clock, line = make()
    wr(rtc, r.REG_B, r.B_24H | r.B_UIE)
    assert rtc.next_deadline() == clock.now + S // 2
    tick_to_deadline(rtc, clock)
    assert line.high
    assert rtc.next_deadline() is None  # nothing new until acknowledged
    assert rd(rtc, r.REG_SECONDS) == 0x59
    assert rd(rtc, r.REG_C) & (r.C_IRQF | r.C_UF) == r.C_IRQF | r.C_UF
    assert not line.high
    assert rtc.next_deadline() == clock.now + S


def test_periodic_interrupt_rate_from_register_a() -> None:
    rtc, clock, line = make()
    wr(rtc, r.REG_A, r.A_DV_NORMAL | 0x0F)  # 2 Hz
    wr(rtc, r.REG_B, r.B_24H | r.B_PIE)
    start = clock.now
    assert rtc.next_deadline() == start + S // 2
    tick_to_deadline(rtc, clock)
    assert line.high
    assert rd(rtc, r.REG_C) & (r.C_IRQF | r.C_PF | r.C_AF) == r.C_IRQF | r.C_PF
    assert rtc.next_deadline() == start + S


def test_periodic_rates_match_datasheet() -> None:
    assert r.periodic_period_ns(0) is None
    assert r.periodic_period_ns(1) == 3_906_250
    assert r.periodic_period_ns(2) == 7_812_500
    assert r.periodic_period_ns(3) == 122_070
    assert r.periodic_period_ns(6) == 976_562
    assert r.periodic_period_ns(15) == 500_000_000


def test_late_periodic_ticks_coalesce_into_one_interrupt() -> None:
    rtc, clock, line = make()
    wr(rtc, r.REG_B, r.B_24H | r.B_PIE)
    clock.now += 50_000_000  # ~51 periods late
    rtc.tick(clock.now)
    assert line.levels == [True]
    rd(rtc, r.REG_C)
    assert line.levels == [True, False]


def test_alarm_interrupt_matches_with_dont_care_hours() -> None:
    rtc, clock, line = make()
    wr(rtc, r.REG_SECONDS_ALARM, 0x05)
    wr(rtc, r.REG_MINUTES_ALARM, 0x00)
    wr(rtc, r.REG_HOURS_ALARM, 0xFF)  # any hour
    wr(rtc, r.REG_B, r.B_24H | r.B_AIE)
    start = clock.now
    assert rtc.next_deadline() == start + S // 2 + 6 * S  # 13:59:58.5 -> 14:00:05
    tick_to_deadline(rtc, clock)
    assert line.high
    assert rd(rtc, r.REG_C) & r.C_AF


def test_alarm_search_wraps_past_midnight() -> None:
    rtc, _, _ = make()
    wr(rtc, r.REG_HOURS_ALARM, 0x01)
    wr(rtc, r.REG_MINUTES_ALARM, 0x02)
    wr(rtc, r.REG_SECONDS_ALARM, 0x03)
    now_s = int(datetime(2024, 2, 29, 13, 59, 58, tzinfo=UTC).timestamp())
    expected = int(datetime(2024, 3, 1, 1, 2, 3, tzinfo=UTC).timestamp())
    assert rtc.next_alarm(now_s) == expected
    wr(rtc, r.REG_SECONDS_ALARM, 0x60)  # never matches
    assert rtc.next_alarm(now_s) is None


def test_enabling_irq_with_flag_already_set_raises_at_once() -> None:
    rtc, clock, line = make()
    clock.now += S
    wr(rtc, r.REG_B, r.B_24H | r.B_UIE)
    assert line.high


def test_set_clears_uie() -> None:
    rtc, _, _ = make()
    wr(rtc, r.REG_B, r.B_24H | r.B_UIE | r.B_SET)
    assert rd(rtc, r.REG_B) == r.B_24H | r.B_SET


def test_divider_reset_halts_and_restarts_half_a_second_later() -> None:
    rtc, clock, _ = make()
    wr(rtc, r.REG_A, 0x70 | 6)
    clock.now += 3 * S
    assert rd(rtc, r.REG_SECONDS) == 0x58
    wr(rtc, r.REG_A, r.A_DV_NORMAL | 6)
    clock.now += S // 2 - 1
    assert rd(rtc, r.REG_SECONDS) == 0x58
    clock.now += 1
    assert rd(rtc, r.REG_SECONDS) == 0x59


def test_registers_c_and_d_are_read_only_and_d_reports_valid() -> None:
    rtc, _, _ = make()
    wr(rtc, r.REG_D, 0)
    wr(rtc, r.REG_C, 0xFF)
    assert rd(rtc, r.REG_D) == r.D_VRT
    assert rd(rtc, r.REG_C) == 0


def test_index_port_keeps_nmi_mask_bit_separately() -> None:
    rtc, _, _ = make()
    rtc.write(r.INDEX_PORT, 1, 0x80 | r.REG_D)
    assert rtc.nmi_masked
    assert rtc.read(r.DATA_PORT, 1) == r.D_VRT
    rtc.write(r.INDEX_PORT, 1, 0x40)
    assert not rtc.nmi_masked


def test_cmos_ram_is_general_storage() -> None:
    rtc, _, _ = make()
    wr(rtc, 0x50, 0xA5)
    wr(rtc, 0x7F, 0x5A)
    assert rd(rtc, 0x50) == 0xA5
    assert rd(rtc, 0x7F) == 0x5A


def word(rtc: CmosRtc, lo: int) -> int:
    return rd(rtc, lo) | (rd(rtc, lo + 1) << 8)


def test_memory_size_bytes_for_512_mib() -> None:
    rtc, _, _ = make(memory_size=512 << 20)
    assert word(rtc, r.REG_BASE_MEM_LO) == 640
    assert word(rtc, r.REG_EXT_MEM_LO) == 0xFFFF  # 511 MiB in KiB does not fit
    assert word(rtc, r.REG_MEM_ABOVE_16M_LO) == (496 << 20) // (64 << 10)
    assert [rd(rtc, 0x5B + i) for i in range(3)] == [0, 0, 0]


def test_memory_size_bytes_for_32_mib() -> None:
    rtc, _, _ = make(memory_size=32 << 20)
    assert word(rtc, r.REG_EXT_MEM_LO) == 31 << 10
    assert word(rtc, r.REG_EXT_MEM2_LO) == 31 << 10
    assert word(rtc, r.REG_MEM_ABOVE_16M_LO) == 256


def test_memory_size_bytes_for_6_gib_cap_and_split() -> None:
    rtc, _, _ = make(memory_size=6 << 30)
    assert word(rtc, r.REG_EXT_MEM_LO) == 0xFFFF
    assert word(rtc, r.REG_MEM_ABOVE_16M_LO) == (0xC000_0000 - (16 << 20)) // (64 << 10)
    high = sum(rd(rtc, 0x5B + i) << (8 * i) for i in range(3))
    assert high == ((6 << 30) - 0xC000_0000) // (64 << 10)


def test_checksum_covers_0x10_to_0x2d() -> None:
    rtc, _, _ = make(memory_size=64 << 20)
    total = sum(rd(rtc, i) for i in range(0x10, 0x2E))
    assert (rd(rtc, 0x2E) << 8) | rd(rtc, 0x2F) == total


def test_state_round_trip_keeps_offset_from_wall_clock() -> None:
    rtc, _, _ = make()
    wr(rtc, r.REG_HOURS, 0x05)  # guest runs its clock 8 hours behind
    wr(rtc, 0x40, 0x77)
    st = rtc.state()
    later = WALL + 3600
    clock2, line = FakeClock(start=123 * S), Line()
    copy = CmosRtc.from_state(st, irq8=line, now=lambda: later, clock=clock2)
    assert rd(copy, r.REG_HOURS) == 0x06
    assert rd(copy, r.REG_MINUTES) == 0x59
    assert rd(copy, 0x40) == 0x77


def test_from_state_rejects_garbage() -> None:
    with pytest.raises(DeviceError):
        CmosRtc.from_state({"cmos": b"\0" * 3})
    with pytest.raises(DeviceError):
        CmosRtc.from_state(r.RtcState(cmos=b"\0" * 3))
    with pytest.raises(DeviceError):
        CmosRtc(memory_size=-1)


def test_bad_access_does_not_raise() -> None:
    rtc, _, _ = make()
    assert rtc.read(r.INDEX_PORT, 1) == 0xFF
    assert rtc.read(1, 2) == 0xFFFF
    rtc.write(2, 1, 0)


def test_disabling_the_interrupt_drops_irqf_and_the_line() -> None:
    rtc, clock, line = make()
    wr(rtc, r.REG_B, r.B_24H | r.B_UIE)
    clock.now += S
    rtc.tick(clock.now)
    assert line.high
    wr(rtc, r.REG_B, r.B_24H)
    assert not line.high
    assert rd(rtc, r.REG_C) == r.C_UF | r.C_PF  # flags stay, IRQF went with the enable


def test_rtc_implements_the_device_protocols() -> None:
    from kvmlite.devices.base import Device, Snapshottable, TimedDevice

    rtc, _, _ = make()
    assert isinstance(rtc, TimedDevice) and isinstance(rtc, Snapshottable) and isinstance(rtc, Device)
