/*
 * boot.S - entry of cmb, a multiboot v1 kernel written in C.
 *
 * cmb stands for "a multiboot ELF32 kernel written independently of this
 * repository": it shares no code with the assembly guests (no lib/ include),
 * is built by gcc -m32 and linked by its own script, the way a hobby kernel
 * would be.  This file only provides the header and a stack, then calls
 * kmain(magic, info).
 */
#define MB_MAGIC  0x1BADB002
#define MB_FLAGS  0x00000003    /* page-align modules, want memory information */
#define STACK_SIZE 16384

    .section .multiboot, "a"
    .balign 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .text
    .code32
    .globl _start
_start:
    cli
    cld
    mov $stack_top, %esp
    push %ebx                   /* struct multiboot_info * */
    push %eax                   /* boot magic */
    call kmain
1:  cli                         /* kmain exits through the debug port; never here */
    hlt
    jmp 1b

    .section .bss
    .balign 16
stack:
    .skip STACK_SIZE
stack_top:
