/*
 * multiboot.h - the multiboot v1 hand-off the C test guests read (cmb/boot.S calls kmain(magic, info)).
 */
#ifndef MULTIBOOT_H
#define MULTIBOOT_H
#include <stdint.h>

#define MULTIBOOT_BOOT_MAGIC 0x2badb002u
#define MBI_FLAG_MEM (1u << 0)
#define MBI_FLAG_CMDLINE (1u << 2)

/* The first fields of the multiboot information structure. */
struct multiboot_info {
    uint32_t flags;
    uint32_t mem_lower;
    uint32_t mem_upper;
    uint32_t boot_device;
    uint32_t cmdline;
};

void kmain(uint32_t magic, const struct multiboot_info *info);

#endif
