"""Synthetic kernel images the tests build and share: a bzImage, a PVH vmlinux, the multiboot
guest of the command-line tests, the routines of the multiboot-entry and QEMU front-end
guests, and the disk image of the virtio tests.  Test modules import these from here, not from
each other."""

from __future__ import annotations

import struct
from pathlib import Path

from kvmlite.loaders import bootparams as B
from tests.conftest import build_multiboot

MIB = 1 << 20
VERSION_STRING = b"6.99.0-test (kvmlite@tests) #1"


def make_bzimage(
    kernel: bytes = b"\x90" * 4096,
    *,
    version: int = 0x020F,
    setup_sects: int = 4,
    loadflags: int = B.LOADED_HIGH,
    xloadflags: int = B.XLF_KERNEL_64 | B.XLF_CAN_BE_LOADED_ABOVE_4G,
    pref_address: int = 0x100_0000,
    init_size: int = 2 * MIB,
    cmdline_size: int = 2047,
    initrd_addr_max: int = 0x7FFF_FFFF,
    payload: tuple[int, int] = (0, 0),
    jump_end: int = B.SETUP_HEADER_END,
) -> bytes:
    """A minimal bzImage: setup sectors holding a valid header and a version string, then ``kernel``."""
    sects = setup_sects or B.DEFAULT_SETUP_SECTS
    setup = bytearray((sects + 1) * B.SECTOR_SIZE)
    hdr = B.SetupHeader()
    hdr.setup_sects = setup_sects
    hdr.syssize = (len(kernel) + 15) // 16
    hdr.boot_flag = B.BOOT_FLAG
    hdr.jump = 0xEB | ((jump_end - 0x202) << 8)
    hdr.header = int.from_bytes(B.HEADER_MAGIC, "little")
    hdr.version = version
    hdr.kernel_version = 0x400 - 0x200
    hdr.loadflags = loadflags
    hdr.code32_start = 0x10_0000
    hdr.initrd_addr_max = initrd_addr_max
    hdr.kernel_alignment = 0x20_0000
    hdr.relocatable_kernel = 1
    hdr.xloadflags = xloadflags
    hdr.cmdline_size = cmdline_size
    hdr.payload_offset, hdr.payload_length = payload
    hdr.pref_address = pref_address
    hdr.init_size = init_size
    setup[B.SETUP_HEADER_OFFSET : B.SETUP_HEADER_END] = bytes(hdr)
    setup[0x400 : 0x400 + len(VERSION_STRING) + 1] = VERSION_STRING + b"\0"
    return bytes(setup) + kernel


STUB = b"\x90" * 0x300  # stands in for a bzImage's decompressor, before its payload


def image_with_payload(compressed: bytes, *, size_append: int | None, version: int = 0x020F) -> bytes:
    """A bzImage whose header names ``compressed`` as its payload, with the build's size trailer if given."""
    payload = compressed + (struct.pack("<I", size_append) if size_append is not None else b"")
    kernel = STUB + payload + b"\0" * 64
    return make_bzimage(kernel, version=version, payload=(len(STUB), len(payload)))


KERNEL_PADDR = 0x100_0000
KERNEL_VADDR = 0xFFFF_FFFF_8100_0000
ENTRY = KERNEL_PADDR + 0x40


def note(name: bytes, kind: int, desc: bytes) -> bytes:
    name += b"\0"
    pad = lambda b: b + bytes(-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name), len(desc), kind) + pad(name) + pad(desc)


def make_vmlinux(
    code: bytes = b"\xf4" * 256,
    *,
    bss: int = 4096,
    paddr: int = KERNEL_PADDR,
    notes: bytes | None = None,
    machine: int = 62,
) -> bytes:
    """An ELF64 with one PT_LOAD (linked high, loaded at ``paddr``) and a PT_NOTE holding the PVH entry."""
    if notes is None:
        notes = note(b"Xen", 6, b"linux\0") + note(b"Xen", 18, struct.pack("<Q", ENTRY))
    ehdr_size, phdr_size = 64, 56
    code_off = ehdr_size + 2 * phdr_size
    note_off = code_off + len(code)
    ehdr = struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF\x02\x01\x01" + bytes(9),
        2,  # ET_EXEC
        machine,
        1,
        KERNEL_VADDR,
        ehdr_size,
        0,
        0,
        ehdr_size,
        phdr_size,
        2,
        64,
        0,
        0,
    )
    load = struct.pack("<IIQQQQQQ", 1, 5, code_off, KERNEL_VADDR, paddr, len(code), len(code) + bss, 4096)
    pnote = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(notes), len(notes), 4)
    return ehdr + load + pnote + code + notes


MB_GUEST = r"""
.section .multiboot, "a"
.align 4
.long 0x1BADB002, 0x00000002, -(0x1BADB002 + 0x00000002)
.text
.code32
.globl _start
_start:
    mov $stack_top, %esp        /* multiboot leaves ESP undefined */
    mov $msg, %esi
    call puts
    mov 16(%ebx), %esi          /* multiboot cmdline */
    call puts
    mov $0x0a, %al
    call putc
    mov $0x1234, %dx            /* a port nobody claims: reads float high, write ignored */
    in %dx, %al
    out %al, %dx
    cmp $0xff, %al
    jne fail
    MODE_SPECIFIC
fail:
    mov $0xf4, %dx
    mov $0x7f, %eax
    out %eax, %dx
putc:
    push %edx
    mov $0x3f8, %dx
    out %al, %dx
    pop %edx
    ret
puts:
    lodsb
    test %al, %al
    jz 1f
    call putc
    jmp puts
1:  ret
msg: .asciz "hello from a multiboot guest: "
.bss
.align 16
.skip 4096
stack_top:
"""

MODES = {
    "exit": "mov $0xf4, %dx\n mov $0x21, %eax\n out %eax, %dx\n",
    "halt": "cli\n hlt\n",
    "triple": "lidt idt0\n int $3\n.align 8\nidt0: .word 0\n .long 0\n",
}


def build_guest(tmp: Path, mode: str) -> Path:
    return build_multiboot(tmp, mode, MB_GUEST.replace("MODE_SPECIFIC", MODES[mode]))


#: What the guests built from GUEST_LIB exit with: ``exit`` writes GUEST_EXIT_VALUE to isa-debug-exit.
GUEST_EXIT_VALUE = 0x21
GUEST_STATUS = (GUEST_EXIT_VALUE << 1) | 1
#: 32-bit routines for small multiboot test guests (AT&T syntax): putc (AL) and puts (ESI) to COM1,
#: puthex (EDX as 8 hex digits), and exit (through isa-debug-exit at 0xf4).
GUEST_LIB = """
putc:                       # AL to COM1 once the THR is empty; keeps every register
    push %edx
    push %eax
    mov $0x3fd, %dx
1:  in %dx, %al
    test $0x20, %al
    jz 1b
    pop %eax
    mov $0x3f8, %dx
    out %al, %dx
    pop %edx
    ret
puts:                       # the string at ESI
    push %esi
    push %eax
1:  lodsb
    test %al, %al
    jz 2f
    call putc
    jmp 1b
2:  pop %eax
    pop %esi
    ret
puthex:
    push %ecx
    push %eax
    mov $8, %ecx
1:  rol $4, %edx
    mov %dl, %al
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 2f
    add $('a' - '9' - 1), %al
2:  call putc
    loop 1b
    pop %eax
    pop %ecx
    ret
exit:
    mov $EXIT_VALUE, %eax
    out %eax, $0xf4
    ud2
""".replace("EXIT_VALUE", str(GUEST_EXIT_VALUE))


DISK_SECTORS = 128
DISK_SECTOR_0 = b"kvmlite virtio-blk test image\n"


def make_disk_image(path: Path) -> Path:
    """A raw disk of :data:`DISK_SECTORS` sectors that starts with :data:`DISK_SECTOR_0`, zeros after."""
    data = bytearray(DISK_SECTORS * 512)
    data[: len(DISK_SECTOR_0)] = DISK_SECTOR_0
    path.write_bytes(bytes(data))
    return path


#: Timer-tick set-up of the 32-bit tick guests (tests/test_control.py):
#: interrupt gates for IRQ 0 (label ``tick``) and the spurious vector (``spurious``) through the
#: guest's ``set_gate``, ``lidt idt_ptr``, the PIC pair at vectors 0x20/0x28 with only IRQ 0 open,
#: and PIT channel 0 in mode 2 at 1193182 / divisor Hz.
def tick_setup(divisor: int) -> str:
    return _TICK_SETUP.replace("DIVISOR", str(divisor))


_TICK_SETUP = """    mov $tick, %eax
    mov $0x20, %ecx
    call set_gate
    mov $spurious, %eax
    mov $0x27, %ecx
    call set_gate
    lidt idt_ptr
    mov $0x11, %al          /* PIC pair: ICW1-4, vectors 0x20 and 0x28, only IRQ 0 open */
    out %al, $0x20
    out %al, $0xa0
    mov $0x20, %al
    out %al, $0x21
    mov $0x28, %al
    out %al, $0xa1
    mov $0x04, %al
    out %al, $0x21
    mov $0x02, %al
    out %al, $0xa1
    mov $0x01, %al
    out %al, $0x21
    out %al, $0xa1
    mov $0xfe, %al
    out %al, $0x21
    mov $0xff, %al
    out %al, $0xa1
    mov $0x34, %al          /* PIT channel 0, mode 2, 1193182 / DIVISOR Hz */
    out %al, $0x43
    mov $(DIVISOR & 0xff), %al
    out %al, $0x40
    mov $(DIVISOR >> 8), %al
    out %al, $0x40
"""


#: ``set_gate`` (interrupt gate %ecx -> handler %eax in the current code segment, in the guest's
#: ``idt``) and the ``idt_ptr`` that ``tick_setup`` loads, for the same tick guests.
TICK_GATES = """set_gate:
    lea idt(, %ecx, 8), %edi
    mov %ax, (%edi)
    mov %cs, 2(%edi)
    movw $0x8e00, 4(%edi)
    shr $16, %eax
    mov %ax, 6(%edi)
    ret

idt_ptr:
    .word 256 * 8 - 1
    .long idt
"""


#: Enough of an ELF header for the initramfs builder to take a file as busybox.
FAKE_ELF = b"\x7fELF" + bytes(60)


def read_newc(archive: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """name -> (mode, data, (rdevmajor, rdevminor)); checks magic, alignment and the trailer."""
    out: dict[str, tuple[int, bytes, tuple[int, int]]] = {}
    pos = 0
    while True:
        assert pos % 4 == 0, f"header at {pos} is not 4-aligned"
        header = archive[pos : pos + 110].decode("ascii")
        assert header[:6] == "070701"
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name_start = pos + 110
        raw_name = archive[name_start : name_start + namesize]
        assert raw_name.endswith(b"\0")
        name = raw_name[:-1].decode()
        data_start = name_start + namesize + (-(110 + namesize) % 4)
        data = archive[data_start : data_start + filesize]
        pos = data_start + filesize + (-filesize % 4)
        if name == "TRAILER!!!":
            assert pos == len(archive)
            return out
        assert name not in out, f"duplicate {name}"
        out[name] = (mode, data, (rmaj, rmin))
