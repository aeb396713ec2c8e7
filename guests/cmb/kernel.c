/*
 * kernel.c - cmb, a small multiboot kernel in freestanding C.
 *
 * It initialises COM1 the way a real driver does (divisor latch, 8N1, FIFO),
 * prints through a tiny printf, checks the multiboot hand-off and exits via
 * the isa-debug-exit port with 0x42.  Written to look like what someone
 * outside this project would boot, to check kvmlite against code it was not
 * designed around.
 */
#include <stdint.h>

#include "clib/klib.h"
#include "clib/multiboot.h"

#define EXIT_OK 0x42
#define EXIT_FAIL 0x01
#define FIB_N 40

static uint32_t fib(unsigned n)
{
    uint32_t a = 0, b = 1;
    while (n-- > 0) {
        uint32_t t = a + b;
        a = b;
        b = t;
    }
    return a;
}

void kmain(uint32_t magic, const struct multiboot_info *info)
{
    serial_init();
    kprintf("hello from C\n");
    kprintf("cmb: magic=0x%x\n", magic);
    if (magic != MULTIBOOT_BOOT_MAGIC) {
        kprintf("cmb: FAIL not started by a multiboot loader\n");
        debug_exit(EXIT_FAIL);
    }
    if (info->flags & MBI_FLAG_MEM)
        kprintf("cmb: mem_lower=%u KiB mem_upper=%u KiB\n", info->mem_lower, info->mem_upper);
    if ((info->flags & MBI_FLAG_CMDLINE) && info->cmdline)
        kprintf("cmb: cmdline=\"%s\"\n", (const char *)info->cmdline);
    kprintf("cmb: fib(%d)=%u\n", FIB_N, fib(FIB_N));
    kprintf("cmb: hex=0x%x padded=%08u neg=%d char=%c str=[%s] pct=%%\n", 0xdeadbeefu, 42u, -12345, 'Z', "ok");
    kprintf("cmb: done\n");
    debug_exit(EXIT_OK);
}
