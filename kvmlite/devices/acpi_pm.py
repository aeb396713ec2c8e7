"""ACPI fixed-hardware power management: the PM1 event and control blocks, and the 0xCF9 reset register.

A guest that finds the FADT of :mod:`kvmlite.firmware.acpi` powers off by
writing its S5 sleep type with SLP_EN set into ``PM1_CNT`` (Linux's
``acpi_power_off``), and reboots by writing the FADT's ``RESET_VALUE`` to the
``RESET_REG`` (port 0xCF9, the PIIX/ICH "reset control register").  Both end
in an injected callable (``power_off()``, ``reset()``): the device owns no
policy, the machine decides what a power-off means.

Registers, at the offsets the device sees (:mod:`kvmlite.vmm.layout` places
the blocks where QEMU's PIIX4 PM has them, 0x600 and 0x604, and the reset
register at 0xCF9)::

    PM1a_EVT_BLK  +0 PM1_STS  (16 bits, write 1 to clear)
                  +2 PM1_EN   (16 bits)
    PM1a_CNT_BLK  +4 PM1_CNT  (16 bits: SCI_EN, SLP_TYP, SLP_EN)
    RESET_REG     +0          one byte: bit 2 (RST_CPU) set resets

Both PM1 blocks are served by one :class:`AcpiPm`; the sleep type that means
S5 is the machine's choice (``s5_slp_typ``, what its DSDT announces).

The system is always in ACPI mode: the FADT has no SMI_CMD port, so ``SCI_EN``
reads as 1 and cannot be cleared (what the ACPI specification asks of such
hardware).  The SCI (a level interrupt) is raised while a status bit is set
whose enable bit is set; the only event source is the fixed power button
(:meth:`AcpiPm.press_power_button`).  There is no PM timer and no GPE block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvmlite.devices.base import DeviceState, IrqLine, checked_state, no_irq, warn_once
from kvmlite.errors import DeviceError

log = logging.getLogger(__name__)

# --- register offsets inside the block -----------------------------------------------------
REG_PM1_STS = 0
REG_PM1_EN = 2
REG_PM1_CNT = 4

# --- PM1_STS / PM1_EN bits -------------------------------------------------------------------
TMR_STS = 1 << 0
BM_STS = 1 << 4
GBL_STS = 1 << 5
PWRBTN_STS = 1 << 8
SLPBTN_STS = 1 << 9
RTC_STS = 1 << 10
WAK_STS = 1 << 15
#: Enable bits that exist (TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN, PCIEXP_WAKE_DIS).
PM1_EN_MASK = (1 << 0) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 14)
PWRBTN_EN = 1 << 8

# --- PM1_CNT bits ----------------------------------------------------------------------------
SCI_EN = 1 << 0
BM_RLD = 1 << 1
GBL_RLS = 1 << 2  # write-only
SLP_TYP_SHIFT = 10
SLP_TYP_MASK = 0x7 << SLP_TYP_SHIFT
SLP_EN = 1 << 13  # write-only
#: Bits that keep what the guest wrote (SCI_EN is forced on, the write-only bits read 0).
PM1_CNT_STORED = BM_RLD | SLP_TYP_MASK

# --- reset control register -----------------------------------------------------
RCR_SYS_RST = 1 << 1
RCR_RST_CPU = 1 << 2
RCR_FULL_RST = 1 << 3


@dataclass
class AcpiPmState(DeviceState):
    """PM1_STS, PM1_EN and PM1_CNT (the SCI level follows from the first two)."""

    status: int = 0
    enable: int = 0
    control: int = SCI_EN


@dataclass
class ResetControlState(DeviceState):
    """The reset-type bits kept in the reset control register."""

    value: int = 0


class AcpiPm:
    """PM1a event block (status, enable) at offsets 0-3 and control block at offsets 4-5.

    Accesses of any width and alignment inside the block are split into the
    bytes of the 16-bit registers they touch, so a 32-bit read of the event
    block returns status and enable together, as on PIIX4.
    """

    def __init__(
        self,
        power_off: Callable[[], None],
        s5_slp_typ: int,
        sci: IrqLine = no_irq,
        s3_slp_typ: int | None = None,
        suspend: Callable[[], bool] | None = None,
    ) -> None:
        self.power_off = power_off
        self.sci = sci
        self.s5_slp_typ = s5_slp_typ
        #: S3 (suspend to RAM), where the machine offers it: ``suspend()`` pauses the VM, False refuses.
        self.s3_slp_typ = s3_slp_typ
        self.suspend = suspend
        self.status = 0
        self.enable = 0
        self.control = SCI_EN
        self._sci_level = False
        self._warned: set[str] = set()

    # --- bus interface -----------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            reg, byte = divmod(offset + i, 2)
            value |= ((self._read_reg(reg * 2) >> (8 * byte)) & 0xFF) << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        # gather the written bytes per 16-bit register, then apply each register once
        lanes: dict[int, tuple[int, int]] = {}
        for i in range(size):
            reg, byte = divmod(offset + i, 2)
            data, mask = lanes.get(reg * 2, (0, 0))
            lanes[reg * 2] = (data | (((value >> (8 * i)) & 0xFF) << (8 * byte)), mask | (0xFF << (8 * byte)))
        for reg, (data, mask) in lanes.items():
            self._write_reg(reg, data, mask)

    # --- registers -----------------------------------------------------------------------
    def _read_reg(self, reg: int) -> int:
        if reg == REG_PM1_STS:
            return self.status
        if reg == REG_PM1_EN:
            return self.enable
        if reg == REG_PM1_CNT:
            return self.control
        return 0

    def _write_reg(self, reg: int, data: int, mask: int) -> None:
        if reg == REG_PM1_STS:
            self.status &= ~(data & mask)  # write 1 to clear
        elif reg == REG_PM1_EN:
            self.enable = ((self.enable & ~mask) | (data & mask)) & PM1_EN_MASK
        elif reg == REG_PM1_CNT:
            self._write_control(data, mask)
        else:
            return
        self._update_sci()

    def _write_control(self, data: int, mask: int) -> None:
        self.control = SCI_EN | (((self.control & ~mask) | (data & mask)) & PM1_CNT_STORED)
        if data & mask & SLP_EN:
            slp_typ = (self.control & SLP_TYP_MASK) >> SLP_TYP_SHIFT
            if slp_typ == self.s5_slp_typ:
                log.info("ACPI: the guest entered S5 (soft off)")
                self.power_off()
            elif slp_typ == self.s3_slp_typ and self.suspend is not None and self.suspend():
                pass  # asleep until woken(): the vCPU parks after this write
            else:
                msg = "ACPI: the guest asked for sleep type %d, which kvmlite does not offer"
                warn_once(log, self._warned, msg, slp_typ)
                self.status |= WAK_STS  # as if it had woken at once

    def _update_sci(self) -> None:
        level = bool(self.status & self.enable)
        if level != self._sci_level:
            self._sci_level = level
            self.sci(level)

    # --- events from the host ---------------------------------------------------------------
    def press_power_button(self) -> None:
        """The fixed-feature power button: sets PWRBTN_STS (an SCI if the guest enabled it)."""
        self.status |= PWRBTN_STS
        self._update_sci()

    def woken(self, by_rtc: bool) -> None:
        """The machine woke from S3: WAK_STS (and RTC_STS for the RTC alarm) as on PIIX4."""
        self.status |= WAK_STS | (RTC_STS if by_rtc else 0)
        self._update_sci()

    @property
    def sci_level(self) -> bool:
        return self._sci_level

    def state(self) -> AcpiPmState:
        return AcpiPmState(status=self.status, enable=self.enable, control=self.control)

    @classmethod
    def from_state(cls, state: AcpiPmState, /, **injected: Any) -> AcpiPm:
        """Rebuild from :meth:`state`; the SCI is raised again if a status bit is enabled."""
        st = checked_state(state, AcpiPmState, "ACPI PM")
        dev = cls(**injected)
        try:
            dev.status = int(st.status) & 0xFFFF
            dev.enable = int(st.enable) & PM1_EN_MASK
            dev.control = SCI_EN | (int(st.control) & PM1_CNT_STORED)
        except (TypeError, ValueError) as err:
            raise DeviceError(f"ACPI PM: invalid snapshot state: {err!r}") from err
        dev._update_sci()
        return dev


class ResetControl:
    """The reset control register at 0xCF9: a write with RST_CPU set calls ``reset()``.

    Like the PIIX3's, it keeps the reset-type bits (SYS_RST, FULL_RST) so a
    guest may write the type first and the trigger second (Linux's
    ``reboot=pci`` writes 0x02, then 0x06); RST_CPU itself reads back as 0.
    """

    def __init__(self, reset: Callable[[], None]) -> None:
        self.reset = reset
        self.value = 0

    def read(self, offset: int, size: int) -> int:
        return self.value if offset == 0 else 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset != 0:
            return
        value &= 0xFF
        self.value = value & (RCR_SYS_RST | RCR_FULL_RST)
        if value & RCR_RST_CPU:
            log.info("ACPI: reset through the reset control register (%#04x)", value)
            self.reset()

    def state(self) -> ResetControlState:
        return ResetControlState(value=self.value)

    @classmethod
    def from_state(cls, state: ResetControlState, /, **injected: Any) -> ResetControl:
        st = checked_state(state, ResetControlState, "reset control")
        dev = cls(**injected)
        try:
            dev.value = int(st.value) & (RCR_SYS_RST | RCR_FULL_RST)
        except (TypeError, ValueError) as err:
            raise DeviceError(f"reset control: invalid snapshot state: {err!r}") from err
        return dev
