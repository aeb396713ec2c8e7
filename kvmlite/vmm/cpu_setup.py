"""Initial CPU state for a :class:`~kvmlite.loaders.base.LoadResult`, for either backend.

Works on ``kvm_regs``/``kvm_sregs`` structures (the software backend uses the
same ones) starting from the vCPU's reset state, and writes the GDT and, for
long mode, the identity page tables into guest memory.
"""

from __future__ import annotations

import struct

from kvmlite.kvm import structs as S
from kvmlite.kvm.system import CpuidEntry
from kvmlite.loaders import layout as L
from kvmlite.loaders.base import EntryMode, LoadResult
from kvmlite.memory.guest import GuestMemory

CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
RFLAGS_RESERVED = 1 << 1

GDT_NULL = 0
GDT_CODE32 = 0x00CF_9A00_0000_FFFF  # base 0, limit 4G, exec/read, DPL 0, 32-bit
GDT_CODE64 = 0x00AF_9A00_0000_FFFF  # long-mode code
GDT_DATA = 0x00CF_9200_0000_FFFF  # base 0, limit 4G, read/write
SEL_CODE, SEL_DATA = 0x08, 0x10

PTE_P, PTE_RW, PTE_PS = 1 << 0, 1 << 1, 1 << 7


def _flat(seg: S.kvm_segment, selector: int, code: bool, long: bool = False) -> None:
    seg.base = 0
    seg.limit = 0xFFFF_FFFF
    seg.selector = selector
    seg.type = 0xB if code else 0x3  # accessed exec/read code, accessed read/write data
    seg.present, seg.dpl, seg.s, seg.g, seg.avl, seg.unusable = 1, 0, 1, 1, 0, 0
    seg.l = int(long)
    seg.db = 0 if long else 1


def _real(seg: S.kvm_segment, selector: int, code: bool) -> None:
    seg.base = selector << 4
    seg.limit = 0xFFFF
    seg.selector = selector
    seg.type = 0xB if code else 0x3
    seg.present, seg.dpl, seg.s, seg.g, seg.db, seg.l, seg.unusable = 1, 0, 1, 0, 0, 0, 0


def write_identity_page_tables(memory: GuestMemory) -> int:
    """Map the first 4 GiB 1:1 with 2 MiB pages; returns CR3."""
    memory.write_u64(L.BOOT_PML4, L.BOOT_PDPT | PTE_P | PTE_RW)
    memory.fill(L.BOOT_PML4 + 8, 4096 - 8)
    pdpt = b"".join(struct.pack("<Q", (L.BOOT_PD + i * 4096) | PTE_P | PTE_RW) for i in range(4))
    memory.write(L.BOOT_PDPT, pdpt + bytes(4096 - len(pdpt)))
    pds = b"".join(struct.pack("<Q", (i << 21) | PTE_P | PTE_RW | PTE_PS) for i in range(4 * 512))
    memory.write(L.BOOT_PD, pds)
    return L.BOOT_PML4


def setup_cpu(regs: S.kvm_regs, sregs: S.kvm_sregs, memory: GuestMemory, result: LoadResult) -> None:
    """Fill ``regs``/``sregs`` (holding the reset state) so the vCPU starts at the loaded image."""
    regs.rflags = RFLAGS_RESERVED
    regs.rip = result.entry
    if result.mode is EntryMode.REAL:
        _real(sregs.cs, result.cs, code=True)
        for name in ("ds", "es", "fs", "gs", "ss"):
            _real(getattr(sregs, name), 0, code=False)
    else:
        long = result.mode is EntryMode.LONG64
        gdt = struct.pack("<QQQ", GDT_NULL, GDT_CODE64 if long else GDT_CODE32, GDT_DATA)
        memory.write(L.BOOT_GDT, gdt)
        sregs.gdt.base, sregs.gdt.limit = L.BOOT_GDT, len(gdt) - 1
        _flat(sregs.cs, SEL_CODE, code=True, long=long)
        for name in ("ds", "es", "fs", "gs", "ss"):
            _flat(getattr(sregs, name), SEL_DATA, code=False)
        sregs.cr0 = CR0_PE | CR0_ET | CR0_NE
        if long:
            sregs.cr3 = write_identity_page_tables(memory)
            sregs.cr4 = CR4_PAE
            sregs.cr0 |= CR0_PG | CR0_WP | CR0_MP
            sregs.efer = EFER_LME | EFER_LMA
    for name, value in result.regs.items():
        setattr(regs, "r" + name[1:] if name.startswith("e") else name, value)


def guest_cpuid(supported: list[CpuidEntry], vcpu_id: int, ncpus: int = 1) -> list[CpuidEntry]:
    """The CPUID a vCPU gets: what KVM supports, with this vCPU's APIC ID filled in."""
    out = []
    for e in supported:
        ebx, edx = e.ebx, e.edx
        if e.function == 1:
            ebx = (ebx & 0x0000_FFFF) | (max(ncpus, 1) << 16) | (vcpu_id << 24)
        elif e.function in (0xB, 0x1F):
            edx = vcpu_id
        out.append(CpuidEntry(e.function, e.index, e.flags, e.eax, ebx, e.ecx, edx))
    return out
