/*
 * platform32.S - the PC platform devices from 32-bit protected mode.
 *
 * A multiboot ELF32 guest that loads its own GDT and a 32-bit IDT, then runs
 * lib/platform.S: UART set-up and loopback, PIC remap and masks, PIT mode 2
 * at 100 Hz with latch and read-back, 100 timer interrupts, the RTC date and
 * its periodic interrupt, and on request (echo=N, idle=N) serial receive
 * interrupts and an idle wait.  platform64.S does the same from long mode
 * and prints the same lines, apart from its first and last.
 *
 * Interrupt handlers end with a 32-bit IRET to CPL 0.  On the nested KVM this
 * project develops on, a 32-bit IRET may stop the VM with an emulation
 * failure (see guests/README.md); the guest is correct, it passes under QEMU,
 * and kvmlite's tests expect that failure there until kvmlite can rescue it.
 */
#include "lib/guest.h"
#include "lib/macros.S"

#define EXIT_PLATFORM32 0x50
#define NUM_EXCEPTIONS  32
#define EXC_STUB_SIZE   16
#define IDT_ENTRIES     256
#define GATE32_INTR     0x8e            /* present, DPL 0, 32-bit interrupt gate */
#define IRQ_VECTORS     16

    MULTIBOOT_HEADER (MB_FLAG_ALIGN)

#include "lib/mbentry32.S"
#include "lib/serial32.S"
#include "lib/cmdline32.S"
#include "lib/platformargs32.S"

    .code32
#define PUTS PUTS32
#define PUTHEX call puthex32
#define PUTDEC call putdec32
#define PUTC call putc32
#define FAIL_EXIT mov $EXIT_FAIL, %eax; jmp exit32
#include "lib/platform.S"

    .code32
    .text
main32:
    cmpl $MB_BOOT_MAGIC, mb_magic
    jne .Lbad_magic
    call platform_args32
    lgdt pgdt32_ptr
    ljmp $KCODE, $1f
1:  mov $KDATA, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    call idt32_setup
    PUTS32 "platform32: protected mode, 32-bit interrupt gates\n"
    call platform_main
    PUTS32 "platform32: done\n"
    mov $EXIT_PLATFORM32, %eax
    jmp exit32
.Lbad_magic:
    PUTS32 "platform32: FAIL multiboot magic\n"
    mov $EXIT_FAIL, %eax
    jmp exit32

/* set_gate32: IDT entry %ecx -> handler %eax. */
set_gate32:
    push %edi
    lea idt32(, %ecx, 8), %edi
    mov %ax, (%edi)
    movw $KCODE, 2(%edi)
    movb $0, 4(%edi)
    movb $GATE32_INTR, 5(%edi)
    push %eax
    shr $16, %eax
    mov %ax, 6(%edi)
    pop %eax
    pop %edi
    ret

/* idt32_setup: exception stubs on 0-31, the PIC's 16 vectors from 0x20, then LIDT. */
idt32_setup:
    xor %ecx, %ecx
    mov $exc_stubs32, %eax
1:  call set_gate32
    add $EXC_STUB_SIZE, %eax
    inc %ecx
    cmp $NUM_EXCEPTIONS, %ecx
    jb 1b
    mov $PIC_VECTOR_BASE, %ecx
2:  mov $irq_other_entry32, %eax
    call set_gate32
    inc %ecx
    cmp $(PIC_VECTOR_BASE + IRQ_VECTORS), %ecx
    jb 2b
    mov $irq0_entry32, %eax
    mov $(PIC_VECTOR_BASE + 0), %ecx
    call set_gate32
    mov $irq4_entry32, %eax
    mov $(PIC_VECTOR_BASE + 4), %ecx
    call set_gate32
    mov $irq8_entry32, %eax
    mov $(PIC2_VECTOR + 0), %ecx
    call set_gate32
    lidt idt32_ptr
    ret

.macro IRQ_ENTRY32 name, body
\name:
    pusha
    cld
    call \body
    popa
    iret
.endm
    IRQ_ENTRY32 irq0_entry32, irq0_body
    IRQ_ENTRY32 irq4_entry32, irq4_body
    IRQ_ENTRY32 irq8_entry32, irq8_body
    IRQ_ENTRY32 irq_other_entry32, irq_other_body

/* Exception stubs, EXC_STUB_SIZE bytes apart; those without an error code push 0. */
    .balign EXC_STUB_SIZE
exc_stubs32:
    .set vec, 0
    .rept NUM_EXCEPTIONS
    .balign EXC_STUB_SIZE
    .if !(vec == 8 || vec == 10 || vec == 11 || vec == 12 || vec == 13 || vec == 14 || vec == 17 || vec == 21 || vec == 29 || vec == 30)
    pushl $0
    .endif
    pushl $vec
    jmp exc_common32
    .set vec, vec + 1
    .endr

/* exc_common32: report vector, error code, EIP and CS, then exit EXIT_EXCEPTION. */
exc_common32:
    PUTS32 "EXCEPTION vec=0x"
    mov (%esp), %eax
    call puthex32
    PUTS32 " err=0x"
    mov 4(%esp), %eax
    call puthex32
    PUTS32 " rip=0x"
    mov 8(%esp), %eax
    call puthex32
    PUTS32 " cs=0x"
    mov 12(%esp), %eax
    call puthex32
    PUTS32 "\n"
    mov $EXIT_EXCEPTION, %eax
    jmp exit32

    .pushsection .data
    .balign 16
pgdt32:
    .quad 0                         /* null */
    .quad 0x00cf9a000000ffff        /* 0x08 kernel code, 32-bit, flat */
    .quad 0x00cf92000000ffff        /* 0x10 kernel data, flat */
pgdt32_end:
    .balign 8
pgdt32_ptr:
    .word pgdt32_end - pgdt32 - 1
    .long pgdt32
    .balign 8
idt32_ptr:
    .word IDT_ENTRIES * 8 - 1
    .long idt32
    .popsection

    .pushsection .bss
    .balign 4096
idt32:
    .skip IDT_ENTRIES * 8
    .popsection
