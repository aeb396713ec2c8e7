"""Hostile guests (issue 17): each does something a malicious kernel would, and kvmlite must end
it with the documented status, no traceback, in bounded time, memory, descriptors and threads
(tests/hostile/support.py checks all of these for every run).

Ring-0 code runs at about 1 µs per instruction on this project's nested host and every exit costs
about 10 µs, so the sweeps are dense where devices live and sparse elsewhere (each guest says how).
"""

from __future__ import annotations

import pytest

from tests.conftest import requires_kvm
from tests.hostile.support import (
    EXITED,
    GUEST_CRASH,
    OUTPUT_LIMIT,
    TIMEOUT,
    contained,
    hostile_guest,
    run_watched,
)
from tests.images import build_guest, make_disk_image

pytestmark = requires_kvm

#: Every port at every access size: each port below 0x1000 (the legacy devices, fw_cfg, ACPI PM,
#: PCI configuration), then every 61st (a prime stride, so each offset within a device's block of
#: ports is hit somewhere) up to 0xffff, which takes in the PCI I/O window.  Reads of 1, 2 and 4
#: bytes, then writes of 0 at each size (0 resets nothing: not 0xcf9, 0x92 or the i8042).  The
#: debug-exit ports 0xf0-0xf7 are left out: a write there ends the run, as it should.
PORT_SWEEP = """
    xor %ecx, %ecx
1:  mov %ecx, %eax
    and $0xfff8, %eax
    cmp $0xf0, %eax
    je 2f
    mov %cx, %dx
    in %dx, %al
    in %dx, %ax
    in %dx, %eax
    xor %eax, %eax
    out %al, %dx
    out %ax, %dx
    out %eax, %dx
2:  inc %ecx
    cmp $0x1000, %ecx
    jb 1b
    add $60, %ecx
    cmp $0x10000, %ecx
    jb 1b
    mov $done, %esi
    call puts
    jmp 3f
done: .asciz "swept"
3:
"""


def test_every_port_at_every_size(tmp_path):
    out = run_watched(hostile_guest(tmp_path, "ports", PORT_SWEEP), "--timeout", "60", bound=90)
    contained(out, EXITED, 60)
    assert out.stdout.endswith(b"swept")


#: Reads and writes (0) of 1, 2 and 4 bytes above RAM (128 MiB) up to 4 GiB: every 4 MiB + 7 (an
#: odd stride, so unaligned and page-crossing accesses too), then every dword of the first KiB of
#: the IOAPIC, the HPET's usual address and the LAPIC.  32-bit code without PAE reaches no further.
MMIO_SWEEP = """
    mov $0x08000000, %ebx
1:  call poke
    add $0x00400007, %ebx
    jnc 1b
    mov $0xfec00000, %ebx
    call dense
    mov $0xfed00000, %ebx
    call dense
    mov $0xfee00000, %ebx
    call dense
    mov $done, %esi
    call puts
    jmp 3f
dense:
    mov $256, %ecx
2:  call poke
    add $4, %ebx
    loop 2b
    ret
poke:
    mov (%ebx), %al
    mov (%ebx), %ax
    mov (%ebx), %eax
    movb $0, (%ebx)
    movw $0, (%ebx)
    movl $0, (%ebx)
    ret
done: .asciz "swept"
3:
"""


def test_reads_and_writes_above_ram(tmp_path):
    out = run_watched(hostile_guest(tmp_path, "mmio", MMIO_SWEEP), "--timeout", "60", bound=90)
    contained(out, EXITED, 60)
    assert out.stdout.endswith(b"swept")


#: String I/O with pointers past the end of RAM, into the PCI hole, across the 4 GiB wrap and out
#: of the LAPIC, with counts the host hands over a byte (or a page) at a time.
STRING_IO = """
    cld
    mov $0x1234, %dx
    mov $0x07fffff0, %edi       /* 16 bytes of RAM, then nothing */
    mov $64, %ecx
    rep insb
    mov $0xc0000000, %edi       /* the PCI hole */
    mov $0x400, %ecx
    rep insw
    mov $0xfffffff0, %esi       /* wraps past 4 GiB */
    mov $0x20, %ecx
    rep outsb
    mov $0x80, %dx
    mov $0xfee00000, %esi       /* the LAPIC's registers as a source */
    mov $0x100, %ecx
    rep outsl
    mov $done, %esi
    call puts
    jmp 3f
done: .asciz "strings"
3:
"""


def test_string_io_outside_ram(tmp_path):
    out = run_watched(hostile_guest(tmp_path, "strings", STRING_IO), "--timeout", "60", bound=90)
    contained(out, EXITED, 60)
    assert out.stdout.endswith(b"strings")


def test_string_io_with_a_huge_count_is_stopped_by_the_timeout(tmp_path):
    body = "cld\n mov $0x1234, %dx\n mov $0xd0000000, %edi\n mov $0xffffffff, %ecx\n rep insb\n"
    out = run_watched(hostile_guest(tmp_path, "hugestring", body), "--timeout", "2", bound=30)
    contained(out, TIMEOUT, 15)
    assert "--timeout: the guest ran for 2 s" in out.stderr


@pytest.mark.parametrize("backend", ["kvm", "emu"])
def test_a_ring0_loop_with_interrupts_off_is_stopped_by_the_timeout(tmp_path, backend):
    guest = hostile_guest(tmp_path, "spin", "cli\n1: jmp 1b\n")
    out = run_watched(guest, "--backend", backend, "--timeout", "1.5", "--serial", "none", bound=30)
    contained(out, TIMEOUT, 12)
    assert "--timeout" in out.stderr


#: Every timer at its fastest: the PIT's channel 0 at count 1 (rate generator), the RTC's periodic
#: interrupt at 8192 Hz, the LAPIC timer periodic at initial count 1 and divide 1, and an HPET
#: where PCs have one (none here: those writes go nowhere).  An IDT sends every vector to one
#: handler that acknowledges both PICs, the RTC and the LAPIC.  The interrupts come so fast that
#: the code after an IRET hardly ever runs, so the handler itself leaves after 300 of them.
TIMERS = """
    mov %cs, %eax
    mov $idt, %edi
    mov $256, %ecx
1:  mov $handler, %edx
    mov %dx, (%edi)
    mov %ax, 2(%edi)
    movw $0x8e00, 4(%edi)
    shr $16, %edx
    mov %dx, 6(%edi)
    add $8, %edi
    loop 1b
    lidt idtr
    mov $0x11, %al              /* both PICs: vectors 0x20-0x2f, everything unmasked */
    out %al, $0x20
    out %al, $0xa0
    mov $0x20, %al
    out %al, $0x21
    mov $0x28, %al
    out %al, $0xa1
    mov $4, %al
    out %al, $0x21
    mov $2, %al
    out %al, $0xa1
    mov $1, %al
    out %al, $0x21
    out %al, $0xa1
    xor %al, %al
    out %al, $0x21
    out %al, $0xa1
    mov $0x34, %al              /* PIT channel 0, rate generator, count 1 */
    out %al, $0x43
    mov $1, %al
    out %al, $0x40
    xor %al, %al
    out %al, $0x40
    mov $0x0a, %al              /* RTC: 8192 Hz periodic interrupt */
    out %al, $0x70
    mov $0x23, %al
    out %al, $0x71
    mov $0x0b, %al
    out %al, $0x70
    mov $0x42, %al
    out %al, $0x71
    movl $0x1ff, 0xfee000f0     /* LAPIC on, timer periodic at vector 0x30, divide 1, count 1 */
    movl $0x20030, 0xfee00320
    movl $0xb, 0xfee003e0
    movl $1, 0xfee00380
    movl $3, 0xfed00010         /* HPET (if any): enabled, legacy routing, timer 0 periodic at 1 */
    movl $0x4c, 0xfed00100
    movl $1, 0xfed00108
    sti
2:  hlt
    jmp 2b
enough:                         /* interrupts come faster than the loop above ever runs */
    cli
    mov $done, %esi
    call puts
    jmp 3f
handler:
    push %eax
    incl count
    cmpl $300, count
    jae enough
    mov $0x0c, %al              /* read RTC register C: acknowledges its interrupt */
    out %al, $0x70
    in $0x71, %al
    mov $0x20, %al
    out %al, $0xa0
    out %al, $0x20
    movl $0, 0xfee000b0
    pop %eax
    iret
.align 8
idtr: .word 256 * 8 - 1
    .long idt
count: .long 0
done: .asciz "ticked"
.bss
idt: .skip 256 * 8
.text
3:
"""


@pytest.mark.parametrize("backend", ["kvm", "emu"])
def test_every_timer_at_its_maximum_rate(tmp_path, backend):
    guest = hostile_guest(tmp_path, "timers", TIMERS)
    out = run_watched(guest, "--backend", backend, "--timeout", "60", bound=90)
    contained(out, EXITED, 60)
    assert out.stdout.endswith(b"ticked")


#: Console floods, ignoring the line status: a byte at a time, and ``rep outsb`` of 64 KiB.
FLOOD = "mov $0x3f8, %dx\n mov $0x41, %al\n1: out %al, %dx\n jmp 1b\n"
FLOOD_64K = "cld\n mov $0x3f8, %dx\n mov $0x100000, %esi\n mov $0x10000, %ecx\n rep outsb\n"


def test_a_console_flood_is_cut_at_max_output(tmp_path):
    out = run_watched(hostile_guest(tmp_path, "flood", FLOOD), "--max-output", "4096", "--timeout", "60")
    contained(out, OUTPUT_LIMIT, 30)
    assert out.stdout == b"A" * 4096
    assert "--max-output: the guest wrote more than 4096 bytes" in out.stderr


def test_a_console_flood_is_delivered_whole(tmp_path):
    out = run_watched(hostile_guest(tmp_path, "flood64k", FLOOD_64K), "--timeout", "60", bound=90)
    contained(out, EXITED, 60)
    assert len(out.stdout) == 0x10000


def test_a_guest_that_resets_forever_is_bounded_by_the_timeout(tmp_path):
    guest = hostile_guest(tmp_path, "resets", "mov $0xfe, %al\n out %al, $0x64\n1: jmp 1b\n")
    out = run_watched(guest, "--on-reset", "restart", "--timeout", "6", "--serial", "none", bound=30)
    contained(out, TIMEOUT, 20)  # and the descriptors and threads stayed bounded through the restarts
    assert out.stderr.count("restarting") >= 10


def test_a_triple_fault_is_a_guest_crash(tmp_path):
    out = run_watched(build_guest(tmp_path, "triple"), "--timeout", "60")
    contained(out, GUEST_CRASH, 30)
    assert "RIP=" in out.stderr


#: Nonsense for the platform's register interfaces, from a fixed pseudo-random sequence (an LCG):
#: fw_cfg selectors and data reads, fw_cfg DMA requests whose descriptors hold random control
#: words, lengths and 64-bit addresses, ACPI PM1 writes with every sleep type but S3 and S5 (which
#: suspend and power off, as they should), and on every PCI function of bus 0: its memory BARs
#: written with random dwords every 4 bytes for 16 KiB (virtio's common, ISR, device and notify
#: registers and the MSI-X table: random queue addresses, sizes, enables and notifies), its I/O
#: BARs likewise for 64 ports, then every dword of its configuration space written with all ones
#: and with random values (BARs moved to random places, over RAM or the LAPIC).
PLATFORM_NONSENSE = """
    mov $200, %ecx              /* fw_cfg: random selectors, 16 data reads each */
1:  call random
    mov $0x510, %dx
    out %ax, %dx
    inc %dx
    push %ecx
    mov $16, %ecx
2:  in %dx, %al
    loop 2b
    pop %ecx
    loop 1b
    mov $100, %ecx              /* fw_cfg DMA: random descriptors */
1:  call random
    mov %eax, dma
    call random
    mov %eax, dma + 4
    call random
    mov %eax, dma + 8
    call random
    and $0x3, %eax              /* the address: below 16 GiB, in RAM now and then */
    mov %eax, dma + 12
    xor %eax, %eax
    mov $0x514, %dx
    out %eax, %dx
    mov $dma, %eax
    bswap %eax
    mov $0x518, %dx
    out %eax, %dx
    loop 1b
    mov $0x600, %dx             /* ACPI PM1: status and enable, then sleep types 2-4, 6, 7 */
    mov $0xffff, %ax
    out %ax, %dx
    add $2, %dx
    out %ax, %dx
    mov $0x604, %dx
    mov $20, %ecx
1:  mov $0x2801, %ax
    out %ax, %dx
    mov $0x2c01, %ax
    out %ax, %dx
    mov $0x3001, %ax
    out %ax, %dx
    mov $0x3801, %ax
    out %ax, %dx
    mov $0x3c01, %ax
    out %ax, %dx
    loop 1b
    mov $0x80000000, %ebx       /* PCI: every function on bus 0 */
pcifn:
    call cfg_read
    cmp $0xffff, %ax
    je nextfn
    or $4, %bl                  /* COMMAND: I/O, memory, bus master */
    mov $7, %eax
    call cfg_write
    mov $0x10, %bl
bar:
    call cfg_read
    test $1, %al
    jnz iobar
    and $0xfffffff0, %eax
    jz nextbar
    mov %eax, %esi
    mov $0x1000, %ecx
2:  call random
    mov %eax, (%esi)
    mov (%esi), %eax
    add $4, %esi
    loop 2b
    jmp nextbar
iobar:
    and $0xfffc, %eax
    mov %eax, %esi
    mov $64, %ecx
2:  call random
    mov %si, %dx
    out %al, %dx
    in %dx, %al
    inc %esi
    loop 2b
nextbar:
    add $4, %bl
    cmp $0x28, %bl
    jb bar
    xor %bl, %bl                /* configuration space: all ones, then random */
3:  mov $0xffffffff, %eax
    call cfg_write
    call cfg_read
    call random
    call cfg_write
    add $4, %bl
    jnz 3b
nextfn:
    and $0xffffff00, %ebx
    add $0x100, %ebx
    cmp $0x80010000, %ebx
    jb pcifn
    mov $done, %esi
    call puts
    jmp 9f
cfg_read:                       /* EAX = the dword at EBX (a CONFIG_ADDRESS) */
    mov %ebx, %eax
    mov $0xcf8, %dx
    out %eax, %dx
    mov $0xcfc, %dx
    in %dx, %eax
    ret
cfg_write:                      /* the dword at EBX = EAX */
    push %eax
    mov %ebx, %eax
    mov $0xcf8, %dx
    out %eax, %dx
    pop %eax
    mov $0xcfc, %dx
    out %eax, %dx
    ret
random:                         /* EAX = the next value of a 32-bit LCG */
    mov seed, %eax
    imul $1103515245, %eax
    add $12345, %eax
    mov %eax, seed
    ret
seed: .long 17
.align 16
dma: .skip 16
done: .asciz "survived"
9:
"""


def test_nonsense_to_fw_cfg_acpi_pci_and_virtio(tmp_path):
    guest = hostile_guest(tmp_path, "nonsense", PLATFORM_NONSENSE)
    disk = make_disk_image(tmp_path / "disk.img")
    args = ["--device", "virtio-rng-pci", "--disk", str(disk), "--timeout", "60"]
    out = run_watched(guest, *args, bound=90)
    contained(out, EXITED, 60)
    assert out.stdout.endswith(b"survived")
