/*
 * realmode.S - a 512-byte real-mode boot sector.
 *
 * Loaded at 0x7c00 and started at 0000:7c00 with DL = boot drive, as a BIOS
 * does, but it uses no BIOS service: only COM1 and the debug-exit port, so
 * kvmlite (no BIOS) and QEMU (SeaBIOS) give the same output.  It reports the
 * boot drive, checks where it runs, computes a 16-bit sum of squares and
 * exits with v = 0x10.
 */
#include "lib/guest.h"

#define LOAD_ADDR       0x7c00
#define SUM_LIMIT       50              /* sum of i*i for i = 1..50 = 42925 */
#define SUM_EXPECTED    0xa7ad
#define EXIT_OK         0x10

    .code16
    .text
    .globl _start
_start:
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $LOAD_ADDR, %sp
    mov %dl, boot_drive

    mov $msg_ok, %si
    call puts16

    call 1f                         /* where are we?  IP must match the link address */
1:  pop %ax
    sub $(1b - _start), %ax
    mov $msg_ip, %si
    call puts16
    call puthex16
    call newline16
    cmp $LOAD_ADDR, %ax
    jne fail

    mov $msg_drive, %si
    call puts16
    movzbw boot_drive, %ax
    call puthex16
    call newline16

    xor %bx, %bx                    /* bx = sum of i*i, i = 1..SUM_LIMIT (mod 2^16) */
    mov $1, %cx
2:  mov %cx, %ax
    mul %cx
    add %ax, %bx
    inc %cx
    cmp $SUM_LIMIT, %cx
    jbe 2b
    mov $msg_sum, %si
    call puts16
    mov %bx, %ax
    call puthex16
    call newline16
    cmp $SUM_EXPECTED, %bx
    jne fail

    mov $EXIT_OK, %eax
    jmp exit16
fail:
    mov $msg_fail, %si
    call puts16
    mov $EXIT_FAIL, %eax
exit16:                             /* debug-exit; triple fault if nobody listens */
    out %eax, $DEBUG_EXIT_PORT
    lidt null_idtr
    int3
3:  jmp 3b

/* putc16: write %al to COM1, polling LSR.THRE first.  Preserves registers. */
putc16:
    push %dx
    push %ax
    mov $COM1_LSR, %dx
1:  in (%dx), %al
    test $LSR_THRE, %al
    jz 1b
    pop %ax
    mov $COM1_THR, %dx
    out %al, (%dx)
    pop %dx
    ret

/* puts16: write the NUL-terminated string at %si. */
puts16:
    push %ax
    push %si
1:  movb (%si), %al
    test %al, %al
    jz 2f
    call putc16
    inc %si
    jmp 1b
2:  pop %si
    pop %ax
    ret

newline16:
    push %ax
    mov $'\n', %al
    call putc16
    pop %ax
    ret

/* puthex16: write %ax as exactly four lowercase hex digits. */
puthex16:
    push %ax
    push %bx
    push %cx
    mov %ax, %bx
    mov $4, %cx
1:  rol $4, %bx
    mov %bx, %ax
    and $0xf, %ax
    add $'0', %al
    cmp $'9', %al
    jbe 2f
    add $('a' - '9' - 1), %al
2:  call putc16
    loop 1b
    pop %cx
    pop %bx
    pop %ax
    ret

msg_ok:     .asciz "real mode ok\n"
msg_ip:     .asciz "realmode: running at 0x"
msg_drive:  .asciz "realmode: boot drive 0x"
msg_sum:    .asciz "realmode: sum of squares 1..50 = 0x"
msg_fail:   .asciz "realmode: FAIL\n"
null_idtr:  .word 0
            .long 0
boot_drive: .byte 0

    .org 510
    .byte 0x55, 0xaa
