"""Plain 64-bit ELF kernels: loaded by their program headers, entered in long mode.

kvmlite builds the long-mode environment itself (see :mod:`kvmlite.vmm.cpu_setup`):
paging on with the first 4 GiB identity-mapped by 2 MiB pages, a flat GDT
with a 64-bit code segment at 0x08 and data at 0x10, interrupts off.
RDI holds 0; RSP is left for the kernel to set.
"""

from __future__ import annotations

from kvmlite.errors import ElfError, GuestMemoryError
from kvmlite.loaders import layout as L
from kvmlite.loaders.base import EntryMode, LoadResult
from kvmlite.loaders.elf import EM_X86_64, parse_elf
from kvmlite.memory.guest import GuestMemory

XEN_ELFNOTE_PHYS32_ENTRY = 18


def load(memory: GuestMemory, data: bytes) -> LoadResult:
    elf = parse_elf(data)
    if elf.bits != 64 or elf.machine != EM_X86_64:
        raise ElfError("not an x86-64 ELF64 kernel")
    if any(name == b"Xen" and t == XEN_ELFNOTE_PHYS32_ENTRY for name, t, _ in elf.notes(data)):
        raise ElfError("this ELF has a PVH entry note (a Linux vmlinux?): PVH boot is not supported yet")
    segments = elf.load_segments()
    if not segments:
        raise ElfError("ELF64 kernel has no loadable segments")
    for seg in segments:
        if seg.paddr < L.HIMEM and seg.paddr + seg.memsz > L.BOOT_GDT:
            raise ElfError(
                f"segment at {seg.paddr:#x} overlaps low memory kvmlite uses for boot structures "
                f"(load at {L.HIMEM:#x} or above)"
            )
        if seg.paddr + seg.memsz > 1 << 32:
            raise ElfError(f"segment at {seg.paddr:#x} lies above the 4 GiB kvmlite identity-maps")
        try:
            memory.write(seg.paddr, data[seg.offset : seg.offset + seg.filesz])
            memory.fill(seg.paddr + seg.filesz, seg.memsz - seg.filesz)
        except GuestMemoryError as err:
            raise ElfError(
                f"segment at {seg.paddr:#x}+{seg.memsz:#x} does not fit in guest RAM "
                f"({memory.size // (1 << 20)} MiB)"
            ) from err
    entry = elf.entry
    if not any(s.vaddr <= entry < s.vaddr + s.memsz for s in segments):
        raise ElfError(f"entry point {entry:#x} is outside every loadable segment")
    return LoadResult(
        format="ELF64",
        entry=entry,
        mode=EntryMode.LONG64,
        regs={"rdi": 0},
        loaded=[(s.paddr, s.paddr + s.memsz) for s in segments],
    )
