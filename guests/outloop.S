/*
 * outloop.S - N port writes from ring 3: the I/O-exit benchmark guest.
 *
 * A multiboot ELF32 guest that reads n=<count> from its command line
 * (default DEFAULT_N), enters ring 3 with IOPL = 3 and writes a byte to the
 * unused port LOOP_PORT n times: every write is one exit to the VMM, and the
 * loop itself costs next to nothing.  Exits with v = 0 (status 1).
 */
#include "lib/guest.h"
#include "lib/macros.S"

#define DEFAULT_N       100000
#define LOOP_PORT       0x500
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
    PUTS32 "outloop: n="
    call putdec32
    PUTS32 " port=0x500\n"
    mov $user_loop, %edi
    mov $ustack32_top, %esi
    mov $(EFLAGS_RESERVED | EFLAGS_IOPL3), %edx
    jmp enter_user32

.Lbad_arg:
    PUTS32 "outloop: FAIL malformed n= on the command line\n"
.Lfail:
    mov $EXIT_FAIL, %eax
    jmp exit32

/* user_loop (CPL 3, IOPL 3): %ebx port writes, then report and exit. */
user_loop:
    mov %ebx, %ecx
    mov $LOOP_PORT, %dx
    test %ecx, %ecx
    jz 2f
1:  mov %cl, %al
    out %al, (%dx)
    dec %ecx
    jnz 1b
2:  PUTS32 "outloop: done at cpl="
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
