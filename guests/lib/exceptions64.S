/*
 * exceptions64.S - 64-bit exception stubs that report the exception and exit.
 *
 * exc_stubs: NUM_EXCEPTIONS stubs, EXC_STUB_SIZE bytes apart, one per
 * vector, for the guest's IDT (lib/longmode.S installs them; a guest with
 * an IDT of its own points its gates at exc_stubs + vector * EXC_STUB_SIZE).
 * Vectors without a CPU error code push a zero, so exc_common sees one frame
 * shape: vector, error code, RIP, CS, RFLAGS, ...  A handler of the guest's
 * own may also end up there with that frame (push the vector, jump).
 *
 * Include it before the code that uses EXC_STUB_SIZE (a guest's IDT set-up).
 *
 * exc_common prints "EXCEPTION vec=0x.. err=0x.. rip=0x.. cs=0x.. cr2=0x.."
 * and exits with v=EXIT_EXCEPTION (status 255).  Needs lib/serial64.S.
 */

#define EXC_STUB_SIZE   16
#define NUM_EXCEPTIONS  32

    .text
    .code64
    .balign EXC_STUB_SIZE
exc_stubs:
    .set vec, 0
    .rept NUM_EXCEPTIONS
    .balign EXC_STUB_SIZE
    .if !(vec == 8 || vec == 10 || vec == 11 || vec == 12 || vec == 13 || vec == 14 || vec == 17 || vec == 21 || vec == 29 || vec == 30)
    pushq $0
    .endif
    pushq $vec
    jmp exc_common
    .set vec, vec + 1
    .endr

exc_common:
    PUTS64 "EXCEPTION vec=0x"
    mov (%rsp), %rax
    call puthex64
    PUTS64 " err=0x"
    mov 8(%rsp), %rax
    call puthex64
    PUTS64 " rip=0x"
    mov 16(%rsp), %rax
    call puthex64
    PUTS64 " cs=0x"
    mov 24(%rsp), %rax
    call puthex64
    PUTS64 " cr2=0x"
    mov %cr2, %rax
    call puthex64
    PUTS64 "\n"
    mov $EXIT_EXCEPTION, %eax
    jmp exit64
