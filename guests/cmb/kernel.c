/*
 * kernel.c - cmb, a small multiboot kernel in freestanding C.
 *
 * It initialises COM1 the way a real driver does (divisor latch, 8N1, FIFO),
 * prints through a tiny printf, checks the multiboot hand-off and exits via
 * the isa-debug-exit port with 0x42.  Written to look like what someone
 * outside this project would boot, to check kvmlite against code it was not
 * designed around.
 */
#include <stdarg.h>
#include <stdint.h>

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

#define DEBUG_EXIT_PORT 0xf4
#define EXIT_OK 0x42
#define EXIT_FAIL 0x01
#define MULTIBOOT_BOOT_MAGIC 0x2badb002u
#define MBI_FLAG_MEM (1u << 0)
#define MBI_FLAG_CMDLINE (1u << 2)
#define FIB_N 40

struct multiboot_info {
    uint32_t flags;
    uint32_t mem_lower;
    uint32_t mem_upper;
    uint32_t boot_device;
    uint32_t cmdline;
};

void kmain(uint32_t magic, const struct multiboot_info *info);

static inline void outb(uint16_t port, uint8_t value) { __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port)); }

static inline void outl(uint16_t port, uint32_t value) { __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port)); }

static inline uint8_t inb(uint16_t port)
{
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static void serial_init(void)
{
    outb(COM1 + UART_IER, 0);
    outb(COM1 + UART_LCR, LCR_DLAB);
    outb(COM1 + UART_DLL, BAUD_DIVISOR);
    outb(COM1 + UART_DLM, 0);
    outb(COM1 + UART_LCR, LCR_8N1);
    outb(COM1 + UART_FCR, FCR_ENABLE_CLEAR);
    outb(COM1 + UART_MCR, MCR_DTR_RTS_OUT2);
}

static void serial_putc(char c)
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

/* kprintf: %s %c %d %u %x with an optional zero flag and width, and %%. */
static void kprintf(const char *fmt, ...)
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

static __attribute__((noreturn)) void debug_exit(uint32_t value)
{
    outl(DEBUG_EXIT_PORT, value);
    for (;;)
        __asm__ volatile("cli; hlt");
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
