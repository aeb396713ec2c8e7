"""Linux bzImage loader: the x86 boot protocol's 64-bit entry (32-bit for old kernels).

kvmlite does not run the bzImage's real-mode setup code (real mode is emulated
at about 1 µs per instruction on this project's nested KVM, and the setup
code only asks a BIOS kvmlite does not have).  Instead it does what the setup
code would have done, as Firecracker and QEMU's ``-kernel`` with a 64-bit
kernel do:

* the protected-mode kernel (everything after the ``setup_sects + 1``
  sectors) goes to ``pref_address`` (protocol 2.10+) or 1 MiB;
* a zero page (:class:`~kvmlite.loaders.bootparams.BootParams`) gets the setup
  header copied from the image, kvmlite's answers (loader type, heap, command
  line, initrd) and the e820 map of :func:`kvmlite.loaders.multiboot.e820_map`,
  so a kernel sees the same memory map under every kvmlite loader;
* the CPU starts in long mode at ``load address + 0x200`` with RSI pointing at
  the zero page (``XLF_KERNEL_64``), or, for a kernel without that entry, in
  flat 32-bit protected mode at the load address with ESI pointing at it.

Fixed low addresses (clear of :mod:`kvmlite.loaders.layout`, whose structures
end at 0x10000, and of the EBDA at 0x9FC00)::

    0x10000 .. 0x10fff   zero page (struct boot_params)       ZERO_PAGE_ADDR
    0x20000 .. 0x2ffff   kernel command line, NUL-terminated  CMDLINE_ADDR

A relocatable kernel decompresses itself at ``max(load address aligned to
kernel_alignment, LOAD_PHYSICAL_ADDR)`` and needs ``init_size`` bytes there;
as ``LOAD_PHYSICAL_ADDR`` equals ``pref_address``, loading at ``pref_address``
is the only placement that does not waste RAM, and the RAM check covers
``[load, load + init_size)``.

Checked against a real kernel: Debian's 6.1 cloud bzImage (lz4 payload,
protocol 2.15) loaded this way decompresses itself, reads this command line,
e820 map and initrd, and reaches ``start_kernel`` under kvmlite's KVM backend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kvmlite.errors import BzImageError, GuestMemoryError
from kvmlite.loaders import bootparams as B
from kvmlite.loaders import layout as L
from kvmlite.loaders.base import EntryMode, LoadResult, encode_cmdline
from kvmlite.loaders.multiboot import E820_RAM, e820_map
from kvmlite.memory.guest import PAGE_SIZE, GuestMemory

log = logging.getLogger(__name__)

ZERO_PAGE_ADDR = 0x1_0000
CMDLINE_ADDR = 0x2_0000
CMDLINE_MAX = 0x1_0000  # bytes reserved at CMDLINE_ADDR, NUL included
#: heap_end_ptr: the end of the setup heap, as an offset from the real-mode code's
#: start.  Only the real-mode setup code uses it; kvmlite sets it as a boot loader
#: placing setup at a 64 KiB segment would, so the header is consistent.
HEAP_END_PTR = 0xFE00
ENTRY64_OFFSET = 0x200  # the 64-bit entry: startup_64 lies 0x200 past startup_32
FOUR_GIB = 1 << 32
KERNEL_VERSION_BASE = 0x200  # kernel_version is an offset from 0x200 to a NUL-terminated string
KERNEL_VERSION_MAX = 256
MIB = 1 << 20


@dataclass(frozen=True)
class BzImage:
    """A validated bzImage: its header and where the protected-mode kernel starts in the file."""

    header: B.SetupHeader
    version: int
    setup_size: int  # bytes of real-mode setup (boot sector included) before the kernel
    kernel_size: int  # bytes of protected-mode kernel in the file
    header_end: int  # end of the setup header to copy into the zero page

    @property
    def version_str(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"

    @property
    def init_size(self) -> int:
        """Bytes the kernel needs from its load address while it decompresses and starts.

        Before protocol 2.10 the header does not say; the kernel's own size is
        then the best lower bound kvmlite has.
        """
        if self.version >= B.PROTO_PREF_ADDRESS:
            return max(self.header.init_size, self.kernel_size)
        return self.kernel_size

    @property
    def load_address(self) -> int:
        if self.version >= B.PROTO_PREF_ADDRESS and self.header.pref_address:
            return int(self.header.pref_address)
        return L.HIMEM

    @property
    def initrd_addr_max(self) -> int:
        return int(self.header.initrd_addr_max) or B.DEFAULT_INITRD_ADDR_MAX

    @property
    def has_entry64(self) -> bool:
        return self.version >= B.PROTO_XLOADFLAGS and bool(self.header.xloadflags & B.XLF_KERNEL_64)


def parse(data: bytes) -> BzImage:
    """Validate a bzImage's setup header and sizes; raise :class:`BzImageError` naming the fault."""
    if len(data) < B.HEADER_MAGIC_OFFSET + 6:
        raise BzImageError(f"file of {len(data)} bytes is too short to hold a Linux setup header")
    hdr = B.parse_setup_header(data)
    if hdr.boot_flag != B.BOOT_FLAG:
        raise BzImageError(
            f"no boot flag 0xAA55 at offset {B.BOOT_FLAG_OFFSET:#x} (found {hdr.boot_flag:#06x}): "
            "not a Linux kernel image"
        )
    magic = data[B.HEADER_MAGIC_OFFSET : B.HEADER_MAGIC_OFFSET + 4]
    if magic != B.HEADER_MAGIC:
        raise BzImageError(
            f"no 'HdrS' magic at offset {B.HEADER_MAGIC_OFFSET:#x} (found {magic!r}): "
            "not a Linux kernel image, or one older than boot protocol 2.00"
        )
    version = int(hdr.version)
    image_version = f"{version >> 8}.{version & 0xFF:02d}"
    if version < B.PROTO_MIN:
        raise BzImageError(
            f"boot protocol version {image_version} is older than 2.06, the oldest kvmlite supports"
        )
    if not hdr.loadflags & B.LOADED_HIGH:
        raise BzImageError("this is a zImage (kernel loaded below 1 MiB): only bzImages are supported")
    sects = hdr.setup_sects or B.DEFAULT_SETUP_SECTS
    setup_size = (sects + 1) * B.SECTOR_SIZE
    if len(data) <= setup_size:
        raise BzImageError(
            f"file of {len(data)} bytes ends within its {sects} setup sectors ({setup_size} bytes): "
            "truncated image?"
        )
    kernel_size = len(data) - setup_size
    # syssize counts 16-byte paragraphs, rounded up: allow the last one to be partial.
    declared = hdr.syssize * 16
    if declared > kernel_size + 15:
        raise BzImageError(
            f"protected-mode kernel is {kernel_size} bytes but the header says {declared} (syssize): "
            "truncated image?"
        )
    return BzImage(hdr, version, setup_size, kernel_size, B.header_end(data))


def kernel_version_string(data: bytes, image: BzImage | None = None) -> str:
    """The version string the image carries ("6.1.0-... (builder) #1 SMP ..."), or "" if none."""
    image = image or parse(data)
    off = image.header.kernel_version
    if not off:
        return ""
    start = off + KERNEL_VERSION_BASE
    if start >= image.setup_size:
        return ""
    raw = data[start : min(start + KERNEL_VERSION_MAX, image.setup_size)]
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def _ram_ranges(memory: GuestMemory) -> list[tuple[int, int]]:
    """[start, end) of usable RAM above 1 MiB as the e820 map tells the kernel."""
    return [
        (base, base + size) for base, size, kind in e820_map(memory) if kind == E820_RAM and base >= L.HIMEM
    ]


def _place_initrd(image: BzImage, memory: GuestMemory, size: int, kernel_end: int) -> int:
    """The highest page-aligned address for ``size`` bytes above the kernel and below its initrd limit.

    As high as allowed, as boot.rst recommends: the kernel grows upward from
    its load address while it decompresses and sets up its early page tables.
    """
    limit = min(image.initrd_addr_max + 1, FOUR_GIB)
    best = None
    for start, end in _ram_ranges(memory):
        top = min(end, limit)
        addr = (top - size) & ~(PAGE_SIZE - 1)
        lowest = max(start, kernel_end)
        if top - size >= 0 and addr >= lowest:
            best = max(best or 0, addr)
    if best is not None:
        return best
    can_go_high = (
        image.version >= B.PROTO_XLOADFLAGS and image.header.xloadflags & B.XLF_CAN_BE_LOADED_ABOVE_4G
    )
    if can_go_high:
        for start, end in reversed(_ram_ranges(memory)):
            addr = (end - size) & ~(PAGE_SIZE - 1)
            if start >= FOUR_GIB and addr >= start:
                return addr
    room = max((min(e, limit) - max(s, kernel_end) for s, e in _ram_ranges(memory)), default=0)
    raise BzImageError(
        f"initrd of {size} bytes ({size / MIB:.1f} MiB) does not fit: the largest free RAM between "
        f"the kernel's end at {kernel_end:#x} and its initrd limit {limit:#x} is {max(room, 0)} bytes; "
        "give more --memory"
    )


def _fill_zero_page(
    data: bytes,
    image: BzImage,
    load: int,
    cmdline_len: int,
    initrd: tuple[int, int] | None,
    memory: GuestMemory,
    rsdp: int = 0,
) -> bytes:
    page = bytearray(B.ZERO_PAGE_SIZE)
    page[B.SETUP_HEADER_OFFSET : image.header_end] = data[B.SETUP_HEADER_OFFSET : image.header_end]
    bp = B.BootParams.from_buffer(page)
    hdr = bp.hdr
    hdr.type_of_loader = B.TYPE_OF_LOADER_UNDEFINED
    hdr.loadflags = (hdr.loadflags | B.CAN_USE_HEAP) & ~B.KEEP_SEGMENTS
    hdr.heap_end_ptr = HEAP_END_PTR
    hdr.code32_start = load
    hdr.cmd_line_ptr = CMDLINE_ADDR if cmdline_len else 0
    bp.ext_cmd_line_ptr = 0
    bp.acpi_rsdp_addr = rsdp  # read by kernels of boot protocol 2.14+; older ones scan for the RSDP
    if initrd is not None:
        addr, size = initrd
        hdr.ramdisk_image, bp.ext_ramdisk_image = addr & 0xFFFF_FFFF, addr >> 32
        hdr.ramdisk_size, bp.ext_ramdisk_size = size & 0xFFFF_FFFF, size >> 32
    entries = e820_map(memory)
    if len(entries) > B.E820_MAX_ENTRIES_ZEROPAGE:
        raise BzImageError(
            f"{len(entries)} e820 entries do not fit the zero page's {B.E820_MAX_ENTRIES_ZEROPAGE}"
        )
    for i, (base, size, kind) in enumerate(entries):
        bp.e820_table[i] = B.BootE820Entry(base, size, kind)
    bp.e820_entries = len(entries)
    del hdr, bp  # release the exported buffer before copying it out
    return bytes(page)


def load(
    memory: GuestMemory, data: bytes, cmdline: str = "", initrd: bytes | None = None, rsdp: int = 0
) -> LoadResult:
    """Load a bzImage, its command line and initrd; build the zero page; say how to enter the kernel.

    ``rsdp``: guest-physical address of the ACPI RSDP, passed in ``boot_params.acpi_rsdp_addr`` (0: none).
    """
    image = parse(data)
    hdr = image.header
    load_addr = image.load_address
    init_end = load_addr + image.init_size
    if load_addr < L.HIMEM:
        raise BzImageError(f"the kernel's preferred load address {load_addr:#x} lies below 1 MiB")
    if init_end > FOUR_GIB:
        raise BzImageError(
            f"the kernel at {load_addr:#x} with init_size {image.init_size:#x} reaches above the 4 GiB "
            "kvmlite identity-maps"
        )
    if not memory.is_ram(load_addr, image.init_size):
        need = -(-init_end // MIB)
        raise BzImageError(
            f"the kernel needs RAM from {load_addr:#x} to {init_end:#x} to decompress itself "
            f"(init_size {image.init_size / MIB:.1f} MiB): give at least {need + 1} MiB of --memory "
            f"(have {memory.size // MIB} MiB)"
        )

    raw_cmdline = encode_cmdline(cmdline)
    limit = int(hdr.cmdline_size) if image.version >= B.PROTO_MIN else B.DEFAULT_CMDLINE_SIZE
    if len(raw_cmdline) > limit:
        raise BzImageError(f"command line of {len(raw_cmdline)} bytes exceeds the kernel's limit of {limit}")
    if len(raw_cmdline) + 1 > CMDLINE_MAX:
        raise BzImageError(
            f"command line of {len(raw_cmdline)} bytes exceeds the {CMDLINE_MAX - 1} kvmlite reserves for it"
        )
    if b"\0" in raw_cmdline:
        raise BzImageError("the command line contains a NUL byte")

    notes = []
    version = kernel_version_string(data, image)
    if version:
        notes.append(f"Linux {version}")
    try:
        memory.write(load_addr, data[image.setup_size :])
        loaded = [(load_addr, load_addr + image.kernel_size)]
        placed_initrd = None
        if initrd:
            addr = _place_initrd(image, memory, len(initrd), init_end)
            memory.write(addr, initrd)
            placed_initrd = (addr, len(initrd))
            loaded.append((addr, addr + len(initrd)))
            log.debug("initrd of %d bytes at %#x", len(initrd), addr)
        elif initrd is not None:
            notes.append("the initrd is empty: none passed to the kernel")
        memory.write(CMDLINE_ADDR, raw_cmdline + b"\0")
        loaded.append((CMDLINE_ADDR, CMDLINE_ADDR + len(raw_cmdline) + 1))
        zero_page = _fill_zero_page(data, image, load_addr, len(raw_cmdline) + 1, placed_initrd, memory, rsdp)
        memory.write(ZERO_PAGE_ADDR, zero_page)
        loaded.append((ZERO_PAGE_ADDR, ZERO_PAGE_ADDR + len(zero_page)))
    except GuestMemoryError as err:
        raise BzImageError(f"does not fit in guest memory: {err}") from err

    fmt = f"bzImage (boot protocol {image.version_str})"
    if image.has_entry64:
        return LoadResult(
            format=fmt,
            entry=load_addr + ENTRY64_OFFSET,
            mode=EntryMode.LONG64,
            regs={"rsi": ZERO_PAGE_ADDR},
            loaded=loaded,
            notes=notes,
        )
    notes.append("the kernel has no 64-bit entry point (XLF_KERNEL_64): entering it in 32-bit protected mode")
    return LoadResult(
        format=fmt,
        entry=load_addr,
        mode=EntryMode.PROTECTED32,
        regs={"esi": ZERO_PAGE_ADDR, "ebp": 0, "edi": 0, "ebx": 0},
        loaded=loaded,
        notes=notes,
    )
