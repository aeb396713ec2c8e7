"""The bzImage loader against synthetic images built here, and a real Debian kernel when one is cached."""

from __future__ import annotations

import ctypes

import pytest

from kvmlite.errors import BzImageError
from kvmlite.loaders import bootparams as B
from kvmlite.loaders import bzimage
from kvmlite.loaders.base import EntryMode
from kvmlite.loaders.multiboot import e820_map
from kvmlite.memory.guest import GuestMemory
from kvmlite.tools import assets
from tests.images import VERSION_STRING, make_bzimage

MIB = 1 << 20
@pytest.fixture
def memory() -> GuestMemory:
    mem = GuestMemory.for_pc(64 * MIB)
    yield mem
    mem.close()


def zero_page(memory: GuestMemory) -> B.BootParams:
    return B.BootParams.from_buffer_copy(memory.read(bzimage.ZERO_PAGE_ADDR, B.ZERO_PAGE_SIZE))


# --- structure layout -------------------------------------------------------------------


def test_zero_page_layout_matches_the_documented_offsets() -> None:
    assert ctypes.sizeof(B.BootParams) == 4096
    assert ctypes.sizeof(B.SetupHeader) == 0x7B
    assert ctypes.sizeof(B.BootE820Entry) == 20
    documented = {
        "acpi_rsdp_addr": 0x070,
        "ext_ramdisk_image": 0x0C0,
        "ext_ramdisk_size": 0x0C4,
        "ext_cmd_line_ptr": 0x0C8,
        "alt_mem_k": 0x1E0,
        "e820_entries": 0x1E8,
        "sentinel": 0x1EF,
        "hdr": 0x1F1,
        "edd_mbr_sig_buffer": 0x290,
        "e820_table": 0x2D0,
        "eddbuf": 0xD00,
    }
    for name, offset in documented.items():
        assert getattr(B.BootParams, name).offset == offset, name


def test_setup_header_fields_sit_at_their_boot_protocol_offsets() -> None:
    documented = {
        "setup_sects": 0x1F1,
        "syssize": 0x1F4,
        "boot_flag": 0x1FE,
        "header": 0x202,
        "version": 0x206,
        "type_of_loader": 0x210,
        "loadflags": 0x211,
        "code32_start": 0x214,
        "ramdisk_image": 0x218,
        "ramdisk_size": 0x21C,
        "heap_end_ptr": 0x224,
        "cmd_line_ptr": 0x228,
        "initrd_addr_max": 0x22C,
        "kernel_alignment": 0x230,
        "relocatable_kernel": 0x234,
        "xloadflags": 0x236,
        "cmdline_size": 0x238,
        "payload_offset": 0x248,
        "payload_length": 0x24C,
        "setup_data": 0x250,
        "pref_address": 0x258,
        "init_size": 0x260,
        "handover_offset": 0x264,
        "kernel_info_offset": 0x268,
    }
    for name, offset in documented.items():
        assert B.SETUP_HEADER_OFFSET + getattr(B.SetupHeader, name).offset == offset, name


def test_zero_page_does_not_collide_with_kvmlite_boot_structures() -> None:
    from kvmlite.loaders import layout as L

    low_structures_end = L.BOOT_CMDLINE + L.BOOT_CMDLINE_MAX
    assert bzimage.ZERO_PAGE_ADDR >= low_structures_end
    assert bzimage.CMDLINE_ADDR >= bzimage.ZERO_PAGE_ADDR + B.ZERO_PAGE_SIZE
    assert bzimage.CMDLINE_ADDR + bzimage.CMDLINE_MAX <= L.LOW_RAM_END


# --- loading ----------------------------------------------------------------------------


def test_kernel_is_loaded_at_pref_address_and_entered_in_long_mode(memory: GuestMemory) -> None:
    kernel = bytes(range(256)) * 16
    result = bzimage.load(memory, make_bzimage(kernel, pref_address=0x20_0000))
    assert memory.read(0x20_0000, len(kernel)) == kernel
    assert result.mode is EntryMode.LONG64
    assert result.entry == 0x20_0000 + 0x200
    assert result.regs == {"rsi": bzimage.ZERO_PAGE_ADDR}
    assert (0x20_0000, 0x20_0000 + len(kernel)) in result.loaded
    assert result.format == "bzImage (boot protocol 2.15)"
    assert any(VERSION_STRING.decode() in note for note in result.notes)


def test_setup_sects_zero_means_four(memory: GuestMemory) -> None:
    kernel = b"\xcc" * 512
    image = make_bzimage(kernel, setup_sects=0)
    assert bzimage.parse(image).setup_size == 5 * 512
    bzimage.load(memory, image)
    assert memory.read(0x100_0000, 512) == kernel


def test_kernel_without_pref_address_field_loads_at_one_mib(memory: GuestMemory) -> None:
    kernel = b"\xab" * 64
    result = bzimage.load(memory, make_bzimage(kernel, version=0x0209, xloadflags=0))
    assert memory.read(0x10_0000, 64) == kernel
    # before 2.12 there is no 64-bit entry: 32-bit protocol with ESI = zero page
    assert result.mode is EntryMode.PROTECTED32
    assert result.entry == 0x10_0000
    assert result.regs["esi"] == bzimage.ZERO_PAGE_ADDR
    assert result.regs["ebx"] == 0


def test_zero_page_carries_the_image_header_and_loader_answers(memory: GuestMemory) -> None:
    image = make_bzimage()
    bzimage.load(memory, image, "console=ttyS0")
    page = memory.read(bzimage.ZERO_PAGE_ADDR, B.ZERO_PAGE_SIZE)
    bp = zero_page(memory)
    # untouched header fields are byte-for-byte the image's
    assert page[0x1F1:0x210] == image[0x1F1:0x210]
    assert bp.hdr.version == 0x020F
    assert bp.hdr.type_of_loader == 0xFF
    assert bp.hdr.loadflags & B.LOADED_HIGH
    assert bp.hdr.loadflags & B.CAN_USE_HEAP
    assert bp.hdr.heap_end_ptr == bzimage.HEAP_END_PTR
    assert bp.sentinel == 0
    # nothing but the header was copied from the setup sectors
    assert page[: B.SETUP_HEADER_OFFSET].count(0) == B.SETUP_HEADER_OFFSET - 1  # e820_entries only


def test_header_copy_stops_where_the_jump_says(memory: GuestMemory) -> None:
    image = bytearray(make_bzimage(jump_end=0x264))
    image[0x264:0x26C] = b"\xff" * 8  # handover_offset, kernel_info_offset: past this header's end
    bzimage.load(memory, bytes(image))
    assert memory.read(bzimage.ZERO_PAGE_ADDR + 0x264, 8) == bytes(8)


def test_command_line_is_written_low_and_pointed_to(memory: GuestMemory) -> None:
    bzimage.load(memory, make_bzimage(), "console=ttyS0 root=/dev/ram0")
    bp = zero_page(memory)
    assert bp.hdr.cmd_line_ptr == bzimage.CMDLINE_ADDR
    assert memory.read_cstr(bzimage.CMDLINE_ADDR) == b"console=ttyS0 root=/dev/ram0"


def test_command_line_longer_than_the_kernel_allows_is_rejected(memory: GuestMemory) -> None:
    with pytest.raises(BzImageError, match="command line of 300 bytes exceeds the kernel's limit of 255"):
        bzimage.load(memory, make_bzimage(cmdline_size=255), "x" * 300)


def test_command_line_at_the_kernel_limit_is_accepted(memory: GuestMemory) -> None:
    bzimage.load(memory, make_bzimage(cmdline_size=255), "y" * 255)
    assert memory.read_cstr(bzimage.CMDLINE_ADDR) == b"y" * 255


def test_initrd_goes_page_aligned_to_the_top_of_ram(memory: GuestMemory) -> None:
    initrd = b"initrd!" * 1000
    result = bzimage.load(memory, make_bzimage(), "", initrd)
    bp = zero_page(memory)
    ram_top = max(base + size for base, size, kind in e820_map(memory) if kind == 1)
    assert bp.hdr.ramdisk_size == len(initrd)
    assert bp.hdr.ramdisk_image % 4096 == 0
    assert bp.hdr.ramdisk_image + len(initrd) <= ram_top
    assert ram_top - (bp.hdr.ramdisk_image + len(initrd)) < 4096  # as high as it can go
    assert bp.ext_ramdisk_image == 0
    assert memory.read(bp.hdr.ramdisk_image, len(initrd)) == initrd
    assert (bp.hdr.ramdisk_image, bp.hdr.ramdisk_image + len(initrd)) in result.loaded


def test_initrd_stays_below_the_kernels_initrd_addr_max(memory: GuestMemory) -> None:
    bzimage.load(memory, make_bzimage(initrd_addr_max=0x1FF_FFFF), "", b"z" * 10000)
    bp = zero_page(memory)
    assert bp.hdr.ramdisk_image + bp.hdr.ramdisk_size <= 0x200_0000
    assert bp.hdr.ramdisk_image >= 0x100_0000 + 2 * MIB  # above the kernel's init_size


def test_initrd_too_big_for_ram_is_rejected_with_sizes(memory: GuestMemory) -> None:
    with pytest.raises(BzImageError, match=r"initrd of 62914560 bytes \(60.0 MiB\) does not fit"):
        bzimage.load(memory, make_bzimage(), "", bytes(60 * MIB))


def test_initrd_goes_above_4g_when_the_kernel_allows_it() -> None:
    mem = GuestMemory([(0, 24 * MIB), (1 << 32, 32 * MIB)])
    try:
        initrd = b"high" * (4 * MIB)  # 16 MiB: no room between the kernel and 24 MiB
        bzimage.load(mem, make_bzimage(), "", initrd)
        bp = zero_page(mem)
        addr = bp.hdr.ramdisk_image | bp.ext_ramdisk_image << 32
        assert addr >= 1 << 32
        assert bp.ext_ramdisk_image == 1
        assert mem.read(addr, 16) == initrd[:16]
    finally:
        mem.close()


def test_initrd_stays_below_4g_when_the_kernel_does_not_allow_above() -> None:
    mem = GuestMemory([(0, 24 * MIB), (1 << 32, 32 * MIB)])
    try:
        with pytest.raises(BzImageError, match="does not fit"):
            bzimage.load(mem, make_bzimage(xloadflags=B.XLF_KERNEL_64), "", bytes(16 * MIB))
    finally:
        mem.close()


def test_e820_table_is_the_shared_memory_map(memory: GuestMemory) -> None:
    bzimage.load(memory, make_bzimage())
    bp = zero_page(memory)
    table = [(e.addr, e.size, e.type) for e in bp.e820_table[: bp.e820_entries]]
    assert table == e820_map(memory)
    assert (0x10_0000, 64 * MIB - 0x10_0000 - 0x2_0000, 1) in table


def test_kernel_that_cannot_decompress_in_ram_is_rejected(memory: GuestMemory) -> None:
    with pytest.raises(BzImageError, match=r"give at least 81 MiB of --memory \(have 64 MiB\)"):
        bzimage.load(memory, make_bzimage(init_size=64 * MIB))


# --- malformed images -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:0x100], "too short to hold a Linux setup header"),
        (lambda b: b[:0x1FE] + b"\0\0" + b[0x200:], "no boot flag 0xAA55"),
        (lambda b: b[:0x202] + b"HdrX" + b[0x206:], "no 'HdrS' magic"),
        (lambda b: b[:0x206] + b"\x05\x02" + b[0x208:], "boot protocol version 2.05 is older than 2.06"),
        (lambda b: b[:0x211] + b"\0" + b[0x212:], "zImage"),
        (lambda b: b[: 5 * 512], "ends within its 4 setup sectors"),
        (lambda b: b[:-100], "truncated image"),
    ],
    ids=["short", "boot-flag", "magic", "old-version", "zimage", "setup-truncated", "kernel-truncated"],
)
def test_malformed_images_give_one_clear_error(memory: GuestMemory, mutate, message: str) -> None:
    with pytest.raises(BzImageError, match=message):
        bzimage.load(memory, mutate(make_bzimage()))


def test_pref_address_below_one_mib_is_rejected(memory: GuestMemory) -> None:
    with pytest.raises(BzImageError, match="below 1 MiB"):
        bzimage.load(memory, make_bzimage(pref_address=0x8_0000))


# --- a real kernel ----------------------------------------------------------------------

FOUND, MISSING = assets.find_assets()
requires_kernel = pytest.mark.skipif(FOUND is None, reason=f"no cached Linux kernel: {MISSING}")


@requires_kernel
def test_debian_kernel_loads_with_initrd_and_cmdline() -> None:
    assert FOUND is not None
    vmlinuz, _ = FOUND
    data = vmlinuz.read_bytes()
    image = bzimage.parse(data)
    assert image.has_entry64
    mem = GuestMemory.for_pc(256 * MIB)
    try:
        result = bzimage.load(mem, data, "console=ttyS0 panic=-1", b"\x1f\x8b" + bytes(1000))
        assert result.mode is EntryMode.LONG64
        assert result.entry == image.load_address + 0x200
        assert mem.read(image.load_address, 64) == data[image.setup_size : image.setup_size + 64]
        bp = zero_page(mem)
        assert bp.hdr.ramdisk_image >= image.load_address + image.init_size
        assert any(note.startswith("Linux ") for note in result.notes)
    finally:
        mem.close()
