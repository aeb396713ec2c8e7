/*
 * mbentry32.S - common 32-bit entry of the multiboot guests.
 *
 * The loader leaves us in flat 32-bit protected mode with EAX = boot magic and
 * EBX = multiboot information; ESP is undefined.  Save both, take our own
 * stack, then continue at the guest's main32.
 */
    .code32
    .text
    .globl _start
_start:
    cld
    mov $boot_stack_top, %esp
    mov %eax, mb_magic
    mov %ebx, mb_info
    jmp main32

/* mb_cmdline32: %esi = the command line, or an empty string if none was given. */
mb_cmdline32:
    push %eax
    mov mb_info, %esi
    mov MBI_FLAGS(%esi), %eax
    test $MBI_HAS_CMDLINE, %eax
    jz 1f
    mov MBI_CMDLINE(%esi), %esi
    test %esi, %esi
    jnz 2f
1:  mov $empty_string, %esi
2:  pop %eax
    ret

    .pushsection .rodata
empty_string:
    .byte 0
    .popsection

    .pushsection .data
    .balign 4
mb_magic:
    .long 0
mb_info:
    .long 0
    .popsection

    .pushsection .bss
    .balign 16
boot_stack:
    .skip 8192
boot_stack_top:
    .popsection
