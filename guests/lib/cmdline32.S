/*
 * cmdline32.S - read "key=<decimal>" words from a multiboot command line.
 *
 * The benchmark guests take their iteration counts from the command line so
 * one binary serves every run length.  Parsing is strict: a value that is not
 * all digits or does not fit in 32 bits is reported as malformed instead of
 * being silently truncated.
 */
    .code32
    .text

#define ARG_FOUND     0
#define ARG_ABSENT    1
#define ARG_MALFORMED 2

/*
 * arg_u32: look for the word KEY<digits> in the NUL-terminated string at %esi;
 * KEY is the NUL-terminated string at %edi and includes the '='.  Words are
 * separated by spaces.  Returns %edx = ARG_FOUND (value in %eax), ARG_ABSENT
 * or ARG_MALFORMED (%eax = 0).  Other registers are preserved.
 */
arg_u32:
    push %ebx
    push %ecx
    push %esi
1:  movb (%esi), %al                /* skip the spaces before a word */
    cmp $' ', %al
    jne 2f
    inc %esi
    jmp 1b
2:  test %al, %al
    jz .Larg_absent
    mov %esi, %ebx                  /* does this word start with KEY? */
    mov %edi, %edx
3:  movb (%edx), %ah
    test %ah, %ah
    jz .Larg_digits
    cmpb %ah, (%ebx)
    jne 4f
    inc %ebx
    inc %edx
    jmp 3b
4:  movb (%esi), %al                /* no: skip to the end of the word */
    test %al, %al
    jz .Larg_absent
    cmp $' ', %al
    je 1b
    inc %esi
    jmp 4b
.Larg_digits:                       /* yes: %ebx points at the value */
    xor %eax, %eax
    xor %ecx, %ecx
5:  movzbl (%ebx), %edx
    sub $'0', %edx
    cmp $9, %edx
    ja 6f
    cmp $429496729, %eax            /* would eax * 10 overflow? */
    ja .Larg_malformed
    imul $10, %eax, %eax
    add %edx, %eax
    jc .Larg_malformed
    inc %ecx
    inc %ebx
    jmp 5b
6:  test %ecx, %ecx                 /* at least one digit ... */
    jz .Larg_malformed
    movb (%ebx), %dl                /* ... and nothing glued after them */
    test %dl, %dl
    jz 7f
    cmp $' ', %dl
    jne .Larg_malformed
7:  mov $ARG_FOUND, %edx
    jmp 8f
.Larg_absent:
    xor %eax, %eax
    mov $ARG_ABSENT, %edx
    jmp 8f
.Larg_malformed:
    xor %eax, %eax
    mov $ARG_MALFORMED, %edx
8:  pop %esi
    pop %ecx
    pop %ebx
    ret

/*
 * ARG32 KEY, DEST, DEFAULT: the multiboot command line's word KEY<digits> (KEY a NUL-terminated
 * string label that includes the '='), or DEFAULT when it is absent, in %eax and in DEST (a
 * register or memory).  A malformed value jumps to .Lbad_arg, which the including guest defines.
 */
.macro ARG32 key, dest, default
    call mb_cmdline32
    mov $\key, %edi
    call arg_u32
    cmp $ARG_MALFORMED, %edx
    je .Lbad_arg
    cmp $ARG_ABSENT, %edx
    jne .Larg_given\@
    mov $\default, %eax
.Larg_given\@:
    mov %eax, \dest
.endm
