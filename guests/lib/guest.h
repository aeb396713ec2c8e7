/*
 * guest.h - constants shared by every kvmlite test guest.
 *
 * The guests talk to the VMM only through ports (no BIOS): COM1 for output and
 * QEMU's isa-debug-exit port for the exit status.  Both kvmlite and QEMU
 * implement exactly these, which is what lets the test-suite compare the two
 * VMMs byte for byte on the same binaries.
 */
#ifndef KVMLITE_GUEST_H
#define KVMLITE_GUEST_H

/* 16550 UART at COM1: transmit holding register and line status register. */
#define COM1_BASE       0x3f8
#define COM1_THR        (COM1_BASE + 0)
#define COM1_LSR        (COM1_BASE + 5)
#define LSR_THRE        0x20            /* transmitter holding register empty */

/* isa-debug-exit (iosize=4): writing v makes the VMM exit with (v << 1) | 1. */
#define DEBUG_EXIT_PORT 0xf4
#define EXIT_FAIL       0x01            /* a guest self-check failed */
#define EXIT_EXCEPTION  0x7f            /* an unexpected CPU exception */

/* Multiboot v1. */
#define MB_HEADER_MAGIC 0x1BADB002
#define MB_BOOT_MAGIC   0x2BADB002
#define MB_FLAG_ALIGN   (1 << 0)        /* page-align modules */
#define MB_FLAG_MEMINFO (1 << 1)        /* ask for mem_lower/mem_upper/mmap */
#define MB_FLAG_AOUT    (1 << 16)       /* header carries load addresses */
#define MBI_FLAGS       0
#define MBI_MEM_LOWER   4
#define MBI_MEM_UPPER   8
#define MBI_CMDLINE     16
#define MBI_MMAP_LENGTH 44
#define MBI_MMAP_ADDR   48
#define MBI_HAS_MEM     (1 << 0)
#define MBI_HAS_CMDLINE (1 << 2)
#define MBI_HAS_MMAP    (1 << 6)

/* Link address of every multiboot guest: the conventional 1 MiB. */
#define KERNEL_BASE     0x100000

/*
 * GDT layout shared by the 32-bit and 64-bit guests.  The order
 * kernel code, kernel data, user data, user code is the one SYSCALL/SYSRET
 * demand, kept so a guest may add SYSCALL later.
 */
#define KCODE           0x08
#define KDATA           0x10
#define UDATA           0x1b            /* 0x18 | RPL 3 */
#define UCODE           0x23            /* 0x20 | RPL 3 */
#define TSS_SEL         0x28

/* Control registers and MSRs. */
#define CR0_PE          0x00000001
#define CR0_PG          0x80000000
#define CR4_PAE         0x00000020
#define MSR_EFER        0xc0000080
#define EFER_LME        0x00000100
#define EFER_LMA        0x00000400

/* EFLAGS */
#define EFLAGS_RESERVED 0x00000002      /* bit 1 always reads as one */
#define EFLAGS_IF       0x00000200
#define EFLAGS_IOPL3    0x00003000

/* Page-table entry bits. */
#define PTE_P           0x001
#define PTE_W           0x002
#define PTE_U           0x004
#define PTE_PS          0x080
#define PTE_TABLE       (PTE_P | PTE_W | PTE_U)
#define PTE_LARGE       (PTE_P | PTE_W | PTE_U | PTE_PS)

#endif
