"""The Linux x86 boot protocol's data: ``struct setup_header`` and the "zero page".

A bzImage starts with a real-mode setup sector holding :class:`SetupHeader`
at offset ``0x1F1``; a boot loader that skips the real-mode setup code (as
kvmlite does, entering the kernel in 64-bit or 32-bit mode directly) fills a
4096-byte :class:`BootParams` itself: the header copied from the image, then
the fields the setup code would have filled (e820 table, initrd, command
line).  The layout follows the Linux boot protocol (boot.rst, zero-page.rst,
``uapi/asm/bootparam.h``); every offset the kernel documents is checked by
the tests against ``ctypes``' own offsets, so a wrong field width cannot slip
in.

Only the fields a loader touches have names; the BIOS-era structures
(screen_info, APM, EDD, EDID, EFI) are kept as opaque byte arrays of the
right size, because kvmlite leaves them zero.
"""

from __future__ import annotations

import ctypes

# --- offsets in the image / zero page -------------------------------------------
SETUP_HEADER_OFFSET = 0x1F1
BOOT_FLAG_OFFSET = 0x1FE
JUMP_OFFSET = 0x200  # 2-byte short jump; its second byte gives the header's end
HEADER_MAGIC_OFFSET = 0x202
ZERO_PAGE_SIZE = 4096
SECTOR_SIZE = 512

BOOT_FLAG = 0xAA55
HEADER_MAGIC = b"HdrS"
DEFAULT_SETUP_SECTS = 4  # setup_sects == 0 means 4 (boot.rst)

# --- loadflags ----------------------------------------------------------------------
LOADED_HIGH = 1 << 0  # protected-mode code is loaded at 0x100000 (a bzImage)
KASLR_FLAG = 1 << 1  # set by the kernel itself
QUIET_FLAG = 1 << 5
KEEP_SEGMENTS = 1 << 6  # obsolete
CAN_USE_HEAP = 1 << 7  # heap_end_ptr is valid

# --- xloadflags (protocol 2.12+) ----------------------------------------------------
XLF_KERNEL_64 = 1 << 0  # has the legacy 64-bit entry point at load address + 0x200
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1  # kernel/boot_params/cmdline/ramdisk may lie above 4 GiB
XLF_EFI_HANDOVER_32 = 1 << 2
XLF_EFI_HANDOVER_64 = 1 << 3
XLF_EFI_KEXEC = 1 << 4
XLF_5LEVEL = 1 << 5
XLF_5LEVEL_ENABLED = 1 << 6

# --- loader identity ----------------------------------------------------------------
TYPE_OF_LOADER_UNDEFINED = 0xFF  # "no assigned id": what a loader without an id sets

# --- protocol versions that change what is present ----------------------------------
PROTO_MIN = 0x0206  # cmdline_size, and the oldest version kvmlite accepts
PROTO_PAYLOAD = 0x0208  # payload_offset / payload_length
PROTO_PREF_ADDRESS = 0x020A  # pref_address, init_size
PROTO_XLOADFLAGS = 0x020C

E820_MAX_ENTRIES_ZEROPAGE = 128
EDD_MBR_SIG_MAX = 16
EDDMAXNR = 6
EDD_INFO_SIZE = 82

# Default values of fields absent from older protocol versions (boot.rst).
DEFAULT_INITRD_ADDR_MAX = 0x37FF_FFFF
DEFAULT_CMDLINE_SIZE = 255


class SetupHeader(ctypes.LittleEndianStructure):
    """``struct setup_header``, at offset 0x1F1 of both the image and the zero page."""

    _pack_ = 1
    _fields_ = [
        ("setup_sects", ctypes.c_uint8),  # 0x1f1
        ("root_flags", ctypes.c_uint16),  # 0x1f2
        ("syssize", ctypes.c_uint32),  # 0x1f4: protected-mode size in 16-byte paragraphs
        ("ram_size", ctypes.c_uint16),  # 0x1f8
        ("vid_mode", ctypes.c_uint16),  # 0x1fa
        ("root_dev", ctypes.c_uint16),  # 0x1fc
        ("boot_flag", ctypes.c_uint16),  # 0x1fe
        ("jump", ctypes.c_uint16),  # 0x200
        ("header", ctypes.c_uint32),  # 0x202: "HdrS"
        ("version", ctypes.c_uint16),  # 0x206
        ("realmode_swtch", ctypes.c_uint32),  # 0x208
        ("start_sys_seg", ctypes.c_uint16),  # 0x20c
        ("kernel_version", ctypes.c_uint16),  # 0x20e
        ("type_of_loader", ctypes.c_uint8),  # 0x210
        ("loadflags", ctypes.c_uint8),  # 0x211
        ("setup_move_size", ctypes.c_uint16),  # 0x212
        ("code32_start", ctypes.c_uint32),  # 0x214
        ("ramdisk_image", ctypes.c_uint32),  # 0x218
        ("ramdisk_size", ctypes.c_uint32),  # 0x21c
        ("bootsect_kludge", ctypes.c_uint32),  # 0x220
        ("heap_end_ptr", ctypes.c_uint16),  # 0x224
        ("ext_loader_ver", ctypes.c_uint8),  # 0x226
        ("ext_loader_type", ctypes.c_uint8),  # 0x227
        ("cmd_line_ptr", ctypes.c_uint32),  # 0x228
        ("initrd_addr_max", ctypes.c_uint32),  # 0x22c
        ("kernel_alignment", ctypes.c_uint32),  # 0x230
        ("relocatable_kernel", ctypes.c_uint8),  # 0x234
        ("min_alignment", ctypes.c_uint8),  # 0x235
        ("xloadflags", ctypes.c_uint16),  # 0x236
        ("cmdline_size", ctypes.c_uint32),  # 0x238
        ("hardware_subarch", ctypes.c_uint32),  # 0x23c
        ("hardware_subarch_data", ctypes.c_uint64),  # 0x240
        ("payload_offset", ctypes.c_uint32),  # 0x248
        ("payload_length", ctypes.c_uint32),  # 0x24c
        ("setup_data", ctypes.c_uint64),  # 0x250
        ("pref_address", ctypes.c_uint64),  # 0x258
        ("init_size", ctypes.c_uint32),  # 0x260
        ("handover_offset", ctypes.c_uint32),  # 0x264
        ("kernel_info_offset", ctypes.c_uint32),  # 0x268
    ]


SETUP_HEADER_END = SETUP_HEADER_OFFSET + ctypes.sizeof(SetupHeader)  # 0x26c
#: Where the zero page's header area ends (edd_mbr_sig_buffer follows): a newer,
#: longer header than :class:`SetupHeader` is still copied up to here.
SETUP_HEADER_AREA_END = 0x290


class BootE820Entry(ctypes.LittleEndianStructure):
    """``struct boot_e820_entry``: 20 bytes, packed."""

    _pack_ = 1
    _fields_ = [("addr", ctypes.c_uint64), ("size", ctypes.c_uint64), ("type", ctypes.c_uint32)]


class BootParams(ctypes.LittleEndianStructure):
    """``struct boot_params``, the 4096-byte zero page whose address the kernel gets in RSI/ESI."""

    _pack_ = 1
    _fields_ = [
        ("screen_info", ctypes.c_uint8 * 0x40),  # 0x000
        ("apm_bios_info", ctypes.c_uint8 * 0x14),  # 0x040
        ("_pad2", ctypes.c_uint8 * 4),  # 0x054
        ("tboot_addr", ctypes.c_uint64),  # 0x058
        ("ist_info", ctypes.c_uint8 * 0x10),  # 0x060
        ("acpi_rsdp_addr", ctypes.c_uint64),  # 0x070
        ("_pad3", ctypes.c_uint8 * 8),  # 0x078
        ("hd0_info", ctypes.c_uint8 * 16),  # 0x080
        ("hd1_info", ctypes.c_uint8 * 16),  # 0x090
        ("sys_desc_table", ctypes.c_uint8 * 0x10),  # 0x0a0
        ("olpc_ofw_header", ctypes.c_uint8 * 0x10),  # 0x0b0
        ("ext_ramdisk_image", ctypes.c_uint32),  # 0x0c0
        ("ext_ramdisk_size", ctypes.c_uint32),  # 0x0c4
        ("ext_cmd_line_ptr", ctypes.c_uint32),  # 0x0c8
        ("_pad4", ctypes.c_uint8 * 112),  # 0x0cc
        ("cc_blob_address", ctypes.c_uint32),  # 0x13c
        ("edid_info", ctypes.c_uint8 * 0x80),  # 0x140
        ("efi_info", ctypes.c_uint8 * 0x20),  # 0x1c0
        ("alt_mem_k", ctypes.c_uint32),  # 0x1e0
        ("scratch", ctypes.c_uint32),  # 0x1e4
        ("e820_entries", ctypes.c_uint8),  # 0x1e8
        ("eddbuf_entries", ctypes.c_uint8),  # 0x1e9
        ("edd_mbr_sig_buf_entries", ctypes.c_uint8),  # 0x1ea
        ("kbd_status", ctypes.c_uint8),  # 0x1eb
        ("secure_boot", ctypes.c_uint8),  # 0x1ec
        ("_pad5", ctypes.c_uint8 * 2),  # 0x1ed
        ("sentinel", ctypes.c_uint8),  # 0x1ef: must stay 0, else the kernel wipes fields
        ("_pad6", ctypes.c_uint8 * 1),  # 0x1f0
        ("hdr", SetupHeader),  # 0x1f1
        ("_pad7", ctypes.c_uint8 * (0x290 - SETUP_HEADER_END)),
        ("edd_mbr_sig_buffer", ctypes.c_uint32 * EDD_MBR_SIG_MAX),  # 0x290
        ("e820_table", BootE820Entry * E820_MAX_ENTRIES_ZEROPAGE),  # 0x2d0
        ("_pad8", ctypes.c_uint8 * 48),  # 0xcd0
        ("eddbuf", ctypes.c_uint8 * (EDDMAXNR * EDD_INFO_SIZE)),  # 0xd00
        ("_pad9", ctypes.c_uint8 * 276),  # 0xeec
    ]


def parse_setup_header(data: bytes) -> SetupHeader:
    """The setup header of an image (no validation; ``data`` must reach past 0x26c or is zero-padded)."""
    raw = bytes(data[SETUP_HEADER_OFFSET:SETUP_HEADER_END])
    return SetupHeader.from_buffer_copy(raw.ljust(ctypes.sizeof(SetupHeader), b"\0"))


def header_end(data: bytes) -> int:
    """Where the image's setup header ends: 0x202 + the jump's displacement byte, capped at 0x290.

    boot.rst tells a loader to copy exactly this much of the header into the
    zero page, so a newer header's fields this loader does not know are still
    passed on, and bytes past the header (setup code) are not.
    """
    end = JUMP_OFFSET + 2 + data[JUMP_OFFSET + 1]
    return min(end, SETUP_HEADER_AREA_END)
