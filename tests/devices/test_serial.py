"""Register-level tests of the 16550A model, driven the way a guest driver would."""

from __future__ import annotations

import dataclasses

import pytest

from kvmlite.devices import serial as s
from kvmlite.devices.serial import Serial16550
from kvmlite.errors import DeviceError
from tests.devices.conftest import Line, Sink


def make(**kw: object) -> tuple[Serial16550, Line, Sink]:
    line, sink = Line(), Sink()
    return Serial16550(irq=line, out=sink, **kw), line, sink  # type: ignore[arg-type]


def rd(u: Serial16550, off: int) -> int:
    return u.read(off, 1)


def wr(u: Serial16550, off: int, value: int) -> None:
    u.write(off, 1, value)


def test_reset_state_reads_like_an_idle_16550() -> None:
    u, _, _ = make()
    assert rd(u, s.IIR) == s.IIR_NO_INT
    assert rd(u, s.LSR) == s.LSR_THRE | s.LSR_TEMT
    assert rd(u, s.IER) == 0
    assert rd(u, s.MSR) & s.MSR_LINES == s.MSR_DCD | s.MSR_DSR | s.MSR_CTS


def test_tx_byte_goes_to_out_sink() -> None:
    u, _, sink = make()
    for b in b"hi\n":
        wr(u, s.THR, b)
    assert bytes(sink.data) == b"hi\n"
    assert rd(u, s.LSR) & (s.LSR_THRE | s.LSR_TEMT) == s.LSR_THRE | s.LSR_TEMT


def test_tx_without_sink_is_discarded_quietly() -> None:
    u = Serial16550()
    wr(u, s.THR, 0x41)
    assert rd(u, s.LSR) & s.LSR_THRE


def test_divisor_latch_is_separate_from_thr_and_ier() -> None:
    u, _, sink = make()
    wr(u, s.IER, 0x05)
    wr(u, s.LCR, s.LCR_DLAB | 0x03)
    wr(u, s.DLL, 0x01)
    wr(u, s.DLM, 0x02)
    assert rd(u, s.DLL) == 0x01
    assert rd(u, s.DLM) == 0x02
    assert sink.data == b""  # the DLL write did not transmit
    wr(u, s.LCR, 0x03)
    assert rd(u, s.IER) == 0x05
    assert u.divisor == 0x0201
    assert rd(u, s.LCR) == 0x03


def test_scratch_register_holds_a_value() -> None:
    u, _, _ = make()
    for v in (0x00, 0x55, 0xAA, 0xFF):
        wr(u, s.SCR, v)
        assert rd(u, s.SCR) == v


def test_ier_keeps_only_low_four_bits_as_linux_probe_expects() -> None:
    u, _, _ = make()
    wr(u, s.IER, 0xFF)
    assert rd(u, s.IER) == 0x0F
    wr(u, s.IER, 0x00)
    assert rd(u, s.IER) == 0x00


def test_iir_reports_fifo_bits_only_when_fifos_enabled() -> None:
    u, _, _ = make()
    assert rd(u, s.IIR) & 0xC0 == 0
    wr(u, s.FCR, s.FCR_ENABLE_FIFO)
    assert rd(u, s.IIR) == 0xC1
    # 16750 detection: FCR bit 5 must not make IIR bit 5 appear, with or without DLAB.
    wr(u, s.FCR, s.FCR_ENABLE_FIFO | 0x20)
    assert rd(u, s.IIR) & 0xE0 == 0xC0
    wr(u, s.LCR, s.LCR_DLAB)
    wr(u, s.FCR, s.FCR_ENABLE_FIFO | 0x20)
    assert rd(u, s.IIR) & 0xF0 == 0xC0  # also bit 4 clear: not an NS16550A SuperIO
    wr(u, s.FCR, 0)
    assert rd(u, s.IIR) == 0x01


def test_linux_loopback_probe_reads_0x90_from_msr() -> None:
    u, _, _ = make()
    wr(u, s.MCR, s.MCR_LOOP | 0x0A)
    assert rd(u, s.MSR) & 0xF0 == 0x90


def test_loopback_modem_lines_follow_mcr_and_set_deltas() -> None:
    u, _, _ = make()
    wr(u, s.MCR, s.MCR_LOOP)
    rd(u, s.MSR)  # clear deltas from leaving the host lines
    wr(u, s.MCR, s.MCR_LOOP | s.MCR_DTR | s.MCR_RTS | s.MCR_OUT1 | s.MCR_OUT2)
    msr = rd(u, s.MSR)
    assert msr & 0xF0 == s.MSR_CTS | s.MSR_DSR | s.MSR_RI | s.MSR_DCD
    assert msr & 0x0F == s.MSR_DCTS | s.MSR_DDSR | s.MSR_DDCD  # no TERI on a rising RI
    assert rd(u, s.MSR) & 0x0F == 0  # deltas clear on read
    wr(u, s.MCR, s.MCR_LOOP | s.MCR_DTR | s.MCR_RTS | s.MCR_OUT2)
    assert rd(u, s.MSR) & 0x0F == s.MSR_TERI  # trailing edge of RI


def test_serial_loopback_echoes_tx_into_rx() -> None:
    u, _, sink = make()
    wr(u, s.MCR, s.MCR_LOOP)
    wr(u, s.THR, 0x5A)
    assert sink.data == b""
    assert rd(u, s.LSR) & s.LSR_DR
    assert rd(u, s.RBR) == 0x5A
    assert not rd(u, s.LSR) & s.LSR_DR


def test_loopback_disconnects_host_input() -> None:
    u, _, _ = make()
    wr(u, s.MCR, s.MCR_LOOP)
    assert u.rx_space() == 0
    assert u.enqueue_input(b"abc") == 0
    wr(u, s.MCR, 0)
    assert u.rx_space() == 1


def test_fifo_overflow_sets_overrun() -> None:
    u, _, _ = make()
    wr(u, s.FCR, s.FCR_ENABLE_FIFO)
    wr(u, s.MCR, s.MCR_LOOP)
    for i in range(s.FIFO_SIZE + 1):
        wr(u, s.THR, i)
    lsr = rd(u, s.LSR)
    assert lsr & s.LSR_OE
    assert not rd(u, s.LSR) & s.LSR_OE  # cleared by reading LSR
    got = [rd(u, s.RBR) for _ in range(s.FIFO_SIZE)]
    assert got == list(range(s.FIFO_SIZE))  # the FIFO kept its contents
    assert not rd(u, s.LSR) & s.LSR_DR


def test_overrun_without_fifo_after_one_byte() -> None:
    u, _, _ = make()
    wr(u, s.MCR, s.MCR_LOOP)
    wr(u, s.THR, 1)
    wr(u, s.THR, 2)
    assert rd(u, s.LSR) & (s.LSR_OE | s.LSR_DR) == s.LSR_OE | s.LSR_DR
    assert rd(u, s.RBR) == 1


def test_enqueue_input_is_limited_by_fifo_space_and_never_drops() -> None:
    u, _, _ = make()
    assert u.rx_space() == 1  # FIFOs off: a single RBR
    assert u.enqueue_input(b"xy") == 1
    assert u.enqueue_input(b"y") == 0
    assert rd(u, s.RBR) == ord("x")
    wr(u, s.FCR, s.FCR_ENABLE_FIFO)
    data = bytes(range(40))
    taken = u.enqueue_input(data)
    assert taken == s.FIFO_SIZE
    assert u.rx_space() == 0
    assert not rd(u, s.LSR) & s.LSR_OE
    assert [rd(u, s.RBR) for _ in range(taken)] == list(data[:taken])


def test_on_rx_space_called_when_guest_drains_fifo() -> None:
    calls: list[int] = []
    u = Serial16550(on_rx_space=lambda: calls.append(1))
    wr(u, s.FCR, s.FCR_ENABLE_FIFO)
    u.enqueue_input(b"ab")
    rd(u, s.RBR)
    assert calls == []
    rd(u, s.RBR)
    assert calls == [1]


def test_rbr_read_when_empty_returns_zero() -> None:
    u, _, _ = make()
    assert rd(u, s.RBR) == 0


def test_fcr_clear_receiver_empties_rx_fifo() -> None:
    u, _, _ = make()
    wr(u, s.FCR, s.FCR_ENABLE_FIFO)
    u.enqueue_input(b"abc")
    wr(u, s.FCR, s.FCR_ENABLE_FIFO | s.FCR_CLEAR_RCVR)
    assert not rd(u, s.LSR) & s.LSR_DR
    assert u.rx_space() == s.FIFO_SIZE


def test_disabling_fifos_clears_them() -> None:
    u, _, _ = make()
    wr(u, s.FCR, s.FCR_ENABLE_FIFO)
    u.enqueue_input(b"abc")
    wr(u, s.FCR, 0)
    assert not rd(u, s.LSR) & s.LSR_DR


def test_rx_interrupt_needs_ier_and_out2() -> None:
    u, line, _ = make()
    wr(u, s.IER, s.IER_RDI)
    u.enqueue_input(b"a")
    assert rd(u, s.IIR) == s.IIR_RDI
    assert not line.high  # OUT2 clear: the PC's IRQ buffer is disabled
    wr(u, s.MCR, s.MCR_OUT2)
    assert line.high
    assert rd(u, s.RBR) == ord("a")
    assert not line.high
    assert rd(u, s.IIR) == s.IIR_NO_INT


def test_rx_below_trigger_level_reports_timeout_then_data_available() -> None:
    u, _, _ = make()
    wr(u, s.FCR, s.FCR_ENABLE_FIFO | (1 << s.FCR_TRIGGER_SHIFT))  # trigger at 4
    wr(u, s.IER, s.IER_RDI)
    u.enqueue_input(b"ab")
    assert rd(u, s.IIR) == 0xC0 | s.IIR_RX_TIMEOUT
    u.enqueue_input(b"cd")
    assert rd(u, s.IIR) == 0xC0 | s.IIR_RDI
    for _ in range(4):
        rd(u, s.RBR)
    assert rd(u, s.IIR) == 0xC1


def test_enabling_thri_with_idle_transmitter_interrupts_at_once() -> None:
    """Linux's start-up test: IER=THRI, read IIR, IER=0, IER=THRI, read IIR again."""
    u, line, _ = make()
    wr(u, s.MCR, s.MCR_OUT2)
    wr(u, s.IER, s.IER_THRI)
    assert line.high
    assert rd(u, s.IIR) == s.IIR_THRI
    assert not line.high  # reading IIR cleared THRI
    assert rd(u, s.IIR) == s.IIR_NO_INT
    wr(u, s.IER, 0)
    wr(u, s.IER, s.IER_THRI)
    assert rd(u, s.IIR) == s.IIR_THRI


def test_thr_write_rearms_thri_after_iir_cleared_it() -> None:
    u, line, sink = make()
    wr(u, s.MCR, s.MCR_OUT2)
    wr(u, s.IER, s.IER_THRI)
    rd(u, s.IIR)
    assert not line.high
    wr(u, s.THR, 0x31)
    assert sink.data == b"1"
    assert line.high
    assert rd(u, s.IIR) == s.IIR_THRI


def test_disabling_thri_withdraws_the_interrupt() -> None:
    u, line, _ = make()
    wr(u, s.MCR, s.MCR_OUT2)
    wr(u, s.IER, s.IER_THRI)
    assert line.high
    wr(u, s.IER, 0)
    assert not line.high
    assert rd(u, s.IIR) == s.IIR_NO_INT


def test_iir_priority_line_status_over_data_over_thri_over_modem() -> None:
    u, _, _ = make()
    wr(u, s.MCR, s.MCR_LOOP)
    wr(u, s.IER, s.IER_MSI)
    wr(u, s.MCR, s.MCR_LOOP | s.MCR_RTS)  # DCTS delta
    assert rd(u, s.IIR) == s.IIR_MSI
    wr(u, s.IER, s.IER_MSI | s.IER_THRI)
    assert rd(u, s.IIR) == s.IIR_THRI  # and that read cleared THRI
    assert rd(u, s.IIR) == s.IIR_MSI
    wr(u, s.IER, s.IER_MASK)
    wr(u, s.THR, 1)
    wr(u, s.THR, 2)  # overrun (FIFO off)
    assert rd(u, s.IIR) == s.IIR_RLSI
    assert rd(u, s.IIR) == s.IIR_RLSI  # IIR read does not clear line status
    rd(u, s.LSR)
    assert rd(u, s.IIR) == s.IIR_RDI
    rd(u, s.RBR)
    assert rd(u, s.IIR) == s.IIR_THRI
    assert rd(u, s.IIR) == s.IIR_MSI
    rd(u, s.MSR)
    assert rd(u, s.IIR) == s.IIR_NO_INT


def test_loopback_keeps_pc_irq_line_quiet() -> None:
    u, line, _ = make()
    wr(u, s.MCR, s.MCR_OUT2 | s.MCR_LOOP)
    wr(u, s.IER, s.IER_RDI)
    wr(u, s.THR, 7)
    assert rd(u, s.IIR) == s.IIR_RDI  # internally pending
    assert not line.high
    wr(u, s.MCR, s.MCR_OUT2)  # leave loopback, data still there
    assert line.high


def test_tx_busy_holds_bytes_in_fifo_and_flushes_in_order() -> None:
    u, line, sink = make()
    wr(u, s.FCR, s.FCR_ENABLE_FIFO)
    wr(u, s.MCR, s.MCR_OUT2)
    u.set_tx_busy(True)
    wr(u, s.IER, s.IER_THRI)
    rd(u, s.IIR)
    for b in b"hello":
        wr(u, s.THR, b)
    assert sink.data == b""
    assert rd(u, s.LSR) & (s.LSR_THRE | s.LSR_TEMT) == 0
    assert not line.high
    u.set_tx_busy(False)
    assert bytes(sink.data) == b"hello"
    assert rd(u, s.LSR) & (s.LSR_THRE | s.LSR_TEMT) == s.LSR_THRE | s.LSR_TEMT
    assert line.high  # THR empty again
    assert rd(u, s.IIR) == 0xC0 | s.IIR_THRI


def test_tx_busy_keeps_bytes_written_past_a_full_fifo() -> None:
    u, _, sink = make()
    wr(u, s.FCR, s.FCR_ENABLE_FIFO)
    u.set_tx_busy(True)
    data = bytes(range(40))
    for b in data:
        wr(u, s.THR, b)
    wr(u, s.FCR, s.FCR_ENABLE_FIFO | s.FCR_CLEAR_XMIT)
    u.set_tx_busy(False)
    assert bytes(sink.data) == data


def test_wide_access_is_split_into_byte_cycles() -> None:
    u, _, _ = make()
    u.write(s.SCR - 1, 2, 0x4200)  # MSR (ignored) then SCR
    assert rd(u, s.SCR) == 0x42
    assert u.read(s.MSR, 2) >> 8 == 0x42


def test_out_of_range_offset_does_not_raise() -> None:
    u, _, _ = make()
    assert u.read(9, 1) == 0xFF
    u.write(9, 1, 0)


def test_state_round_trip_preserves_registers_and_fifos() -> None:
    u, _, _ = make()
    wr(u, s.FCR, s.FCR_ENABLE_FIFO | 0x80)
    wr(u, s.LCR, 0x83)
    wr(u, s.DLL, 3)
    wr(u, s.LCR, 0x03)
    wr(u, s.IER, s.IER_RDI)
    wr(u, s.MCR, s.MCR_OUT2 | s.MCR_DTR)
    wr(u, s.SCR, 0x99)
    u.enqueue_input(b"abc")
    u.set_tx_busy(True)
    wr(u, s.THR, ord("z"))
    line, sink = Line(), Sink()
    v = Serial16550.from_state(u.state(), irq=line, out=sink)
    assert bytes(sink.data) == b"z"  # the new host side is not busy: the TX FIFO drains
    assert v.state() == dataclasses.replace(u.state(), tx=b"")
    assert rd(v, s.LSR) & s.LSR_THRE
    assert line.high  # level re-driven for a fresh interrupt controller
    assert [rd(v, s.RBR) for _ in range(3)] == list(b"abc")
    v.set_tx_busy(False)
    assert bytes(sink.data) == b"z"


def test_state_holds_guest_visible_registers_only() -> None:
    u, _, _ = make()
    u.set_tx_busy(True)
    names = {f.name for f in dataclasses.fields(u.state())}
    assert not names & {"tx_busy", "irq_level"}
    assert {"divisor", "ier", "lcr", "mcr", "scr", "rx", "tx"} <= names


def test_from_state_rejects_garbage() -> None:
    with pytest.raises(DeviceError):
        Serial16550.from_state({"divisor": 1})
    good = Serial16550().state()
    with pytest.raises(DeviceError):
        Serial16550.from_state(dataclasses.replace(good, rx=bytes(17)))
    with pytest.raises(DeviceError):
        Serial16550.from_state(dataclasses.replace(good, version=good.version + 1))
    assert Serial16550.from_state(s.SerialState()).read(s.LSR, 1) & s.LSR_THRE  # defaults load


def test_linux_8250_autoconfig_sequence_finds_a_16550a() -> None:
    """The register dance of Linux's 8250 autoconfig(), with the answers it needs."""
    u, line, _ = make()
    # IER test: writes 0 then 0x0F and expects them back (low nibble).
    wr(u, s.IER, 0)
    assert rd(u, s.IER) & 0x0F == 0
    wr(u, s.IER, 0x0F)
    assert rd(u, s.IER) & 0x0F == 0x0F
    wr(u, s.IER, 0)
    # Loopback test: MCR = LOOP | OUT2 | RTS must read MSR status 0x90.
    save_mcr = rd(u, s.MCR)
    wr(u, s.MCR, s.MCR_LOOP | 0x0A)
    assert rd(u, s.MSR) & 0xF0 == 0x90
    wr(u, s.MCR, save_mcr)
    # FIFO probe: IIR bits 7-6 == 3 means a working 16550A FIFO.
    wr(u, s.LCR, 0)
    wr(u, s.FCR, s.FCR_ENABLE_FIFO)
    assert rd(u, s.IIR) >> 6 == 3
    # No EFR behind LCR=0xBF (that would be a 16650): offset 2 reads IIR, non-zero.
    wr(u, s.LCR, 0xBF)
    assert rd(u, s.IIR) != 0
    wr(u, s.LCR, 0)
    # Not an XScale: IER bit 6 (UUE) does not stick.
    wr(u, s.IER, 0x40)
    assert not rd(u, s.IER) & 0x40
    wr(u, s.IER, 0)
    # serial8250_do_startup: clear FIFOs, read away state, LSR must not float to 0xFF.
    wr(u, s.FCR, s.FCR_ENABLE_FIFO | s.FCR_CLEAR_RCVR | s.FCR_CLEAR_XMIT)
    assert rd(u, s.LSR) != 0xFF
    rd(u, s.RBR)
    rd(u, s.IIR)
    rd(u, s.MSR)
    wr(u, s.LCR, 0x03)
    wr(u, s.MCR, s.MCR_DTR | s.MCR_RTS | s.MCR_OUT2)
    assert not line.high  # nothing enabled yet
    assert rd(u, s.SCR) == 0


def test_on_quiet_reports_when_the_guest_enables_or_disables_every_interrupt() -> None:
    calls: list[bool] = []
    u = Serial16550(on_quiet=calls.append)
    u.write(s.IER, 1, s.IER_THRI)
    u.write(s.IER, 1, s.IER_THRI | s.IER_RDI)  # still not quiet: no call
    u.write(s.LCR, 1, s.LCR_DLAB)
    u.write(s.IER, 1, 0)  # DLM, not IER
    u.write(s.LCR, 1, 0)
    u.write(s.IER, 1, 0)
    assert calls == [False, True]


def test_register_accessors_behave_as_read_and_write() -> None:
    # The vCPU loop calls these for LSR polling and scratch writes instead of read()/write().
    u, _, _ = make()
    lsr, scr = u.register_reader(s.LSR, 1), u.register_writer(s.SCR, 1)
    assert lsr is not None and scr is not None
    assert lsr() == rd(u, s.LSR) == s.LSR_THRE | s.LSR_TEMT
    wr(u, s.FCR, s.FCR_ENABLE_FIFO)
    wr(u, s.MCR, s.MCR_LOOP)
    for i in range(s.FIFO_SIZE + 1):
        wr(u, s.THR, i)  # one byte too many: overrun
    assert lsr() & (s.LSR_OE | s.LSR_DR) == s.LSR_OE | s.LSR_DR
    assert not lsr() & s.LSR_OE  # cleared by the read, as through read()
    scr(0x1A5)
    assert rd(u, s.SCR) == 0xA5
    assert u.register_reader(s.RBR, 1) is None and u.register_reader(s.LSR, 2) is None
    assert u.register_writer(s.THR, 1) is None
