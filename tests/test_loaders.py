"""Loaders: format detection, multiboot info contents, and clear errors for bad images."""

from __future__ import annotations

import struct

import pytest

from kvmlite.errors import ElfError, LoaderError, MultibootError
from kvmlite.loaders import detect_format, kernel_format, load_kernel, multiboot
from kvmlite.loaders.base import EntryMode
from kvmlite.memory import GuestMemory

MB_MAGIC = 0x1BADB002


def mb_header(flags: int, extra: bytes = b"") -> bytes:
    return struct.pack("<III", MB_MAGIC, flags, -(MB_MAGIC + flags) & 0xFFFFFFFF) + extra


def elf32(segments: list[tuple[int, bytes, int]], entry: int, header: bytes = b"") -> bytes:
    """A minimal ELF32 i386 executable: (paddr, data, memsz) segments, header bytes placed first."""
    ehsize, phentsize = 52, 32
    phoff = ehsize
    data_off = phoff + phentsize * len(segments)
    body = bytearray(header)
    phdrs = b""
    for paddr, data, memsz in segments:
        off = data_off + len(body)
        phdrs += struct.pack("<IIIIIIII", 1, off, paddr, paddr, len(data), memsz, 5, 0x1000)
        body += data
    ident = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    ehdr = struct.pack(
        "<16sHHIIIIIHHHHHH", ident, 2, 3, 1, entry, phoff, 0, 0, ehsize, phentsize, len(segments), 40, 0, 0
    )
    # the multiboot header must be in the first 8 KiB: put it first in the body
    return ehdr + phdrs + bytes(body)


def test_detects_each_format_by_content():
    assert detect_format(elf32([(0x100000, b"\x90", 1)], 0x100000, mb_header(0))) == "multiboot"
    assert detect_format(b"\x90" * 510 + b"\x55\xaa") == "bootsector"
    bz = bytearray(1024)
    bz[0x202:0x206] = b"HdrS"
    assert detect_format(bytes(bz)) == "bzimage"
    assert detect_format(b"\x7fELF\x02" + bytes(100)) == "elf64"
    assert detect_format(b"random bytes" * 10) == "unknown"


def test_kernel_format_reads_the_file_through_a_mapping_as_detect_format_does(tmp_path):
    bz = bytearray(1024)
    bz[0x202:0x206] = b"HdrS"
    images = {
        "mb": elf32([(0x100000, b"\x90", 1)], 0x100000, mb_header(0)),
        "boot": b"\x90" * 510 + b"\x55\xaa",
        "bz": bytes(bz),
        "elf64": b"\x7fELF\x02" + bytes(100),
        "junk": b"random bytes" * 10,
        "empty": b"",
    }
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
        assert kernel_format(tmp_path / name) == (detect_format(data) if data else "unknown"), name
    assert kernel_format(tmp_path / "missing") == "unknown"
    assert kernel_format(tmp_path) == "unknown"  # a directory


def test_multiboot_elf_loads_segments_and_builds_info():
    mem = GuestMemory.for_pc(64 << 20)
    code = mb_header(2) + b"\xf4"
    image = elf32([(0x100000, code, 0x2000)], 0x10000C)
    result = multiboot.load(mem, image, "/k.elf", "a=1 b", [("/mod0 arg", b"MODULE")])
    assert result.mode is EntryMode.PROTECTED32 and result.entry == 0x10000C
    info = result.regs["ebx"]
    assert result.regs["eax"] == 0x2BADB002
    assert info > 0x102000 and info % 4096 == 0  # the information block follows the kernel and module
    assert mem.read(0x100000, len(code)) == code
    assert mem.read(0x100000 + len(code), 16) == bytes(16)  # bss zeroed
    flags, mem_lower, mem_upper = struct.unpack("<III", mem.read(info, 12))
    assert flags & 0x24F == 0x24F  # mem, boot device, cmdline, mods, mmap, loader name
    assert (mem_lower, mem_upper) == (639, 64 * 1024 - 1024 - 128)  # from the map, as QEMU's ROM does
    assert mem.read_cstr(mem.read_u32(info + 16)) == b"/k.elf a=1 b"  # as QEMU and GRUB pass it
    assert mem.read_cstr(mem.read_u32(info + 64)) == b"kvmlite"
    assert mem.read_u32(info + 20) == 1
    mod_start, mod_end, mod_str, _ = struct.unpack("<IIII", mem.read(mem.read_u32(info + 24), 16))
    assert mod_start % 4096 == 0 and 0x102000 <= mod_start < info
    assert mem.read(mod_start, mod_end - mod_start) == b"MODULE"
    assert mem.read_cstr(mod_str) == b"/mod0 arg"
    mmap_len, mmap_addr = struct.unpack("<II", mem.read(info + 44, 8))
    entries = [struct.unpack_from("<IQQI", mem.read(mmap_addr, mmap_len), i) for i in range(0, mmap_len, 24)]
    assert all(size == 20 for size, *_ in entries)
    ram = [(base, length) for _, base, length, kind in entries if kind == 1]
    assert ram[0] == (0, 0x9FC00) and ram[1][0] == 0x100000


def test_aout_kludge_loads_a_flat_image():
    load_addr = 0x200000
    header_addr = load_addr  # the header is the first thing in the file
    entry = load_addr + 32
    fields = struct.pack("<IIIII", header_addr, load_addr, 0, load_addr + 0x1000, entry)
    image = mb_header(1 << 16, fields) + b"\x90" * 4 + b"\xf4"
    mem = GuestMemory.for_pc(16 << 20)
    result = multiboot.load(mem, image, "k", "")
    assert result.format == "multiboot (a.out kludge)" and result.entry == entry
    assert mem.read(load_addr, len(image)) == image


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (mb_header(0) + b"\x00" * 8, "neither ELF nor"),
        (mb_header(1 << 3), "does not know"),
        (elf32([(0x100000, b"\x90", 1)], 0x500000, mb_header(0)), "entry point"),
        (elf32([(0x7F00000, b"\x90" * 16, 0x200000)], 0x7F00000, mb_header(0)), "does not fit in guest RAM"),
        (elf32([(0xFFFF_F000, b"\x90", 0x2000)], 0xFFFF_F000, mb_header(0)), "does not fit in guest RAM"),
        (
            mb_header(1 << 16, struct.pack("<IIIII", 0x100000, 0x100000, 0x1FFFFF, 0, 0x100000)),
            "beyond the end",
        ),
    ],
)
def test_malformed_multiboot_images_give_one_clear_error(image, message):
    mem = GuestMemory.for_pc(16 << 20)
    with pytest.raises(MultibootError, match=message):
        multiboot.load(mem, image, "k", "")


def test_truncated_elf_is_reported_not_crashed():
    image = elf32([(0x100000, b"\x90" * 64, 64)], 0x100000, mb_header(0))
    with pytest.raises(MultibootError, match="beyond the end of the file"):
        multiboot.load(GuestMemory.for_pc(16 << 20), image[:-10], "k", "")


def test_load_kernel_refuses_unknown_and_bzimage(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a kernel" * 100)
    with pytest.raises(LoaderError, match="unrecognised kernel format"):
        load_kernel(GuestMemory.for_pc(16 << 20), junk)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(LoaderError, match="empty"):
        load_kernel(GuestMemory.for_pc(16 << 20), empty)
    bz = bytearray(4096)
    bz[0x202:0x206] = b"HdrS"  # the magic, but nothing else of a boot protocol header
    (tmp_path / "bz").write_bytes(bytes(bz))
    with pytest.raises(LoaderError):
        load_kernel(GuestMemory.for_pc(16 << 20), tmp_path / "bz")


def test_elf64_with_garbage_program_headers_is_an_elf_error():
    bad = (
        b"\x7fELF\x02\x01\x01"
        + bytes(9)
        + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x100000, 0xFFFF, 0, 0, 64, 56, 3, 64, 0, 0)
    )
    with pytest.raises(ElfError, match="program headers"):
        load_kernel(GuestMemory.for_pc(16 << 20), __import__("pathlib").Path("x"), data=bad)


def test_boot_sector_starts_in_real_mode_at_7c00():
    mem = GuestMemory.for_pc(16 << 20)
    sector = b"\xf4" + bytes(509) + b"\x55\xaa"
    from kvmlite.loaders import bootsector

    result = bootsector.load(mem, sector)
    assert (result.mode, result.entry, result.cs) == (EntryMode.REAL, 0x7C00, 0)
    assert result.regs["edx"] == 0x80
    assert mem.read(0x7C00, 512) == sector


def test_a_kernel_may_load_in_low_memory_as_under_qemu():
    mem = GuestMemory.for_pc(16 << 20)
    result = multiboot.load(mem, elf32([(0x8000, b"\xf4" * 0x3000, 0x3000)], 0x8000, mb_header(0)), "k", "")
    assert result.entry == 0x8000 and mem.read(0x8000, 4) == b"\xf4" * 4
    assert result.regs["ebx"] >= 0xB000 and result.gdt > result.regs["ebx"]  # boot block after the kernel
