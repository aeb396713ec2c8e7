/*
 * serial64.S - polled COM1 output and the debug exit for 64-bit code.
 *
 * The same contract as serial32.S: every routine preserves all registers.
 * Addresses are used as sign-extended 32-bit absolutes (everything is linked
 * below 2 GiB), which keeps the code valid in both ELF32 and ELF64 objects.
 */
    .code64
    .text

/* putc64: write the byte in %al. */
putc64:
    push %rdx
    push %rax
    mov $COM1_LSR, %dx
1:  in (%dx), %al
    test $LSR_THRE, %al
    jz 1b
    pop %rax
    mov $COM1_THR, %dx
    out %al, (%dx)
    pop %rdx
    ret

/* puts64: write the NUL-terminated string at %rsi. */
puts64:
    push %rax
    push %rsi
1:  movb (%rsi), %al
    test %al, %al
    jz 2f
    call putc64
    inc %rsi
    jmp 1b
2:  pop %rsi
    pop %rax
    ret

/* puthex64: write %rax in lowercase hex, no prefix, no leading zeros. */
puthex64:
    push %rax
    push %rcx
    push %rdx
    mov %rax, %rdx
    mov $60, %cl
1:  mov %rdx, %rax
    shr %cl, %rax
    test $0xf, %al
    jnz 2f
    test %cl, %cl
    jz 2f
    sub $4, %cl
    jmp 1b
2:  mov %rdx, %rax
    shr %cl, %rax
    and $0xf, %eax
    movb hexdigits64(%rax), %al
    call putc64
    sub $4, %cl
    jns 2b
    pop %rdx
    pop %rcx
    pop %rax
    ret

/* putdec64: write %rax as an unsigned decimal number. */
putdec64:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    mov $10, %ebx
    xor %ecx, %ecx
1:  xor %edx, %edx
    div %rbx
    push %rdx
    inc %ecx
    test %rax, %rax
    jnz 1b
2:  pop %rax
    add $'0', %al
    call putc64
    dec %ecx
    jnz 2b
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    ret

/* exit64: leave through the debug-exit port with %eax; triple fault if ignored. */
exit64:
    out %eax, $DEBUG_EXIT_PORT
    lidt null_idtr64
    int3
1:  jmp 1b

    .pushsection .rodata
hexdigits64:
    .ascii "0123456789abcdef"
    .balign 8
null_idtr64:
    .word 0
    .quad 0
    .popsection
