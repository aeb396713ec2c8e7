/*
 * user32.S - drop from ring 0 to ring 3 in 32-bit protected mode, paging off.
 *
 * The loop guests run their loops at CPL 3 because, on the nested KVM this
 * project develops on, CPL-0 code is emulated while CPL-3 code runs natively
 * (see /work/shared/platform.md).  They enter ring 3 with IOPL = 3, so the
 * user code may use IN/OUT directly, print, and leave through the debug-exit
 * port itself: there is no way back to ring 0, hence no TSS or IDT.
 *
 * Why SYSEXIT and not IRET: that nested KVM fails ("emulation failure") on a
 * 32-bit IRET to CPL 3 with paging off, while it carries out SYSEXIT.  SYSEXIT
 * dictates the GDT order: user code at SYSENTER_CS + 16, user stack at + 24,
 * which is why this GDT differs from the long-mode one.
 */
    .code32
    .text

#define MSR_SYSENTER_CS 0x174
#define USER32_CODE     0x1b            /* KCODE + 16, RPL 3 */
#define USER32_DATA     0x23            /* KCODE + 24, RPL 3 */

/*
 * enter_user32: never returns.  Install gdt32, reload the segment registers,
 * set EFLAGS = %edx (interrupts off; IOPL is kept across SYSEXIT), then run
 * %edi at CPL 3 with ESP = %esi.  %eax, %ebx and %ebp reach the user code
 * unchanged, for passing arguments.
 */
enter_user32:
    lgdt gdt32_ptr
    ljmp $KCODE, $1f
1:  push %eax
    mov $KDATA, %eax
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov $USER32_DATA, %eax
    mov %eax, %ds
    mov %eax, %es
    push %edx
    popf
    mov $MSR_SYSENTER_CS, %ecx
    mov $KCODE, %eax
    xor %edx, %edx
    wrmsr
    pop %eax
    mov %edi, %edx                  /* SYSEXIT: EIP = EDX, ESP = ECX */
    mov %esi, %ecx
    sysexit

    .pushsection .data
    .balign 16
gdt32:
    .quad 0                         /* null */
    .quad 0x00cf9a000000ffff        /* 0x08 kernel code, 32-bit, flat */
    .quad 0x00cf92000000ffff        /* 0x10 kernel data, flat */
    .quad 0x00cffa000000ffff        /* 0x18 user code, 32-bit, DPL 3, flat */
    .quad 0x00cff2000000ffff        /* 0x20 user data, DPL 3, flat */
gdt32_end:
    .balign 8
gdt32_ptr:
    .word gdt32_end - gdt32 - 1
    .long gdt32
    .popsection

    .pushsection .bss
    .balign 16
ustack32:
    .skip 8192
ustack32_top:
    .popsection
