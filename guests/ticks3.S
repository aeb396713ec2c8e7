/*
 * ticks3.S - counts PIT ticks and computes between them at CPL 3: the snapshot tests' guest.
 *
 * Ring 0 does only what ring 3 cannot: long mode (lib/longmode.S), a TSS whose I/O bitmap
 * lets ring 3 use COM1 and the debug-exit port, the PIC pair (vectors 0x20/0x28, only IRQ 0
 * open) and PIT channel 0 at 100 Hz, and a six-instruction tick handler that counts.  Then
 * the main loop runs at CPL 3 with interrupts on: for each tick it prints "tick N" and runs
 * `rounds` rounds of an LCG whose state lives in memory (x = x * 1103515245 + 12345 + N), so
 * the result depends on how many ticks were counted and on nothing else; after `ticks` ticks
 * it prints "sum=X" (hex) and writes (sum & 0x3f) + 1 to the debug-exit port from ring 3.
 * A restore that loses or repeats a tick, loses RAM or registers, or a timer that does not
 * go on, shows up in the output or the sum.  CPL 3 is where the time goes: on the nested KVM
 * this project develops on, ring-0 code is emulated and ring-3 code runs natively.
 *
 * cpus=2: the BSP first starts the AP (INIT, SIPI; real mode -> long mode with a TSS of its
 * own), which runs `ap_rounds` rounds of the LCG from 1 at CPL 3 with interrupts off, stores
 * the result and parks (INT3 -> cli; hlt).  At the end the BSP folds that result into the sum.
 *
 * Command line (decimal): ticks=N (default 120) rounds=N (default 1000) cpus=1|2
 * ap_rounds=N (default 200000000).
 */
#include "lib/guest.h"
#include "lib/macros.S"

#define LM_MAIN         main64
#define VEC_TIMER       0x20
#define VEC_SPURIOUS    0x27
#define PIT_DIVISOR     11932           /* 1193182 / 11932 = 100 Hz */
#define LAPIC           0xfee00000
#define LAPIC_SVR       0xf0
#define LAPIC_ICR_LO    0x300
#define LAPIC_ICR_HI    0x310
#define TRAMPOLINE      0x8000
#define CODE32          0x48            /* a 32-bit code segment for the AP's way up */
#define AP_TSS_SEL      (TSS_SEL + 16)
#define IOMAP_SIZE      8192            /* every port allowed: this host reads the bitmap whatever IOPL says */
#define TSS_LIMIT_IO    (TSS_SIZE + IOMAP_SIZE)
#define TSS_STACK_OFF   (TSS_LIMIT_IO + 1 + 4096 - 16)   /* each TSS is followed by its trap stack */
#define USER_RFLAGS     0x3202          /* IOPL 3, IF */
#define AP_RFLAGS       0x3002          /* IOPL 3, interrupts off */
#define LCG_MUL         1103515245
#define LCG_ADD         12345

    MULTIBOOT_HEADER (MB_FLAG_ALIGN)

#include "lib/mbentry32.S"
#include "lib/serial32.S"
#include "lib/cmdline32.S"
#include "lib/serial64.S"
#include "lib/longmode.S"

    .code32
    .text
main32:
    ARG32 key_ticks, ticks_target, 120
    ARG32 key_rounds, rounds, 1000
    ARG32 key_cpus, ncpus, 1
    ARG32 key_ap_rounds, ap_rounds, 200000000
    mov ncpus, %eax
    dec %eax
    cmp $1, %eax
    ja .Lbad_arg
    jmp enter_long_mode32
.Lbad_arg:
    PUTS32 "ticks3: bad command line\n"
    mov $EXIT_FAIL, %eax
    jmp exit32

    .code64
/* ---- ring 0 --------------------------------------------------------------------------------------- */
main64:
    lgdt gdt3_ptr                       /* longmode.S's GDT plus a second TSS and a 32-bit code segment */
    mov $tss_bsp, %eax
    mov $(gdt3 + TSS_SEL), %edi
    call tss_descriptor
    mov $tss_ap, %eax
    mov $(gdt3 + AP_TSS_SEL), %edi
    call tss_descriptor
    mov $TSS_SEL, %eax
    ltr %ax
    mov $(idt64 + VEC_TIMER * 16), %edi
    mov $tick, %eax
    mov $GATE_INTR, %dl
    call set_gate64
    mov $(idt64 + VEC_SPURIOUS * 16), %edi
    mov $spurious, %eax
    call set_gate64
    mov $(idt64 + VEC_BREAKPOINT * 16), %edi
    mov $park, %eax                     /* INT3 from ring 3: the AP is done */
    mov $GATE_INTR_USER, %dl
    call set_gate64
    cmpl $2, ncpus
    jne 1f
    call start_ap
1:  mov $0x11, %al                      /* PIC pair: ICW1-4, vectors 0x20 and 0x28, only IRQ 0 open */
    out %al, $0x20
    out %al, $0xa0
    mov $VEC_TIMER, %al
    out %al, $0x21
    mov $(VEC_TIMER + 8), %al
    out %al, $0xa1
    mov $4, %al
    out %al, $0x21
    mov $2, %al
    out %al, $0xa1
    mov $1, %al
    out %al, $0x21
    out %al, $0xa1
    mov $0xfe, %al
    out %al, $0x21
    mov $0xff, %al
    out %al, $0xa1
    mov $0x34, %al                      /* PIT channel 0, mode 2 */
    out %al, $0x43
    mov $(PIT_DIVISOR & 0xff), %al
    out %al, $0x40
    mov $(PIT_DIVISOR >> 8), %al
    out %al, $0x40
    mov $user_main, %edi
    mov $ustack_top, %esi
    mov $USER_RFLAGS, %edx
    call run_user64                     /* user_main never comes back */

/* tss_descriptor: an available 64-bit TSS at %eax with RSP0 = its trap stack, an all-ports bitmap. */
tss_descriptor:
    lea TSS_STACK_OFF(%rax), %rcx
    mov %rcx, TSS_RSP0(%rax)
    movw $TSS_SIZE, 102(%rax)
    movb $0xff, TSS_LIMIT_IO(%rax)
    movw $TSS_LIMIT_IO, (%rdi)
    mov %ax, 2(%rdi)
    shr $16, %eax
    mov %al, 4(%rdi)
    movb $TSS_TYPE_AVAIL, 5(%rdi)
    movb $0, 6(%rdi)
    mov %ah, 7(%rdi)
    movq $0, 8(%rdi)
    ret

tick:
    push %rax
    lock incl ticks
    mov $0x20, %al
    out %al, $0x20
    pop %rax
spurious:
    iretq

park:
    cli
1:  hlt
    jmp 1b

/* start_ap: the trampoline to TRAMPOLINE, INIT and SIPI to APIC ID 1, wait until the AP is up. */
start_ap:
    mov $trampoline, %esi
    mov $TRAMPOLINE, %edi
    mov $(trampoline_end - trampoline), %ecx
    rep movsb
    mov $LAPIC, %r8d
    movl $0x1ff, LAPIC_SVR(%r8)
    movl $(1 << 24), LAPIC_ICR_HI(%r8)
    movl $0x00004500, LAPIC_ICR_LO(%r8)
    movl $(1 << 24), LAPIC_ICR_HI(%r8)
    movl $(0x00004600 | (TRAMPOLINE >> 12)), LAPIC_ICR_LO(%r8)
1:  pause
    cmpl $0, ap_alive
    je 1b
    ret

/* The AP: real mode at TRAMPOLINE, protected mode, long mode with our tables, then ring 3. */
trampoline:
    .code16
    cli
    xor %ax, %ax
    mov %ax, %ds
    lgdtl TRAMPOLINE + (tramp_gdt_ptr - trampoline)
    mov %cr0, %eax
    or $CR0_PE, %eax
    mov %eax, %cr0
    ljmpl $CODE32, $(TRAMPOLINE + (tramp32 - trampoline))
    .code32
tramp32:
    mov $KDATA, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $ap_long32, %eax
    jmp *%eax
    .balign 8
tramp_gdt_ptr:
    .word gdt3_end - gdt3 - 1
    .long gdt3
trampoline_end:

ap_long32:
    LONG_MODE_PAGING_ON32 pml4
    ljmp $KCODE, $ap_main64
    .code64
ap_main64:
    mov $ap_kstack_top, %esp
    lidt idt64_ptr
    mov $AP_TSS_SEL, %eax
    ltr %ax
    movl $1, ap_alive
    mov $ap_user, %edi
    mov $ap_ustack_top, %esi
    mov $AP_RFLAGS, %edx
    pushq $UDATA
    push %rsi
    push %rdx
    pushq $UCODE
    push %rdi
    iretq

/* ---- ring 3 --------------------------------------------------------------------------------------- */
user_main:
1:  mov printed, %eax
    cmp ticks, %eax
    jb 2f
    pause
    jmp 1b
2:  inc %eax
    mov %eax, printed
    PUTS64 "tick "
    call putdec64
    PUTS64 "\n"
    mov rounds, %ecx
    mov state, %edx
    jecxz 4f
3:  imul $LCG_MUL, %edx, %edx
    add $LCG_ADD, %edx
    add %eax, %edx
    dec %ecx
    jnz 3b
4:  mov %edx, state
    cmp ticks_target, %eax
    jb 1b
    cmpl $2, ncpus
    jne 6f
5:  pause
    cmpl $0, ap_done
    je 5b
    mov ap_result, %eax
    xor %eax, state
6:  PUTS64 "sum="
    mov state, %eax
    call puthex64
    PUTS64 "\n"
    mov state, %eax
    and $0x3f, %eax
    inc %eax
    out %eax, $DEBUG_EXIT_PORT
7:  pause
    jmp 7b

ap_user:
    mov $1, %edx
    mov ap_rounds, %ecx
    jecxz 2f
1:  imul $LCG_MUL, %edx, %edx
    add $LCG_ADD, %edx
    dec %ecx
    jnz 1b
2:  mov %edx, ap_result
    movl $1, ap_done
    int3

/* ---- data ----------------------------------------------------------------------------------------- */
    .pushsection .rodata
key_ticks: .asciz "ticks="
key_rounds: .asciz "rounds="
key_cpus: .asciz "cpus="
key_ap_rounds: .asciz "ap_rounds="
    .popsection

    .pushsection .data
    .balign 16
gdt3:
    .quad 0                             /* null */
    .quad 0x00af9a000000ffff            /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff            /* 0x10 kernel data */
    .quad 0x00cff2000000ffff            /* 0x18 user data, DPL 3 */
    .quad 0x00affa000000ffff            /* 0x20 user code, 64-bit, DPL 3 */
    .quad 0, 0                          /* 0x28 the BSP's TSS */
    .quad 0, 0                          /* 0x38 the AP's TSS */
    .quad 0x00cf9a000000ffff            /* 0x48 kernel code, 32-bit (the AP's trampoline) */
gdt3_end:
    .balign 8
gdt3_ptr:
    .word gdt3_end - gdt3 - 1
    .long gdt3, 0
    .balign 4
ticks_target: .long 0
rounds: .long 0
ncpus: .long 1
ap_rounds: .long 0
ticks: .long 0
printed: .long 0
state: .long 12345
ap_alive: .long 0
ap_done: .long 0
ap_result: .long 0
    .popsection

    .pushsection .bss
    .balign 4096
tss_bsp:
    .skip TSS_LIMIT_IO + 1 + 4096
    .balign 4096
tss_ap:
    .skip TSS_LIMIT_IO + 1 + 4096
    .balign 16
ap_kstack:
    .skip 4096
ap_kstack_top:
    .balign 16
ap_ustack:
    .skip 4096
ap_ustack_top:
    .popsection
