/*
 * kbdreset.S - reset the machine through the keyboard controller.
 *
 * What a PC kernel does to reboot: wait until the i8042's input buffer is
 * empty (status bit 1), then write the pulse-reset command 0xFE to port
 * 0x64.  kvmlite with --on-reset exit then exits with status 0; QEMU with
 * -no-reboot exits 0 too.  If the machine is still running afterwards the
 * guest says so and fails through the debug-exit port, so a VMM that ignores
 * the command never looks like one that reset.
 */
#include "lib/guest.h"
#include "lib/macros.S"

#define KBC_STATUS      0x64
#define KBC_COMMAND     0x64
#define KBC_INPUT_FULL  0x02
#define KBC_PULSE_RESET 0xfe
#define KBC_POLLS       1000
#define AFTER_RESET_SPIN 10000          /* a reset takes effect at once; this is slack */

    MULTIBOOT_HEADER (MB_FLAG_ALIGN)

#include "lib/mbentry32.S"
#include "lib/serial32.S"

    .code32
    .text
main32:
    PUTS32 "kbdreset: pulsing the reset line (0xfe to port 0x64)\n"
    mov $KBC_POLLS, %ecx
1:  in $KBC_STATUS, %al
    test $KBC_INPUT_FULL, %al
    jz 2f
    dec %ecx
    jnz 1b
    PUTS32 "kbdreset: FAIL the controller's input buffer stays full\n"
    jmp 4f
2:  mov $KBC_PULSE_RESET, %al
    out %al, $KBC_COMMAND
    mov $AFTER_RESET_SPIN, %ecx
3:  pause
    dec %ecx
    jnz 3b
    PUTS32 "kbdreset: FAIL still running after the reset command\n"
4:  mov $EXIT_FAIL, %eax
    jmp exit32
