/*
 * smc.S - a guest that rewrites its own page tables and code.
 *
 * A multiboot ELF32 guest that goes to long mode and, at CPL 0, checks what
 * an emulator caching translations and decoded code must get right (the
 * software backend's translation blocks and MMU, issue 18):
 *
 *   remap   a loop reads a window page while its PTE is switched to another
 *           page (INVLPG) halfway through; then the A and D flags the walk set
 *   code    a window page of code is loaded with REP MOVSB, called, remapped
 *           to another code page, patched through its identity alias, and
 *           reloaded in place: each call runs the bytes that are there now
 *   patch   a loop stores into the immediate of the instruction that follows
 *           the store, in the same basic block
 *   cr3     two address spaces share the identity map and one data page and
 *           map the window to different pages; the loop switches CR3 between
 *           them, calling code and reading data through the window each time
 *   reload  a PTE edit made visible by reloading CR3 instead of INVLPG
 *
 * Each check prints one line of values; the expected lines are in
 * tests/guest_expectations.py and are the same under KVM, kvmlite's emulator
 * and QEMU.  Exits with v = EXIT_OK.  Everything runs at CPL 0 and stays at a
 * few thousand instructions (ring 0 is emulated on this project's hosts).
 */
#include "lib/guest.h"
#include "lib/macros.S"

#define EXIT_OK         0x34
#define WIN             0x8000000000    /* PML4 slot 1: the window, mapped with 4 KiB pages */
#define WIN_CODE        (WIN + 0x1000)
#define WIN_SHARED      (WIN + 0x2000)
#define PTE_RW          (PTE_P | PTE_W)
#define PTE_A           0x20
#define PTE_D           0x40

    MULTIBOOT_HEADER (MB_FLAG_ALIGN)

#include "lib/mbentry32.S"
#include "lib/serial32.S"
#include "lib/serial64.S"
#include "lib/longmode.S"

    .code32
    .text
main32:
    cmpl $MB_BOOT_MAGIC, mb_magic
    jne 1f
    jmp enter_long_mode32
1:  mov $EXIT_FAIL, %eax
    jmp exit32

    .code64
lm_main:
    /* address space 1 is longmode.S's pml4 plus the window; 2 shares pml4[0] */
    movq $(win_pdpt + PTE_TABLE), pml4 + 8
    mov pml4, %rax
    mov %rax, pml4_b
    movq $(win_pdpt_b + PTE_TABLE), pml4_b + 8
    mov %cr3, %rax
    mov %rax, %cr3

    call check_remap
    call check_code
    call check_patch
    call check_cr3
    call check_reload
    PUTS64 "smc: done\n"
    mov $EXIT_OK, %eax
    jmp exit64

/* ---- remap: a data page switched under a running loop ---------------------- */
check_remap:
    movq $(page_a + PTE_RW), win_pt
    movabs $WIN, %rsi
    xor %ebx, %ebx
    mov $10, %ecx
1:  add (%rsi), %rbx
    cmp $5, %ecx
    jne 2f
    movq $(page_b + PTE_RW), win_pt
    invlpg (%rsi)
2:  dec %ecx
    jnz 1b
    mov %rbx, %rax
    PUTS64 "smc: remap sum=0x"
    call puthex64
    mov win_pt, %rax                /* the walk set A (a read, no D) */
    and $(PTE_A | PTE_D), %eax
    PUTS64 " pte=0x"
    call puthex64
    movq $0x3333, (%rsi)            /* a write sets D */
    mov win_pt, %rax
    and $(PTE_A | PTE_D), %eax
    PUTS64 " after-write=0x"
    call puthex64
    mov win_pd, %rax
    and $PTE_A, %eax
    PUTS64 " pde=0x"
    call puthex64
    mov page_b, %rax
    PUTS64 " page_b=0x"
    call puthex64
    PUTS64 "\n"
    ret

/* ---- code: load, call, remap, patch through an alias, reload ------------------ */
/* load_code: copy %rcx bytes from %rsi to %rdi with REP MOVSB (code loading) */
load_code:
    cld
    rep movsb
    ret

check_code:
    mov $func_a, %esi
    mov $code_a, %edi
    mov $(func_a_end - func_a), %ecx
    call load_code
    mov $func_b, %esi
    mov $code_b, %edi
    mov $(func_b_end - func_b), %ecx
    call load_code
    movq $(code_a + PTE_RW), win_pt + 8
    movabs $WIN_CODE, %r12
    call *%r12
    mov %rax, %rbx                  /* 0xa1 */
    PUTS64 "smc: code first=0x"
    call puthex64
    movq $(code_b + PTE_RW), win_pt + 8
    invlpg (%r12)
    call *%r12
    PUTS64 " remapped=0x"
    call puthex64           /* 0xb2 */
    movl $0xc3c3, code_b + 1        /* the immediate of its MOV, through the identity alias */
    call *%r12
    PUTS64 " patched=0x"
    call puthex64            /* 0xc3c3 */
    mov $func_c, %esi
    mov $code_b, %edi
    mov $(func_c_end - func_c), %ecx
    call load_code                  /* new code over the page just run */
    call *%r12
    PUTS64 " reloaded=0x"
    call puthex64           /* 0xd4 * 3 = 0x27c */
    PUTS64 "\n"
    ret

/* templates copied into the code pages */
func_a:
    mov $0xa1, %eax
    ret
func_a_end:
func_b:
    mov $0xb2, %eax
    ret
func_b_end:
func_c:
    mov $0xd4, %eax
    lea (%rax, %rax, 2), %eax
    ret
func_c_end:

/* ---- patch: a store into the next instruction --------------------------------- */
check_patch:
    xor %eax, %eax
    mov $4, %ecx
1:  movb $7, patch_site + 2(%rip)
patch_site:
    .byte 0x83, 0xc0, 0x01          /* add $1, %eax: the store above made it add $7 */
    movb $1, patch_site + 2(%rip)
    dec %ecx
    jnz 1b
    PUTS64 "smc: patch sum=0x"
    call puthex64      /* 4 * 7 */
    PUTS64 "\n"
    ret

/* ---- cr3: two address spaces, shared pages ----------------------------------- */
check_cr3:
    /* space 1: window -> page_a, code -> code_a; space 2: window -> page_b, code -> code_b */
    movq $(page_a + PTE_RW), win_pt
    movq $(code_a + PTE_RW), win_pt + 8
    movq $(shared + PTE_RW), win_pt + 16
    movq $(page_b + PTE_RW), win_pt_b
    movq $(code_b + PTE_RW), win_pt_b + 8
    movq $(shared + PTE_RW), win_pt_b + 16
    movq $0x1111, page_a
    movq $0x2222, page_b
    movq $0, shared
    mov %cr3, %r13                  /* space 1 */
    mov $pml4_b, %r14d              /* space 2 */
    mov %r13, %cr3
    movabs $WIN, %rsi
    movabs $WIN_CODE, %r12
    movabs $WIN_SHARED, %r15
    xor %ebx, %ebx
    mov $3, %ebp
1:  mov %r14, %cr3
    call *%r12                      /* code_b: 0x27c */
    add %rax, %rbx
    add (%rsi), %rbx                /* page_b: 0x2222 */
    addq $1, (%r15)                 /* the shared page, through space 2 */
    mov %r13, %cr3
    call *%r12                      /* code_a: 0xa1 */
    add %rax, %rbx
    add (%rsi), %rbx                /* page_a: 0x1111 */
    addq $0x10, (%r15)              /* the same page, through space 1 */
    dec %ebp
    jnz 1b
    mov %rbx, %rax
    PUTS64 "smc: cr3 sum=0x"
    call puthex64
    mov shared, %rax
    PUTS64 " shared=0x"
    call puthex64             /* 3 * 0x11 */
    PUTS64 "\n"
    ret

/* ---- reload: a PTE edit seen after a CR3 reload -------------------------------- */
check_reload:
    movabs $WIN, %rsi
    mov (%rsi), %rbx                /* page_a: 0x1111 (and cached) */
    movq $(page_b + PTE_RW), win_pt
    mov %cr3, %rax
    mov %rax, %cr3
    add (%rsi), %rbx                /* page_b: 0x2222 */
    mov %rbx, %rax
    PUTS64 "smc: reload sum=0x"
    call puthex64
    PUTS64 "\n"
    ret

/* ---- data ------------------------------------------------------------------ */
    .pushsection .data
    .balign 4096
pml4_b:
    .fill 512, 8, 0
win_pdpt:
    .long win_pd + PTE_TABLE, 0
    .fill 511, 8, 0
win_pd:
    .long win_pt + PTE_TABLE, 0
    .fill 511, 8, 0
win_pt:
    .fill 512, 8, 0
win_pdpt_b:
    .long win_pd_b + PTE_TABLE, 0
    .fill 511, 8, 0
win_pd_b:
    .long win_pt_b + PTE_TABLE, 0
    .fill 511, 8, 0
win_pt_b:
    .fill 512, 8, 0
page_a:
    .quad 0x1111
    .fill 511, 8, 0
page_b:
    .quad 0x2222
    .fill 511, 8, 0
shared:
    .fill 512, 8, 0
code_a:
    .fill 512, 8, 0
code_b:
    .fill 512, 8, 0
    .popsection
