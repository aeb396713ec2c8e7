/*
 * pm32.S - a multiboot v1 ELF32 guest that stays in 32-bit protected mode.
 *
 * It checks the machine state the multiboot specification promises (magic in
 * EAX, CR0.PE set, paging off, interrupts off) and prints the multiboot
 * information a loader fills in: mem_lower, mem_upper, the command line and
 * every memory-map entry.  Exits with v = 0x21.
 */
#include "lib/guest.h"
#include "lib/macros.S"

#define EXIT_OK         0x21
#define MMAP_SIZE       0               /* entry: size (of the rest), base, length, type */
#define MMAP_BASE       4
#define MMAP_LENGTH     12
#define MMAP_TYPE       20

    MULTIBOOT_HEADER (MB_FLAG_ALIGN | MB_FLAG_MEMINFO)

#include "lib/mbentry32.S"
#include "lib/serial32.S"

    .code32
    .text
main32:
    cmpl $MB_BOOT_MAGIC, mb_magic
    jne .Lbad_magic
    PUTS32 "pm32: multiboot magic ok\n"

    mov %cr0, %eax
    PUTS32 "pm32: cr0.pe="
    push %eax
    and $CR0_PE, %eax
    call putdec32
    pop %eax
    PUTS32 " cr0.pg="
    shr $31, %eax
    call putdec32
    PUTS32 "\n"
    pushf
    pop %eax
    PUTS32 "pm32: eflags.if="
    shr $9, %eax
    and $1, %eax
    call putdec32
    PUTS32 "\n"

    mov mb_info, %ebx
    testl $MBI_HAS_MEM, MBI_FLAGS(%ebx)
    jz 1f
    PUTS32 "pm32: mem_lower="
    mov MBI_MEM_LOWER(%ebx), %eax
    call putdec32
    PUTS32 " KiB\n"
    PUTS32 "pm32: mem_upper="
    mov MBI_MEM_UPPER(%ebx), %eax
    call putdec32
    PUTS32 " KiB\n"
    jmp 2f
1:  PUTS32 "pm32: no memory information\n"

2:  call mb_cmdline32
    PUTS32 "pm32: cmdline=\""
    call puts32
    PUTS32 "\"\n"

    testl $MBI_HAS_MMAP, MBI_FLAGS(%ebx)
    jz .Lno_mmap
    mov MBI_MMAP_ADDR(%ebx), %esi   /* esi = entry, edi = end, ecx = count */
    mov MBI_MMAP_LENGTH(%ebx), %edi
    add %esi, %edi
    xor %ecx, %ecx
3:  cmp %edi, %esi
    jae 4f
    PUTS32 "pm32: mmap base=0x"
    mov MMAP_BASE+4(%esi), %eax     /* 64-bit fields: high half first if any */
    test %eax, %eax
    jz 5f
    call puthex32
    mov MMAP_BASE(%esi), %eax
    call puthex32_8
    jmp 6f
5:  mov MMAP_BASE(%esi), %eax
    call puthex32
6:  PUTS32 " length=0x"
    mov MMAP_LENGTH+4(%esi), %eax
    test %eax, %eax
    jz 7f
    call puthex32
    mov MMAP_LENGTH(%esi), %eax
    call puthex32_8
    jmp 8f
7:  mov MMAP_LENGTH(%esi), %eax
    call puthex32
8:  PUTS32 " type="
    mov MMAP_TYPE(%esi), %eax
    call putdec32
    PUTS32 "\n"
    inc %ecx
    mov MMAP_SIZE(%esi), %eax
    lea 4(%esi, %eax), %esi
    jmp 3b
4:  PUTS32 "pm32: mmap entries="
    mov %ecx, %eax
    call putdec32
    PUTS32 "\n"
    jmp 9f
.Lno_mmap:
    PUTS32 "pm32: no memory map\n"
9:  PUTS32 "pm32: done\n"
    mov $EXIT_OK, %eax
    jmp exit32

.Lbad_magic:
    PUTS32 "pm32: FAIL multiboot magic 0x"
    mov mb_magic, %eax
    call puthex32
    PUTS32 "\n"
    mov $EXIT_FAIL, %eax
    jmp exit32

/* puthex32_8: write %eax as exactly eight hex digits (the low half of a 64-bit value). */
puthex32_8:
    push %eax
    push %ecx
    push %edx
    mov %eax, %edx
    mov $28, %cl
1:  mov %edx, %eax
    shr %cl, %eax
    and $0xf, %eax
    movb hexdigits(%eax), %al
    call putc32
    sub $4, %cl
    jns 1b
    pop %edx
    pop %ecx
    pop %eax
    ret
