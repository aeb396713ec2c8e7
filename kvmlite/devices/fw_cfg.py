"""QEMU's firmware configuration device, I/O port interface (0x510 selector, 0x511 data).

Firmware (SeaBIOS, OVMF, our own boot stubs) and Linux's ``qemu_fw_cfg``
driver find platform facts here rather than probing hardware.  Following
QEMU's ``docs/specs/fw_cfg.rst``:

* offset 0 (port 0x510) is the 16-bit selector, little-endian on x86; writing
  it resets the data offset to zero;
* offset 1 (port 0x511) is the 8-bit data register: each read returns the
  next byte of the selected item and past its end reads return 0; writes are
  ignored (QEMU stopped honouring them in v2.4; writes need DMA, not modelled);
* fixed items: signature "QEMU" (0x00), feature bitmap (0x01, u32 LE, only
  bit 0 "traditional interface"), RAM size (0x03, u64 LE), CPU counts (0x05
  and 0x0f, u16 LE), command line size and data (0x14 u32 LE, 0x15 NUL
  terminated);
* named files from 0x20 upwards, listed by the file directory (0x19), whose
  fields, unlike everything else, are big-endian: u32 count, then per file
  u32 size, u16 selector, u16 reserved, 56-byte NUL-padded name.
  Directory entries are sorted by name, as QEMU sorts them.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from typing import Any

from kvmlite.devices.base import DeviceState, checked_state
from kvmlite.errors import DeviceError

log = logging.getLogger(__name__)

# Offsets from port 0x510
SELECTOR_OFFSET = 0
DATA_OFFSET = 1

# Selector keys
FW_CFG_SIGNATURE = 0x00
FW_CFG_ID = 0x01
FW_CFG_UUID = 0x02
FW_CFG_RAM_SIZE = 0x03
FW_CFG_NB_CPUS = 0x05
FW_CFG_MAX_CPUS = 0x0F
FW_CFG_CMDLINE_SIZE = 0x14
FW_CFG_CMDLINE_DATA = 0x15
FW_CFG_FILE_DIR = 0x19
FW_CFG_FILE_FIRST = 0x20
FW_CFG_WRITE_CHANNEL = 0x4000  # bit 14: "write mode", ignored for reads
FW_CFG_ARCH_LOCAL = 0x8000
FW_CFG_ENTRY_MASK = 0xFFFF & ~FW_CFG_WRITE_CHANNEL
FW_CFG_MAX_ENTRY = 0x4000  # items per (generic, arch) space

SIGNATURE = b"QEMU"
ID_TRADITIONAL = 0x01  # bit 0: the port interface; bit 1 (DMA) stays clear
FILE_NAME_SIZE = 56  # including the terminating NUL
FILE_DIR_HEADER = struct.Struct(">I")
FILE_DIR_ENTRY = struct.Struct(">IHH56s")


@dataclass
class FwCfgState(DeviceState):
    """Every item the guest can read (by selector), the file directory's names, and the
    current selector and read offset."""

    selector: int = FW_CFG_SIGNATURE
    offset: int = 0
    items: dict[int, bytes] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)


class FwCfg:
    """The fw_cfg port pair.  Fixed items come from the constructor; files from :meth:`add_file`."""

    def __init__(
        self,
        ram_size: int = 0,
        nb_cpus: int = 1,
        max_cpus: int | None = None,
        cmdline: bytes | str = b"",
    ) -> None:
        if ram_size < 0 or not 1 <= nb_cpus <= 0xFFFF:
            raise DeviceError(f"fw_cfg: invalid ram_size {ram_size} or nb_cpus {nb_cpus}")
        max_cpus = nb_cpus if max_cpus is None else max_cpus
        if not nb_cpus <= max_cpus <= 0xFFFF:
            raise DeviceError(f"fw_cfg: max_cpus {max_cpus} must be between nb_cpus and 65535")
        self.items: dict[int, bytes] = {}
        self.files: dict[str, int] = {}  # name -> selector
        self.selector = FW_CFG_SIGNATURE
        self.offset = 0
        self._warned: set[str] = set()
        self.set_item(FW_CFG_SIGNATURE, SIGNATURE)
        self.set_item(FW_CFG_ID, struct.pack("<I", ID_TRADITIONAL))
        self.set_item(FW_CFG_RAM_SIZE, struct.pack("<Q", ram_size))
        self.set_item(FW_CFG_NB_CPUS, struct.pack("<H", nb_cpus))
        self.set_item(FW_CFG_MAX_CPUS, struct.pack("<H", max_cpus))
        self.set_cmdline(cmdline)
        self._rebuild_directory()

    # ---------------------------------------------------------------- host side

    def set_item(self, selector: int, data: bytes) -> None:
        """Set a well-known (non-file) item, e.g. FW_CFG_UUID."""
        key = selector & FW_CFG_ENTRY_MASK
        if not 0 <= selector <= 0xFFFF or (key & ~FW_CFG_ARCH_LOCAL) >= FW_CFG_MAX_ENTRY:
            raise DeviceError(f"fw_cfg: selector {selector:#x} out of range")
        if key == FW_CFG_FILE_DIR or key in self.files.values():
            raise DeviceError(f"fw_cfg: selector {selector:#x} is managed by the file directory")
        self.items[key] = bytes(data)

    def set_cmdline(self, cmdline: bytes | str) -> None:
        """Kernel command line, stored NUL terminated with its size (including the NUL), as QEMU does."""
        try:
            raw = cmdline.encode() if isinstance(cmdline, str) else bytes(cmdline)
        except UnicodeEncodeError as err:
            raise DeviceError(f"fw_cfg: the command line is not UTF-8 (at character {err.start})") from None
        if b"\0" in raw:
            raise DeviceError("fw_cfg: command line contains a NUL byte")
        data = raw + b"\0" if raw else b""
        self.items[FW_CFG_CMDLINE_SIZE] = struct.pack("<I", len(data))
        self.items[FW_CFG_CMDLINE_DATA] = data

    def add_file(self, name: str, data: bytes) -> int:
        """Publish ``data`` as file ``name`` (e.g. "opt/org.kvmlite/x"); return its selector."""
        try:
            raw = name.encode("ascii")
        except UnicodeEncodeError as err:
            raise DeviceError(f"fw_cfg: file name {name!r} is not ASCII") from err
        if not raw or len(raw) >= FILE_NAME_SIZE or b"\0" in raw:
            raise DeviceError(f"fw_cfg: file name {name!r} must be 1-{FILE_NAME_SIZE - 1} bytes without NUL")
        if name in self.files:
            raise DeviceError(f"fw_cfg: file {name!r} already exists")
        if len(data) > 0xFFFFFFFF:
            raise DeviceError(f"fw_cfg: file {name!r} is larger than 4 GiB")
        selector = FW_CFG_FILE_FIRST
        while selector in self.items:
            selector += 1
        if selector >= FW_CFG_MAX_ENTRY:
            raise DeviceError("fw_cfg: no free file selectors")
        self.files[name] = selector
        self.items[selector] = bytes(data)
        self._rebuild_directory()
        return selector

    def _rebuild_directory(self) -> None:
        entries = [
            FILE_DIR_ENTRY.pack(len(self.items[sel]), sel, 0, name.encode("ascii"))
            for name, sel in sorted(self.files.items())
        ]
        self.items[FW_CFG_FILE_DIR] = FILE_DIR_HEADER.pack(len(entries)) + b"".join(entries)

    # ---------------------------------------------------------------- bus side

    def read(self, offset: int, size: int) -> int:
        if offset != DATA_OFFSET or not 0 < size <= 8:
            self._warn_once(
                f"read{offset}", "fw_cfg: %d-byte read at offset %d (selector is write-only)", size, offset
            )
            return (1 << (8 * size)) - 1 if 0 < size <= 8 else 0
        item = self.items.get(self.selector & FW_CFG_ENTRY_MASK, b"")
        chunk = item[self.offset : self.offset + size]
        self.offset += size
        # Bytes in increasing address order (memcpy-like); past the end reads 0.
        return int.from_bytes(chunk.ljust(size, b"\0"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == SELECTOR_OFFSET and size in (1, 2):
            if size == 1:
                self._warn_once("sel1", "fw_cfg: 1-byte selector write %#x; the selector is 16-bit", value)
            self.selector = value & 0xFFFF
            self.offset = 0
            return
        if offset == DATA_OFFSET:
            self._warn_once("data", "fw_cfg: data register writes are ignored (value %#x)", value)
            return
        self._warn_once(f"write{offset}", "fw_cfg: %d-byte write at offset %d ignored", size, offset)

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    # ---------------------------------------------------------------- snapshots

    def state(self) -> FwCfgState:
        return FwCfgState(
            selector=self.selector, offset=self.offset, items=dict(self.items), files=dict(self.files)
        )

    @classmethod
    def from_state(cls, state: FwCfgState, /, **injected: Any) -> FwCfg:
        """Rebuild from :meth:`state`: every item and file as they were, and the read position."""
        st = checked_state(state, FwCfgState, "fw_cfg")
        dev = cls(**injected)
        try:
            dev.items = {int(k): bytes(v) for k, v in st.items.items()}
            dev.files = {str(k): int(v) for k, v in st.files.items()}
            dev.selector = int(st.selector) & 0xFFFF
            dev.offset = int(st.offset)
            if dev.offset < 0 or any(sel not in dev.items for sel in dev.files.values()):
                raise ValueError("offset negative or file without data")
        except (TypeError, ValueError, AttributeError) as err:
            raise DeviceError(f"fw_cfg: invalid snapshot state: {err!r}") from err
        return dev
