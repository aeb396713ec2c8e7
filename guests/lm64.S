/*
 * lm64.S - a plain ELF64 guest, entered directly in 64-bit long mode.
 *
 * kvmlite's ELF64 convention: loaded by program headers and started at
 * e_entry in long mode with paging on (identity map of 4 GiB), CS = 0x08,
 * DS/ES/SS = 0x10, interrupts off, RSP undefined.  The guest checks that
 * state, installs its own GDT, TSS, IDT and page tables, runs a sum of squares
 * at CPL 3, comes back through the INT3 gate and exits with v = 0x30.
 *
 * Built with -DPVH_ENTRY it also carries a Xen PVH entry note pointing at a
 * 32-bit trampoline that establishes the same state, which lets QEMU's
 * -kernel boot the identical code for the reference run (QEMU refuses
 * multiboot ELF64 and has no "start in long mode" loader).
 */
#include "lib/guest.h"
#include "lib/macros.S"

#define EXIT_OK         0x30
#define SUM_LIMIT       1000
#define SUM_EXPECTED    333833500       /* sum of i*i for i = 1..1000 */
#define XEN_ELFNOTE_PHYS32_ENTRY 18

#define LM_MAIN _start                  /* the PVH trampoline's destination */
#include "lib/serial64.S"
#include "lib/longmode.S"

    .code64
    .text
    .globl _start
_start:
    cli
    cld
    mov $kstack_top, %esp
    mov %cs, %ebx                   /* the entry state, checked once we can print */
    mov %cr0, %r12
    mov $MSR_EFER, %ecx
    rdmsr
    mov %eax, %r13d
    call lm_setup64
    test $EFER_LMA, %r13d
    jz .Lfail
    PUTS64 "lm64: long mode ok\n"
    PUTS64 "lm64: entered with cs=0x"
    mov %ebx, %eax
    call puthex64
    PUTS64 " cr0.pg="
    mov %r12, %rax
    shr $31, %eax
    and $1, %eax
    call putdec64
    PUTS64 "\n"
    cmp $KCODE, %ebx
    jne .Lfail

    mov $user_sum_squares, %edi
    mov $ustack_top, %esi
    mov $EFLAGS_RESERVED, %edx
    call run_user64
    mov %rax, %rbx
    PUTS64 "lm64: ring3 sum of squares 1..1000 = "
    call putdec64
    PUTS64 "\n"
    PUTS64 "lm64: back in ring 0 from cs=0x"
    mov %r8, %rax
    call puthex64
    PUTS64 "\n"
    cmp $SUM_EXPECTED, %rbx
    jne .Lfail
    cmp $UCODE, %r8
    jne .Lfail
    PUTS64 "lm64: done\n"
    mov $EXIT_OK, %eax
    jmp exit64
.Lfail:
    PUTS64 "lm64: FAIL\n"
    mov $EXIT_FAIL, %eax
    jmp exit64

/* user_sum_squares (CPL 3): %rax = sum of i*i for i = 1..SUM_LIMIT, back via INT3. */
user_sum_squares:
    xor %eax, %eax
    mov $1, %ecx
1:  mov %rcx, %rdx
    imul %rcx, %rdx
    add %rdx, %rax
    inc %rcx
    cmp $SUM_LIMIT, %rcx
    jbe 1b
    int3

#ifdef PVH_ENTRY
/* 32-bit PVH entry (flat protected mode, paging off): take the same road as
 * the multiboot guests into long mode, which ends at the 64-bit _start in
 * kvmlite's entry state (LM_MAIN above), so the checks there still apply. */
    .code32
pvh_start32:
    cli
    jmp enter_long_mode32

    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4                         /* namesz */
    .long 4                         /* descsz */
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .long pvh_start32
    .popsection
#endif
