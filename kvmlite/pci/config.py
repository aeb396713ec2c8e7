"""A PCI function's configuration space: the type-0 header, BARs with size probing, capabilities.

The space is plain bytes with three per-byte masks, the way a specification
table reads: ``wmask`` (bits the guest may write), ``w1cmask`` (bits a
guest write of 1 clears, as in the status register) and everything else
read-only.  What a register *does* when written (a BAR moves, decoding
turns on, MSI-X gets masked) is not here: the device and the bus
(:mod:`kvmlite.pci.bus`) look at the space after each write.

BAR sizing works as on hardware: a BAR's address bits below its size are
read-only zeros, so writing all ones and reading back gives ``~(size - 1)``
with the type bits.  A 64-bit BAR takes two registers; the upper one's bits
are all writable.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kvmlite.errors import DeviceError

CONFIG_SIZE = 256
"""Conventional PCI configuration space (ECAM gives 4 KiB per function; the rest reads 0)."""

# --- type-0 header offsets --------------------------------------------------------------------
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION_ID, CLASS_PROG, CLASS_DEVICE = 0x08, 0x09, 0x0A  # CLASS_DEVICE: subclass, then base class
CACHE_LINE_SIZE, LATENCY_TIMER, HEADER_TYPE, BIST = 0x0C, 0x0D, 0x0E, 0x0F
BAR0 = 0x10
BAR_COUNT = 6
SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID = 0x2C, 0x2E
ROM_ADDRESS = 0x30
CAPABILITY_LIST = 0x34
INTERRUPT_LINE, INTERRUPT_PIN = 0x3C, 0x3D
HEADER_END = 0x40  # capabilities start here

# --- command and status bits ------------------------------------------------------------------
COMMAND_IO = 1 << 0
COMMAND_MEMORY = 1 << 1
COMMAND_MASTER = 1 << 2
COMMAND_PARITY = 1 << 6
COMMAND_SERR = 1 << 8
COMMAND_INTX_DISABLE = 1 << 10
COMMAND_WRITABLE = (
    COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_PARITY | COMMAND_SERR | COMMAND_INTX_DISABLE
)
STATUS_INTERRUPT = 1 << 3
STATUS_CAP_LIST = 1 << 4
#: Error bits a guest clears by writing 1 (parity, target/master aborts, SERR, parity error).
STATUS_W1C = 0xF900

HEADER_TYPE_NORMAL = 0x00
HEADER_TYPE_MULTIFUNCTION = 0x80
INTERRUPT_PIN_INTA = 1

# --- BAR type bits ------------------------------------------------------------------------------
BAR_IO = 0x1
BAR_MEM_TYPE_64 = 0x4
BAR_MEM_PREFETCH = 0x8
BAR_IO_MASK = ~0x3 & 0xFFFF_FFFF
BAR_MEM_MASK = ~0xF & 0xFFFF_FFFF

# --- capability IDs -----------------------------------------------------------------------------
CAP_ID_MSI = 0x05
CAP_ID_VENDOR = 0x09
CAP_ID_PCIE = 0x10
CAP_ID_MSIX = 0x11


class BarKind(enum.Enum):
    IO = "io"
    MEM32 = "mem32"
    MEM64 = "mem64"


@dataclass(frozen=True)
class BarSpec:
    """What a device declares about one BAR: its register index, size (a power of 2) and kind."""

    index: int
    size: int
    kind: BarKind = BarKind.MEM32
    prefetchable: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.index < BAR_COUNT or (self.kind is BarKind.MEM64 and self.index == BAR_COUNT - 1):
            raise DeviceError(f"PCI BAR index {self.index} does not fit a type-0 header")
        minimum = 4 if self.kind is BarKind.IO else 16
        if self.size < minimum or self.size & (self.size - 1):
            raise DeviceError(f"PCI BAR {self.index}: size {self.size:#x} is not a power of 2 >= {minimum}")

    @property
    def flags(self) -> int:
        if self.kind is BarKind.IO:
            return BAR_IO
        flags = BAR_MEM_TYPE_64 if self.kind is BarKind.MEM64 else 0
        return flags | (BAR_MEM_PREFETCH if self.prefetchable else 0)


class ConfigSpace:
    """256 bytes of configuration space with write and write-1-to-clear masks."""

    def __init__(
        self,
        vendor_id: int,
        device_id: int,
        class_code: int,
        revision: int = 0,
        subsystem_vendor_id: int = 0,
        subsystem_id: int = 0,
        header_type: int = HEADER_TYPE_NORMAL,
        interrupt_pin: int = 0,
    ) -> None:
        self.data = bytearray(CONFIG_SIZE)
        self.wmask = bytearray(CONFIG_SIZE)
        self.w1cmask = bytearray(CONFIG_SIZE)
        self.bars: dict[int, BarSpec] = {}
        self._next_cap = HEADER_END
        self._last_cap_next = CAPABILITY_LIST  # where the next capability's offset is linked in
        self.set(VENDOR_ID, 2, vendor_id)
        self.set(DEVICE_ID, 2, device_id)
        self.set(REVISION_ID, 1, revision)
        self.set(CLASS_PROG, 3, class_code)
        self.set(HEADER_TYPE, 1, header_type)
        self.set(SUBSYSTEM_VENDOR_ID, 2, subsystem_vendor_id)
        self.set(SUBSYSTEM_ID, 2, subsystem_id)
        self.set(INTERRUPT_PIN, 1, interrupt_pin)
        self.set_mask(COMMAND, 2, COMMAND_WRITABLE)
        self.set_mask(STATUS, 2, STATUS_W1C, self.w1cmask)
        self.set_mask(CACHE_LINE_SIZE, 1, 0xFF)
        self.set_mask(LATENCY_TIMER, 1, 0xFF)
        self.set_mask(INTERRUPT_LINE, 1, 0xFF)

    # --- device side: no masks ---------------------------------------------------------------
    def get(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset : offset + size], "little")

    def set(self, offset: int, size: int, value: int) -> None:
        self.data[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def set_mask(self, offset: int, size: int, value: int, mask: bytearray | None = None) -> None:
        target = self.wmask if mask is None else mask
        target[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def add_bar(self, spec: BarSpec) -> None:
        """Declare a BAR: its type bits read-only, its address bits above the size writable."""
        reg = BAR0 + 4 * spec.index
        taken = set(self.bars) | {i + 1 for i, b in self.bars.items() if b.kind is BarKind.MEM64}
        wanted = {spec.index, spec.index + 1} if spec.kind is BarKind.MEM64 else {spec.index}
        if taken & wanted:
            raise DeviceError(f"PCI BAR {spec.index} is already in use")
        self.bars[spec.index] = spec
        self.set(reg, 4, spec.flags)
        low_mask = BAR_IO_MASK if spec.kind is BarKind.IO else BAR_MEM_MASK
        self.set_mask(reg, 4, low_mask & ~(spec.size - 1))
        if spec.kind is BarKind.MEM64:
            self.set_mask(reg + 4, 4, ~((spec.size - 1) >> 32))

    def bar_address(self, index: int) -> int:
        """The address the BAR holds now (whatever decoding says)."""
        spec = self.bars[index]
        reg = BAR0 + 4 * index
        low = self.get(reg, 4) & (BAR_IO_MASK if spec.kind is BarKind.IO else BAR_MEM_MASK)
        if spec.kind is BarKind.MEM64:
            low |= self.get(reg + 4, 4) << 32
        return low

    def set_bar_address(self, index: int, address: int) -> None:
        """Program a BAR as firmware would (the VMM's initial assignment)."""
        spec = self.bars[index]
        reg = BAR0 + 4 * index
        self.set(reg, 4, (address & 0xFFFF_FFFF & ~(spec.size - 1)) | spec.flags)
        if spec.kind is BarKind.MEM64:
            self.set(reg + 4, 4, address >> 32)

    def add_capability(self, cap_id: int, body: bytes, wmask: bytes = b"") -> int:
        """Append a capability (``body`` follows the ID and next-pointer bytes); returns its offset."""
        offset = self._next_cap
        end = offset + 2 + len(body)
        if end > CONFIG_SIZE:
            raise DeviceError(f"PCI capability {cap_id:#x} does not fit in configuration space")
        self.data[offset] = cap_id
        self.data[offset + 1] = 0
        self.data[offset + 2 : end] = body
        if wmask:
            self.wmask[offset + 2 : offset + 2 + len(wmask)] = wmask
        self.data[self._last_cap_next] = offset
        self._last_cap_next = offset + 1
        self._next_cap = (end + 3) & ~3
        self.set(STATUS, 2, self.get(STATUS, 2) | STATUS_CAP_LIST)
        return offset

    def capabilities(self) -> list[tuple[int, int]]:
        """(offset, ID) of each capability, following the list as a guest does."""
        out: list[tuple[int, int]] = []
        offset = self.data[CAPABILITY_LIST] if self.get(STATUS, 2) & STATUS_CAP_LIST else 0
        while offset and len(out) < 48:
            out.append((offset, self.data[offset]))
            offset = self.data[offset + 1]
        return out

    # --- guest side ------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        """A guest read; bytes past the 256 of conventional space read 0."""
        if offset >= CONFIG_SIZE:
            return 0
        return int.from_bytes(self.data[offset : offset + size].ljust(size, b"\0"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write: writable bits take the value, W1C bits written 1 clear, the rest stay."""
        for i in range(size):
            at = offset + i
            if at >= CONFIG_SIZE:
                break
            byte = (value >> (8 * i)) & 0xFF
            wm, w1c = self.wmask[at], self.w1cmask[at]
            self.data[at] = ((self.data[at] & ~wm) | (byte & wm)) & ~(byte & w1c) & 0xFF

    @property
    def command(self) -> int:
        return self.get(COMMAND, 2)


def touches(offset: int, size: int, start: int, length: int) -> bool:
    """Whether an access of ``size`` bytes at ``offset`` touches [start, start+length)."""
    return offset < start + length and start < offset + size
