/*
 * serial32.S - polled COM1 output and the debug exit for 32-bit code.
 *
 * Every routine preserves all registers (and flags are not promised): guests
 * are written in assembly, and not having to think about clobbers at each
 * print keeps them short.  Output polls LSR.THRE before each byte as a real
 * driver must; a VMM that never sets THRE hangs the guest, which is a bug the
 * tests should see.
 */
    .code32
    .text

/* putc32: write the byte in %al. */
putc32:
    push %edx
    push %eax
    mov $COM1_LSR, %dx
1:  in (%dx), %al
    test $LSR_THRE, %al
    jz 1b
    pop %eax
    mov $COM1_THR, %dx
    out %al, (%dx)
    pop %edx
    ret

/* puts32: write the NUL-terminated string at %esi. */
puts32:
    push %eax
    push %esi
1:  movb (%esi), %al
    test %al, %al
    jz 2f
    call putc32
    inc %esi
    jmp 1b
2:  pop %esi
    pop %eax
    ret

/* puthex32: write %eax in lowercase hex, no prefix, no leading zeros. */
puthex32:
    push %eax
    push %ecx
    push %edx
    mov %eax, %edx
    mov $28, %cl
1:  mov %edx, %eax              /* skip leading zero nibbles, keep the last */
    shr %cl, %eax
    test $0xf, %al
    jnz 2f
    test %cl, %cl
    jz 2f
    sub $4, %cl
    jmp 1b
2:  mov %edx, %eax
    shr %cl, %eax
    and $0xf, %eax
    movb hexdigits(%eax), %al
    call putc32
    sub $4, %cl
    jns 2b
    pop %edx
    pop %ecx
    pop %eax
    ret

/* putdec32: write %eax as an unsigned decimal number. */
putdec32:
    push %eax
    push %ebx
    push %ecx
    push %edx
    mov $10, %ebx
    xor %ecx, %ecx
1:  xor %edx, %edx
    div %ebx
    push %edx
    inc %ecx
    test %eax, %eax
    jnz 1b
2:  pop %eax
    add $'0', %al
    call putc32
    dec %ecx
    jnz 2b
    pop %edx
    pop %ecx
    pop %ebx
    pop %eax
    ret

/*
 * exit32: leave through the debug-exit port with the value in %eax.  If the
 * port did nothing (no such device), force a triple fault rather than halt:
 * a halt would look like the clean power-off of the demo guest.
 */
exit32:
    out %eax, $DEBUG_EXIT_PORT
    lidt null_idtr32
    int3
1:  jmp 1b

    .pushsection .rodata
hexdigits:
    .ascii "0123456789abcdef"
    .balign 8
null_idtr32:
    .word 0
    .long 0
    .popsection
