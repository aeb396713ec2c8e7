/*
 * platformargs32.S - the command line of the platform guests (32-bit, at boot).
 *
 *   echo=N   after the device checks, echo N bytes received by the UART's
 *            RX interrupt (the test feeds them; without it the guest needs
 *            no input, so the plain run suits every VMM and test harness)
 *   idle=N   then HLT through N RTC update interrupts (1 Hz): the idle
 *            benchmark's guest
 *   time=1   also print the RTC's time of day (left out by default: the
 *            lines must be the same from run to run and VMM to VMM)
 *
 * Parsed before anything else so a malformed value fails at once.
 */
    .code32
    .text

/* platform_args32: store echo=, idle=, time= in echo_count, idle_seconds, show_time, or fail. */
platform_args32:
    call mb_cmdline32
    mov $key_echo, %edi
    call arg_u32
    cmp $ARG_MALFORMED, %edx
    je 1f
    mov %eax, echo_count
    mov $key_idle, %edi
    call arg_u32
    cmp $ARG_MALFORMED, %edx
    je 1f
    mov %eax, idle_seconds
    mov $key_time, %edi
    call arg_u32
    cmp $ARG_MALFORMED, %edx
    je 1f
    mov %eax, show_time
    ret
1:  PUTS32 "platform: FAIL malformed echo=, idle= or time= on the command line\n"
    mov $EXIT_FAIL, %eax
    jmp exit32

    .pushsection .rodata
key_echo:
    .asciz "echo="
key_idle:
    .asciz "idle="
key_time:
    .asciz "time="
    .popsection
