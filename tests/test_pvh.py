"""The PVH loader on ELF kernels built here, and on the vmlinux of a real Debian kernel when cached."""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import pytest

from kvmlite.errors import ElfError
from kvmlite.loaders import pvh
from kvmlite.loaders.base import EntryMode
from kvmlite.loaders.multiboot import e820_map
from kvmlite.memory.guest import GuestMemory
from kvmlite.tools import assets
from kvmlite.tools.extract_vmlinux import extract_vmlinux
from tests.images import ENTRY, KERNEL_PADDR, make_vmlinux, note

MIB = 1 << 20
@pytest.fixture
def memory() -> GuestMemory:
    mem = GuestMemory.for_pc(64 * MIB)
    yield mem
    mem.close()


def start_info(memory: GuestMemory) -> pvh.HvmStartInfo:
    return pvh.HvmStartInfo.from_buffer_copy(
        memory.read(pvh.START_INFO_ADDR, ctypes.sizeof(pvh.HvmStartInfo))
    )


def test_start_info_structures_have_the_abi_sizes() -> None:
    assert ctypes.sizeof(pvh.HvmStartInfo) == 56
    assert pvh.HvmStartInfo.memmap_paddr.offset == 0x28
    assert pvh.HvmStartInfo.memmap_entries.offset == 0x30
    assert ctypes.sizeof(pvh.HvmModlistEntry) == 32
    assert ctypes.sizeof(pvh.HvmMemmapTableEntry) == 24


def test_segments_load_by_physical_address_with_bss_cleared(memory: GuestMemory) -> None:
    code = bytes(range(256))
    memory.fill(KERNEL_PADDR, 8192, 0xAA)
    result = pvh.load(memory, make_vmlinux(code))
    assert memory.read(KERNEL_PADDR, 256) == code
    assert memory.read(KERNEL_PADDR + 256, 4096) == bytes(4096)
    assert (KERNEL_PADDR, KERNEL_PADDR + 256 + 4096) in result.loaded


def test_entry_is_the_note_address_in_32bit_mode_with_ebx_at_start_info(memory: GuestMemory) -> None:
    result = pvh.load(memory, make_vmlinux())
    assert result.entry == ENTRY
    assert result.mode is EntryMode.PROTECTED32
    assert result.regs == {"ebx": pvh.START_INFO_ADDR}
    assert result.format == "ELF64 PVH"


def test_start_info_carries_magic_cmdline_and_the_shared_memory_map(memory: GuestMemory) -> None:
    pvh.load(memory, make_vmlinux(), "console=ttyS0 quiet")
    info = start_info(memory)
    assert info.magic == 0x336EC578
    assert info.version == 1
    assert info.rsdp_paddr == 0
    assert info.nr_modules == 0
    assert memory.read_cstr(info.cmdline_paddr) == b"console=ttyS0 quiet"
    entries = [
        pvh.HvmMemmapTableEntry.from_buffer_copy(memory.read(info.memmap_paddr + 24 * i, 24))
        for i in range(info.memmap_entries)
    ]
    assert [(e.addr, e.size, e.type) for e in entries] == e820_map(memory)


def test_initrd_is_the_one_module_placed_high_and_page_aligned(memory: GuestMemory) -> None:
    initrd = b"cpio" * 3000
    result = pvh.load(memory, make_vmlinux(), "", initrd)
    info = start_info(memory)
    assert info.nr_modules == 1
    mod = pvh.HvmModlistEntry.from_buffer_copy(memory.read(info.modlist_paddr, 32))
    assert mod.size == len(initrd)
    assert mod.paddr % 4096 == 0
    assert mod.paddr > 32 * MIB  # as high as RAM allows, well above the kernel
    assert memory.read(mod.paddr, len(initrd)) == initrd
    assert (mod.paddr, mod.paddr + len(initrd)) in result.loaded


def test_initrd_too_big_is_rejected_with_its_size(memory: GuestMemory) -> None:
    with pytest.raises(ElfError, match=r"initrd of 67108864 bytes \(64.0 MiB\) does not fit"):
        pvh.load(memory, make_vmlinux(), "", bytes(64 * MIB))


def test_four_byte_entry_note_is_accepted(memory: GuestMemory) -> None:
    notes = note(b"Xen", 18, struct.pack("<I", ENTRY + 4))
    assert pvh.load(memory, make_vmlinux(notes=notes)).entry == ENTRY + 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"notes": note(b"Xen", 6, b"linux\0")}, "no Xen PVH entry note"),
        ({"notes": note(b"NotXen", 18, struct.pack("<Q", ENTRY))}, "no Xen PVH entry note"),
        ({"notes": note(b"Xen", 18, b"\x01\x02")}, "holds 2 bytes"),
        ({"notes": note(b"Xen", 18, struct.pack("<Q", 1 << 33))}, "above 4 GiB"),
        ({"notes": note(b"Xen", 18, struct.pack("<Q", 0x300_0000))}, "outside every loadable segment"),
        ({"paddr": 0x8000}, "below 1 MiB"),
        ({"paddr": 0x800_0000}, r"give at least 130 MiB of --memory"),
        ({"machine": 40}, "not an x86 kernel"),
    ],
    ids=["no-note", "other-owner", "short-desc", "entry-high", "entry-outside", "low", "no-ram", "arm"],
)
def test_bad_kernels_give_one_clear_error(memory: GuestMemory, kwargs: dict, message: str) -> None:
    with pytest.raises(ElfError, match=message):
        pvh.load(memory, make_vmlinux(**kwargs))


def test_overlong_command_line_is_rejected(memory: GuestMemory) -> None:
    with pytest.raises(ElfError, match="command line of 65536 bytes exceeds"):
        pvh.load(memory, make_vmlinux(), "x" * 65536)


def test_has_pvh_note_tells_pvh_kernels_apart() -> None:
    assert pvh.has_pvh_note(make_vmlinux())
    assert not pvh.has_pvh_note(make_vmlinux(notes=note(b"Xen", 6, b"linux\0")))
    assert not pvh.has_pvh_note(b"\x7fELF truncated")


FOUND, MISSING = assets.find_assets()


@pytest.mark.skipif(FOUND is None, reason=f"no cached Linux kernel: {MISSING}")
def test_debian_vmlinux_loads_for_pvh_entry() -> None:
    assert FOUND is not None
    vmlinux = extract_vmlinux(FOUND[0].read_bytes())
    mem = GuestMemory.for_pc(256 * MIB)
    try:
        result = pvh.load(mem, vmlinux, "console=ttyS0", b"\x1f\x8b" + bytes(100))
        assert result.mode is EntryMode.PROTECTED32
        assert 0x100_0000 <= result.entry < 0x400_0000
        assert start_info(mem).nr_modules == 1
    finally:
        mem.close()


def test_a_vmlinux_larger_than_ram_loads_when_its_segments_fit(memory: GuestMemory, tmp_path: Path) -> None:
    """Debian's -dbg vmlinux is 563 MiB of file (DWARF) for about 40 MiB of segments: its size is no limit."""
    from kvmlite.errors import LoaderError
    from kvmlite.loaders import load_kernel

    image = make_vmlinux()
    kernel = tmp_path / "vmlinux"
    with kernel.open("wb") as f:
        f.write(image)
        f.truncate(memory.size + 16 * MIB)  # a sparse tail no segment loads, as debug sections are
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"cpio" * 1000)
    load_kernel(memory, kernel, "console=ttyS0", [initrd])
    assert memory.read(KERNEL_PADDR, 256) == b"\xf4" * 256  # make_vmlinux's code, where its segment says
    assert start_info(memory).nr_modules == 1
    # a file that is not ELF is still bounded by RAM, and an ELF file by ELF_FILE_LIMIT, before it is read
    raw = tmp_path / "raw.img"
    with raw.open("wb") as f:
        f.truncate(memory.size + 1)
    with pytest.raises(LoaderError, match="larger than the guest's 64 MiB of RAM"):
        load_kernel(memory, raw)
    with kernel.open("r+b") as f:
        f.truncate(4 << 30)
    with pytest.raises(LoaderError, match=r"larger than 2048 MiB \(an ELF file\)"):
        load_kernel(memory, kernel)
