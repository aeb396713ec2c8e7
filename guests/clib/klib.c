/*
 * klib.c - COM1 output, kprintf and the debug-exit port for the C test guests (see klib.h).
 */
#include <stdarg.h>
#include <stdint.h>

#include "klib.h"
#include "multiboot.h"

#define COM1 0x3f8
#define UART_THR 0 /* transmit holding (DLAB=0) */
#define UART_DLL 0 /* divisor latch low (DLAB=1) */
#define UART_IER 1 /* interrupt enable (DLAB=0) */
#define UART_DLM 1 /* divisor latch high (DLAB=1) */
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define LCR_DLAB 0x80
#define LCR_8N1 0x03
#define FCR_ENABLE_CLEAR 0xc7
#define MCR_DTR_RTS_OUT2 0x0b
#define LSR_THRE 0x20
#define BAUD_DIVISOR 3 /* 38400 baud */

void serial_init(void)
{
    outb(COM1 + UART_IER, 0);
    outb(COM1 + UART_LCR, LCR_DLAB);
    outb(COM1 + UART_DLL, BAUD_DIVISOR);
    outb(COM1 + UART_DLM, 0);
    outb(COM1 + UART_LCR, LCR_8N1);
    outb(COM1 + UART_FCR, FCR_ENABLE_CLEAR);
    outb(COM1 + UART_MCR, MCR_DTR_RTS_OUT2);
}

void serial_putc(char c)
{
    while (!(inb(COM1 + UART_LSR) & LSR_THRE))
        ;
    outb(COM1 + UART_THR, (uint8_t)c);
}

static void put_unsigned(uint32_t value, unsigned base, int width, char pad)
{
    char digits[32];
    int n = 0;
    do {
        unsigned d = value % base;
        digits[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        value /= base;
    } while (value != 0);
    while (width-- > n)
        serial_putc(pad);
    while (n > 0)
        serial_putc(digits[--n]);
}

void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            serial_putc(*fmt);
            continue;
        }
        char pad = ' ';
        int width = 0;
        if (*++fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        switch (*fmt) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            while (*s)
                serial_putc(*s++);
            break;
        }
        case 'c':
            serial_putc((char)va_arg(ap, int));
            break;
        case 'd': {
            int32_t v = va_arg(ap, int32_t);
            if (v < 0) {
                serial_putc('-');
                put_unsigned((uint32_t)0 - (uint32_t)v, 10, width, pad);
            } else {
                put_unsigned((uint32_t)v, 10, width, pad);
            }
            break;
        }
        case 'u':
            put_unsigned(va_arg(ap, uint32_t), 10, width, pad);
            break;
        case 'x':
            put_unsigned(va_arg(ap, uint32_t), 16, width, pad);
            break;
        case '%':
            serial_putc('%');
            break;
        default: /* unknown conversion: show it rather than guess */
            serial_putc('%');
            serial_putc(*fmt);
            break;
        }
    }
    va_end(ap);
}

__attribute__((noreturn)) void debug_exit(uint32_t value)
{
    outl(DEBUG_EXIT_PORT, value);
    for (;;)
        __asm__ volatile("cli; hlt");
}

const char *cmdline_find(const char *cmdline, const char *key)
{
    for (const char *p = cmdline; p && *p; p++) {
        unsigned i = 0;
        while (key[i] && p[i] == key[i])
            i++;
        if (!key[i])
            return p;
    }
    return 0;
}

uint32_t cmdline_number(const char *cmdline, const char *key, uint32_t fallback)
{
    const char *p = cmdline_find(cmdline, key);
    if (!p)
        return fallback;
    while (*key++)
        p++;
    uint32_t n = 0;
    for (; *p >= '0' && *p <= '9'; p++)
        n = n * 10 + (uint32_t)(*p - '0');
    return n;
}

const char *mb_cmdline(const void *info)
{
    const struct multiboot_info *mbi = info;
    return mbi && (mbi->flags & MBI_FLAG_CMDLINE) ? (const char *)(uintptr_t)mbi->cmdline : "";
}
