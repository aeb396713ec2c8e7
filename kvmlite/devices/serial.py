"""A 16550A UART as a register-level state machine (8 byte-wide registers at offsets 0-7).

The model follows the National Semiconductor PC16550D data sheet closely enough
that Linux's 8250 driver identifies it as a ``16550A`` and runs it with
interrupts: the IER only keeps its low four bits, the IIR reports ``0xC0`` in
its top bits while the FIFOs are on and never sets bits 4 or 5 (which would
make the driver guess an exotic clone), loopback mode reflects MCR into MSR,
and enabling the THR-empty interrupt while the transmitter is idle raises it
at once (the driver tests for exactly that during start-up).

Transmission is instantaneous: a byte written to THR is handed to the ``out``
sink in the same call, so THRE and TEMT are set again before the guest's next
instruction.  A host that cannot take output right now calls
:meth:`Serial16550.set_tx_busy`; until it is cleared the bytes queue in the
TX FIFO with THRE/TEMT clear, exactly like a UART whose line is slower than
the CPU, and are flushed in order when the host catches up.

Reception is host driven: :meth:`Serial16550.enqueue_input` accepts only as
many bytes as the RX FIFO has room for and returns that count, so the host
side keeps the rest and no input is ever dropped.  Data still in the FIFO
below the trigger level is reported as a character time-out at once (as if
four character times had passed): there is no timer here, and Linux treats
both identifiers the same way.

On a PC the UART's interrupt output reaches the PIC only through a tri-state
buffer enabled by the OUT2 modem-control output; in loopback mode the 16550
forces its modem outputs inactive, so the line stays quiet as well.  The
internal interrupt state (what IIR reports) is unaffected by either.

Not modelled: line break, parity and framing errors (the host sends clean
bytes), the baud rate (the divisor is kept only so it reads back), DMA mode.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvmlite.devices.base import DeviceState, IrqLine, checked_state, no_irq
from kvmlite.errors import DeviceError

log = logging.getLogger(__name__)

# Register offsets (DLAB = LCR bit 7 selects the divisor latch at 0 and 1).
RBR = 0  # receive buffer (read)
THR = 0  # transmit holding (write)
DLL = 0  # divisor latch low (DLAB=1)
IER = 1  # interrupt enable
DLM = 1  # divisor latch high (DLAB=1)
IIR = 2  # interrupt identification (read)
FCR = 2  # FIFO control (write)
LCR = 3  # line control
MCR = 4  # modem control
LSR = 5  # line status
MSR = 6  # modem status
SCR = 7  # scratch
NUM_REGS = 8

# IER bits
IER_RDI = 0x01  # received data available
IER_THRI = 0x02  # transmit holding register empty
IER_RLSI = 0x04  # receiver line status
IER_MSI = 0x08  # modem status
IER_MASK = 0x0F  # a 16550A keeps only these; Linux's probe checks it

# IIR values
IIR_NO_INT = 0x01
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_RLSI = 0x06
IIR_RX_TIMEOUT = 0x0C
IIR_FIFO_ENABLED = 0xC0

# FCR bits
FCR_ENABLE_FIFO = 0x01
FCR_CLEAR_RCVR = 0x02
FCR_CLEAR_XMIT = 0x04
FCR_TRIGGER_MASK = 0xC0
FCR_TRIGGER_SHIFT = 6
RX_TRIGGER_LEVELS = (1, 4, 8, 14)

# LCR bits
LCR_DLAB = 0x80

# MCR bits
MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
MCR_MASK = 0x1F

# LSR bits
LSR_DR = 0x01  # data ready
LSR_OE = 0x02  # overrun error
LSR_PE = 0x04  # parity error
LSR_FE = 0x08  # framing error
LSR_BI = 0x10  # break interrupt
LSR_THRE = 0x20  # transmit holding register (TX FIFO) empty
LSR_TEMT = 0x40  # transmitter empty
LSR_FIFOE = 0x80  # error somewhere in the RX FIFO
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

# MSR bits
MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
MSR_DELTAS = 0x0F
MSR_LINES = 0xF0

FIFO_SIZE = 16
#: Divisor after reset: 115200 / 12 = 9600 baud, what QEMU and most BIOSes leave.
DEFAULT_DIVISOR = 12
#: Modem inputs seen from the host side in normal mode: a terminal that is
#: always there (carrier, data set ready, clear to send).
HOST_MODEM_LINES = MSR_DCD | MSR_DSR | MSR_CTS
#: While the host is busy the guest may keep writing past the 16-byte FIFO
#: (Linux's console gives up waiting for THRE after 10 ms and writes anyway).
#: Such bytes are kept rather than lost, up to this bound, which protects
#: the host from a guest that writes forever while the host never drains.
TX_BACKLOG_LIMIT = 1 << 20


@dataclass
class SerialState(DeviceState):
    """What the guest can see of a 16550A: its registers and both FIFOs (vm-superio's
    ``SerialState``).  The interrupt level follows from them; whether the host is holding
    output back is the host's business and is not saved."""

    divisor: int = DEFAULT_DIVISOR
    ier: int = 0
    lcr: int = 0
    mcr: int = 0
    scr: int = 0
    fcr: int = 0
    lsr_errors: int = 0
    msr_deltas: int = 0
    msr_lines: int = HOST_MODEM_LINES
    thri_pending: bool = False
    rx: bytes = b""
    tx: bytes = b""


class Serial16550:
    """A 16550A UART.  See the module docstring for what is and is not modelled.

    ``irq`` is driven with the PC-visible interrupt level (gated by OUT2);
    ``out`` receives every byte the guest transmits, in order; ``on_rx_space``
    (optional) is called when the guest has emptied the RX FIFO, so a host
    wrapper holding back input knows when to call :meth:`enqueue_input` again.
    ``on_quiet`` (optional) is called with True when the guest leaves no
    interrupt enabled (IER 0: a polling driver, Linux's console) and False when
    it enables one: while quiet, a write to THR needs no answer before the
    guest's next read of this UART, so the VMM may let such writes pile up in
    KVM's coalesced ring instead of exiting for each byte.
    """

    def __init__(
        self,
        irq: IrqLine = no_irq,
        out: Callable[[bytes], None] | None = None,
        *,
        on_rx_space: Callable[[], None] | None = None,
        on_quiet: Callable[[bool], None] | None = None,
    ) -> None:
        self._irq = irq
        self._on_quiet = on_quiet
        self._out = out
        self._on_rx_space = on_rx_space
        self._irq_level = False
        self._tx_busy = False
        self._warned_backlog = False
        self._warned_access: set[tuple[str, int, int]] = set()
        self.divisor = DEFAULT_DIVISOR
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.scr = 0
        self.fcr = 0  # last FCR written, with the one-shot clear bits dropped
        self.lsr_errors = 0  # sticky OE/PE/FE/BI until LSR is read
        self.msr_deltas = 0  # sticky MSR bits 0-3 until MSR is read
        self.msr_lines = HOST_MODEM_LINES
        self.thri_pending = False
        self.rx: deque[int] = deque()
        self.tx: deque[int] = deque()

    # ------------------------------------------------------------------ host side

    @property
    def fifo_enabled(self) -> bool:
        return bool(self.fcr & FCR_ENABLE_FIFO)

    @property
    def loopback(self) -> bool:
        return bool(self.mcr & MCR_LOOP)

    @property
    def _rx_capacity(self) -> int:
        return FIFO_SIZE if self.fifo_enabled else 1

    def rx_space(self) -> int:
        """Bytes :meth:`enqueue_input` would accept now (0 in loopback: the line is disconnected)."""
        if self.loopback:
            return 0
        return self._rx_capacity - len(self.rx)

    def enqueue_input(self, data: bytes) -> int:
        """Receive bytes from the host side; return how many were taken (the caller keeps the rest)."""
        n = min(len(data), self.rx_space())
        if n:
            self.rx.extend(data[:n])
            self._update_irq()
        return n

    def set_tx_busy(self, busy: bool) -> None:
        """Hold (True) or release (False) transmitted bytes; releasing flushes the TX FIFO to ``out``."""
        self._tx_busy = busy
        if not busy and self.tx:
            data = bytes(self.tx)
            self.tx.clear()
            self._emit(data)
            self._tx_emptied()
            self._update_irq()

    @property
    def tx_busy(self) -> bool:
        return self._tx_busy

    @property
    def irq_level(self) -> bool:
        """The level currently driven on ``irq``."""
        return self._irq_level

    # ------------------------------------------------------------------ bus side

    def read(self, offset: int, size: int) -> int:
        if offset == LSR and size == 1:  # first: what a polling driver reads before every byte
            return self._read_lsr()
        if size != 1:
            # The ISA bus splits wide accesses to an 8-bit device into byte cycles.
            self._warn_access("read", offset, size)
            value = 0
            for i in range(size):
                value |= self.read(offset + i, 1) << (8 * i) if offset + i < NUM_REGS else 0xFF << (8 * i)
            return value
        if not 0 <= offset < NUM_REGS:
            self._warn_access("read", offset, size)
            return 0xFF
        if offset == LSR:
            return self._read_lsr()
        dlab = bool(self.lcr & LCR_DLAB)
        if offset == RBR:
            return self.divisor & 0xFF if dlab else self._read_rbr()
        if offset == IER:
            return (self.divisor >> 8) & 0xFF if dlab else self.ier
        if offset == IIR:
            return self._read_iir()
        if offset == LCR:
            return self.lcr
        if offset == MCR:
            return self.mcr
        if offset == MSR:
            return self._read_msr()
        return self.scr

    def register_reader(self, offset: int, size: int) -> Callable[[], int] | None:
        """LSR, which a polling driver reads before every byte, without :meth:`read`'s dispatch
        (see :meth:`kvmlite.memory.bus.Bus.accessor`)."""
        return self._read_lsr if (offset, size) == (LSR, 1) else None

    def register_writer(self, offset: int, size: int) -> Callable[[int], None] | None:
        """The scratch register without :meth:`write`'s dispatch."""
        return self._write_scr if (offset, size) == (SCR, 1) else None

    def _write_scr(self, value: int) -> None:
        self.scr = value & 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 1:
            self._warn_access("write", offset, size)
            for i in range(size):
                if offset + i < NUM_REGS:
                    self.write(offset + i, 1, (value >> (8 * i)) & 0xFF)
            return
        if not 0 <= offset < NUM_REGS:
            self._warn_access("write", offset, size)
            return
        value &= 0xFF
        if offset == SCR:  # no interrupt source depends on it: nothing to update
            self.scr = value
            return
        dlab = bool(self.lcr & LCR_DLAB)
        if offset == THR:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
            else:
                self._write_thr(value)
        elif offset == IER:
            if dlab:
                self.divisor = (self.divisor & 0x00FF) | (value << 8)
            else:
                self._write_ier(value)
        elif offset == FCR:
            self._write_fcr(value)
        elif offset == LCR:
            self.lcr = value
        elif offset == MCR:
            self._write_mcr(value)
        elif offset == LSR:
            # LSR is read-only on a 16550 (a factory test register on some parts).
            log.debug("write %#x to read-only LSR ignored", value)
        else:  # MSR
            log.debug("write %#x to read-only MSR ignored", value)
        self._update_irq()

    # ------------------------------------------------------------------ registers

    def _read_rbr(self) -> int:
        if not self.rx:
            return 0
        value = self.rx.popleft()
        self._update_irq()
        if not self.rx and self._on_rx_space is not None and not self.loopback:
            self._on_rx_space()
        return value

    def _write_thr(self, value: int) -> None:
        self.thri_pending = False
        if self.loopback:
            # The transmitter's output is wired straight to the receiver.
            self._receive_looped(value)
            self._tx_emptied()
            return
        if self._tx_busy:
            if len(self.tx) >= TX_BACKLOG_LIMIT:
                if not self._warned_backlog:
                    log.warning("serial: host busy and %d bytes queued; dropping output", len(self.tx))
                    self._warned_backlog = True
                return
            self.tx.append(value)
            return
        self._emit(bytes((value,)))
        self._tx_emptied()

    def _receive_looped(self, value: int) -> None:
        if len(self.rx) >= self._rx_capacity:
            # Overrun: the FIFO keeps its contents, the new character is lost.
            self.lsr_errors |= LSR_OE
        else:
            self.rx.append(value)

    def _tx_emptied(self) -> None:
        if self.ier & IER_THRI:
            self.thri_pending = True

    def _write_ier(self, value: int) -> None:
        old = self.ier
        self.ier = value & IER_MASK
        if self._on_quiet is not None and (old == 0) != (self.ier == 0):
            self._on_quiet(self.ier == 0)
        if self.ier & IER_THRI and not old & IER_THRI and not self.tx:
            # A 16550 asserts THRI as soon as it is enabled with THR empty.
            self.thri_pending = True
        elif not self.ier & IER_THRI:
            self.thri_pending = False

    def _write_fcr(self, value: int) -> None:
        enable = bool(value & FCR_ENABLE_FIFO)
        rx_was_full = self.rx_space() == 0
        if enable != self.fifo_enabled:
            # Switching the FIFOs on or off resets both of them.
            value |= FCR_CLEAR_RCVR | FCR_CLEAR_XMIT
        if value & FCR_CLEAR_RCVR:
            self.rx.clear()
        # FCR_CLEAR_XMIT would discard bytes still queued for a busy host: they
        # are output the guest meant to send, so they are kept (bytes only
        # queue while the host is busy; otherwise the FIFO is already empty).
        self.fcr = value & (FCR_ENABLE_FIFO | FCR_TRIGGER_MASK) if enable else 0
        if value & FCR_CLEAR_XMIT and not self.tx:
            self._tx_emptied()
        if rx_was_full and self.rx_space() > 0 and self._on_rx_space is not None:
            self._on_rx_space()

    def _write_mcr(self, value: int) -> None:
        was_loop = self.loopback
        old_lines = self._modem_lines()
        self.mcr = value & MCR_MASK
        new_lines = self._modem_lines()
        self._note_modem_change(old_lines, new_lines)
        if was_loop and not self.loopback and self._on_rx_space is not None and self.rx_space() > 0:
            self._on_rx_space()

    def _modem_lines(self) -> int:
        """MSR bits 4-7 as the receiver sees them now."""
        if not self.loopback:
            return self.msr_lines
        m = self.mcr
        lines = 0
        if m & MCR_RTS:
            lines |= MSR_CTS
        if m & MCR_DTR:
            lines |= MSR_DSR
        if m & MCR_OUT1:
            lines |= MSR_RI
        if m & MCR_OUT2:
            lines |= MSR_DCD
        return lines

    def _note_modem_change(self, old: int, new: int) -> None:
        changed = old ^ new
        if changed & MSR_CTS:
            self.msr_deltas |= MSR_DCTS
        if changed & MSR_DSR:
            self.msr_deltas |= MSR_DDSR
        if changed & MSR_DCD:
            self.msr_deltas |= MSR_DDCD
        if old & MSR_RI and not new & MSR_RI:
            # TERI flags the trailing edge of ring indicator only.
            self.msr_deltas |= MSR_TERI

    def _read_msr(self) -> int:
        value = self._modem_lines() | self.msr_deltas
        self.msr_deltas = 0
        self._update_irq()
        return value

    def _read_lsr(self) -> int:
        value = self.lsr_errors
        if self.rx:
            value |= LSR_DR
        if not self.tx:
            value |= LSR_THRE | LSR_TEMT
        if value & LSR_ERRORS:  # reading clears them, and with them the line-status interrupt
            self.lsr_errors = 0
            self._update_irq()
        return value

    def _rx_trigger(self) -> int:
        if not self.fifo_enabled:
            return 1
        return RX_TRIGGER_LEVELS[(self.fcr & FCR_TRIGGER_MASK) >> FCR_TRIGGER_SHIFT]

    def _interrupt_id(self) -> int:
        """The highest-priority pending source as an IIR identifier, or IIR_NO_INT."""
        if self.ier & IER_RLSI and self.lsr_errors:
            return IIR_RLSI
        if self.ier & IER_RDI and self.rx:
            if self.fifo_enabled and len(self.rx) < self._rx_trigger():
                return IIR_RX_TIMEOUT
            return IIR_RDI
        if self.ier & IER_THRI and self.thri_pending:
            return IIR_THRI
        if self.ier & IER_MSI and self.msr_deltas:
            return IIR_MSI
        return IIR_NO_INT

    def _read_iir(self) -> int:
        ident = self._interrupt_id()
        if ident == IIR_THRI:
            # Reading IIR while it reports THRI clears that source.
            self.thri_pending = False
            self._update_irq()
        return ident | (IIR_FIFO_ENABLED if self.fifo_enabled else 0)

    # ------------------------------------------------------------------ plumbing

    def _update_irq(self) -> None:
        level = self._interrupt_id() != IIR_NO_INT and bool(self.mcr & MCR_OUT2) and not self.mcr & MCR_LOOP
        if level != self._irq_level:
            self._irq_level = level
            self._irq(level)

    def _emit(self, data: bytes) -> None:
        if self._out is not None:
            self._out(data)

    def _warn_access(self, direction: str, offset: int, size: int) -> None:
        key = (direction, offset, size)
        if key not in self._warned_access:
            self._warned_access.add(key)
            log.warning("serial: %d-byte %s at offset %d (registers are 8-bit, 0-7)", size, direction, offset)

    # ------------------------------------------------------------------ snapshots

    def state(self) -> SerialState:
        return SerialState(
            divisor=self.divisor,
            ier=self.ier,
            lcr=self.lcr,
            mcr=self.mcr,
            scr=self.scr,
            fcr=self.fcr,
            lsr_errors=self.lsr_errors,
            msr_deltas=self.msr_deltas,
            msr_lines=self.msr_lines,
            thri_pending=self.thri_pending,
            rx=bytes(self.rx),
            tx=bytes(self.tx),
        )

    @classmethod
    def from_state(cls, state: SerialState, /, **injected: Any) -> Serial16550:
        """Rebuild from :meth:`state`; ``injected`` are the constructor's callables.

        The interrupt line is driven to the level the registers give, so a
        freshly built interrupt controller sees the level it had.  Bytes that
        were waiting in the TX FIFO go out to ``out`` at once: the host side of
        the new device is not busy until its wrapper says so.
        """
        st = checked_state(state, SerialState, "serial")
        dev = cls(**injected)
        try:
            dev.divisor = int(st.divisor) & 0xFFFF
            dev.ier = int(st.ier) & IER_MASK
            dev.lcr = int(st.lcr) & 0xFF
            dev.mcr = int(st.mcr) & MCR_MASK
            dev.scr = int(st.scr) & 0xFF
            dev.fcr = int(st.fcr) & (FCR_ENABLE_FIFO | FCR_TRIGGER_MASK)
            dev.lsr_errors = int(st.lsr_errors) & LSR_ERRORS
            dev.msr_deltas = int(st.msr_deltas) & MSR_DELTAS
            dev.msr_lines = int(st.msr_lines) & MSR_LINES
            dev.thri_pending = bool(st.thri_pending)
            rx = bytes(st.rx)
            tx = bytes(st.tx)
        except (TypeError, ValueError) as err:
            raise DeviceError(f"serial: invalid snapshot state: {err!r}") from err
        if len(rx) > dev._rx_capacity:
            raise DeviceError(f"serial: snapshot RX FIFO holds {len(rx)} bytes, more than {dev._rx_capacity}")
        if len(tx) > TX_BACKLOG_LIMIT:
            raise DeviceError(f"serial: snapshot TX FIFO holds {len(tx)} bytes, more than {TX_BACKLOG_LIMIT}")
        dev.rx.extend(rx)
        dev.tx.extend(tx)
        dev._update_irq()
        if dev.tx:
            dev.set_tx_busy(False)
        return dev
