"""Where kvmlite puts its own boot structures in low guest memory.

Below 1 MiB, clear of the real-mode IVT/BDA (0-0x500) and of the 0x7c00 boot
sector; kernels load at 1 MiB and above.
"""

BOOT_GDT = 0x0500  # flat GDT: null, 0x08 code, 0x10 data (+ 64-bit code at 0x18)
BOOT_PML4 = 0x1000  # identity map for long-mode entry: PML4, PDPT, 4 page directories
BOOT_PDPT = 0x2000
BOOT_PD = 0x3000  # 0x3000..0x6fff
BOOT_STACK_TOP = 0x7000
BOOTSECTOR_ADDR = 0x7C00
BOOT_INFO = 0x9000  # multiboot info structure
BOOT_MMAP = 0x9200  # multiboot memory map
BOOT_MODULES = 0x9800  # multiboot module list
BOOT_CMDLINE = 0xA000  # command lines (up to 0x10000 bytes... kept under 0x20000)
BOOT_CMDLINE_MAX = 0x6000
LOW_RAM_END = 0x9FC00  # 639 KiB: the EBDA starts here on a PC
HIMEM = 0x10_0000
