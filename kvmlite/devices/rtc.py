"""The MC146818-compatible CMOS RTC at ports 0x70 (index, offset 0) and 0x71 (data, offset 1).

Time keeping: the wall clock (``now``, seconds since the epoch, UTC as QEMU's
default ``-rtc base=utc``) is read once, when the device is built or
restored; from then on the RTC advances with the injected monotonic
``clock``, so the guest's clock neither jumps when the host's wall clock is
stepped nor drifts against the deadlines the VMM schedules.  The time
registers are rendered from that count whenever the guest reads them, in the
format register B asks for (BCD or binary, 12 or 24 hour).  While the guest
holds SET (register B bit 7), or holds the divider in reset, updates stop and
the time registers become plain bytes the guest may rewrite one by one; the
clock restarts from them when the hold ends.

Interrupt flags are computed lazily: PF, UF and AF in register C are brought
up to date whenever the guest or :meth:`CmosRtc.tick` looks, so flags set
while their interrupt is disabled are still visible to a polling guest.
IRQ 8 is a level that stays high until register C is read, like the chip's
IRQ pin; :meth:`CmosRtc.next_deadline` is None while it is high, because
nothing new can be signalled before the guest acknowledges (missed periodic
interrupts are coalesced that way).  The VMM should ask for the deadline
again after each guest access.

Also set up as a BIOS would: memory sizes (0x15-0x18, 0x30-0x31, 0x34-0x35,
0x5b-0x5d), the century byte at 0x32 (the one ACPI's FADT names) and the
standard checksum at 0x2e-0x2f.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kvmlite.devices.base import Clock, DeviceState, IrqLine, checked_state, monotonic_ns, no_irq, warn_once
from kvmlite.errors import DeviceError

log = logging.getLogger(__name__)

# Port offsets
INDEX_PORT = 0
DATA_PORT = 1
INDEX_MASK = 0x7F
NMI_DISABLE = 0x80
CMOS_SIZE = 128

# Register indices
REG_SECONDS = 0x00
REG_SECONDS_ALARM = 0x01
REG_MINUTES = 0x02
REG_MINUTES_ALARM = 0x03
REG_HOURS = 0x04
REG_HOURS_ALARM = 0x05
REG_DAY_OF_WEEK = 0x06
REG_DAY_OF_MONTH = 0x07
REG_MONTH = 0x08
REG_YEAR = 0x09
REG_A = 0x0A
REG_B = 0x0B
REG_C = 0x0C
REG_D = 0x0D
REG_BASE_MEM_LO = 0x15
REG_BASE_MEM_HI = 0x16
REG_EXT_MEM_LO = 0x17
REG_EXT_MEM_HI = 0x18
REG_CHECKSUM_HI = 0x2E
REG_CHECKSUM_LO = 0x2F
REG_EXT_MEM2_LO = 0x30
REG_EXT_MEM2_HI = 0x31
REG_CENTURY = 0x32
REG_MEM_ABOVE_16M_LO = 0x34
REG_MEM_ABOVE_16M_HI = 0x35
REG_MEM_ABOVE_4G = 0x5B  # three bytes, 0x5b-0x5d
CHECKSUM_FIRST = 0x10
CHECKSUM_LAST = 0x2D
TIME_REGS = (REG_SECONDS, REG_MINUTES, REG_HOURS, REG_DAY_OF_WEEK, REG_DAY_OF_MONTH, REG_MONTH, REG_YEAR)

# Register A
A_UIP = 0x80
A_DV_MASK = 0x70
A_DV_NORMAL = 0x20  # 32.768 kHz time base, divider running
A_RS_MASK = 0x0F
# Register B
B_SET = 0x80
B_PIE = 0x40
B_AIE = 0x20
B_UIE = 0x10
B_SQWE = 0x08
B_DM_BINARY = 0x04
B_24H = 0x02
B_DSE = 0x01
# Register C
C_IRQF = 0x80
C_PF = 0x40
C_AF = 0x20
C_UF = 0x10
# Register D
D_VRT = 0x80

HOUR_PM = 0x80
ALARM_DONT_CARE = 0xC0  # the two top bits set in an alarm byte match any value
#: UIP is raised this long before each once-a-second update.
UIP_LEAD_NS = 244_000
NS_PER_S = 1_000_000_000
TIME_BASE_HZ = 32_768
#: Leaving divider reset, the first update comes half a second later.
DIVIDER_RESTART_NS = 500_000_000

BASE_MEMORY_KB = 640
ONE_MB = 1 << 20
SIXTEEN_MB = 16 << 20
FOUR_GB = 1 << 32
BLOCK_64K = 64 << 10
#: Where RAM below 4 GiB ends by default (the rest is mapped above 4 GiB), the
#: PCI hole of QEMU's ``pc`` machine.
DEFAULT_LOW_RAM_LIMIT = 0xC000_0000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _bcd(v: int) -> int:
    return ((v // 10) << 4) | (v % 10)


def _unbcd(v: int) -> int:
    return (v >> 4) * 10 + (v & 0xF)


def periodic_period_ns(rate: int) -> int | None:
    """Period of the periodic interrupt for register A's rate-select bits, or None when off."""
    if rate == 0:
        return None
    # Rates 1 and 2 select the same taps as 8 and 9 on a 32.768 kHz base.
    shift = rate + 6 if rate < 3 else rate - 1
    return (1 << shift) * NS_PER_S // TIME_BASE_HZ


@dataclass
class RtcState(DeviceState):
    """The 128 CMOS bytes (clock registers A-D included), the index port, and the clock as an
    offset from the host's wall clock plus the periodic interrupt's phase."""

    cmos: bytes = bytes(CMOS_SIZE)
    index: int = 0
    nmi_masked: bool = False
    halted: bool = False
    rtc_minus_wall_ns: int = 0
    periodic_phase_ns: int = 0


class CmosRtc:
    """The PC's RTC and CMOS RAM.  See the module docstring for the time model."""

    def __init__(
        self,
        irq8: IrqLine = no_irq,
        memory_size: int = 0,
        *,
        now: Callable[[], float] = time.time,
        clock: Clock = monotonic_ns,
        low_ram_limit: int = DEFAULT_LOW_RAM_LIMIT,
    ) -> None:
        if memory_size < 0 or low_ram_limit <= 0:
            raise DeviceError(f"rtc: invalid memory_size {memory_size} / low_ram_limit {low_ram_limit}")
        self._irq8 = irq8
        self._warned: set[str] = set()
        self._now = now
        self._clock = clock
        self._irq_level = False
        self.cmos = bytearray(CMOS_SIZE)
        self.index = 0
        self.nmi_masked = False
        self.cmos[REG_A] = A_DV_NORMAL | 0x06  # 1024 Hz, what a BIOS leaves
        self.cmos[REG_B] = B_24H
        self.cmos[REG_D] = D_VRT
        mono = clock()
        self._base_mono = mono
        self._base_rtc_ns = int(now() * NS_PER_S)
        self._halted = False
        self._halted_rtc_ns = 0
        self._update_checked_ns = self._base_rtc_ns  # rtc ns up to which UF/AF are computed
        self._periodic_anchor = mono
        self._periodic_checked = mono
        self._set_memory_size(memory_size, low_ram_limit)

    # ---------------------------------------------------------------- BIOS data

    def _set_memory_size(self, size: int, low_limit: int) -> None:
        c = self.cmos
        c[REG_BASE_MEM_LO], c[REG_BASE_MEM_HI] = BASE_MEMORY_KB & 0xFF, BASE_MEMORY_KB >> 8
        ext_kb = min(max(size - ONE_MB, 0) // 1024, 0xFFFF)
        for lo in (REG_EXT_MEM_LO, REG_EXT_MEM2_LO):
            c[lo], c[lo + 1] = ext_kb & 0xFF, ext_kb >> 8
        low = min(size, low_limit, FOUR_GB)
        above_16m = min(max(low - SIXTEEN_MB, 0) // BLOCK_64K, 0xFFFF)
        c[REG_MEM_ABOVE_16M_LO], c[REG_MEM_ABOVE_16M_HI] = above_16m & 0xFF, above_16m >> 8
        high = min(max(size - low, 0) // BLOCK_64K, 0xFFFFFF)
        for i in range(3):
            c[REG_MEM_ABOVE_4G + i] = (high >> (8 * i)) & 0xFF
        self._update_checksum()

    def _update_checksum(self) -> None:
        total = sum(self.cmos[CHECKSUM_FIRST : CHECKSUM_LAST + 1])
        self.cmos[REG_CHECKSUM_HI], self.cmos[REG_CHECKSUM_LO] = (total >> 8) & 0xFF, total & 0xFF

    # ---------------------------------------------------------------- time

    def _rtc_ns(self, mono: int) -> int:
        return self._base_rtc_ns + (mono - self._base_mono)

    def _mono_of(self, rtc_ns: int) -> int:
        return self._base_mono + (rtc_ns - self._base_rtc_ns)

    @property
    def binary(self) -> bool:
        return bool(self.cmos[REG_B] & B_DM_BINARY)

    def _enc(self, v: int) -> int:
        return v if self.binary else _bcd(v)

    def _dec(self, v: int) -> int:
        return v if self.binary else _unbcd(v)

    def _enc_hour(self, hour: int) -> int:
        if self.cmos[REG_B] & B_24H:
            return self._enc(hour)
        return self._enc(hour % 12 or 12) | (HOUR_PM if hour >= 12 else 0)

    def _dec_hour(self, v: int) -> int:
        if self.cmos[REG_B] & B_24H:
            return self._dec(v & 0x7F)
        return self._dec(v & 0x7F) % 12 + (12 if v & HOUR_PM else 0)

    def _render(self, seconds: int) -> None:
        """Write the time registers and century byte for ``seconds`` since the epoch."""
        dt = _EPOCH + timedelta(seconds=seconds)
        c = self.cmos
        c[REG_SECONDS] = self._enc(dt.second)
        c[REG_MINUTES] = self._enc(dt.minute)
        c[REG_HOURS] = self._enc_hour(dt.hour)
        c[REG_DAY_OF_WEEK] = self._enc((dt.weekday() + 1) % 7 + 1)  # 1 = Sunday
        c[REG_DAY_OF_MONTH] = self._enc(dt.day)
        c[REG_MONTH] = self._enc(dt.month)
        c[REG_YEAR] = self._enc(dt.year % 100)
        c[REG_CENTURY] = self._enc(dt.year // 100)

    def _decode(self) -> int | None:
        """Seconds since the epoch from the time registers, or None if they hold no valid date."""
        c = self.cmos
        try:
            century = self._dec(c[REG_CENTURY])
            if not 19 <= century <= 99:
                century = 20
            dt = datetime(
                century * 100 + self._dec(c[REG_YEAR]),
                self._dec(c[REG_MONTH]),
                self._dec(c[REG_DAY_OF_MONTH]),
                self._dec_hour(c[REG_HOURS]),
                self._dec(c[REG_MINUTES]),
                self._dec(c[REG_SECONDS]),
                tzinfo=UTC,
            )
        except ValueError as err:
            warn_once(log, self._warned, "rtc: guest set an invalid date (%s); old time kept", err)
            return None
        return (dt - _EPOCH) // timedelta(seconds=1)

    def _running(self) -> bool:
        return not self._halted

    def _halt(self, now: int) -> None:
        if not self._halted:
            self._advance(now)
            self._halted_rtc_ns = self._rtc_ns(now)
            self._render(self._halted_rtc_ns // NS_PER_S)
            self._halted = True

    def _resume(self, now: int, fraction_ns: int = 0) -> None:
        if self._halted:
            seconds = self._decode()
            self._halted = False
            if seconds is not None:
                self._base_rtc_ns = seconds * NS_PER_S + fraction_ns
            else:
                self._base_rtc_ns = self._halted_rtc_ns  # continue from where the clock stopped
            self._base_mono = now
            self._update_checked_ns = self._base_rtc_ns

    def _should_halt(self) -> bool:
        return bool(self.cmos[REG_B] & B_SET) or (self.cmos[REG_A] & A_DV_MASK) != A_DV_NORMAL

    # ---------------------------------------------------------------- alarm

    def _alarm_fields(self) -> tuple[int | None, int | None, int | None]:
        def field(v: int, hour: bool = False) -> int | None:
            if v & ALARM_DONT_CARE == ALARM_DONT_CARE:
                return None
            return self._dec_hour(v) if hour else self._dec(v)

        c = self.cmos
        return (
            field(c[REG_HOURS_ALARM], hour=True),
            field(c[REG_MINUTES_ALARM]),
            field(c[REG_SECONDS_ALARM]),
        )

    def next_alarm(self, after: int) -> int | None:
        """The first whole second strictly after ``after`` at which the alarm matches, or None."""
        ah, am, asec = self._alarm_fields()
        if (ah is not None and not 0 <= ah < 24) or (am is not None and not 0 <= am < 60):
            return None
        if asec is not None and not 0 <= asec < 60:
            return None
        start = after + 1
        minute0 = start - start % 60
        for i in range(24 * 60 + 1):
            m_start = minute0 + 60 * i
            hour = (m_start // 3600) % 24
            minute = (m_start // 60) % 60
            if (ah is not None and hour != ah) or (am is not None and minute != am):
                continue
            first = start - m_start if i == 0 else 0
            if asec is None:
                return m_start + first
            if asec >= first:
                return m_start + asec
        return None

    # ---------------------------------------------------------------- flags and IRQ

    def _advance(self, now: int) -> None:
        """Bring PF, UF and AF up to ``now`` (monotonic ns)."""
        c = self.cmos
        period = periodic_period_ns(c[REG_A] & A_RS_MASK)
        if period is not None and (c[REG_A] & A_DV_MASK) == A_DV_NORMAL and now > self._periodic_checked:
            anchor = self._periodic_anchor
            if (now - anchor) // period > (self._periodic_checked - anchor) // period:
                c[REG_C] |= C_PF
        self._periodic_checked = max(now, self._periodic_checked)
        if self._running():
            rtc = self._rtc_ns(now)
            last = self._update_checked_ns
            if rtc // NS_PER_S > last // NS_PER_S:
                c[REG_C] |= C_UF
                alarm = self.next_alarm(last // NS_PER_S)
                if alarm is not None and alarm <= rtc // NS_PER_S:
                    c[REG_C] |= C_AF
            self._update_checked_ns = max(rtc, last)

    def _update_irq(self, now: int) -> None:
        """IRQF (and the IRQ pin) = any flag whose interrupt is enabled, as on the MC146818."""
        self._advance(now)
        c = self.cmos
        irqf = bool((c[REG_B] & (B_PIE | B_AIE | B_UIE)) & (c[REG_C] & (C_PF | C_AF | C_UF)))
        c[REG_C] = (c[REG_C] & ~C_IRQF) | (C_IRQF if irqf else 0)
        if irqf != self._irq_level:
            self._irq_level = irqf
            self._irq8(irqf)

    def next_deadline(self) -> int | None:
        """Monotonic ns of the next periodic, update-ended or alarm interrupt, or None."""
        if self._irq_level:
            return None
        c = self.cmos
        b = c[REG_B]
        candidates: list[int] = []
        period = periodic_period_ns(c[REG_A] & A_RS_MASK)
        if b & B_PIE and period is not None and (c[REG_A] & A_DV_MASK) == A_DV_NORMAL:
            k = (self._periodic_checked - self._periodic_anchor) // period + 1
            candidates.append(self._periodic_anchor + k * period)
        if self._running() and b & (B_UIE | B_AIE):
            rtc_s = self._update_checked_ns // NS_PER_S
            if b & B_UIE:
                candidates.append(self._mono_of((rtc_s + 1) * NS_PER_S))
            if b & B_AIE:
                alarm = self.next_alarm(rtc_s)
                if alarm is not None:
                    candidates.append(self._mono_of(alarm * NS_PER_S))
        if not candidates:
            return None
        # A deadline already past (the flag is due but not yet noticed) is
        # returned as is: the caller ticks at once.
        return min(candidates)

    def tick(self, now: int) -> None:
        self._update_irq(now)

    @property
    def irq_level(self) -> bool:
        return self._irq_level

    # ---------------------------------------------------------------- registers

    def read(self, offset: int, size: int) -> int:
        if size != 1 or offset not in (INDEX_PORT, DATA_PORT):
            warn_once(log, self._warned, "rtc: %d-byte read at offset %d", size, offset)
            return (1 << (8 * size)) - 1 if 0 < size <= 8 else 0
        if offset == INDEX_PORT:
            return 0xFF  # the index register is write-only
        return self.read_register(self.index)

    def read_register(self, index: int) -> int:
        """The value the guest reads from CMOS location ``index`` (with its side effects)."""
        now = self._clock()
        c = self.cmos
        if index in TIME_REGS or index == REG_CENTURY:
            if self._running():
                self._render(self._rtc_ns(now) // NS_PER_S)
            return c[index]
        if index == REG_A:
            value = c[REG_A] & ~A_UIP
            if self._running() and self._rtc_ns(now) % NS_PER_S >= NS_PER_S - UIP_LEAD_NS:
                value |= A_UIP
            return value
        if index == REG_C:
            self._advance(now)
            value = c[REG_C]
            c[REG_C] = 0
            if self._irq_level:
                self._irq_level = False
                self._irq8(False)
            return value
        return c[index]

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 1 or offset not in (INDEX_PORT, DATA_PORT):
            warn_once(
                log, self._warned, "rtc: %d-byte write of %#x at offset %d ignored", size, value, offset
            )
            return
        value &= 0xFF
        if offset == INDEX_PORT:
            self.index = value & INDEX_MASK
            self.nmi_masked = bool(value & NMI_DISABLE)
            return
        self.write_register(self.index, value)

    def write_register(self, index: int, value: int) -> None:
        now = self._clock()
        c = self.cmos
        if index in TIME_REGS or index == REG_CENTURY:
            if self._halted:
                c[index] = value
                return
            # Set one field of a running clock, keeping the sub-second phase.
            rtc = self._rtc_ns(now)
            self._advance(now)
            self._render(rtc // NS_PER_S)
            c[index] = value
            seconds = self._decode()
            if seconds is not None:
                self._base_rtc_ns = seconds * NS_PER_S + rtc % NS_PER_S
                self._base_mono = now
                self._update_checked_ns = self._base_rtc_ns
            return
        if index == REG_A:
            old = c[REG_A]
            self._advance(now)
            was_halted = self._should_halt()
            c[REG_A] = value & ~A_UIP
            if (value ^ old) & A_RS_MASK:
                self._periodic_anchor = self._periodic_checked = now
            if not was_halted and self._should_halt():
                self._halt(now)
            elif was_halted and not self._should_halt():
                leaving_reset = (old & A_DV_MASK) != A_DV_NORMAL
                self._resume(now, DIVIDER_RESTART_NS if leaving_reset else 0)
            self._update_irq(now)
            return
        if index == REG_B:
            self._advance(now)
            was_halted = self._should_halt()
            if value & B_SET:
                value &= ~B_UIE  # setting SET clears UIE on the MC146818
            c[REG_B] = value
            if not was_halted and self._should_halt():
                self._halt(now)
            elif was_halted and not self._should_halt():
                self._resume(now)
            self._update_irq(now)
            return
        if index in (REG_C, REG_D):
            log.debug("rtc: write %#x to read-only register %#x ignored", value, index)
            return
        c[index] = value

    # ---------------------------------------------------------------- snapshots

    def state(self) -> RtcState:
        now = self._clock()
        self._advance(now)
        if self._halted:
            rtc_minus_wall = 0
        else:
            rtc_minus_wall = self._rtc_ns(now) - int(self._now() * NS_PER_S)
        return RtcState(
            cmos=bytes(self.cmos),
            index=self.index,
            nmi_masked=self.nmi_masked,
            halted=self._halted,
            rtc_minus_wall_ns=rtc_minus_wall,
            periodic_phase_ns=now - self._periodic_anchor,
        )

    @classmethod
    def from_state(cls, state: RtcState, /, **injected: Any) -> CmosRtc:
        """Rebuild from :meth:`state`; the clock keeps its offset from the host's wall clock, and
        IRQ 8 is driven high again if register C says an interrupt is pending."""
        st = checked_state(state, RtcState, "rtc")
        rtc = cls(**injected)
        now = rtc._clock()
        try:
            cmos = bytes(st.cmos)
            if len(cmos) != CMOS_SIZE:
                raise ValueError(f"cmos is {len(cmos)} bytes, not {CMOS_SIZE}")
            rtc.cmos[:] = cmos
            rtc.index = int(st.index) & INDEX_MASK
            rtc.nmi_masked = bool(st.nmi_masked)
            rtc._halted = bool(st.halted)
            rtc._base_mono = now
            rtc._base_rtc_ns = int(rtc._now() * NS_PER_S) + int(st.rtc_minus_wall_ns)
            rtc._update_checked_ns = rtc._base_rtc_ns
            rtc._periodic_anchor = now - int(st.periodic_phase_ns)
            rtc._periodic_checked = now
        except (TypeError, ValueError) as err:
            raise DeviceError(f"rtc: invalid snapshot state: {err!r}") from err
        if rtc.cmos[REG_C] & C_IRQF:
            rtc._irq_level = True
            rtc._irq8(True)
        return rtc
