/*
 * kernel.c - dbg, the C guest the debugger and control-socket tests drive.
 *
 * Built with debug information (-g, not stripped) so gdb can break on its
 * functions, print its globals and unwind its stack.  It prints a few
 * values computed from globals a debugger can change, then exits through
 * the debug port with 0x21 (status 67).  With "mailbox" on its command line
 * it first waits until something outside (the control socket's
 * write-memory) puts a non-zero value into `mailbox`, and prints it.
 */
#include <stdint.h>

#include "clib/klib.h"
#include "clib/multiboot.h"

#define EXIT_DONE 0x21

volatile uint32_t counter;          /* written once by kmain: the watchpoint's target */
volatile uint32_t scale = 3;        /* `set var scale = 10` changes the "result" line */
uint32_t marker = 0x5eed1234;       /* read back from a dump-guest-memory core */
volatile uint32_t mailbox;          /* written from outside in "mailbox" mode */

__attribute__((noinline)) void report(const char *what, uint32_t value)
{
    kprintf("%s=%u\n", what, value);
}

__attribute__((noinline)) uint32_t compute(uint32_t x)
{
    return x * scale + 1;
}

static int has_word(const char *s, const char *word)
{
    for (; *s; s++) {
        const char *a = s, *b = word;
        while (*a && *b && *a == *b)
            a++, b++;
        if (!*b)
            return 1;
    }
    return 0;
}

void kmain(uint32_t magic, const struct multiboot_info *info)
{
    serial_init();
    report("magic-ok", magic == MULTIBOOT_BOOT_MAGIC);
    if ((info->flags & MBI_FLAG_CMDLINE) && info->cmdline && has_word((const char *)info->cmdline, "mailbox")) {
        kprintf("waiting\n");
        while (!mailbox)
            ;
        report("mailbox", mailbox);
    }
    counter = compute(7);
    report("counter", counter);
    report("result", compute(2));
    debug_exit(EXIT_DONE);
}
