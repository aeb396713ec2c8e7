"""The loader protocol: ``load(memory, image, ...) -> LoadResult``, one module per format.

A loader puts the image (and what the format says comes with it: boot
information, command line, modules) into guest memory and says how the CPU
must start: in which mode, at which address, with which registers.  It never
touches a vCPU; :mod:`kvmlite.vmm.cpu_setup` turns a :class:`LoadResult` into
register state for either backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from kvmlite.errors import LoaderError


def encode_cmdline(cmdline: str) -> bytes:
    """The kernel command line as the bytes a boot protocol carries (UTF-8); a :class:`LoaderError`
    if it cannot be (a non-UTF-8 argument reaches Python as surrogates)."""
    try:
        return cmdline.encode()
    except UnicodeEncodeError as err:
        raise LoaderError(f"the kernel command line is not valid UTF-8 (at character {err.start})") from None


class EntryMode(Enum):
    REAL = "real"  # 16-bit real mode, CS:IP from the result
    PROTECTED32 = "protected32"  # flat 32-bit protected mode, paging off
    LONG64 = "long64"  # 64-bit long mode, identity-mapped first 4 GiB


@dataclass
class LoadResult:
    format: str  # "multiboot", "multiboot (a.out kludge)", "elf64", "boot sector", ...
    entry: int
    mode: EntryMode
    #: General registers to set at entry, by lower-case name ("eax", "ebx", "esp", "dl", ...).
    regs: dict[str, int] = field(default_factory=dict)
    #: For real mode: the CS selector (base = selector << 4); entry is then the IP.
    cs: int = 0
    #: Where the CPU set-up may put the flat GDT protected and long mode start with (up to 40 bytes).
    gdt: int = 0x500
    #: Guest-physical [start, end) ranges the image occupies, for messages and overlap checks.
    loaded: list[tuple[int, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
