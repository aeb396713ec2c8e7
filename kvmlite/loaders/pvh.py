"""PVH boot: an uncompressed ``vmlinux`` ELF entered in 32-bit protected mode with a start-info page.

Xen's PVH boot ABI (``xen/include/public/arch-x86/hvm/start_info.h``), which
Linux (``CONFIG_PVH``), QEMU's ``-kernel`` on an ELF and Firecracker also
speak: the kernel announces a 32-bit physical entry point in an ELF note
(owner "Xen", type ``XEN_ELFNOTE_PHYS32_ENTRY``); the loader puts the
PT_LOAD segments at their physical addresses and jumps there in flat 32-bit
protected mode, paging off, with EBX holding the address of a
``struct hvm_start_info`` that gives the command line, the modules (the
initrd) and the memory map.  No zero page, no decompressor, no real mode:
the shortest way into Linux, which matters where CPL 0 code is emulated.

The memory map is :func:`kvmlite.loaders.multiboot.e820_map`, the same one
the multiboot and bzImage loaders give, as ``hvm_memmap_table_entry``
records (their types are e820's).  ``rsdp_paddr`` is the ``rsdp`` argument:
the address of the RSDP :mod:`kvmlite.firmware.acpi` wrote (0: none).

Fixed low addresses (clear of :mod:`kvmlite.loaders.layout`, which ends at
0x10000, and of the EBDA at 0x9FC00; the same region the bzImage loader
uses for its zero page, as a guest is booted by only one of them)::

    0x10000   struct hvm_start_info (56 bytes)           START_INFO_ADDR
    0x10040   hvm_modlist_entry[1] (the initrd)          MODLIST_ADDR
    0x10100   hvm_memmap_table_entry[up to 128]          MEMMAP_ADDR
    0x20000   kernel command line, NUL-terminated        CMDLINE_ADDR

Checked against a real kernel: the vmlinux that
:func:`kvmlite.tools.extract_vmlinux.extract_vmlinux` takes out of Debian's
6.1 cloud bzImage boots this way under kvmlite's KVM backend, finding the
command line, memory map and initrd, well past ``start_kernel``.
"""

from __future__ import annotations

import ctypes
import logging

from kvmlite.errors import ElfError, GuestMemoryError
from kvmlite.loaders import layout as L
from kvmlite.loaders.base import EntryMode, LoadResult, encode_cmdline
from kvmlite.loaders.elf import EM_386, EM_X86_64, ElfImage, parse_elf
from kvmlite.loaders.multiboot import E820_RAM, e820_map
from kvmlite.memory.guest import PAGE_SIZE, GuestMemory

log = logging.getLogger(__name__)

XEN_NOTE_OWNER = b"Xen"
XEN_ELFNOTE_PHYS32_ENTRY = 18
HVM_START_MAGIC = 0x336E_C578
HVM_START_VERSION = 1  # version 1 adds memmap_paddr/memmap_entries

START_INFO_ADDR = 0x1_0000
MODLIST_ADDR = 0x1_0040
MEMMAP_ADDR = 0x1_0100
MEMMAP_MAX_ENTRIES = 128
CMDLINE_ADDR = 0x2_0000
CMDLINE_MAX = 0x1_0000  # NUL included
FOUR_GIB = 1 << 32
MIB = 1 << 20


class HvmStartInfo(ctypes.LittleEndianStructure):
    """``struct hvm_start_info``: what EBX points at on entry."""

    _fields_ = [
        ("magic", ctypes.c_uint32),  # 0x00
        ("version", ctypes.c_uint32),  # 0x04
        ("flags", ctypes.c_uint32),  # 0x08
        ("nr_modules", ctypes.c_uint32),  # 0x0c
        ("modlist_paddr", ctypes.c_uint64),  # 0x10
        ("cmdline_paddr", ctypes.c_uint64),  # 0x18
        ("rsdp_paddr", ctypes.c_uint64),  # 0x20
        ("memmap_paddr", ctypes.c_uint64),  # 0x28 (version 1)
        ("memmap_entries", ctypes.c_uint32),  # 0x30 (version 1)
        ("reserved", ctypes.c_uint32),  # 0x34
    ]


class HvmModlistEntry(ctypes.LittleEndianStructure):
    """``struct hvm_modlist_entry``: one module (kvmlite passes the initrd as the only one)."""

    _fields_ = [
        ("paddr", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("cmdline_paddr", ctypes.c_uint64),
        ("reserved", ctypes.c_uint64),
    ]


class HvmMemmapTableEntry(ctypes.LittleEndianStructure):
    """``struct hvm_memmap_table_entry``: an e820 entry with explicit padding."""

    _fields_ = [
        ("addr", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("type", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


def pvh_entry(data: bytes, elf: ElfImage | None = None) -> int | None:
    """The 32-bit physical entry of the PVH note, or None if the ELF has no such note."""
    elf = elf or parse_elf(data)
    for name, kind, desc in elf.notes(data):
        if name == XEN_NOTE_OWNER and kind == XEN_ELFNOTE_PHYS32_ENTRY:
            if len(desc) not in (4, 8):
                raise ElfError(f"the PVH entry note holds {len(desc)} bytes, not a 4- or 8-byte address")
            entry = int.from_bytes(desc, "little")
            if entry >= FOUR_GIB:
                raise ElfError(f"the PVH entry {entry:#x} lies above 4 GiB: it must be a 32-bit address")
            return entry
    return None


def has_pvh_note(data: bytes) -> bool:
    """True for an ELF with a Xen PHYS32_ENTRY note (a malformed ELF is not one)."""
    try:
        return pvh_entry(data) is not None
    except ElfError:
        return False


def _place_initrd(memory: GuestMemory, size: int, kernel_end: int) -> int:
    """Highest page-aligned spot for ``size`` bytes in RAM above the kernel and below 4 GiB."""
    best = None
    for base, length, kind in e820_map(memory):
        end = min(base + length, FOUR_GIB)
        if kind != E820_RAM or base < L.HIMEM or end - size < 0:
            continue
        addr = (end - size) & ~(PAGE_SIZE - 1)
        if addr >= max(base, kernel_end):
            best = max(best or 0, addr)
    if best is None:
        raise ElfError(
            f"initrd of {size} bytes ({size / MIB:.1f} MiB) does not fit in RAM between the kernel's end "
            f"at {kernel_end:#x} and 4 GiB: give more --memory"
        )
    return best


def load(
    memory: GuestMemory, data: bytes, cmdline: str = "", initrd: bytes | None = None, rsdp: int = 0
) -> LoadResult:
    """Load a PVH-capable ELF kernel by physical address; build hvm_start_info; enter at the note's entry.

    ``rsdp``: guest-physical address of the ACPI RSDP, passed in ``rsdp_paddr`` (0: none).
    """
    elf = parse_elf(data)
    if elf.machine not in (EM_X86_64, EM_386):
        raise ElfError(f"not an x86 kernel (ELF machine {elf.machine})")
    entry = pvh_entry(data, elf)
    if entry is None:
        raise ElfError("the ELF has no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): not a PVH kernel")
    segments = elf.load_segments()
    if not segments:
        raise ElfError("the PVH kernel has no loadable segments")
    raw_cmdline = encode_cmdline(cmdline)
    if len(raw_cmdline) + 1 > CMDLINE_MAX:
        raise ElfError(
            f"command line of {len(raw_cmdline)} bytes exceeds the {CMDLINE_MAX - 1} kvmlite reserves for it"
        )
    if b"\0" in raw_cmdline:
        raise ElfError("the command line contains a NUL byte")

    loaded = []
    for seg in segments:
        end = seg.paddr + seg.memsz
        if seg.paddr < L.HIMEM:
            raise ElfError(
                f"segment at physical {seg.paddr:#x} lies below 1 MiB, "
                "where kvmlite keeps its boot structures"
            )
        if end > FOUR_GIB:
            raise ElfError(f"segment at physical {seg.paddr:#x} reaches above 4 GiB: PVH entry is 32-bit")
        if not memory.is_ram(seg.paddr, seg.memsz):
            raise ElfError(
                f"segment at {seg.paddr:#x}..{end:#x} does not fit in guest RAM "
                f"({memory.size // MIB} MiB): give at least {-(-end // MIB) + 1} MiB of --memory"
            )
        loaded.append((seg.paddr, end))
    if not any(start <= entry < end for start, end in loaded):
        raise ElfError(f"the PVH entry {entry:#x} is outside every loadable segment")
    kernel_end = max(end for _, end in loaded)

    entries = e820_map(memory)
    if len(entries) > MEMMAP_MAX_ENTRIES:
        raise ElfError(f"{len(entries)} memory map entries exceed the {MEMMAP_MAX_ENTRIES} kvmlite reserves")
    try:
        for seg in segments:
            memory.write(seg.paddr, data[seg.offset : seg.offset + seg.filesz])
            memory.fill(seg.paddr + seg.filesz, seg.memsz - seg.filesz)
        info = HvmStartInfo(magic=HVM_START_MAGIC, version=HVM_START_VERSION, rsdp_paddr=rsdp)
        if initrd:
            addr = _place_initrd(memory, len(initrd), kernel_end)
            memory.write(addr, initrd)
            memory.write(MODLIST_ADDR, bytes(HvmModlistEntry(paddr=addr, size=len(initrd))))
            info.nr_modules, info.modlist_paddr = 1, MODLIST_ADDR
            loaded.append((addr, addr + len(initrd)))
            log.debug("initrd of %d bytes at %#x", len(initrd), addr)
        memory.write(CMDLINE_ADDR, raw_cmdline + b"\0")
        info.cmdline_paddr = CMDLINE_ADDR
        memmap = b"".join(bytes(HvmMemmapTableEntry(base, size, kind)) for base, size, kind in entries)
        memory.write(MEMMAP_ADDR, memmap)
        info.memmap_paddr, info.memmap_entries = MEMMAP_ADDR, len(entries)
        memory.write(START_INFO_ADDR, bytes(info))
    except GuestMemoryError as err:
        raise ElfError(f"does not fit in guest memory: {err}") from err
    loaded += [
        (START_INFO_ADDR, MEMMAP_ADDR + len(memmap)),
        (CMDLINE_ADDR, CMDLINE_ADDR + len(raw_cmdline) + 1),
    ]

    return LoadResult(
        format=f"ELF{elf.bits} PVH",
        entry=entry,
        mode=EntryMode.PROTECTED32,
        regs={"ebx": START_INFO_ADDR},
        loaded=loaded,
        notes=[] if initrd is None or initrd else ["the initrd is empty: no module passed to the kernel"],
    )
