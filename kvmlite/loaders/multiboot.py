"""Multiboot v1 loader: ELF32 kernels as QEMU's ``-kernel`` takes them, and the a.out kludge.

The kernel starts in flat 32-bit protected mode with EAX=0x2BADB002 and EBX
pointing at a multiboot information structure holding mem_lower/mem_upper,
a memory map, the command line as QEMU and GRUB pass it
(``"<kernel path> <args>"``), the boot loader name and the modules.

The rest of the entry state is what QEMU's multiboot option ROM leaves (it
jumps to the kernel with ``jmp *%ecx`` while still on SeaBIOS's stack): ECX
holds the entry address and ESP is :data:`~kvmlite.loaders.layout.MULTIBOOT_ENTRY_ESP`
(0x6F08), so a kernel that calls a function before loading its own stack
works as it does under QEMU and GRUB.  CR0, the GDT and the IDT register are
set by :mod:`kvmlite.vmm.cpu_setup`; EDX, ESI, EDI and EBP hold firmware
leftovers under QEMU (EDX varies with the RAM size) and are left as the
vCPU's reset state gives them.  tests/test_multiboot_entry.py compares every
register with QEMU's.

The memory map and mem_upper follow what the same kernel sees under
``qemu-system-x86_64`` (SeaBIOS' e820 table), so a test kernel prints the same
numbers under both.

As under QEMU, a kernel may load anywhere in RAM, low memory included: the
information structure, its strings and memory map, and the GDT kvmlite
enters protected mode with all go in one block placed after the kernel and
its modules.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from kvmlite.errors import ElfError, GuestMemoryError, MultibootError
from kvmlite.loaders import layout as L
from kvmlite.loaders.base import EntryMode, LoadResult
from kvmlite.loaders.elf import ELFCLASS32, EM_386, is_elf, parse_elf
from kvmlite.memory.guest import PAGE_SIZE, GuestMemory

MULTIBOOT_HEADER_MAGIC = 0x1BADB002
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002
MULTIBOOT_SEARCH = 8192

# header flags
MBH_PAGE_ALIGN = 1 << 0
MBH_MEMORY_INFO = 1 << 1
MBH_VIDEO_MODE = 1 << 2
MBH_AOUT_KLUDGE = 1 << 16
_MBH_KNOWN_REQUIRED = MBH_PAGE_ALIGN | MBH_MEMORY_INFO | MBH_VIDEO_MODE

# info flags
MBI_MEMORY = 1 << 0
MBI_BOOT_DEVICE = 1 << 1
MBI_CMDLINE = 1 << 2
MBI_MODS = 1 << 3
MBI_MMAP = 1 << 6
MBI_BOOT_LOADER_NAME = 1 << 9

MBI_SIZE = 88
MBI_OFF_FLAGS, MBI_OFF_MEM_LOWER, MBI_OFF_MEM_UPPER, MBI_OFF_BOOT_DEVICE = 0, 4, 8, 12
MBI_OFF_CMDLINE, MBI_OFF_MODS_COUNT, MBI_OFF_MODS_ADDR = 16, 20, 24
MBI_OFF_MMAP_LENGTH, MBI_OFF_MMAP_ADDR, MBI_OFF_BOOT_LOADER_NAME = 44, 48, 64
BOOT_DEVICE_NONE = 0x8000FFFF  # "first hard disk, no partition": what QEMU passes
BOOT_LOADER_NAME = b"kvmlite\0"

# The boot block after the kernel and modules: offsets of its parts
BLOCK_INFO, BLOCK_GDT, BLOCK_MMAP, BLOCK_MODULES, BLOCK_STRINGS = 0x0, 0x80, 0x100, 0x400, 0xC00
BLOCK_SIZE = BLOCK_STRINGS + L.BOOT_CMDLINE_MAX
MAX_MODULES = (BLOCK_STRINGS - BLOCK_MODULES) // 16

E820_RAM, E820_RESERVED = 1, 2
#: SeaBIOS keeps the top 128 KiB of low RAM for itself and marks it reserved.
BIOS_HIGH_RESERVED = 0x20000
BIOS_ROM = (0xFFFC_0000, 0x4_0000)
#: QEMU (7.1 and later) reserves the HyperTransport hole of AMD systems, just below 1 TiB.
HT_HOLE = (0xFD_0000_0000, 0x3_0000_0000)

#: Bytes below the entry ESP that a kernel loaded there would overwrite with its first pushes (a warning).
ENTRY_STACK_CHECK = 0x400

_HEADER = struct.Struct("<III")
_AOUT = struct.Struct("<IIIII")
_MMAP_ENTRY = struct.Struct("<IQQI")
_MODULE = struct.Struct("<IIII")


@dataclass(frozen=True)
class MultibootHeader:
    offset: int
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0


def find_header(data: bytes) -> MultibootHeader | None:
    """The multiboot header in the first 8 KiB (4-byte aligned, checksum valid), or None."""
    limit = min(len(data), MULTIBOOT_SEARCH) - _HEADER.size
    for off in range(0, limit + 1, 4):
        magic, flags, checksum = _HEADER.unpack_from(data, off)
        if magic == MULTIBOOT_HEADER_MAGIC and (magic + flags + checksum) & 0xFFFF_FFFF == 0:
            if flags & MBH_AOUT_KLUDGE:
                if off + 12 + _AOUT.size > len(data):
                    raise MultibootError("multiboot header with the a.out kludge is truncated")
                return MultibootHeader(off, flags, *_AOUT.unpack_from(data, off + 12))
            return MultibootHeader(off, flags)
    return None


def e820_map(memory: GuestMemory) -> list[tuple[int, int, int]]:
    """(base, length, type) entries as SeaBIOS reports them under QEMU for this RAM layout."""
    below_4g = sum(r.size for r in memory if r.end <= 1 << 32)
    above_4g = sum(r.size for r in memory if r.start >= 1 << 32)
    entries = [(0, L.LOW_RAM_END, E820_RAM), (L.LOW_RAM_END, 0xA0000 - L.LOW_RAM_END, E820_RESERVED)]
    entries.append((0xF0000, 0x10000, E820_RESERVED))
    if below_4g > L.HIMEM + BIOS_HIGH_RESERVED:
        entries.append((L.HIMEM, below_4g - L.HIMEM - BIOS_HIGH_RESERVED, E820_RAM))
        entries.append((below_4g - BIOS_HIGH_RESERVED, BIOS_HIGH_RESERVED, E820_RESERVED))
    entries.append((*BIOS_ROM, E820_RESERVED))
    if above_4g:
        entries.append((1 << 32, above_4g, E820_RAM))
    entries.append((*HT_HOLE, E820_RESERVED))
    return sorted(entries)


def mem_lower_upper(entries: list[tuple[int, int, int]]) -> tuple[int, int]:
    """mem_lower and mem_upper in KiB as the multiboot spec defines them, from the memory map.

    Lower memory is the RAM starting at address 0; upper memory the RAM starting
    at 1 MiB up to the first hole.  (QEMU's multiboot ROM computes them the same way.)
    """
    lower = next((length for base, length, kind in entries if base == 0 and kind == E820_RAM), 0)
    upper = next((length for base, length, kind in entries if base == L.HIMEM and kind == E820_RAM), 0)
    return lower // 1024, upper // 1024


def _load_elf(memory: GuestMemory, data: bytes) -> tuple[int, int, int]:
    """Load an ELF32 multiboot kernel by physical address; returns (entry, lowest, end)."""
    try:
        elf = parse_elf(data)
    except ElfError as err:
        raise MultibootError(f"bad ELF kernel: {err}") from err
    if elf.bits != 32 or data[4] != ELFCLASS32 or elf.machine != EM_386:
        raise MultibootError("multiboot ELF kernels must be ELF32 for i386")
    segments = elf.load_segments()
    if not segments:
        raise MultibootError("ELF kernel has no loadable segments")
    for seg in segments:
        _check_target(memory, seg.paddr, seg.memsz, "ELF segment")
        memory.write(seg.paddr, data[seg.offset : seg.offset + seg.filesz])
        memory.fill(seg.paddr + seg.filesz, seg.memsz - seg.filesz)
    entry = elf.entry
    # A kernel linked high (vaddr != paddr) gives a virtual entry point: translate it as QEMU does.
    if not any(s.paddr <= entry < s.paddr + s.memsz for s in segments):
        for s in segments:
            if s.vaddr <= entry < s.vaddr + s.memsz:
                entry = entry - s.vaddr + s.paddr
                break
        else:
            raise MultibootError(f"ELF entry point {elf.entry:#x} is outside every loadable segment")
    return entry, min(s.paddr for s in segments), max(s.paddr + s.memsz for s in segments)


def _load_aout(memory: GuestMemory, data: bytes, h: MultibootHeader) -> tuple[int, int, int]:
    if h.header_addr < h.load_addr:
        raise MultibootError("a.out kludge: header_addr lies below load_addr")
    file_start = h.offset - (h.header_addr - h.load_addr)
    if file_start < 0:
        raise MultibootError("a.out kludge: load_addr would start before the file")
    if h.load_end_addr:
        if h.load_end_addr < h.load_addr:
            raise MultibootError("a.out kludge: load_end_addr lies below load_addr")
        length = h.load_end_addr - h.load_addr
        if file_start + length > len(data):
            raise MultibootError("a.out kludge: load_end_addr lies beyond the end of the file (truncated?)")
    else:
        length = len(data) - file_start
    end = h.load_addr + length
    bss_end = max(h.bss_end_addr, end) if h.bss_end_addr else end
    _check_target(memory, h.load_addr, bss_end - h.load_addr, "a.out image")
    memory.write(h.load_addr, data[file_start : file_start + length])
    memory.fill(end, bss_end - end)
    if not h.load_addr <= h.entry_addr < bss_end:
        raise MultibootError(f"a.out kludge: entry {h.entry_addr:#x} is outside the loaded image")
    return h.entry_addr, h.load_addr, bss_end


def _check_target(memory: GuestMemory, addr: int, size: int, what: str) -> None:
    if addr + size > 1 << 32 or not memory.is_ram(addr, size):
        raise MultibootError(
            f"{what} at {addr:#x}..{addr + size - 1:#x} does not fit in guest RAM "
            f"({memory.size // (1 << 20)} MiB): give more --memory or check the link address"
        )


def load(
    memory: GuestMemory,
    data: bytes,
    kernel_path: str,
    cmdline: str = "",
    modules: list[tuple[str, bytes]] | None = None,
) -> LoadResult:
    """Load a multiboot v1 kernel and its modules; ``modules`` are (command line, contents)."""
    header = find_header(data)
    if header is None:
        raise MultibootError("no multiboot header in the first 8 KiB")
    unknown = header.flags & 0xFFFF & ~_MBH_KNOWN_REQUIRED
    if unknown:
        raise MultibootError(f"multiboot header requires features kvmlite does not know: flags {unknown:#x}")
    notes = []
    if header.flags & MBH_VIDEO_MODE:
        notes.append("the kernel asks for a video mode; kvmlite has no display and ignores it")
    try:
        if header.flags & MBH_AOUT_KLUDGE:
            entry, lowest, end = _load_aout(memory, data, header)
            fmt = "multiboot (a.out kludge)"
        elif is_elf(data):
            entry, lowest, end = _load_elf(memory, data)
            fmt = "multiboot ELF32"
        else:
            raise MultibootError("multiboot image is neither ELF nor marked with the a.out kludge")
        loaded = [(lowest, end)]

        # modules, page aligned after the kernel
        mod_entries = []
        addr = (end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        for mod_cmdline, contents in modules or []:
            _check_target(memory, addr, max(len(contents), 1), f"module {mod_cmdline!r}")
            memory.write(addr, contents)
            mod_entries.append((addr, addr + len(contents), mod_cmdline))
            loaded.append((addr, addr + len(contents)))
            addr = (addr + len(contents) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)

        if len(mod_entries) > MAX_MODULES:
            raise MultibootError(f"too many modules ({len(mod_entries)}, at most {MAX_MODULES})")
        block = addr  # page aligned, after the kernel and every module
        _check_target(memory, block, BLOCK_SIZE, "the multiboot information block")

        strings = bytearray()

        def add_string(s: bytes) -> int:
            pos = block + BLOCK_STRINGS + len(strings)
            strings.extend(s + b"\0")
            return pos

        cmdline_addr = add_string(f"{kernel_path} {cmdline}".encode())
        loader_name_addr = add_string(BOOT_LOADER_NAME.rstrip(b"\0"))
        mod_list = b"".join(
            _MODULE.pack(start, stop, add_string(name.encode()), 0) for start, stop, name in mod_entries
        )
        if len(strings) > L.BOOT_CMDLINE_MAX:
            raise MultibootError(
                f"command lines take {len(strings)} bytes, "
                f"more than the {L.BOOT_CMDLINE_MAX} kvmlite reserves for them"
            )
        memory.write(block + BLOCK_STRINGS, bytes(strings))
        memory.write(block + BLOCK_MODULES, mod_list)

        e820 = e820_map(memory)
        mmap = b"".join(_MMAP_ENTRY.pack(20, base, length, kind) for base, length, kind in e820)
        memory.write(block + BLOCK_MMAP, mmap)
        mem_lower, mem_upper = mem_lower_upper(e820)

        info = bytearray(MBI_SIZE)
        struct.pack_into(
            "<IIIIIII",
            info,
            0,
            MBI_MEMORY | MBI_BOOT_DEVICE | MBI_CMDLINE | MBI_MODS | MBI_MMAP | MBI_BOOT_LOADER_NAME,
            mem_lower,
            mem_upper,
            BOOT_DEVICE_NONE,
            cmdline_addr,
            len(mod_entries),
            block + BLOCK_MODULES,
        )
        struct.pack_into("<II", info, MBI_OFF_MMAP_LENGTH, len(mmap), block + BLOCK_MMAP)
        struct.pack_into("<I", info, MBI_OFF_BOOT_LOADER_NAME, loader_name_addr)
        memory.write(block + BLOCK_INFO, bytes(info))
        loaded.append((block, block + BLOCK_SIZE))
    except GuestMemoryError as err:
        raise MultibootError(f"does not fit in guest memory: {err}") from err

    stack = (L.MULTIBOOT_ENTRY_ESP - ENTRY_STACK_CHECK, L.MULTIBOOT_ENTRY_ESP)
    if any(start < stack[1] and stack[0] < stop for start, stop in loaded):
        notes.append(
            f"the kernel loads over {stack[0]:#x}..{stack[1]:#x}, where its entry stack is "
            f"(ESP={L.MULTIBOOT_ENTRY_ESP:#x}, as under QEMU): it must load its own stack before any push"
        )
    return LoadResult(
        format=fmt,
        entry=entry,
        mode=EntryMode.PROTECTED32,
        regs={
            "eax": MULTIBOOT_BOOTLOADER_MAGIC,
            "ebx": block + BLOCK_INFO,
            "ecx": entry,
            "esp": L.MULTIBOOT_ENTRY_ESP,
        },
        gdt=block + BLOCK_GDT,
        loaded=loaded,
        notes=notes,
    )


def looks_like(data: bytes) -> bool:
    try:
        return find_header(data) is not None
    except MultibootError:
        return True  # a broken multiboot header: let load() say what is wrong


def load_file(memory: GuestMemory, path: Path, cmdline: str, modules: list[tuple[str, bytes]]) -> LoadResult:
    return load(memory, path.read_bytes(), str(path), cmdline, modules)
