"""Where kvmlite puts its own boot structures in low guest memory.

Below 1 MiB, clear of the real-mode IVT/BDA (0-0x500) and of the 0x7c00 boot
sector, for the ELF64 entry (GDT, identity page tables).  Multiboot kernels
may load anywhere: their boot information goes after them (see multiboot.py).
"""

BOOT_GDT = 0x0500  # flat GDT: null, 0x08 code, 0x10 data (+ 64-bit code at 0x18)
BOOT_PML4 = 0x1000  # identity map for long-mode entry: PML4, PDPT, 4 page directories
BOOT_PDPT = 0x2000
BOOT_PD = 0x3000  # 0x3000..0x6fff
BOOT_STACK_TOP = 0x7000
#: ESP at a multiboot kernel's entry: where QEMU's multiboot option ROM, still on SeaBIOS's stack,
#: leaves it (measured under QEMU 7.2, TCG and KVM, pc and q35, 64 MiB to 1 GiB).  Kernels that
#: push or call before loading their own stack rely on it being usable low RAM.
MULTIBOOT_ENTRY_ESP = 0x6F08
BOOTSECTOR_ADDR = 0x7C00
BOOT_CMDLINE = 0xA000  # where low boot structures end (the Linux loaders stay above it)
BOOT_CMDLINE_MAX = 0x6000  # bytes of command lines a loader accepts
LOW_RAM_END = 0x9FC00  # 639 KiB: the EBDA starts here on a PC
HIMEM = 0x10_0000
