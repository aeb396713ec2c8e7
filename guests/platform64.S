/*
 * platform64.S - the PC platform devices from long mode.
 *
 * The same device work as platform32.S (lib/platform.S, same lines apart
 * from the first and last), after the switch to long mode of
 * lib/longmode.S, with 64-bit interrupt gates whose handlers end in IRETQ.
 * A multiboot ELF32 image, so QEMU -kernel boots the very same file.
 *
 * This is the interrupt guest that must pass everywhere: IRETQ to CPL 0
 * works on the nested KVM this project develops on, where a 32-bit IRET may
 * not (see platform32.S).
 */
#include "lib/guest.h"
#include "lib/macros.S"

#define EXIT_PLATFORM64 0x51
#define IRQ_VECTORS     16
#define GATE64_INTR     0x8e            /* present, DPL 0, 64-bit interrupt gate */

    MULTIBOOT_HEADER (MB_FLAG_ALIGN)

#include "lib/mbentry32.S"
#include "lib/serial32.S"
#include "lib/serial64.S"
#include "lib/cmdline32.S"
#include "lib/platformargs32.S"
#include "lib/longmode.S"

    .code64
#define PUTS PUTS64
#define PUTHEX call puthex64
#define PUTDEC call putdec64
#define PUTC call putc64
#define FAIL_EXIT mov $EXIT_FAIL, %eax; jmp exit64
#include "lib/platform.S"

    .code32
    .text
main32:
    cmpl $MB_BOOT_MAGIC, mb_magic
    jne .Lbad_magic
    call platform_args32
    jmp enter_long_mode32
.Lbad_magic:
    PUTS32 "platform64: FAIL multiboot magic\n"
    mov $EXIT_FAIL, %eax
    jmp exit32

    .code64
lm_main:
    call irq_gates64
    PUTS64 "platform64: long mode, 64-bit interrupt gates\n"
    call platform_main
    PUTS64 "platform64: done\n"
    mov $EXIT_PLATFORM64, %eax
    jmp exit64

/* irq_gates64: the PIC's 16 vectors in lib/longmode.S's IDT (already loaded). */
irq_gates64:
    mov $(idt64 + PIC_VECTOR_BASE * 16), %edi
    mov $IRQ_VECTORS, %ecx
    mov $GATE64_INTR, %dl
1:  mov $irq_other_entry64, %eax
    call set_gate64
    add $16, %rdi
    dec %ecx
    jnz 1b
    mov $(idt64 + PIC_VECTOR_BASE * 16), %edi
    mov $irq0_entry64, %eax
    call set_gate64
    mov $(idt64 + (PIC_VECTOR_BASE + 4) * 16), %edi
    mov $irq4_entry64, %eax
    call set_gate64
    mov $(idt64 + PIC2_VECTOR * 16), %edi
    mov $irq8_entry64, %eax
    call set_gate64
    ret

/* Entry stubs: save what the bodies clobber (full 64-bit registers), call, IRETQ. */
.macro IRQ_ENTRY64 name, body
\name:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    cld
    call \body
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    iretq
.endm
    IRQ_ENTRY64 irq0_entry64, irq0_body
    IRQ_ENTRY64 irq4_entry64, irq4_body
    IRQ_ENTRY64 irq8_entry64, irq8_body
    IRQ_ENTRY64 irq_other_entry64, irq_other_body
