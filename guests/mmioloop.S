/*
 * mmioloop.S - N writes to unbacked MMIO from ring 3: the MMIO-exit benchmark.
 *
 * A multiboot ELF32 guest that stays in 32-bit protected mode with paging
 * off, reads n=<count> from its command line (default DEFAULT_N), enters
 * ring 3 with IOPL = 3 and stores to MMIO_ADDR n times.  No RAM or device
 * backs that address, so every store is one MMIO exit that the VMM completes
 * by dropping the write.  Exits with v = 0 (status 1).
 */
#include "lib/guest.h"
#include "lib/macros.S"

#define DEFAULT_N       100000
#define MMIO_ADDR       0xd0000000
#define EXIT_OK         0x0

    MULTIBOOT_HEADER (MB_FLAG_ALIGN)

#include "lib/mbentry32.S"
#include "lib/serial32.S"
#include "lib/cmdline32.S"
#include "lib/user32.S"

    .code32
    .text
main32:
    cmpl $MB_BOOT_MAGIC, mb_magic
    jne .Lfail
    ARG32 key_n, %ebx, DEFAULT_N
    PUTS32 "mmioloop: n="
    call putdec32
    PUTS32 " addr=0xd0000000\n"
    mov $user_loop, %edi
    mov $ustack32_top, %esi
    mov $(EFLAGS_RESERVED | EFLAGS_IOPL3), %edx
    jmp enter_user32

.Lbad_arg:
    PUTS32 "mmioloop: FAIL malformed n= on the command line\n"
.Lfail:
    mov $EXIT_FAIL, %eax
    jmp exit32

/* user_loop (CPL 3, IOPL 3): %ebx stores to MMIO_ADDR, then report and exit. */
user_loop:
    mov %ebx, %ecx
    test %ecx, %ecx
    jz 2f
1:  mov %ecx, MMIO_ADDR
    dec %ecx
    jnz 1b
2:  PUTS32 "mmioloop: done at cpl="
    mov %cs, %eax
    and $3, %eax
    call putdec32
    PUTS32 "\n"
    mov $EXIT_OK, %eax
    jmp exit32

    .pushsection .rodata
key_n:
    .asciz "n="
    .popsection
