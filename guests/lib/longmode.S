/*
 * longmode.S - the 64-bit kernel scaffolding shared by the long-mode guests.
 *
 * Provides a GDT with user segments and a TSS, identity page tables for the
 * first 4 GiB (2 MiB pages, user-accessible so ring 3 can run anywhere), an
 * IDT whose exception vectors report and exit, and run_user64, which runs a
 * function at CPL 3 and returns when that function executes INT3.
 *
 * Why INT3 and not SYSCALL or INT 0x80: on the nested KVM this project
 * develops on (see /work/shared/platform.md), SYSCALL from CPL 3 arrives at
 * LSTAR with the CPL still 3, and INT 0x80 raises #UD; exceptions, INT3
 * included, are delivered correctly.  INT3 through a DPL-3 interrupt gate is
 * also architecturally sound, so the same binary behaves the same under TCG,
 * on bare metal and here.
 *
 * Why ring 3 at all: on the nested KVM this project develops on, CPL-0 code
 * is emulated (about 1 us per instruction) while CPL-3 code runs natively,
 * so every guest keeps its ring-0 part to a few thousand instructions.
 *
 * The page tables are built by the assembler, not at run time, for the same
 * reason: 2048 entries written by ring-0 code would cost milliseconds.
 */

#define VEC_BREAKPOINT  3               /* INT3: the way back from ring 3 */
#define GATE_INTR       0x8e            /* present, DPL 0, 64-bit interrupt gate */
#define GATE_INTR_USER  0xee            /* present, DPL 3: reachable by INT3 from ring 3 */
#define TSS_TYPE_AVAIL  0x89            /* present, available 64-bit TSS */
#define TSS_SIZE        104
#define TSS_RSP0        4

/* Where enter_long_mode32 continues; a guest may #define another label. */
#ifndef LM_MAIN
#define LM_MAIN lm_main
#endif

#include "lib/exceptions64.S"

/* ---- 32-bit side: protected mode -> long mode ---------------------------- */
    .code32
    .text
/*
 * enter_long_mode32: never returns.  Turns on PAE paging with our tables and
 * EFER.LME, far-jumps into the 64-bit code segment, and continues at the
 * guest's LM_MAIN (lm_main) with a fresh kernel stack and lm_setup64 done.
 */
enter_long_mode32:
    lgdt gdt64_ptr
    LONG_MODE_PAGING_ON32 pml4
    ljmp $KCODE, $1f
    .code64
1:  mov $kstack_top, %esp
    call lm_setup64
    jmp LM_MAIN

/* ---- 64-bit side ---------------------------------------------------------- */
    .code64
/*
 * lm_setup64: install our GDT (reloading every segment register), page
 * tables, TSS and IDT.  Callable from any 64-bit state
 * whose code and stack are identity mapped.
 */
lm_setup64:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    lgdt gdt64_ptr
    mov $KDATA, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    pushq $KCODE                    /* reload CS with a far return */
    pushq $1f
    lretq
1:  mov $pml4, %eax
    mov %rax, %cr3

    mov $tss64, %eax                /* TSS: RSP0 and its descriptor */
    movq $trap_stack_top, TSS_RSP0(%rax)   /* not kstack: run_user64's frame lives there */
    movw $TSS_SIZE, 102(%rax)       /* I/O bitmap base beyond the limit: none */
    mov $gdt64_tss, %edi
    movw $(TSS_SIZE - 1), (%rdi)
    mov %ax, 2(%rdi)
    shr $16, %eax
    mov %al, 4(%rdi)
    movb $TSS_TYPE_AVAIL, 5(%rdi)
    movb $0, 6(%rdi)
    mov %ah, 7(%rdi)
    movl $0, 8(%rdi)
    movl $0, 12(%rdi)
    mov $TSS_SEL, %eax
    ltr %ax

    mov $idt64, %edi                /* IDT: the exception stubs, then INT3 */
    mov $exc_stubs, %esi
    xor %ecx, %ecx
    mov $GATE_INTR, %dl
2:  mov %rsi, %rax
    call set_gate64
    add $16, %rdi
    add $EXC_STUB_SIZE, %rsi
    inc %ecx
    cmp $NUM_EXCEPTIONS, %ecx
    jb 2b
    mov $(idt64 + VEC_BREAKPOINT * 16), %edi
    mov $user_return_entry, %eax
    mov $GATE_INTR_USER, %dl
    call set_gate64
    lidt idt64_ptr
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    ret

/* set_gate64: write the gate at %rdi for handler %rax with type/attributes %dl. */
set_gate64:
    mov %ax, (%rdi)
    movw $KCODE, 2(%rdi)
    movb $0, 4(%rdi)
    mov %dl, 5(%rdi)
    shr $16, %rax
    mov %ax, 6(%rdi)
    shr $16, %rax
    mov %eax, 8(%rdi)
    movl $0, 12(%rdi)
    ret

/*
 * run_user64: run the code at %rdi at CPL 3 with its stack at %rsi and
 * RFLAGS = %rdx (interrupts stay off).  The user code must end with INT3;
 * run_user64 then returns to its caller with the user's %rax and %rdx, and
 * %r8 = the CS the CPU saved in the interrupt frame (proof of the CPL the
 * code ran at).  Callee-saved registers are preserved.
 */
run_user64:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, saved_kernel_rsp
    pushq $UDATA                    /* SS */
    push %rsi                       /* RSP */
    push %rdx                       /* RFLAGS */
    pushq $UCODE                    /* CS */
    push %rdi                       /* RIP */
    iretq

user_return_entry:                  /* on the TSS stack: RIP, CS, RFLAGS, RSP, SS */
    mov 8(%rsp), %r8
    mov saved_kernel_rsp, %rsp
    push %rax
    mov $KDATA, %eax                /* the ring change nulled these */
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    pop %rax
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

/* ---- data ------------------------------------------------------------------ */
    .pushsection .data
    .balign 16
gdt64:
    .quad 0                         /* null */
    .quad 0x00af9a000000ffff        /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff        /* 0x10 kernel data */
    .quad 0x00cff2000000ffff        /* 0x18 user data, DPL 3 */
    .quad 0x00affa000000ffff        /* 0x20 user code, 64-bit, DPL 3 */
gdt64_tss:
    .quad 0, 0                      /* 0x28 TSS, filled by lm_setup64 */
gdt64_end:
    .balign 8
gdt64_ptr:                          /* 10 bytes: read as 6 by 32-bit LGDT */
    .word gdt64_end - gdt64 - 1
    .long gdt64, 0
    .balign 8
idt64_ptr:
    .word 256 * 16 - 1
    .long idt64, 0
    .balign 8
saved_kernel_rsp:
    .quad 0

    /* Identity map of 0..4 GiB: PML4[0] -> PDPT[0..3] -> four PDs of 2 MiB pages. */
    .balign 4096
pml4:
    .long pdpt + PTE_TABLE, 0
    .fill 511, 8, 0
pdpt:
    .long pd0 + PTE_TABLE, 0
    .long pd0 + 0x1000 + PTE_TABLE, 0
    .long pd0 + 0x2000 + PTE_TABLE, 0
    .long pd0 + 0x3000 + PTE_TABLE, 0
    .fill 508, 8, 0
pd0:
    .set page, 0
    .rept 2048
    .long ((page << 21) | PTE_LARGE) & 0xffffffff, 0
    .set page, page + 1
    .endr
    .popsection

    .pushsection .bss
    .balign 4096
idt64:
    .skip 256 * 16
    .balign 16
tss64:
    .skip TSS_SIZE
    .balign 16
kstack:
    .skip 16384
kstack_top:
    .balign 16
trap_stack:                         /* where the CPU switches on a trap from ring 3 */
    .skip 4096
trap_stack_top:
    .balign 16
ustack:
    .skip 16384
ustack_top:
    .popsection
