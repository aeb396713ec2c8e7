"""The 8254 programmable interval timer (ports 0x40-0x43) and system control port B (0x61).

Nothing here ticks.  Each counter remembers when it started counting, and its
count and OUT level are computed from the injected monotonic clock whenever
the guest looks, at the 8254's input frequency of 1 193 182 Hz.  Channel 0's
OUT drives IRQ 0; the VMM learns when the next rising edge falls due from
:meth:`Pit8254.next_deadline` and calls :meth:`Pit8254.tick` at or after that
moment, which pulses ``irq0`` (the PIC latches edges).

Late ticks are coalesced: if the host wakes up after several periods of a
periodic mode have passed, the guest gets *one* interrupt and the next
deadline is the next period boundary after ``now``.  Flooding the guest with
the missed interrupts in a burst would not make its clock right (Linux keeps
time from the TSC or by reading the counter) and would stall it handling
them; the number of coalesced edges is kept in :attr:`Pit8254.missed_irqs`.

Modes follow the Intel 82C54 data sheet: 0 interrupt on terminal count,
1 hardware one-shot, 2 rate generator, 3 square wave, 4 software strobe,
5 hardware strobe.  Channel 2's gate is bit 0 of port 0x61; channels 0 and 1
have their gates tied high, so modes 1 and 5 never start there, as on a PC.
Known simplifications: a new count written in modes 2 and 3 takes effect at
once rather than at the end of the current period, and mode 3 with an odd
count is treated as if the count were even when reading it back.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from kvmlite.devices.base import (
    MIN_PERIODIC_NS,
    Clock,
    DeviceState,
    IrqLine,
    checked_state,
    monotonic_ns,
    no_irq,
    state_from_attrs,
    warn_once,
)
from kvmlite.errors import DeviceError

log = logging.getLogger(__name__)

PIT_FREQ_HZ = 1_193_182
NS_PER_S = 1_000_000_000

# Offsets (ports 0x40-0x43)
CHANNEL0 = 0
CHANNEL1 = 1
CHANNEL2 = 2
CONTROL = 3
NUM_CHANNELS = 3

# Control word fields
CW_SC_SHIFT = 6  # counter select; 3 = read-back
CW_RW_SHIFT = 4  # 0 = counter latch, 1 = LSB, 2 = MSB, 3 = LSB then MSB
CW_MODE_SHIFT = 1
CW_BCD = 0x01
SC_READBACK = 3
RW_LATCH = 0
RW_LSB = 1
RW_MSB = 2
RW_WORD = 3

# Read-back command (SC = 3)
RB_NOT_COUNT = 0x20  # 0 = latch count
RB_NOT_STATUS = 0x10  # 0 = latch status
RB_SELECT_SHIFT = 1  # bits 1-3 select counters 0-2

# Status byte
STATUS_OUT = 0x80
STATUS_NULL_COUNT = 0x40

# Port 0x61 (system control port B) bits
P61_GATE2 = 0x01
P61_SPEAKER = 0x02
P61_PARITY_DISABLE = 0x04
P61_IOCHK_DISABLE = 0x08
P61_REFRESH = 0x10
P61_OUT2 = 0x20
P61_WRITABLE = 0x0F
#: DRAM refresh request period (PIT channel 1, count 18) that toggles bit 4.
REFRESH_PERIOD_NS = 15_085


def _ticks_to_ns(ticks: int) -> int:
    """Time for ``ticks`` counter clocks, rounded up so the tick has surely happened."""
    return -(-ticks * NS_PER_S // PIT_FREQ_HZ)


def _from_bcd(value: int) -> int:
    return sum(((value >> (4 * i)) & 0xF) * 10**i for i in range(4))


def _to_bcd(value: int) -> int:
    return sum(((value // 10**i) % 10) << (4 * i) for i in range(4))


@dataclass
class PitChannelState(DeviceState):
    """One counter: its programming, count, latches and byte pointers, and how far it has
    counted (``elapsed_ns`` since it was loaded, so it resumes in phase on another clock)."""

    mode: int = 0
    mode_bits: int = 0
    bcd: bool = False
    rw: int = RW_WORD
    count: int = 0x10000
    armed: bool = False
    triggered: bool = False
    frozen_ticks: int | None = None
    gate: bool = True
    null_count: bool = True
    latched_count: int | None = None
    latched_bytes: int = 0
    latched_status: int | None = None
    read_msb_next: bool = False
    write_msb_next: bool = False
    write_lsb: int = 0
    elapsed_ns: int = 0


@dataclass
class PitState(DeviceState):
    """The three counters, port 0x61's writable bits, and the last channel 0 edge delivered."""

    channels: list[PitChannelState] = field(
        default_factory=lambda: [PitChannelState(), PitChannelState(), PitChannelState(gate=False)]
    )
    speaker: bool = False
    port61_bits: int = 0
    irq_after_ticks: int = 0


class PitChannel:
    """One 8254 counter."""

    def __init__(self, index: int, gate: bool) -> None:
        self.index = index
        self.mode = 0
        self.mode_bits = 0  # as written in the control word
        self.bcd = False
        self.rw = RW_WORD
        self.count = 0x10000  # reload value in counter clocks (0 programs the maximum)
        self.armed = False  # a count has been written since the control word
        self.triggered = False  # modes 1 and 5: the gate rose since arming
        self.start_ns = 0
        self.frozen_ticks: int | None = None  # elapsed ticks while the gate holds counting
        self.gate = gate
        self.null_count = True
        self.latched_count: int | None = None
        self.latched_bytes = 0  # bytes of latched_count still to read (LSB first for RW_WORD)
        self.latched_status: int | None = None
        self.read_msb_next = False
        self.write_msb_next = False
        self.write_lsb = 0
        self._warned: set[str] = set()

    # ---------------------------------------------------------------- time

    def elapsed(self, now: int) -> int | None:
        """Counter clocks since counting started, or None while not counting."""
        if not self.armed or (self.mode in (1, 5) and not self.triggered):
            return None
        if self.frozen_ticks is not None:
            return self.frozen_ticks
        return max(0, (now - self.start_ns) * PIT_FREQ_HZ // NS_PER_S)

    def out(self, now: int) -> bool:
        d = self.elapsed(now)
        n = self.count
        if d is None:
            return self.mode != 0
        if self.mode == 0:
            return d >= n
        if self.mode == 1:
            return d >= n
        if self.mode == 2:
            return self.frozen_ticks is not None or d % n != n - 1
        if self.mode == 3:
            return self.frozen_ticks is not None or d % n < (n + 1) // 2
        return d != n  # modes 4 and 5: one low clock at terminal count

    def value(self, now: int) -> int:
        """The counting element as the guest reads it (binary or BCD)."""
        d = self.elapsed(now)
        n = self.count
        modulus = 10000 if self.bcd else 0x10000
        if d is None:
            v = n
        elif self.mode in (2,):
            v = n - d % n
        elif self.mode == 3:
            v = n - (2 * d) % n
        else:
            v = n - d
        v %= modulus
        return _to_bcd(v) if self.bcd else v

    def next_edge_ticks(self, after: int) -> int | None:
        """Counter clock of the first rising OUT edge strictly after ``after`` ticks, or None."""
        n = self.count
        if self.mode in (2, 3):
            return (after // n + 1) * n
        if self.mode == 0:
            return n if after < n else None
        if self.mode in (4, 5):
            return n + 1 if after < n + 1 else None
        return None  # mode 1: its rising edge ends the one-shot; never on channel 0

    # ---------------------------------------------------------------- registers

    def status(self, now: int) -> int:
        # The status echoes the mode bits exactly as written (6 and 7 included).
        value = (self.rw << CW_RW_SHIFT) | (self.mode_bits << CW_MODE_SHIFT) | (CW_BCD if self.bcd else 0)
        if self.out(now):
            value |= STATUS_OUT
        if self.null_count:
            value |= STATUS_NULL_COUNT
        return value

    def control(self, rw: int, mode_bits: int, bcd: bool) -> None:
        self.rw = rw
        self.mode_bits = mode_bits
        self.mode = mode_bits - 4 if mode_bits > 5 else mode_bits  # 6 and 7 are aliases of 2 and 3
        self.bcd = bcd
        self.armed = False
        self.triggered = False
        self.frozen_ticks = None
        self.null_count = True
        self.latched_count = None
        self.latched_bytes = 0
        self.latched_status = None
        self.read_msb_next = False
        self.write_msb_next = False

    def latch_count(self, now: int) -> None:
        if self.latched_count is None:  # a second latch before reading is ignored
            self.latched_count = self.value(now)
            self.latched_bytes = 2 if self.rw == RW_WORD else 1

    def latch_status(self, now: int) -> None:
        if self.latched_status is None:
            self.latched_status = self.status(now)

    def read(self, now: int) -> int:
        if self.latched_status is not None:
            value = self.latched_status
            self.latched_status = None
            return value
        if self.latched_count is not None:
            v = self.latched_count
            if self.rw == RW_MSB or (self.rw == RW_WORD and self.latched_bytes == 1):
                byte = v >> 8
            else:
                byte = v & 0xFF
            self.latched_bytes -= 1
            if self.latched_bytes <= 0:
                self.latched_count = None
            return byte & 0xFF
        v = self.value(now)
        if self.rw == RW_LSB:
            return v & 0xFF
        if self.rw == RW_MSB:
            return (v >> 8) & 0xFF
        msb = self.read_msb_next
        self.read_msb_next = not msb
        return (v >> 8) & 0xFF if msb else v & 0xFF

    def write(self, value: int, now: int) -> bool:
        """Write a count byte; return True when a full count was loaded."""
        if self.rw == RW_LSB:
            raw = value
        elif self.rw == RW_MSB:
            raw = value << 8
        elif not self.write_msb_next:
            self.write_lsb = value
            self.write_msb_next = True
            if self.mode == 0:
                # The first byte of a mode 0 count stops counting (OUT stays low).
                self.armed = False
            return False
        else:
            raw = self.write_lsb | (value << 8)
            self.write_msb_next = False
        self.load(raw, now)
        return True

    def load(self, raw: int, now: int) -> None:
        if self.bcd:
            n = _from_bcd(raw) or 10000
        else:
            n = raw or 0x10000
        if self.mode in (2, 3) and n == 1:
            msg = "pit: channel %d count 1 is illegal in mode %d; using 2"
            warn_once(log, self._warned, msg, self.index, self.mode)
            n = 2
        self.count = n
        self.armed = True
        self.null_count = False
        self.start_ns = now
        self.frozen_ticks = None
        if not self.gate and self.mode in (0, 2, 3, 4):
            self.frozen_ticks = 0

    def set_gate(self, gate: bool, now: int) -> None:
        if gate == self.gate:
            return
        if gate:
            if self.mode in (1, 5) and self.armed:
                self.triggered = True
                self.start_ns = now
            elif self.mode in (2, 3) and self.armed:
                self.frozen_ticks = None
                self.start_ns = now  # a rising gate reloads the count
            elif self.frozen_ticks is not None:
                # Modes 0 and 4 resume where they paused.
                self.start_ns = now - _ticks_to_ns(self.frozen_ticks)
                self.frozen_ticks = None
        else:
            d = self.elapsed(now)
            if d is not None and self.mode in (0, 2, 3, 4):
                self.frozen_ticks = d
        self.gate = gate

    def state(self, now: int) -> PitChannelState:
        return state_from_attrs(self, PitChannelState, elapsed_ns=now - self.start_ns)

    def load_state(self, st: PitChannelState, now: int) -> None:
        for f in dataclasses.fields(PitChannelState):
            if f.name not in ("version", "elapsed_ns"):
                setattr(self, f.name, getattr(st, f.name))
        if (
            not 0 <= int(self.mode) <= 5
            or not 0 <= int(self.mode_bits) <= 7
            or not 1 <= int(self.count) <= 0x10000
            or self.rw not in (1, 2, 3)
        ):
            raise ValueError(f"channel {self.index}: mode {self.mode} count {self.count} rw {self.rw}")
        self.start_ns = now - int(st.elapsed_ns)


class Pit8254:
    """Three 8254 counters at offsets 0-3, with ``port61`` the device for port 0x61.

    ``irq0`` is pulsed (raised then lowered) at each rising edge of channel 0's OUT.
    """

    def __init__(self, irq0: IrqLine = no_irq, clock: Clock = monotonic_ns) -> None:
        self._irq0 = irq0
        self._warned: set[str] = set()
        self._clock = clock
        self.channels = [PitChannel(0, True), PitChannel(1, True), PitChannel(2, False)]
        self.speaker = False
        self.port61_bits = 0  # writable bits 0-3 of port 0x61
        self._next_irq_ns: int | None = None
        self._irq_after_ticks = 0  # channel 0 edges up to this tick were delivered
        self.missed_irqs = 0
        self.port61 = SystemPortB(self)

    # ---------------------------------------------------------------- bus side

    def read(self, offset: int, size: int) -> int:
        if size != 1 or not 0 <= offset < NUM_CHANNELS:
            if offset == CONTROL and size == 1:
                return 0xFF  # the control word register cannot be read
            warn_once(log, self._warned, "pit: %d-byte read at offset %d ignored", size, offset)
            return (1 << (8 * size)) - 1 if 0 < size <= 8 else 0
        return self.channels[offset].read(self._clock())

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 1 or not 0 <= offset <= CONTROL:
            warn_once(
                log, self._warned, "pit: %d-byte write of %#x at offset %d ignored", size, value, offset
            )
            return
        now = self._clock()
        value &= 0xFF
        if offset == CONTROL:
            self._control(value, now)
            return
        ch = self.channels[offset]
        if ch.write(value, now) and offset == CHANNEL0:
            self._irq_after_ticks = 0
            self._schedule(now)
        elif offset == CHANNEL0 and not ch.armed:
            self._next_irq_ns = None

    def _control(self, value: int, now: int) -> None:
        sc = value >> CW_SC_SHIFT
        if sc == SC_READBACK:
            for i in range(NUM_CHANNELS):
                if value & (1 << (RB_SELECT_SHIFT + i)):
                    if not value & RB_NOT_STATUS:
                        self.channels[i].latch_status(now)
                    if not value & RB_NOT_COUNT:
                        self.channels[i].latch_count(now)
            return
        ch = self.channels[sc]
        rw = (value >> CW_RW_SHIFT) & 3
        if rw == RW_LATCH:
            ch.latch_count(now)
            return
        ch.control(rw, (value >> CW_MODE_SHIFT) & 7, bool(value & CW_BCD))
        if sc == CHANNEL0:
            self._next_irq_ns = None

    # ---------------------------------------------------------------- channel 2 / port 0x61

    def set_gate2(self, gate: bool) -> None:
        self.channels[2].set_gate(gate, self._clock())

    def out2(self) -> bool:
        return self.channels[2].out(self._clock())

    # ---------------------------------------------------------------- time

    def _schedule(self, now: int) -> None:
        ch = self.channels[0]
        d = ch.elapsed(now)
        if d is None:
            self._next_irq_ns = None
            return
        # Edges between the last delivered one and now (after a restore) fall due at once.
        edge = ch.next_edge_ticks(self._irq_after_ticks)
        self._next_irq_ns = None if edge is None else ch.start_ns + _ticks_to_ns(edge)

    def next_deadline(self) -> int | None:
        """Monotonic ns of channel 0's next rising OUT edge (IRQ 0), or None."""
        return self._next_irq_ns

    def tick(self, now: int) -> None:
        """Deliver IRQ 0 if its edge fell due; missed periods are coalesced into one pulse."""
        if self._next_irq_ns is None or now < self._next_irq_ns:
            return
        ch = self.channels[0]
        d = ch.elapsed(now)
        if d is None:
            self._next_irq_ns = None
            return
        due = ch.next_edge_ticks(self._irq_after_ticks)
        if due is not None and ch.mode in (2, 3):
            edges = (d - due) // ch.count + 1
            if edges > 1:
                self.missed_irqs += edges - 1
                log.debug("pit: %d IRQ 0 edges coalesced into one (host late)", edges - 1)
        self._irq_after_ticks = d
        self._irq0(True)
        self._irq0(False)
        edge = ch.next_edge_ticks(d)
        self._next_irq_ns = None if edge is None else ch.start_ns + _ticks_to_ns(edge)
        if self._next_irq_ns is not None and ch.mode in (2, 3) and self._next_irq_ns < now + MIN_PERIODIC_NS:
            warn_once(log, self._warned, "pit: channel 0 period under 200 us: IRQ 0 delivered every 200 us")
            self._next_irq_ns = now + MIN_PERIODIC_NS  # the edges in between are coalesced at the next tick

    # ---------------------------------------------------------------- snapshots

    def state(self) -> PitState:
        now = self._clock()
        return PitState(
            channels=[ch.state(now) for ch in self.channels],
            speaker=self.speaker,
            port61_bits=self.port61_bits,
            irq_after_ticks=self._irq_after_ticks,
        )

    @classmethod
    def from_state(cls, state: PitState, /, **injected: Any) -> Pit8254:
        """Rebuild from :meth:`state`; each counter keeps its phase against the new clock."""
        st = checked_state(state, PitState, "pit")
        pit = cls(**injected)
        now = pit._clock()
        try:
            for ch, chst in zip(pit.channels, st.channels, strict=True):
                ch.load_state(checked_state(chst, PitChannelState, f"pit channel {ch.index}"), now)
            pit.speaker = bool(st.speaker)
            pit.port61_bits = int(st.port61_bits) & P61_WRITABLE
            pit._irq_after_ticks = int(st.irq_after_ticks)
        except (TypeError, ValueError) as err:
            raise DeviceError(f"pit: invalid snapshot state: {err!r}") from err
        pit._schedule(now)
        return pit


class SystemPortB:
    """Port 0x61: channel 2 gate (bit 0), speaker enable (bit 1), refresh toggle (bit 4), OUT2 (bit 5).

    Linux calibrates the TSC against channel 2 through this port (gate on,
    speaker off, then polls OUT2), so OUT2 must follow the clock.
    """

    def __init__(self, pit: Pit8254) -> None:
        self._pit = pit
        self._warned: set[str] = set()

    def read(self, offset: int, size: int) -> int:
        if offset != 0 or size != 1:
            warn_once(log, self._warned, "port 0x61: %d-byte read at offset %d", size, offset)
            return (1 << (8 * size)) - 1 if 0 < size <= 8 else 0
        pit = self._pit
        value = pit.port61_bits
        if (pit._clock() // REFRESH_PERIOD_NS) & 1:
            value |= P61_REFRESH
        if pit.out2():
            value |= P61_OUT2
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if offset != 0 or size != 1:
            warn_once(log, self._warned, "port 0x61: %d-byte write of %#x at offset %d", size, value, offset)
            return
        pit = self._pit
        pit.port61_bits = value & P61_WRITABLE
        pit.speaker = bool(value & P61_SPEAKER)
        pit.set_gate2(bool(value & P61_GATE2))
