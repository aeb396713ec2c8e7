/*
 * aout.S - a multiboot v1 kernel using the a.out kludge (header flag bit 16).
 *
 * The image is a flat binary, not ELF: the loader must take the load and
 * entry addresses from the multiboot header, copy the file to load_addr and
 * zero everything up to bss_end_addr.  The guest checks that it runs where it
 * was linked and that its .bss really is zero.  Exits with v = 0x22.
 */
#include "lib/guest.h"
#include "lib/macros.S"

#define EXIT_OK         0x22
#define AOUT_FLAGS      (MB_FLAG_ALIGN | MB_FLAG_MEMINFO | MB_FLAG_AOUT)
#define BSS_PROBE_SIZE  4096

    .pushsection .multiboot, "a"
    .balign 4
multiboot_header:
    .long MB_HEADER_MAGIC
    .long AOUT_FLAGS
    .long -(MB_HEADER_MAGIC + AOUT_FLAGS)
    .long multiboot_header          /* header_addr */
    .long multiboot_header          /* load_addr: the header opens the image */
    .long __load_end                /* load_end_addr */
    .long __bss_end                 /* bss_end_addr */
    .long _start                    /* entry_addr */
    .popsection

#include "lib/mbentry32.S"
#include "lib/serial32.S"

    .code32
    .text
main32:
    cmpl $MB_BOOT_MAGIC, mb_magic
    jne .Lfail
    PUTS32 "a.out kludge ok\n"

    call 1f                         /* run where linked? */
1:  pop %eax
    cmp $1b, %eax
    jne .Lfail
    cmpl $MB_HEADER_MAGIC, multiboot_header
    jne .Lfail
    PUTS32 "aout: image at 0x"
    mov $multiboot_header, %eax
    call puthex32
    PUTS32 "\n"

    mov $bss_probe, %esi            /* did the loader zero the .bss? */
    xor %ecx, %ecx
    xor %eax, %eax
2:  or (%esi, %ecx, 4), %eax
    inc %ecx
    cmp $(BSS_PROBE_SIZE / 4), %ecx
    jb 2b
    test %eax, %eax
    jnz .Lfail
    PUTS32 "aout: bss zeroed ok\n"
    mov $EXIT_OK, %eax
    jmp exit32
.Lfail:
    PUTS32 "aout: FAIL\n"
    mov $EXIT_FAIL, %eax
    jmp exit32

    .pushsection .bss
    .balign 16
bss_probe:
    .skip BSS_PROBE_SIZE
    .popsection
