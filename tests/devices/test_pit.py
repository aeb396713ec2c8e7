"""Register-level tests of the 8254 PIT and port 0x61, on a fake clock."""

from __future__ import annotations

import pytest

from kvmlite.devices import pit as p
from kvmlite.devices.pit import Pit8254
from kvmlite.errors import DeviceError
from tests.devices.conftest import FakeClock, Line


def advance_ticks(clock: FakeClock, ticks: int) -> None:
    clock.advance(p._ticks_to_ns(ticks))


def make() -> tuple[Pit8254, FakeClock, Line]:
    clock, irq = FakeClock(), Line()
    return Pit8254(irq0=irq, clock=clock), clock, irq


def ctl(pit: Pit8254, value: int) -> None:
    pit.write(p.CONTROL, 1, value)


def load_word(pit: Pit8254, ch: int, value: int) -> None:
    pit.write(ch, 1, value & 0xFF)
    pit.write(ch, 1, value >> 8)


def read_word(pit: Pit8254, ch: int) -> int:
    lo = pit.read(ch, 1)
    return lo | (pit.read(ch, 1) << 8)


def run_until(pit: Pit8254, clock: FakeClock, end: int) -> None:
    """What the VMM's timer service does: sleep to each deadline, then tick."""
    while (d := pit.next_deadline()) is not None and d <= end:
        clock.now = max(clock.now, d)
        pit.tick(clock.now)
    clock.now = max(clock.now, end)


def test_pit_mode2_period_matches_divisor() -> None:
    pit, clock, irq = make()
    ctl(pit, 0x34)  # channel 0, LSB/MSB, mode 2
    divisor = 1193  # ~1 kHz, as Linux programs for HZ=1000
    t0 = clock.now
    load_word(pit, 0, divisor)
    first = pit.next_deadline()
    assert first == t0 + p._ticks_to_ns(divisor)
    run_until(pit, clock, t0 + p._ticks_to_ns(divisor * 10))
    assert irq.raised == 10
    assert irq.levels == [True, False] * 10  # pulses, for an edge-triggered PIC
    assert pit.next_deadline() == t0 + p._ticks_to_ns(divisor * 11)


def test_periodic_late_ticks_are_coalesced() -> None:
    pit, clock, irq = make()
    ctl(pit, 0x34)
    load_word(pit, 0, 1000)
    start = clock.now
    clock.now = start + p._ticks_to_ns(10500)  # host slept through ten periods
    pit.tick(clock.now)
    assert irq.raised == 1
    assert pit.missed_irqs == 9
    assert pit.next_deadline() == start + p._ticks_to_ns(11000)


def test_a_period_under_200_us_is_delivered_every_200_us_as_kvm_does() -> None:
    pit, clock, irq = make()
    ctl(pit, 0x34)
    load_word(pit, 0, 2)  # 1.7 us: a hostile guest's interrupt storm
    start = clock.now
    run_until(pit, clock, start + 1_000_000)
    assert irq.raised == 5  # 1 ms: the first edge, then one every 200 us
    assert pit.missed_irqs > 400  # the edges in between were coalesced
    before = read_word(pit, 0)
    assert before in (1, 2)  # the counter itself still runs at the programmed rate


def test_tick_before_deadline_does_nothing() -> None:
    pit, _, irq = make()
    ctl(pit, 0x34)
    load_word(pit, 0, 1000)
    deadline = pit.next_deadline()
    assert deadline is not None
    pit.tick(deadline - 1)
    assert irq.raised == 0


def test_mode0_fires_once_at_terminal_count() -> None:
    pit, clock, irq = make()
    ctl(pit, 0x30)  # channel 0, LSB/MSB, mode 0: Linux's one-shot clockevent
    load_word(pit, 0, 500)
    run_until(pit, clock, clock.now + p._ticks_to_ns(5000))
    assert irq.raised == 1
    assert pit.next_deadline() is None
    load_word(pit, 0, 10)  # re-arm
    run_until(pit, clock, clock.now + p._ticks_to_ns(20))
    assert irq.raised == 2


def test_no_deadline_until_count_written() -> None:
    pit, _, _ = make()
    assert pit.next_deadline() is None
    ctl(pit, 0x34)
    pit.write(0, 1, 0x10)  # only the LSB so far
    assert pit.next_deadline() is None


def test_mode0_status_out_low_while_counting_then_high() -> None:
    pit, clock, _ = make()
    ctl(pit, 0x30)
    ctl(pit, 0xE2)  # read-back status of channel 0
    status = pit.read(0, 1)
    assert status & p.STATUS_NULL_COUNT
    assert not status & p.STATUS_OUT
    assert status & 0x3F == 0x30
    load_word(pit, 0, 100)
    ctl(pit, 0xE2)
    status = pit.read(0, 1)
    assert not status & (p.STATUS_OUT | p.STATUS_NULL_COUNT)
    advance_ticks(clock, 100)
    ctl(pit, 0xE2)
    assert pit.read(0, 1) & p.STATUS_OUT


def test_counter_counts_down_at_pit_frequency() -> None:
    pit, clock, _ = make()
    ctl(pit, 0x30)
    load_word(pit, 0, 0xFFFF)
    advance_ticks(clock, 1000)
    ctl(pit, 0x00)  # latch channel 0
    assert read_word(pit, 0) == 0xFFFF - 1000


def test_latched_count_is_frozen_until_read() -> None:
    pit, clock, _ = make()
    ctl(pit, 0x34)
    load_word(pit, 0, 50000)
    advance_ticks(clock, 100)
    ctl(pit, 0x00)
    advance_ticks(clock, 100)
    ctl(pit, 0x00)  # a second latch before reading is ignored
    assert read_word(pit, 0) == 50000 - 100
    assert read_word(pit, 0) == 50000 - 200  # live again


def test_lsb_only_and_msb_only_access() -> None:
    pit, clock, _ = make()
    ctl(pit, 0x10)  # channel 0, LSB only, mode 0
    pit.write(0, 1, 200)
    advance_ticks(clock, 50)
    assert pit.read(0, 1) == 150
    ctl(pit, 0x20)  # MSB only
    pit.write(0, 1, 0x12)
    ctl(pit, 0x00)
    assert pit.read(0, 1) == 0x12


def test_bcd_count() -> None:
    pit, clock, _ = make()
    ctl(pit, 0x31)  # mode 0, BCD
    load_word(pit, 0, 0x1234)
    advance_ticks(clock, 34)
    ctl(pit, 0x00)
    assert read_word(pit, 0) == 0x1200
    ctl(pit, 0x35)  # mode 2 BCD, count 0 means 10000
    load_word(pit, 0, 0x0000)
    assert pit.next_deadline() == clock.now + p._ticks_to_ns(10000)


def test_count_zero_means_65536() -> None:
    pit, clock, _ = make()
    ctl(pit, 0x34)
    load_word(pit, 0, 0)
    assert pit.next_deadline() == clock.now + p._ticks_to_ns(0x10000)


def test_readback_status_then_count() -> None:
    pit, clock, _ = make()
    ctl(pit, 0x74)  # channel 1, LSB/MSB, mode 2
    load_word(pit, 1, 1000)
    advance_ticks(clock, 10)
    ctl(pit, 0xC4)  # read-back count and status of channel 1
    status = pit.read(1, 1)
    assert status & 0x3F == 0x34
    assert status & p.STATUS_OUT
    assert read_word(pit, 1) == 990


def test_mode3_square_wave_out_and_period() -> None:
    pit, clock, irq = make()
    ctl(pit, 0x36)  # channel 0, mode 3 (Linux's classic setting)
    load_word(pit, 0, 1000)
    ch = pit.channels[0]
    t0 = clock.now
    assert ch.out(t0 + p._ticks_to_ns(100))
    assert not ch.out(t0 + p._ticks_to_ns(600))
    run_until(pit, clock, t0 + p._ticks_to_ns(3000))
    assert irq.raised == 3


def test_mode4_strobe_once() -> None:
    pit, clock, irq = make()
    ctl(pit, 0x38)
    load_word(pit, 0, 10)
    ch = pit.channels[0]
    assert ch.out(clock.now)
    assert not ch.out(clock.now + p._ticks_to_ns(10))
    run_until(pit, clock, clock.now + p._ticks_to_ns(100))
    assert irq.raised == 1


def test_port61_gate_starts_channel2_and_out2_reads_back() -> None:
    """Linux's PIT TSC calibration: gate on, speaker off, mode 0, wait for OUT2."""
    pit, clock, _ = make()
    port = pit.port61
    port.write(0, 1, (port.read(0, 1) & ~0x02) | 0x01)
    ctl(pit, 0xB0)  # channel 2, LSB/MSB, mode 0
    load_word(pit, 2, 1000)
    assert not port.read(0, 1) & p.P61_OUT2
    advance_ticks(clock, 999)
    assert not port.read(0, 1) & p.P61_OUT2
    advance_ticks(clock, 1)
    assert port.read(0, 1) & p.P61_OUT2
    assert port.read(0, 1) & 0x03 == 0x01


def test_channel2_gate_low_pauses_mode0() -> None:
    pit, clock, _ = make()
    port = pit.port61
    ctl(pit, 0xB0)
    load_word(pit, 2, 1000)
    assert read_word(pit, 2) == 1000  # gate low: not counting
    port.write(0, 1, 0x01)
    advance_ticks(clock, 100)
    port.write(0, 1, 0x00)
    advance_ticks(clock, 500)
    assert read_word(pit, 2) == 900
    port.write(0, 1, 0x01)
    advance_ticks(clock, 50)
    assert read_word(pit, 2) == 850


def test_mode1_one_shot_triggered_by_gate_edge() -> None:
    pit, clock, _ = make()
    port = pit.port61
    ctl(pit, 0xB2)  # channel 2 mode 1
    load_word(pit, 2, 100)
    advance_ticks(clock, 500)
    assert port.read(0, 1) & p.P61_OUT2  # untriggered: high
    port.write(0, 1, 0x01)
    assert not port.read(0, 1) & p.P61_OUT2
    advance_ticks(clock, 100)
    assert port.read(0, 1) & p.P61_OUT2


def test_port61_refresh_bit_toggles_with_time() -> None:
    pit, clock, _ = make()
    clock.now = 0
    first = pit.port61.read(0, 1) & p.P61_REFRESH
    clock.now += p.REFRESH_PERIOD_NS
    assert pit.port61.read(0, 1) & p.P61_REFRESH != first


def test_control_word_reprogramming_cancels_deadline() -> None:
    pit, _, _ = make()
    ctl(pit, 0x34)
    load_word(pit, 0, 100)
    assert pit.next_deadline() is not None
    ctl(pit, 0x30)
    assert pit.next_deadline() is None


def test_bad_accesses_do_not_raise() -> None:
    pit, _, _ = make()
    assert pit.read(p.CONTROL, 1) == 0xFF
    assert pit.read(0, 2) == 0xFFFF
    pit.write(7, 1, 0)


def test_state_round_trip_keeps_phase_across_clocks() -> None:
    pit, clock, _ = make()
    ctl(pit, 0x34)
    load_word(pit, 0, 1000)
    advance_ticks(clock, 250)
    st = pit.state()
    other = FakeClock(start=5_000_000_000)
    irq = Line()
    copy = Pit8254.from_state(st, irq0=irq, clock=other)
    ctl(copy, 0x00)
    assert read_word(copy, 0) == 750
    deadline = copy.next_deadline()
    assert deadline is not None
    assert abs(deadline - (other.now + p._ticks_to_ns(750))) <= 2
    run_until(copy, other, deadline)
    assert irq.raised == 1


def test_from_state_rejects_garbage() -> None:
    with pytest.raises(DeviceError):
        Pit8254.from_state({"channels": []})
    with pytest.raises(DeviceError):
        Pit8254.from_state(p.PitState(channels=[]))
    with pytest.raises(DeviceError):
        Pit8254.from_state(p.PitState(channels=[p.PitChannelState(count=0)] * 3))


def test_pit_irq0_pulses_reach_the_cpu_through_the_pic() -> None:
    from kvmlite.devices.pic import Pic8259Pair

    pic = Pic8259Pair()
    clock = FakeClock()
    pit = Pit8254(irq0=lambda level: pic.set_irq(0, level), clock=clock)
    for chip, base, icw3 in ((pic.master, 0x20, 0x04), (pic.slave, 0x28, 0x02)):
        for port, value in ((0, 0x11), (1, base), (1, icw3), (1, 0x01), (1, 0x00)):
            chip.write(port, 1, value)
    ctl(pit, 0x34)
    load_word(pit, 0, 11932)  # 100 Hz
    vectors = []
    for _ in range(3):
        run_until(pit, clock, pit.next_deadline() or 0)
        assert pic.has_interrupt()
        vectors.append(pic.acknowledge())
        pic.master.write(0, 1, 0x20)  # EOI
        assert not pic.has_interrupt()
    assert vectors == [0x20, 0x20, 0x20]


def test_pit_implements_the_device_protocols() -> None:
    from kvmlite.devices.base import Device, Snapshottable, TimedDevice

    pit = Pit8254()
    assert isinstance(pit, TimedDevice) and isinstance(pit, Snapshottable)
    assert isinstance(pit, Device) and isinstance(pit.port61, Device)


def test_mode_6_and_7_behave_as_2_and_3_but_status_echoes_them() -> None:
    pit, clock, irq = make()
    ctl(pit, 0x3C)  # channel 0, LSB/MSB, mode 6 (= 2)
    load_word(pit, 0, 1000)
    ctl(pit, 0xE2)
    assert pit.read(0, 1) & 0x3F == 0x3C
    run_until(pit, clock, clock.now + p._ticks_to_ns(3000))
    assert irq.raised == 3
