/*
 * cbench.S - a CPU-bound benchmark guest: N steps of a 64-bit LCG at CPL 3.
 *
 * A multiboot ELF32 guest that reads iters=<count> from its command line
 * (default DEFAULT_ITERS), switches to long mode, runs the loop in ring 3 and
 * prints the final LCG state, so a benchmark run is also a correctness check
 * (tests recompute the value).  Ring-0 work stays at a few thousand
 * instructions whatever N is.  Exits with v = 0 (status 1).
 *
 * The LCG is Knuth's MMIX one: x = x * LCG_MUL + LCG_ADD (mod 2^64), x0 = 0.
 */
#include "lib/guest.h"
#include "lib/macros.S"

#define DEFAULT_ITERS   100000000
#define LCG_MUL         6364136223846793005
#define LCG_ADD         1442695040888963407
#define EXIT_OK         0x0

    MULTIBOOT_HEADER (MB_FLAG_ALIGN)

#include "lib/mbentry32.S"
#include "lib/serial32.S"
#include "lib/cmdline32.S"
#include "lib/serial64.S"
#include "lib/longmode.S"

    .code32
    .text
main32:
    cmpl $MB_BOOT_MAGIC, mb_magic
    jne .Lfail32
    ARG32 key_iters, iters, DEFAULT_ITERS
    PUTS32 "cbench: iters="
    call putdec32
    PUTS32 "\n"
    jmp enter_long_mode32
.Lbad_arg:
    PUTS32 "cbench: FAIL malformed iters= on the command line\n"
.Lfail32:
    mov $EXIT_FAIL, %eax
    jmp exit32

    .code64
lm_main:
    mov $user_lcg, %edi
    mov $ustack_top, %esi
    mov $EFLAGS_RESERVED, %edx
    call run_user64
    PUTS64 "cbench: result=0x"
    call puthex64
    PUTS64 "\n"
    PUTS64 "cbench: ran at cpl="
    mov %r8, %rax
    and $3, %eax
    call putdec64
    PUTS64 "\n"
    mov $EXIT_OK, %eax
    jmp exit64

/* user_lcg (CPL 3): %rax = the LCG state after `iters` steps, back via INT3. */
user_lcg:
    mov iters, %ecx
    xor %eax, %eax
    movabs $LCG_MUL, %rbx
    movabs $LCG_ADD, %rdx
    test %rcx, %rcx
    jz 2f
1:  imul %rbx, %rax
    add %rdx, %rax
    dec %rcx
    jnz 1b
2:  int3

    .pushsection .data
    .balign 8
iters:
    .long 0
    .popsection
    .pushsection .rodata
key_iters:
    .asciz "iters="
    .popsection
