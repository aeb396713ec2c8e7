"""Two small multiboot guests for the APIC tests (tests/test_apic_guests.py): their sources and results.

Both are 32-bit protected mode with their own GDT and IDT, and end by writing one number to the
debug-exit port (status ``(v << 1) | 1``) that packs what they counted, so KVM's in-kernel irqchip,
the software backend's userspace LAPICs and IOAPIC, and QEMU can be compared by exit status (and,
for QEMU, whose exit status keeps 8 bits, by the same number printed in hex on COM1).
"""

from __future__ import annotations

from tests.conftest import MULTIBOOT_HEADER

#: Common: flat GDT at 0x8000+ (copied with the AP trampoline), IDT at 0xA000, counters at 0x9000+.
COMMON = r"""
.equ LAPIC, 0xFEE00000
.equ IOAPIC, 0xFEC00000
.equ TRAMP, 0x8000
.equ IDT, 0xA000
.equ READY, 0x9000
.equ COUNT, 0x9020          /* per APIC ID: fixed IPIs / timer interrupts taken */
.equ MAILBOX, 0x9030
.equ NMIS, 0x9040
.equ RTC_EDGE, 0x9050
.equ RTC_LEVEL, 0x9054
.equ REMOTE_IRR, 0x9058
.equ LATE_TIMER, 0x905C      /* bit 0: TMCCT not 0 after the one-shot; bit 1: the deadline MSR not 0 */
.equ DEADLINE, 0x9060

.macro GATE vector, handler
    mov $\handler, %eax
    mov %eax, %edx
    and $0xFFFF, %eax
    or $0x00080000, %eax
    and $0xFFFF0000, %edx
    or $0x8E00, %edx
    mov %eax, IDT + 8 * \vector
    mov %edx, IDT + 8 * \vector + 4
.endm

.macro WAIT_GE addr, value
1:  pause
    cmpl $\value, \addr
    jb 1b
.endm

.macro EXIT
    call print_hex
    mov $0xf4, %dx
    out %eax, %dx
    ud2
.endm

.text
.globl _start
_start:
    cli
    cld
    mov $trampoline, %esi
    mov $TRAMP, %edi
    mov $(trampoline_end - trampoline), %ecx
    rep movsb
    lgdt TRAMP + (gdt_desc - trampoline)
    ljmp $0x08, $1f
1:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x7C00, %esp
    mov $IDT, %edi
    mov $512, %ecx
    xor %eax, %eax
    rep stosl
    mov $0x9000, %edi
    mov $64, %ecx
    rep stosl
    lidt idt_desc
    mov $0xFF, %al              /* both 8259s masked: interrupts come through the IOAPIC */
    out %al, $0x21
    out %al, $0xA1
    movl $0x1FF, LAPIC + 0xF0   /* software-enable the LAPIC, spurious vector 0xFF */
    GATE 0xFF, spurious
    jmp main

spurious:
    iret

/* print_hex: EAX as 8 hex digits and a newline on COM1 (EAX kept) */
print_hex:
    push %eax
    mov %eax, %esi
    mov $8, %ecx
1:  rol $4, %esi
    mov %esi, %eax
    and $0xF, %eax
    movb hexdigits(%eax), %al
    call putc
    loop 1b
    mov $0x0A, %al
    call putc
    pop %eax
    ret
putc:
    mov %al, %ah
    mov $0x3FD, %dx
2:  in %dx, %al
    test $0x20, %al
    jz 2b
    mov $0x3F8, %dx
    mov %ah, %al
    out %al, %dx
    ret
hexdigits:
    .ascii "0123456789abcdef"

idt_desc:
    .word 256 * 8 - 1
    .long IDT

trampoline:
.code16
    cli
    xor %ax, %ax
    mov %ax, %ds
    lgdtl TRAMP + (gdt_desc - trampoline)
    mov %cr0, %eax
    or $1, %al
    mov %eax, %cr0
    ljmpl $0x08, $(TRAMP + (ap32 - trampoline))
.code32
ap32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x6C00, %esp
    mov $ap_main, %eax
    jmp *%eax
.balign 8
gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF
    .quad 0x00CF92000000FFFF
gdt_desc:
    .word 23
    .long TRAMP + (gdt - trampoline)
trampoline_end:
"""

#: Two CPUs: fixed IPIs (physical, logical flat, all-but-self, all, self), one back from the AP, an NMI.
IPI_GUEST = (
    MULTIBOOT_HEADER
    + COMMON
    + r"""
main:
    GATE 0x50, ipi
    GATE 2, nmi
    movl $0xFFFFFFFF, LAPIC + 0xE0     /* flat model */
    movl $0x01000000, LAPIC + 0xD0     /* logical ID bit 0 */
    movl $(1 << 24), LAPIC + 0x310
    movl $0x00004500, LAPIC + 0x300    /* INIT */
    movl $(1 << 24), LAPIC + 0x310
    movl $(0x00004600 | (TRAMP >> 12)), LAPIC + 0x300   /* SIPI */
    WAIT_GE READY, 1
    sti
    movl $(1 << 24), LAPIC + 0x310
    movl $0x00004050, LAPIC + 0x300    /* fixed, physical APIC ID 1 */
    WAIT_GE COUNT + 4, 1
    movl $(2 << 24), LAPIC + 0x310
    movl $0x00004850, LAPIC + 0x300    /* fixed, logical 0x02 */
    WAIT_GE COUNT + 4, 2
    movl $0x000C4050, LAPIC + 0x300    /* all excluding self */
    WAIT_GE COUNT + 4, 3
    movl $0x00084050, LAPIC + 0x300    /* all including self */
    WAIT_GE COUNT + 4, 4
    WAIT_GE COUNT, 1
    movl $1, MAILBOX                   /* the AP answers with an IPI to APIC ID 0 */
    movl $(1 << 24), LAPIC + 0x310
    movl $0x00004050, LAPIC + 0x300
    WAIT_GE COUNT + 4, 5
    WAIT_GE COUNT, 2
    movl $(1 << 24), LAPIC + 0x310
    movl $0x00004400, LAPIC + 0x300    /* NMI to the AP */
    WAIT_GE NMIS, 1
    movl $0x00044050, LAPIC + 0x300    /* self */
    WAIT_GE COUNT, 3
    mov COUNT, %eax
    mov COUNT + 4, %ebx
    shl $4, %ebx
    or %ebx, %eax
    mov NMIS, %ebx
    shl $8, %ebx
    or %ebx, %eax
    EXIT

ipi:
    push %eax
    mov LAPIC + 0x20, %eax
    shr $24, %eax
    incl COUNT(, %eax, 4)
    movl $0, LAPIC + 0xB0
    pop %eax
    iret

nmi:
    incl NMIS
    iret

ap_main:
    lidt idt_desc
    movl $0x1FF, LAPIC + 0xF0
    movl $0xFFFFFFFF, LAPIC + 0xE0
    movl $0x02000000, LAPIC + 0xD0     /* logical ID bit 1 */
    movl $1, READY
2:  sti
    hlt
    cli
    cmpl $1, MAILBOX
    jne 2b
    movl $0, MAILBOX
    movl $0, LAPIC + 0x310
    movl $0x00004050, LAPIC + 0x300    /* back to APIC ID 0 */
    jmp 2b
"""
)
#: COUNT[0] = 3, COUNT[1] = 5, one NMI.
IPI_RESULT = 3 | (5 << 4) | (1 << 8)

#: One CPU: the LAPIC timer's three modes, then the RTC through IOAPIC pin 8 edge- and level-triggered.
TIMER_GUEST = (
    MULTIBOOT_HEADER
    + COMMON
    + r"""
main:
    GATE 0x40, timer
    GATE 0x41, deadline
    GATE 0x60, rtc_edge
    GATE 0x61, rtc_level
    sti
    /* one-shot: divide by 1, 200 us */
    movl $0xB, LAPIC + 0x3E0
    movl $0x40, LAPIC + 0x320
    movl $200000, LAPIC + 0x380
    WAIT_GE COUNT, 1
    cmpl $0, LAPIC + 0x390             /* TMCCT: 0 once expired */
    je 4f
    orl $1, LATE_TIMER
4:
    /* periodic, 1 ms: five more (the handler stops it at the fifth) */
    movl $0x20040, LAPIC + 0x320
    movl $1000000, LAPIC + 0x380
    WAIT_GE COUNT, 6
    /* TSC deadline, if CPUID says so: 200 us of TSC ahead */
    mov $1, %eax
    cpuid
    bt $24, %ecx
    jnc 3f
    movl $0x40041, LAPIC + 0x320       /* its own vector: a periodic one still pending is not it */
    rdtsc
    add $200000, %eax
    adc $0, %edx
    mov $0x6E0, %ecx
    wrmsr
    WAIT_GE DEADLINE, 1
    mov $0x6E0, %ecx
    rdmsr
    or %edx, %eax
    jz 5f
    orl $2, LATE_TIMER                 /* the deadline MSR reads 0 after it fired */
5:  movl $0x10041, LAPIC + 0x320
3:
    /* the RTC's periodic interrupt (1024 Hz) on IOAPIC pin 8, edge, vector 0x60, to APIC ID 0 */
    movl $(0x10 + 2 * 8 + 1), IOAPIC
    movl $0, IOAPIC + 0x10
    movl $(0x10 + 2 * 8), IOAPIC
    movl $0x60, IOAPIC + 0x10
    mov $0x0A, %al
    out %al, $0x70
    mov $0x26, %al
    out %al, $0x71
    mov $0x0B, %al
    out %al, $0x70
    in $0x71, %al
    or $0x40, %al                      /* PIE */
    mov %al, %bl
    mov $0x0B, %al
    out %al, $0x70
    mov %bl, %al
    out %al, $0x71
    WAIT_GE RTC_EDGE, 3
    /* level-triggered, vector 0x61: the first EOI comes before the RTC is acknowledged (line high) */
    cli
    movl $(0x10 + 2 * 8), IOAPIC
    movl $0x8061, IOAPIC + 0x10
    sti
    WAIT_GE RTC_LEVEL, 2
    movl $(0x10 + 2 * 8), IOAPIC
    mov IOAPIC + 0x10, %eax            /* remote IRR clear again after the last EOI */
    shr $14, %eax
    and $1, %eax
    shl $1, %eax
    or %eax, REMOTE_IRR
    mov COUNT, %eax
    mov RTC_EDGE, %ebx
    shl $4, %ebx
    or %ebx, %eax
    mov RTC_LEVEL, %ebx
    shl $8, %ebx
    or %ebx, %eax
    mov REMOTE_IRR, %ebx
    shl $12, %ebx
    or %ebx, %eax
    mov DEADLINE, %ebx
    shl $16, %ebx
    or %ebx, %eax
    mov LATE_TIMER, %ebx
    shl $20, %ebx
    or %ebx, %eax
    EXIT

timer:
    cmpl $6, COUNT                     /* one more may have been pending when it stopped: not counted */
    jae 1f
    incl COUNT
    cmpl $6, COUNT
    jne 1f
    movl $0x10040, LAPIC + 0x320       /* the fifth periodic one: masked and stopped */
    movl $0, LAPIC + 0x380
1:  movl $0, LAPIC + 0xB0
    iret

deadline:
    incl DEADLINE
    movl $0, LAPIC + 0xB0
    iret

rtc_edge:
    push %eax
    mov $0x0C, %al
    out %al, $0x70
    in $0x71, %al                      /* acknowledge: the line goes low */
    cmpl $3, RTC_EDGE                  /* one more may have been latched in IRR before the mask: */
    jae 1f                             /* not counted (a vCPU preempted for a period, under load) */
    incl RTC_EDGE
    cmpl $3, RTC_EDGE
    jne 1f
    movl $(0x10 + 2 * 8), IOAPIC
    movl $0x10060, IOAPIC + 0x10       /* masked until the level test */
1:  movl $0, LAPIC + 0xB0
    pop %eax
    iret

rtc_level:
    push %eax
    push %ebx
    incl RTC_LEVEL
    movl $(0x10 + 2 * 8), IOAPIC
    mov IOAPIC + 0x10, %eax            /* remote IRR set while in service */
    shr $14, %eax
    and $1, %eax
    or %eax, REMOTE_IRR
    cmpl $2, RTC_LEVEL
    jne 1f
    mov $0x0B, %al                     /* second time: periodic interrupts off, acknowledged */
    out %al, $0x70
    in $0x71, %al
    and $0xBF, %al
    mov %al, %bl
    mov $0x0B, %al
    out %al, $0x70
    mov %bl, %al
    out %al, $0x71
    mov $0x0C, %al
    out %al, $0x70
    in $0x71, %al
1:  movl $0, LAPIC + 0xB0              /* the first time the line is still high: sent again */
    pop %ebx
    pop %eax
    iret

ap_main:
    ud2
"""
)
#: 6 timer interrupts (1 one-shot, 5 periodic), 3 edge RTC interrupts, 2 level ones (one resent after
#: an EOI with the line still high), remote IRR seen set (bit 0) and clear at the end (bit 1 stays 0),
#: 1 TSC-deadline interrupt (where CPUID offers the mode: not QEMU's TCG), TMCCT and the deadline MSR 0
#: after expiry (bits 20-21 clear).
TIMER_RESULT = 6 | (3 << 4) | (2 << 8) | (1 << 12) | (1 << 16)
TSC_DEADLINE_FIRED = 1 << 16
