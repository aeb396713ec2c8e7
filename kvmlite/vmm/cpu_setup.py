"""Initial CPU state for a :class:`~kvmlite.loaders.base.LoadResult`, for either backend.

Works on ``kvm_regs``/``kvm_sregs`` structures (the software backend uses the
same ones) starting from the vCPU's reset state, and writes the GDT and, for
long mode, the identity page tables into guest memory.
"""

from __future__ import annotations

import struct

from kvmlite.kvm import structs as S
from kvmlite.kvm.constants import KVM_CPUID_FLAG_SIGNIFCANT_INDEX
from kvmlite.kvm.cpuid import CpuidEntry
from kvmlite.loaders import layout as L
from kvmlite.loaders.base import EntryMode, LoadResult
from kvmlite.memory.guest import GuestMemory
from kvmlite.x86 import (
    SEG_TYPE_CODE_RX_ACCESSED,
    SEG_TYPE_DATA_RW_ACCESSED,
    Cr0,
    Cr4,
    Efer,
    MemType,
    MiscEnable,
    Msr,
    MtrrDefType,
    Pte,
    Rflags,
)

GDT_NULL = 0
GDT_CODE32 = 0x00CF_9A00_0000_FFFF  # base 0, limit 4G, exec/read, DPL 0, 32-bit
GDT_CODE64 = 0x00AF_9A00_0000_FFFF  # long-mode code
GDT_DATA = 0x00CF_9200_0000_FFFF  # base 0, limit 4G, read/write
GDT_CODE16 = 0x0000_9E00_0000_FFFF  # base 0, limit 64K, 16-bit exec/read conforming (QEMU's 0x18)
GDT_DATA16 = 0x0000_9200_0000_FFFF  # base 0, limit 64K, 16-bit read/write (QEMU's 0x20)
#: The real-mode IVT firmware leaves in the IDT register (base 0, 256 4-byte vectors).
REAL_MODE_IDT_LIMIT = 0x3FF
SEL_CODE, SEL_DATA = 0x08, 0x10

# CPUID
CPUID_1_EDX_HTT = 1 << 28  # leaf 1 EBX[23:16] (logical processors per package) is valid
CACHE_TYPE_MASK = 0x1F  # leaf 4 / 0x8000001D EAX[4:0]: 0 = no more caches
TOPO_SMT, TOPO_CORE = 1, 2  # leaf 0xB/0x1F level types


def _flat(seg: S.kvm_segment, selector: int, code: bool, long: bool = False) -> None:
    seg.base = 0
    seg.limit = 0xFFFF_FFFF
    seg.selector = selector
    seg.type = SEG_TYPE_CODE_RX_ACCESSED if code else SEG_TYPE_DATA_RW_ACCESSED
    seg.present, seg.dpl, seg.s, seg.g, seg.avl, seg.unusable = 1, 0, 1, 1, 0, 0
    seg.l = int(long)
    seg.db = 0 if long else 1


def _real(seg: S.kvm_segment, selector: int, code: bool) -> None:
    seg.base = selector << 4
    seg.limit = 0xFFFF
    seg.selector = selector
    seg.type = SEG_TYPE_CODE_RX_ACCESSED if code else SEG_TYPE_DATA_RW_ACCESSED
    seg.present, seg.dpl, seg.s, seg.g, seg.db, seg.l, seg.unusable = 1, 0, 1, 0, 0, 0, 0


def write_identity_page_tables(memory: GuestMemory, user: bool = False) -> int:
    """Map the first 4 GiB 1:1 with 2 MiB pages (``user``: accessible from ring 3 too); returns CR3."""
    flags = int(Pte.P | Pte.RW | (Pte.US if user else 0))
    memory.write_u64(L.BOOT_PML4, L.BOOT_PDPT | flags)
    memory.fill(L.BOOT_PML4 + 8, 4096 - 8)
    pdpt = b"".join(struct.pack("<Q", (L.BOOT_PD + i * 4096) | flags) for i in range(4))
    memory.write(L.BOOT_PDPT, pdpt + bytes(4096 - len(pdpt)))
    large = flags | int(Pte.PS)
    pds = b"".join(struct.pack("<Q", (i << 21) | large) for i in range(4 * 512))
    memory.write(L.BOOT_PD, pds)
    return L.BOOT_PML4


def _flat_segments(sregs: S.kvm_sregs, memory: GuestMemory, base: int, gdt: bytes, long: bool) -> None:
    """Write ``gdt`` at ``base``, load it, and set CS (0x08) and the data segments (0x10) flat."""
    memory.write(base, gdt)
    sregs.gdt.base, sregs.gdt.limit = base, len(gdt) - 1
    _flat(sregs.cs, SEL_CODE, code=True, long=long)
    for name in ("ds", "es", "fs", "gs", "ss"):
        _flat(getattr(sregs, name), SEL_DATA, code=False)


def setup_cpu(regs: S.kvm_regs, sregs: S.kvm_sregs, memory: GuestMemory, result: LoadResult) -> None:
    """Fill ``regs``/``sregs`` (holding the reset state) so the vCPU starts at the loaded image."""
    regs.rflags = Rflags.FIXED1
    regs.rip = result.entry
    if result.mode is EntryMode.REAL:
        _real(sregs.cs, result.cs, code=True)
        for name in ("ds", "es", "fs", "gs", "ss"):
            _real(getattr(sregs, name), 0, code=False)
    elif result.mode is EntryMode.LONG64:
        gdt = struct.pack("<QQQ", GDT_NULL, GDT_CODE64, GDT_DATA)
        _flat_segments(sregs, memory, result.gdt, gdt, long=True)
        sregs.cr0 = Cr0.PE | Cr0.ET | Cr0.NE | Cr0.PG | Cr0.WP | Cr0.MP
        sregs.cr3 = write_identity_page_tables(memory)
        sregs.cr4 = Cr4.PAE
        sregs.efer = Efer.LME | Efer.LMA
    else:
        # As QEMU's multiboot option ROM leaves a multiboot kernel (and as the PVH spec asks):
        # CR0 = PE|ET only, its five-entry GDT, and the real-mode IVT still in the IDT register.
        gdt = struct.pack("<5Q", GDT_NULL, GDT_CODE32, GDT_DATA, GDT_CODE16, GDT_DATA16)
        _flat_segments(sregs, memory, result.gdt, gdt, long=False)
        sregs.cr0 = Cr0.PE | Cr0.ET
        sregs.idt.base, sregs.idt.limit = 0, REAL_MODE_IDT_LIMIT
    for name, value in result.regs.items():
        setattr(regs, "r" + name[1:] if name.startswith("e") else name, value)


def boot_msrs(saved: set[int]) -> dict[int, int]:
    """The MSR values every vCPU starts with, as firmware would leave them (all vCPUs alike).

    The fast-system-call MSRs are zero; the TSC starts at 0 on every vCPU
    (KVM treats writes close together as one synchronised TSC); string
    operations are fast; the MTRRs are on with write-back as the default type,
    so the kernel sees cacheable RAM and sets up PAT.  MSRs KVM does not list
    in KVM_GET_MSR_INDEX_LIST (``saved``) are left out, except the
    architectural MTRR default type, which KVM always emulates.

    AMD's HWCR.TscFreqSel (MSR 0xC0010015 bit 24) stays clear, as QEMU leaves
    it, although a clear bit makes Linux print "[Firmware Bug]: TSC doesn't
    count with P0 frequency!": KVM takes it from userspace only since Linux
    6.6, and a guest that sees it set may go on to read the P-state MSRs
    (0xC0010064...), which KVM does not have (OpenBSD does; Xen stopped setting
    the bit for that reason).  The warning is harmless: kvmclock, not the TSC's
    P0 frequency, is a KVM guest's clock.
    """
    values = {
        Msr.SYSENTER_CS: 0,
        Msr.SYSENTER_ESP: 0,
        Msr.SYSENTER_EIP: 0,
        Msr.STAR: 0,
        Msr.LSTAR: 0,
        Msr.CSTAR: 0,
        Msr.SFMASK: 0,
        Msr.KERNEL_GS_BASE: 0,
        Msr.TSC: 0,
        Msr.MISC_ENABLE: int(MiscEnable.FAST_STRING),
    }
    out = {int(index): value for index, value in values.items() if index in saved}
    out[int(Msr.MTRR_DEF_TYPE)] = int(MtrrDefType.E | MemType.WB)
    return out


def _cache_sharing_bits(eax: int, ncpus: int) -> int:
    """EAX[25:14] of a deterministic cache leaf (4 or 0x8000001D): sharers - 1, each CPU a core of its own.

    L1 and L2 are per core; the last level (L3) is shared by the whole package.
    """
    level = (eax >> 5) & 0x7
    sharers = 1 << (ncpus - 1).bit_length() if level >= 3 else 1
    return min(sharers - 1, 0xFFF) << 14


def _topology_leaf(function: int, vcpu_id: int, ncpus: int) -> list[CpuidEntry]:
    """Leaf 0xB or 0x1F: one package of ``ncpus`` cores with one thread each; EDX is the x2APIC ID."""
    core_bits = (ncpus - 1).bit_length()
    flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX  # the entry is per subleaf
    return [
        CpuidEntry(function, 0, flags, 0, 1, 0 | (TOPO_SMT << 8), vcpu_id),
        CpuidEntry(function, 1, flags, core_bits, ncpus, 1 | (TOPO_CORE << 8), vcpu_id),
        CpuidEntry(function, 2, flags, 0, 0, 2, vcpu_id),  # level type 0: the end of the list
    ]


def guest_cpuid(supported: list[CpuidEntry], vcpu_id: int, ncpus: int = 1) -> list[CpuidEntry]:
    """The CPUID a vCPU gets: what KVM supports, with this vCPU's APIC ID and the VM's topology filled in.

    The topology is one socket of ``ncpus`` cores, one thread per core, APIC
    ID = vCPU index, which is what the MADT of :mod:`kvmlite.firmware.acpi`
    lists.  Every leaf Linux derives topology from says the same thing, on
    Intel (leaf 1, 4, 0xB/0x1F) and AMD (leaf 1, 0x80000008, 0x8000001D,
    0x8000001E) alike, so it neither complains of a mismatch nor takes two
    vCPUs for hyperthreads of one core.  KVM passes the host's values for some
    of these leaves (or zeros, for 0xB on this AMD host); they are replaced.
    """
    ncpus = max(ncpus, 1)
    core_bits = (ncpus - 1).bit_length()
    max_basic = next((e.eax for e in supported if e.function == 0 and e.index == 0), 0)
    out = []
    for e in supported:
        eax, ebx, ecx, edx = e.eax, e.ebx, e.ecx, e.edx
        if e.function in (0xB, 0x1F):
            continue  # replaced below
        if e.function == 1:
            ebx = (ebx & 0x0000_FFFF) | (min(ncpus, 0xFF) << 16) | ((vcpu_id & 0xFF) << 24)
            if ncpus > 1:
                edx |= CPUID_1_EDX_HTT
        elif e.function == 4 and eax & CACHE_TYPE_MASK:
            eax = (eax & 0x3FFF) | _cache_sharing_bits(eax, ncpus) | (min((1 << core_bits) - 1, 0x3F) << 26)
        elif e.function == 0x8000_0008:
            ecx = (ecx & ~0xF0FF) | (ncpus - 1) | (core_bits << 12)  # NC, ApicIdSize
        elif e.function == 0x8000_001D and eax & CACHE_TYPE_MASK:
            eax = (eax & ~(0xFFF << 14)) | _cache_sharing_bits(eax, ncpus)
        elif e.function == 0x8000_001E:
            eax, ebx, ecx = vcpu_id, vcpu_id & 0xFF, 0  # extended APIC ID; core ID, 1 thread; node 0 of 1
        out.append(CpuidEntry(e.function, e.index, e.flags, eax, ebx, ecx, edx))
    for function in (0xB, 0x1F):
        if max_basic >= function:
            out += _topology_leaf(function, vcpu_id, ncpus)
    return out
