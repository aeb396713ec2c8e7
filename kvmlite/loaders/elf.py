"""Just enough ELF parsing for loaders: header, program headers and sections, 32- and 64-bit.

Every field is checked against the file's size; a malformed image gives an
:class:`ElfError` naming what is wrong.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmlite.errors import ElfError

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
EM_386, EM_X86_64 = 3, 62
PT_LOAD, PT_NOTE = 1, 4

_EHDR32 = struct.Struct("<16sHHIIIIIHHHHHH")
_EHDR64 = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR32 = struct.Struct("<IIIIIIII")  # type offset vaddr paddr filesz memsz flags align
_PHDR64 = struct.Struct("<IIQQQQQQ")  # type flags offset vaddr paddr filesz memsz align


@dataclass(frozen=True)
class Segment:
    type: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: int


@dataclass(frozen=True)
class ElfImage:
    bits: int
    machine: int
    entry: int
    segments: tuple[Segment, ...]

    def load_segments(self) -> list[Segment]:
        return [s for s in self.segments if s.type == PT_LOAD and s.memsz]

    def notes(self, data: bytes) -> list[tuple[bytes, int, bytes]]:
        """(name, type, desc) of every note in PT_NOTE segments."""
        out = []
        for seg in self.segments:
            if seg.type != PT_NOTE:
                continue
            pos, end = seg.offset, seg.offset + seg.filesz
            if end > len(data):
                raise ElfError(f"note segment at {pos:#x}+{seg.filesz:#x} lies beyond the end of the file")
            while pos + 12 <= end:
                namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
                name_off = pos + 12
                desc_off = name_off + ((namesz + 3) & ~3)
                nxt = desc_off + ((descsz + 3) & ~3)
                if nxt > end:
                    break
                out.append(
                    (
                        data[name_off : name_off + namesz].rstrip(b"\0"),
                        ntype,
                        data[desc_off : desc_off + descsz],
                    )
                )
                pos = nxt
        return out


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def parse_elf(data: bytes) -> ElfImage:
    if len(data) < 52 or not is_elf(data):
        raise ElfError("not an ELF file (bad magic or shorter than an ELF header)")
    cls, endian = data[4], data[5]
    if endian != ELFDATA2LSB:
        raise ElfError("ELF image is not little-endian")
    if cls == ELFCLASS32:
        _, _, machine, _, entry, phoff, _, _, _, phentsize, phnum, *_ = _EHDR32.unpack_from(data)
        phdr, bits = _PHDR32, 32
    elif cls == ELFCLASS64:
        if len(data) < _EHDR64.size:
            raise ElfError("ELF64 header truncated")
        _, _, machine, _, entry, phoff, _, _, _, phentsize, phnum, *_ = _EHDR64.unpack_from(data)
        phdr, bits = _PHDR64, 64
    else:
        raise ElfError(f"unknown ELF class {cls}")
    if phnum == 0:
        raise ElfError("ELF image has no program headers")
    if phentsize < phdr.size:
        raise ElfError(f"ELF program header size {phentsize} is too small")
    if phoff + phnum * phentsize > len(data):
        raise ElfError("ELF program headers lie beyond the end of the file (truncated image?)")
    segments = []
    for i in range(phnum):
        fields = phdr.unpack_from(data, phoff + i * phentsize)
        if bits == 32:
            ptype, offset, vaddr, paddr, filesz, memsz, flags, _ = fields
        else:
            ptype, flags, offset, vaddr, paddr, filesz, memsz, _ = fields
        if ptype == PT_LOAD:
            if filesz > memsz:
                raise ElfError(f"segment {i}: file size {filesz:#x} exceeds memory size {memsz:#x}")
            if offset + filesz > len(data):
                raise ElfError(
                    f"segment {i}: data at {offset:#x}+{filesz:#x} lies beyond the end of the file"
                )
        segments.append(Segment(ptype, offset, vaddr, paddr, filesz, memsz, flags))
    return ElfImage(bits, machine, entry, tuple(segments))


_SHDR32 = struct.Struct("<IIIIIIIIII")  # name type flags addr offset size link info addralign entsize
_SHDR64 = struct.Struct("<IIQQQQIIQQ")
_SYM32 = struct.Struct("<IIIBBH")  # name value size info other shndx
_SYM64 = struct.Struct("<IBBHQQ")  # name info other shndx value size
SHT_SYMTAB = 2
STT_OBJECT, STT_FUNC, STT_NOTYPE = 1, 2, 0


def _elf_class(data: bytes) -> int:
    """32 or 64: the class of a little-endian ELF file of any type (executable, relocatable)."""
    if len(data) < _EHDR64.size or not is_elf(data) or data[5] != ELFDATA2LSB:
        raise ElfError("not a little-endian ELF file (bad magic or shorter than an ELF header)")
    if data[4] not in (ELFCLASS32, ELFCLASS64):
        raise ElfError(f"unknown ELF class {data[4]}")
    return 32 if data[4] == ELFCLASS32 else 64


def section_headers(data: bytes) -> list[tuple[int, ...]]:
    """The section header table as (name, type, flags, addr, offset, size, link, info, addralign,
    entsize) tuples; [] when the file has none.  Any ELF type: executables and kernel modules."""
    if _elf_class(data) == 32:
        shoff, shentsize, shnum = struct.unpack_from("<I", data, 32)[0], *struct.unpack_from("<HH", data, 46)
        shdr = _SHDR32
    else:
        shoff, shentsize, shnum = struct.unpack_from("<Q", data, 40)[0], *struct.unpack_from("<HH", data, 58)
        shdr = _SHDR64
    if shoff == 0 or shnum == 0:
        return []
    if shentsize < shdr.size or shoff + shnum * shentsize > len(data):
        raise ElfError("ELF section headers lie beyond the end of the file (truncated image?)")
    return [shdr.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]


def elf_section(data: bytes, name: str) -> bytes | None:
    """The contents of the section called ``name`` (e.g. a kernel module's ``.modinfo``), or None."""
    sections = section_headers(data)
    shstrndx = struct.unpack_from("<H", data, 50 if _elf_class(data) == 32 else 62)[0]
    if not sections or shstrndx >= len(sections):
        return None
    str_off, str_size = sections[shstrndx][4], sections[shstrndx][5]
    names = data[str_off : str_off + str_size]
    wanted = name.encode() + b"\0"
    for name_off, _, _, _, offset, size, *_ in sections:
        if names[name_off : name_off + len(wanted)] == wanted:
            if offset + size > len(data):
                raise ElfError(f"ELF section {name} lies beyond the end of the file (truncated?)")
            return data[offset : offset + size]
    return None


def elf_symbols(data: bytes) -> list[tuple[int, int, str]]:
    """(address, size, name) of the code and data symbols in the ELF's .symtab; [] if it has none.

    A stripped image (no section headers, or no SHT_SYMTAB) simply has no
    symbols; a section table that points outside the file is an :class:`ElfError`.
    """
    image = parse_elf(data)
    sym = _SYM32 if image.bits == 32 else _SYM64
    sections = section_headers(data)
    shnum = len(sections)
    out: list[tuple[int, int, str]] = []
    for _, stype, _, _, offset, size, link, _, _, entsize in sections:
        if stype != SHT_SYMTAB or link >= shnum:
            continue
        str_off, str_size = sections[link][4], sections[link][5]
        if offset + size > len(data) or str_off + str_size > len(data) or entsize < sym.size:
            raise ElfError("ELF symbol table lies beyond the end of the file (truncated image?)")
        strtab = data[str_off : str_off + str_size]
        for pos in range(offset, offset + size - entsize + 1, entsize):
            if image.bits == 32:
                name_off, value, sym_size, info, _, _ = sym.unpack_from(data, pos)
            else:
                name_off, info, _, _, value, sym_size = sym.unpack_from(data, pos)
            if info & 0xF not in (STT_FUNC, STT_OBJECT, STT_NOTYPE) or not value or name_off >= len(strtab):
                continue
            end = strtab.find(b"\0", name_off)
            name = strtab[name_off : end if end >= 0 else len(strtab)].decode(errors="replace")
            if name and not name.startswith("$"):
                out.append((value, sym_size, name))
    return out
