/*
 * demo.S - the built-in guest of `kvmlite run`.
 *
 * A multiboot v1 ELF32 kernel that walks through what a VMM must get right
 * to boot a small OS, one line of output per step: the multiboot hand-off,
 * the multiboot information, the switch to long mode with its own GDT and
 * page tables, a CRC-32 computed at CPL 3 and the INT3 gate back to CPL 0
 * (not SYSCALL: see lib/longmode.S for why).
 *
 * Unlike the test guests it ends with CLI; HLT, which kvmlite treats as a
 * clean power-off (exit status 0): the debug-exit port can only produce odd
 * statuses.  A failed self-check leaves through the debug-exit port with
 * EXIT_FAIL, so failure is never mistaken for success.
 */
#include "lib/guest.h"
#include "lib/macros.S"

#define CRC_BUF_LEN     256
#define CRC32_POLY      0xedb88320
#define CRC32_EXPECTED  0x29058c73      /* zlib.crc32(bytes(range(256))) */

    MULTIBOOT_HEADER (MB_FLAG_ALIGN | MB_FLAG_MEMINFO)

#include "lib/mbentry32.S"
#include "lib/serial32.S"
#include "lib/serial64.S"
#include "lib/longmode.S"

    .code32
    .text
main32:
    PUTS32 "kvmlite demo guest\n"
    cmpl $MB_BOOT_MAGIC, mb_magic
    jne .Lbad_magic
    PUTS32 "pm32: multiboot magic 0x2badb002 ok\n"
    mov mb_info, %ebx
    testl $MBI_HAS_MEM, MBI_FLAGS(%ebx)
    jz .Lno_meminfo
    PUTS32 "pm32: mem_upper="
    mov MBI_MEM_UPPER(%ebx), %eax
    call putdec32
    PUTS32 " KiB\n"
    call mb_cmdline32
    PUTS32 "pm32: cmdline=\""
    call puts32
    PUTS32 "\"\n"
    jmp enter_long_mode32

.Lbad_magic:
    PUTS32 "demo: FAIL multiboot magic 0x"
    mov mb_magic, %eax
    call puthex32
    PUTS32 "\n"
    mov $EXIT_FAIL, %eax
    jmp exit32
.Lno_meminfo:
    PUTS32 "demo: FAIL no memory information\n"
    mov $EXIT_FAIL, %eax
    jmp exit32

    .code64
lm_main:
    mov $MSR_EFER, %ecx
    rdmsr
    test $EFER_LMA, %eax
    jz .Lno_lma
    PUTS64 "lm64: long mode active, own GDT and page tables\n"
    PUTS64 "ring3: entering user mode\n"
    mov $user_crc32, %edi
    mov $ustack_top, %esi
    mov $EFLAGS_RESERVED, %edx
    call run_user64
    mov %rax, %rbx                  /* CRC */
    mov %r8, %r12                   /* CS saved by the INT3 */
    PUTS64 "ring3: ran at cpl="
    mov %r12, %rax
    and $3, %eax
    call putdec64
    PUTS64 "\n"
    PUTS64 "ring3: crc32=0x"
    mov %rbx, %rax
    call puthex64
    PUTS64 "\n"
    mov %cs, %eax
    and $3, %eax
    PUTS64 "ring0: back via int3 gate, cpl="
    call putdec64
    PUTS64 "\n"
    test %eax, %eax
    jnz .Lbad_return
    mov %r12, %rax
    and $3, %eax
    cmp $3, %eax
    jne .Lbad_return
    cmp $CRC32_EXPECTED, %ebx
    jne .Lbad_crc
    PUTS64 "demo: all checks passed\n"
    cli                             /* clean power-off for kvmlite */
1:  hlt
    jmp 1b

.Lno_lma:
    PUTS64 "demo: FAIL EFER.LMA is clear\n"
    jmp 2f
.Lbad_return:
    PUTS64 "demo: FAIL wrong privilege level or return path\n"
    jmp 2f
.Lbad_crc:
    PUTS64 "demo: FAIL crc32 mismatch\n"
2:  mov $EXIT_FAIL, %eax
    jmp exit64

/*
 * user_crc32 (CPL 3): fill a buffer with 0..255 and compute its CRC-32
 * (reflected, polynomial 0xedb88320, as zlib).  Returns %rax = CRC
 * through INT3.
 */
user_crc32:
    mov $crc_buf, %edi
    xor %ecx, %ecx
1:  mov %cl, (%rdi, %rcx)
    inc %ecx
    cmp $CRC_BUF_LEN, %ecx
    jb 1b
    mov $0xffffffff, %eax
    xor %ecx, %ecx
2:  movzbl (%rdi, %rcx), %edx
    xor %edx, %eax
    mov $8, %esi
3:  shr $1, %eax
    jnc 4f
    xor $CRC32_POLY, %eax
4:  dec %esi
    jnz 3b
    inc %ecx
    cmp $CRC_BUF_LEN, %ecx
    jb 2b
    not %eax
    int3

    .pushsection .bss
crc_buf:
    .skip CRC_BUF_LEN
    .popsection
