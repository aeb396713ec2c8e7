"""Real-mode boot sectors: a flat image ending its first 512 bytes with 0x55 0xAA, loaded at 0x7c00.

The guest starts as a BIOS would leave it: real mode, CS:IP = 0000:7C00,
DL = 0x80 (first hard disk), SS:SP = 0000:7C00.  There is no BIOS behind it:
only ports and memory, so the code talks to the UART directly.
"""

from __future__ import annotations

from kvmlite.errors import LoaderError
from kvmlite.loaders import layout as L
from kvmlite.loaders.base import EntryMode, LoadResult
from kvmlite.memory.guest import GuestMemory

SIGNATURE = b"\x55\xaa"
MAX_SIZE = 0x8000  # what fits between 0x7c00 and the multiboot info area and more than any boot sector needs


def looks_like(data: bytes) -> bool:
    return 512 <= len(data) <= MAX_SIZE and data[510:512] == SIGNATURE


def load(memory: GuestMemory, data: bytes) -> LoadResult:
    if not looks_like(data):
        raise LoaderError(
            f"not a boot sector: need 512..{MAX_SIZE} bytes with 55 AA at offset 510 (got {len(data)} bytes)"
        )
    memory.write(L.BOOTSECTOR_ADDR, data)
    return LoadResult(
        format="boot sector",
        entry=L.BOOTSECTOR_ADDR,
        mode=EntryMode.REAL,
        cs=0,
        regs={"edx": 0x80, "esp": L.BOOTSECTOR_ADDR},
        loaded=[(L.BOOTSECTOR_ADDR, L.BOOTSECTOR_ADDR + len(data))],
    )
