"""The 8042 keyboard controller (0x60/0x64), system control port A (0x92) and the POST port (0x80).

:class:`I8042` answers offset 0 (data, port 0x60) and offset 4
(status/command, port 0x64) of a window at 0x60.  Port 0x61 in between
belongs to the PIT's system control port, so the machine inserts the
controller twice, at 0x60 and at 0x64 with ``offset=4``
(:meth:`kvmlite.memory.Bus.insert`).  The model carries enough of the
controller and of an MF2 keyboard for Linux's i8042 and atkbd drivers to
probe, configure and use them: the controller command byte, self and
interface tests, enable/disable of both ports, the output port (A20 and the
CPU reset line), pulse-reset, and the keyboard's reset, identify,
enable/disable, LED, typematic and scan-code-set commands.

The auxiliary (mouse) port exists in the controller, so Linux's loop and
IRQ 12 tests pass, but nothing is plugged into it: bytes sent to it with
command 0xD4 come back as a time-out error (0xFE with the time-out status
bit), which makes the psmouse probe fail at once instead of after a wait.

Keyboard input from the host is injected with :meth:`I8042.enqueue_keyboard`
as the bytes the guest should read (no set 2 to set 1 translation).

Controller and device output share the one-byte output buffer, refilled in
order: controller replies first, then keyboard bytes, then aux bytes; IRQ 1
or IRQ 12 is high while a byte from that port waits and its interrupt is
enabled in the command byte, so each byte gives an edge.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvmlite.devices.base import DeviceState, IrqLine, checked_state, no_irq, warn_once
from kvmlite.errors import DeviceError

log = logging.getLogger(__name__)

# Offsets from base 0x60
DATA_OFFSET = 0
STATUS_OFFSET = 4  # read: status, write: command

# Status register
STR_OBF = 0x01
STR_IBF = 0x02
STR_SYS = 0x04
STR_CMD = 0x08  # last write went to the command port
STR_UNLOCKED = 0x10  # keyboard not inhibited by the key lock
STR_AUX_OBF = 0x20
STR_TIMEOUT = 0x40
STR_PARITY = 0x80

# Controller command byte ("CTR")
CTR_KBD_INT = 0x01
CTR_AUX_INT = 0x02
CTR_SYS = 0x04
CTR_KBD_DISABLE = 0x10
CTR_AUX_DISABLE = 0x20
CTR_XLATE = 0x40
#: What a BIOS leaves after POST: both interrupts on, system flag set, translation on.
DEFAULT_CTR = CTR_KBD_INT | CTR_AUX_INT | CTR_SYS | CTR_XLATE

# Controller commands
CMD_READ_RAM = 0x20  # 0x20-0x3f: read internal RAM byte (0x20: the CTR)
CMD_WRITE_RAM = 0x60  # 0x60-0x7f: write internal RAM byte
CMD_AUX_DISABLE = 0xA7
CMD_AUX_ENABLE = 0xA8
CMD_AUX_TEST = 0xA9
CMD_SELF_TEST = 0xAA
CMD_KBD_TEST = 0xAB
CMD_KBD_DISABLE = 0xAD
CMD_KBD_ENABLE = 0xAE
CMD_READ_INPUT = 0xC0
CMD_READ_OUTPUT = 0xD0
CMD_WRITE_OUTPUT = 0xD1
CMD_WRITE_KBD_OBUF = 0xD2
CMD_WRITE_AUX_OBUF = 0xD3
CMD_WRITE_AUX = 0xD4
CMD_DISABLE_A20 = 0xDD
CMD_ENABLE_A20 = 0xDF
CMD_READ_TEST_INPUTS = 0xE0
CMD_PULSE_BASE = 0xF0  # 0xF0-0xFF: pulse output port bits 0-3 low where the nibble has 0
CMD_PULSE_RESET = 0xFE

SELF_TEST_OK = 0x55
INTERFACE_TEST_OK = 0x00
INPUT_PORT_VALUE = 0x80  # keyboard not inhibited

# Output port
OUT_RESET = 0x01  # low = CPU held in reset
OUT_A20 = 0x02
OUT_KBD_OBF = 0x10  # output port mirrors of the buffer-full lines
OUT_AUX_OBF = 0x20
DEFAULT_OUTPUT_PORT = OUT_RESET | OUT_A20

# Keyboard commands and replies
KBD_CMD_SET_LEDS = 0xED
KBD_CMD_ECHO = 0xEE
KBD_CMD_SCANSET = 0xF0
KBD_CMD_GET_ID = 0xF2
KBD_CMD_SET_RATE = 0xF3
KBD_CMD_ENABLE = 0xF4
KBD_CMD_RESET_DISABLE = 0xF5
KBD_CMD_RESET_ENABLE = 0xF6
KBD_CMD_RESEND = 0xFE
KBD_CMD_RESET = 0xFF
KBD_REPLY_ACK = 0xFA
KBD_REPLY_POR = 0xAA  # basic assurance test passed
KBD_REPLY_RESEND = 0xFE
KBD_ID = (0xAB, 0x83)  # MF2 keyboard
KBD_ID_XLATED = (0xAB, 0x41)  # the same, as seen through the controller's translation
KBD_QUEUE_LIMIT = 256  # bytes the keyboard buffers before it drops input

AUX_NO_DEVICE = 0xFE

# Port 0x92 (system control port A)
PORT_A_RESET = 0x01
PORT_A_A20 = 0x02


@dataclass
class I8042State(DeviceState):
    """The controller's command byte, RAM, status flags, output port, output buffer and queues,
    and the keyboard's mode (the IRQ levels follow from them)."""

    ctr: int = DEFAULT_CTR
    ram: bytes = bytes(32)
    status_flags: int = STR_UNLOCKED | STR_SYS
    output_port: int = DEFAULT_OUTPUT_PORT
    pending_cmd: int | None = None
    obuf: int | None = None
    obuf_aux: bool = False
    ctrl_queue: bytes = b""
    kbd_queue: bytes = b""
    aux_queue: bytes = b""
    kbd_scanning: bool = True
    kbd_pending_cmd: int | None = None
    kbd_leds: int = 0
    kbd_scanset: int = 2
    kbd_last: int = KBD_REPLY_ACK


@dataclass
class PortA20ResetState(DeviceState):
    """Port 0x92's value (A20 on, as firmware leaves it)."""

    value: int = PORT_A_A20


@dataclass
class PostCodeState(DeviceState):
    """The last POST code written (None: never written, reads all ones)."""

    last: int | None = None


class I8042:
    """The keyboard controller with an MF2 keyboard attached and an empty aux port."""

    def __init__(
        self,
        reset: Callable[[], None] | None = None,
        irq1: IrqLine = no_irq,
        irq12: IrqLine = no_irq,
        *,
        on_a20: Callable[[bool], None] | None = None,
    ) -> None:
        self._reset = reset
        self._irq1 = irq1
        self._irq12 = irq12
        self._warned: set[str] = set()
        self._on_a20 = on_a20
        self._irq1_level = False
        self._irq12_level = False
        self.ctr = DEFAULT_CTR
        self.ram = bytearray(32)  # internal RAM; byte 0 is the CTR
        self.status_flags = STR_UNLOCKED | STR_SYS  # SYS, CMD, TIMEOUT live here
        self.output_port = DEFAULT_OUTPUT_PORT
        self.pending_cmd: int | None = None  # controller command waiting for its data byte
        self.obuf: int | None = None
        self.obuf_aux = False
        self.ctrl_queue: deque[int] = deque()
        self.kbd_queue: deque[int] = deque()
        self.aux_queue: deque[int] = deque()
        # Keyboard state
        self.kbd_scanning = True
        self.kbd_pending_cmd: int | None = None
        self.kbd_leds = 0
        self.kbd_scanset = 2
        self.kbd_last = KBD_REPLY_ACK

    # ---------------------------------------------------------------- host side

    @property
    def a20(self) -> bool:
        return bool(self.output_port & OUT_A20)

    def enqueue_keyboard(self, data: bytes) -> int:
        """Queue bytes from the keyboard (scan codes as the guest expects them); return how many fit.

        While the guest has scanning disabled (0xF5) the keys are discarded, as
        a real keyboard does, and all of ``data`` counts as taken.
        """
        if not self.kbd_scanning:
            log.debug("i8042: keyboard scanning disabled; %d bytes of input discarded", len(data))
            return len(data)
        n = min(len(data), KBD_QUEUE_LIMIT - len(self.kbd_queue))
        self.kbd_queue.extend(data[:n])
        self._refill()
        return n

    # ---------------------------------------------------------------- bus side

    def read(self, offset: int, size: int) -> int:
        if size != 1 or offset not in (DATA_OFFSET, STATUS_OFFSET):
            warn_once(log, self._warned, "i8042: %d-byte read at offset %d", size, offset)
            return (1 << (8 * size)) - 1 if 0 < size <= 8 else 0
        if offset == STATUS_OFFSET:
            return self._status()
        return self._read_data()

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 1 or offset not in (DATA_OFFSET, STATUS_OFFSET):
            warn_once(
                log, self._warned, "i8042: %d-byte write of %#x at offset %d ignored", size, value, offset
            )
            return
        value &= 0xFF
        if offset == STATUS_OFFSET:
            self.status_flags |= STR_CMD
            self._command(value)
        else:
            self.status_flags &= ~STR_CMD
            self._write_data(value)
        self._refill()

    def _status(self) -> int:
        value = self.status_flags
        if self.obuf is not None:
            value |= STR_OBF
            if self.obuf_aux:
                value |= STR_AUX_OBF
        return value

    def _read_data(self) -> int:
        if self.obuf is None:
            # Reading an empty buffer returns the stale byte on hardware; 0 is as good.
            return 0
        value = self.obuf
        self.obuf = None
        self.obuf_aux = False
        self.status_flags &= ~STR_TIMEOUT
        # Drop the lines before the next byte moves in: on hardware the next
        # byte takes a millisecond to arrive, and the edge-triggered PIC needs
        # that gap to see a new interrupt.
        self._update_lines()
        self._refill()
        return value

    # ---------------------------------------------------------------- output buffer

    def _refill(self) -> None:
        if self.obuf is None:
            if self.ctrl_queue:
                self.obuf = self.ctrl_queue.popleft()
                self.obuf_aux = False
            elif self.kbd_queue and not self.ctr & CTR_KBD_DISABLE:
                self.obuf = self.kbd_queue.popleft()
                self.obuf_aux = False
            elif self.aux_queue and not self.ctr & CTR_AUX_DISABLE:
                self.obuf = self.aux_queue.popleft()
                self.obuf_aux = True
        self._update_lines()

    def _update_lines(self) -> None:
        full = self.obuf is not None
        irq1 = full and not self.obuf_aux and bool(self.ctr & CTR_KBD_INT)
        irq12 = full and self.obuf_aux and bool(self.ctr & CTR_AUX_INT)
        if irq1 != self._irq1_level:
            self._irq1_level = irq1
            self._irq1(irq1)
        if irq12 != self._irq12_level:
            self._irq12_level = irq12
            self._irq12(irq12)

    def _reply(self, value: int) -> None:
        self.ctrl_queue.append(value)

    # ---------------------------------------------------------------- controller

    def _command(self, cmd: int) -> None:
        self.pending_cmd = None
        if CMD_READ_RAM <= cmd < CMD_READ_RAM + 0x20:
            index = cmd - CMD_READ_RAM
            self._reply(self.ctr if index == 0 else self.ram[index])
        elif CMD_WRITE_RAM <= cmd < CMD_WRITE_RAM + 0x20 or cmd in (
            CMD_WRITE_OUTPUT,
            CMD_WRITE_KBD_OBUF,
            CMD_WRITE_AUX_OBUF,
            CMD_WRITE_AUX,
        ):
            self.pending_cmd = cmd
        elif cmd == CMD_AUX_DISABLE:
            self.ctr |= CTR_AUX_DISABLE
        elif cmd == CMD_AUX_ENABLE:
            self.ctr &= ~CTR_AUX_DISABLE
        elif cmd in (CMD_AUX_TEST, CMD_KBD_TEST):
            self._reply(INTERFACE_TEST_OK)
        elif cmd == CMD_SELF_TEST:
            self.status_flags |= STR_SYS
            self._reply(SELF_TEST_OK)
        elif cmd == CMD_KBD_DISABLE:
            self.ctr |= CTR_KBD_DISABLE
        elif cmd == CMD_KBD_ENABLE:
            self.ctr &= ~CTR_KBD_DISABLE
        elif cmd == CMD_READ_INPUT:
            self._reply(INPUT_PORT_VALUE)
        elif cmd == CMD_READ_OUTPUT:
            value = self.output_port & ~(OUT_KBD_OBF | OUT_AUX_OBF)
            if self.obuf is not None:
                value |= OUT_AUX_OBF if self.obuf_aux else OUT_KBD_OBF
            self._reply(value)
        elif cmd == CMD_DISABLE_A20:
            self._set_output_port(self.output_port & ~OUT_A20)
        elif cmd == CMD_ENABLE_A20:
            self._set_output_port(self.output_port | OUT_A20)
        elif cmd == CMD_READ_TEST_INPUTS:
            self._reply(0x00)
        elif cmd >= CMD_PULSE_BASE:
            if not cmd & OUT_RESET:
                log.info("i8042: guest pulsed the reset line (command %#x)", cmd)
                self._do_reset()
        else:
            warn_once(log, self._warned, "i8042: unknown controller command %#x ignored", cmd)

    def _write_data(self, value: int) -> None:
        cmd = self.pending_cmd
        self.pending_cmd = None
        if cmd is None:
            # Data for the keyboard; talking to it re-enables its interface.
            self.ctr &= ~CTR_KBD_DISABLE
            self._keyboard_command(value)
        elif CMD_WRITE_RAM <= cmd < CMD_WRITE_RAM + 0x20:
            index = cmd - CMD_WRITE_RAM
            if index == 0:
                self.ctr = value
                if value & CTR_SYS:
                    self.status_flags |= STR_SYS
                else:
                    self.status_flags &= ~STR_SYS
            else:
                self.ram[index] = value
        elif cmd == CMD_WRITE_OUTPUT:
            self._set_output_port(value)
        elif cmd == CMD_WRITE_KBD_OBUF:
            self.kbd_queue.appendleft(value)
        elif cmd == CMD_WRITE_AUX_OBUF:
            self.aux_queue.appendleft(value)
        elif cmd == CMD_WRITE_AUX:
            # Nothing is plugged into the aux port: the transfer times out.
            self.ctr &= ~CTR_AUX_DISABLE
            self.status_flags |= STR_TIMEOUT
            self.aux_queue.append(AUX_NO_DEVICE)

    def _set_output_port(self, value: int) -> None:
        old = self.output_port
        self.output_port = value
        if (old ^ value) & OUT_A20:
            a20 = bool(value & OUT_A20)
            if not a20:
                warn_once(log, self._warned, "i8042: guest disabled A20; the address wrap is not emulated")
            if self._on_a20 is not None:
                self._on_a20(a20)
        if not value & OUT_RESET:
            log.info("i8042: guest cleared the reset line in the output port")
            self.output_port |= OUT_RESET
            self._do_reset()

    def _do_reset(self) -> None:
        if self._reset is None:
            warn_once(log, self._warned, "i8042: reset requested but no reset handler is connected")
        else:
            self._reset()

    # ---------------------------------------------------------------- keyboard

    def _kbd_reply(self, *values: int) -> None:
        self.kbd_queue.extend(values)
        self.kbd_last = values[-1]

    def _keyboard_command(self, value: int) -> None:
        pending = self.kbd_pending_cmd
        self.kbd_pending_cmd = None
        if pending == KBD_CMD_SET_LEDS:
            self.kbd_leds = value & 0x07
            self._kbd_reply(KBD_REPLY_ACK)
            return
        if pending == KBD_CMD_SET_RATE:
            self._kbd_reply(KBD_REPLY_ACK)
            return
        if pending == KBD_CMD_SCANSET:
            if value == 0:
                current = self.kbd_scanset
                if self.ctr & CTR_XLATE:
                    current = {1: 0x43, 2: 0x41, 3: 0x3F}[current]
                self._kbd_reply(KBD_REPLY_ACK, current)
            elif value in (1, 2, 3):
                self.kbd_scanset = value
                self._kbd_reply(KBD_REPLY_ACK)
            else:
                self._kbd_reply(KBD_REPLY_RESEND)
            return
        if value in (KBD_CMD_SET_LEDS, KBD_CMD_SET_RATE, KBD_CMD_SCANSET):
            self.kbd_pending_cmd = value
            self._kbd_reply(KBD_REPLY_ACK)
        elif value == KBD_CMD_ECHO:
            self._kbd_reply(KBD_CMD_ECHO)
        elif value == KBD_CMD_GET_ID:
            self._kbd_reply(KBD_REPLY_ACK, *(KBD_ID_XLATED if self.ctr & CTR_XLATE else KBD_ID))
        elif value == KBD_CMD_ENABLE:
            self.kbd_scanning = True
            self._kbd_reply(KBD_REPLY_ACK)
        elif value in (KBD_CMD_RESET_DISABLE, KBD_CMD_RESET_ENABLE):
            self.kbd_scanning = value == KBD_CMD_RESET_ENABLE
            self.kbd_leds = 0
            self.kbd_scanset = 2
            self.kbd_queue.clear()
            self._kbd_reply(KBD_REPLY_ACK)
        elif value == KBD_CMD_RESEND:
            self.kbd_queue.append(self.kbd_last)
        elif value == KBD_CMD_RESET:
            self.kbd_queue.clear()
            self.kbd_scanning = True
            self.kbd_leds = 0
            self.kbd_scanset = 2
            self._kbd_reply(KBD_REPLY_ACK, KBD_REPLY_POR)
        elif 0xF7 <= value <= 0xFD:
            self._kbd_reply(KBD_REPLY_ACK)  # per-key typematic settings: accepted, ignored
        else:
            log.debug("i8042: keyboard command %#x not understood", value)
            self._kbd_reply(KBD_REPLY_RESEND)

    # ---------------------------------------------------------------- snapshots

    def state(self) -> I8042State:
        return I8042State(
            ctr=self.ctr,
            ram=bytes(self.ram),
            status_flags=self.status_flags,
            output_port=self.output_port,
            pending_cmd=self.pending_cmd,
            obuf=self.obuf,
            obuf_aux=self.obuf_aux,
            ctrl_queue=bytes(self.ctrl_queue),
            kbd_queue=bytes(self.kbd_queue),
            aux_queue=bytes(self.aux_queue),
            kbd_scanning=self.kbd_scanning,
            kbd_pending_cmd=self.kbd_pending_cmd,
            kbd_leds=self.kbd_leds,
            kbd_scanset=self.kbd_scanset,
            kbd_last=self.kbd_last,
        )

    @classmethod
    def from_state(cls, state: I8042State, /, **injected: Any) -> I8042:
        """Rebuild from :meth:`state`; the output buffer's interrupt is raised again if due."""
        st = checked_state(state, I8042State, "i8042")
        dev = cls(**injected)
        try:
            dev.ctr = int(st.ctr) & 0xFF
            ram = bytes(st.ram)
            if len(ram) != len(dev.ram):
                raise ValueError(f"ram is {len(ram)} bytes")
            dev.ram[:] = ram
            dev.status_flags = int(st.status_flags) & (STR_SYS | STR_CMD | STR_UNLOCKED | STR_TIMEOUT)
            dev.output_port = int(st.output_port) & 0xFF
            dev.pending_cmd = None if st.pending_cmd is None else int(st.pending_cmd) & 0xFF
            dev.obuf = None if st.obuf is None else int(st.obuf) & 0xFF
            dev.obuf_aux = bool(st.obuf_aux)
            dev.ctrl_queue.extend(bytes(st.ctrl_queue))
            dev.kbd_queue.extend(bytes(st.kbd_queue))
            dev.aux_queue.extend(bytes(st.aux_queue))
            dev.kbd_scanning = bool(st.kbd_scanning)
            dev.kbd_pending_cmd = None if st.kbd_pending_cmd is None else int(st.kbd_pending_cmd) & 0xFF
            dev.kbd_leds = int(st.kbd_leds) & 0x07
            dev.kbd_scanset = int(st.kbd_scanset)
            if dev.kbd_scanset not in (1, 2, 3):
                raise ValueError(f"scan code set {dev.kbd_scanset}")
            dev.kbd_last = int(st.kbd_last) & 0xFF
        except (TypeError, ValueError) as err:
            raise DeviceError(f"i8042: invalid snapshot state: {err!r}") from err
        dev._refill()
        return dev


class PortA20Reset:
    """Port 0x92, "system control port A": fast A20 gate (bit 1) and fast CPU reset (bit 0).

    Writing bit 0 as 1 resets the machine (the bit is momentary and reads back 0).
    """

    def __init__(
        self,
        reset: Callable[[], None] | None = None,
        *,
        on_a20: Callable[[bool], None] | None = None,
    ) -> None:
        self._reset = reset
        self._on_a20 = on_a20
        self._warned: set[str] = set()
        self.value = PORT_A_A20  # A20 on, as firmware leaves it for a kernel

    @property
    def a20(self) -> bool:
        return bool(self.value & PORT_A_A20)

    def read(self, offset: int, size: int) -> int:
        if offset != 0 or size != 1:
            warn_once(log, self._warned, "port 0x92: %d-byte read at offset %d", size, offset)
            return (1 << (8 * size)) - 1 if 0 < size <= 8 else 0
        return self.value

    def write(self, offset: int, size: int, value: int) -> None:
        if offset != 0 or size != 1:
            warn_once(log, self._warned, "port 0x92: %d-byte write of %#x at offset %d", size, value, offset)
            return
        old = self.value
        self.value = value & 0xFF & ~PORT_A_RESET
        if (old ^ self.value) & PORT_A_A20:
            if not self.a20:
                warn_once(log, self._warned, "port 0x92: guest disabled A20; address wrap is not emulated")
            if self._on_a20 is not None:
                self._on_a20(self.a20)
        if value & PORT_A_RESET:
            log.info("port 0x92: guest requested a fast reset")
            if self._reset is None:
                warn_once(log, self._warned, "port 0x92: reset requested but no reset handler is connected")
            else:
                self._reset()

    def state(self) -> PortA20ResetState:
        return PortA20ResetState(value=self.value)

    @classmethod
    def from_state(cls, state: PortA20ResetState, /, **injected: Any) -> PortA20Reset:
        st = checked_state(state, PortA20ResetState, "port 0x92")
        dev = cls(**injected)
        try:
            dev.value = int(st.value) & 0xFF & ~PORT_A_RESET
        except (TypeError, ValueError) as err:
            raise DeviceError(f"port 0x92: invalid snapshot state: {err!r}") from err
        return dev


class PostCodePort:
    """Port 0x80: firmware POST codes (and Linux's I/O delay writes).  Keeps the last value.

    Every write is passed to ``on_code`` (which may log it: the machine does under ``--trace``);
    reads return the last code.  No logging call per write: Linux writes this port constantly.
    """

    def __init__(self, on_code: Callable[[int], None] | None = None) -> None:
        self._on_code = on_code
        self.last: int | None = None

    def read(self, offset: int, size: int) -> int:
        if self.last is None:
            return (1 << (8 * size)) - 1 if 0 < size <= 8 else 0
        return self.last & ((1 << (8 * size)) - 1) if 0 < size <= 8 else 0

    def write(self, offset: int, size: int, value: int) -> None:
        value &= (1 << (8 * size)) - 1 if 0 < size <= 8 else 0
        self.last = value
        if self._on_code is not None:
            self._on_code(value)

    def state(self) -> PostCodeState:
        return PostCodeState(last=self.last)

    @classmethod
    def from_state(cls, state: PostCodeState, /, **injected: Any) -> PostCodePort:
        st = checked_state(state, PostCodeState, "port 0x80")
        dev = cls(**injected)
        try:
            dev.last = None if st.last is None else int(st.last)
        except (TypeError, ValueError) as err:
            raise DeviceError(f"port 0x80: invalid snapshot state: {err!r}") from err
        return dev
