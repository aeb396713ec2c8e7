/*
 * klib.h - what the C test guests share: port I/O, COM1 output, kprintf, the debug-exit port.
 *
 * Freestanding, no libc: COM1 is programmed the way a real driver does
 * (divisor latch, 8N1, FIFO) and written by polling LSR.THRE.
 */
#ifndef KLIB_H
#define KLIB_H
#include <stdint.h>

#define DEBUG_EXIT_PORT 0xf4

static inline void outb(uint16_t port, uint8_t value) { __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t value) { __asm__ volatile("outw %0, %1" : : "a"(value), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t value) { __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port)); }

static inline uint8_t inb(uint16_t port)
{
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static inline uint16_t inw(uint16_t port)
{
    uint16_t value;
    __asm__ volatile("inw %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static inline uint32_t inl(uint16_t port)
{
    uint32_t value;
    __asm__ volatile("inl %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

void serial_init(void);
void serial_putc(char c);
/* kprintf: %s %c %d %u %x with an optional zero flag and width, and %%. */
void kprintf(const char *fmt, ...);
__attribute__((noreturn)) void debug_exit(uint32_t value);
/* Where `key` (e.g. "rounds=") starts in the command line, or 0; a null cmdline has no words. */
const char *cmdline_find(const char *cmdline, const char *key);
/* The decimal number after `key` in the command line, or `fallback` when the word is absent. */
uint32_t cmdline_number(const char *cmdline, const char *key, uint32_t fallback);
/* The command line the multiboot information carries, or "" when its flag is clear. */
const char *mb_cmdline(const void *info);

#endif
