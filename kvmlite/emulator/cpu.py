"""The architectural state of one x86 CPU, as plain Python data.

:class:`CpuState` holds what the emulator reads and writes: the sixteen GPRs,
RIP, RFLAGS, the six segment registers with their hidden descriptor caches,
LDTR/TR, GDTR/IDTR, CR0-CR4/CR8, EFER, the debug registers and the MSRs the
executor implements itself (FS/GS bases live in the segment caches).  It
converts to and from KVM's ``kvm_regs``/``kvm_sregs``, which is how the KVM
backend hands a vCPU over for emulation (an emulation failure rescued in
software) and takes it back.

The state is deliberately a passive record with no behaviour beyond
conversions and a few derived values; the executor owns the semantics.
Registers are stored as unsigned Python ints already truncated to their
width.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from kvmlite.emulator.segments import Segment, TableRegister
from kvmlite.kvm.structs import kvm_dtable, kvm_regs, kvm_sregs
from kvmlite.x86 import RFLAGS_ARITH, SEG_TYPE_CODE_RX_ACCESSED, Cr0, Cr4, Efer, Rflags, SysType

log = logging.getLogger(__name__)

MASK64 = (1 << 64) - 1

# Plain-int aliases of kvmlite.x86's flags for the executor's hot paths (see that module).
FLAG_CF, FLAG_FIXED1, FLAG_PF, FLAG_AF = int(Rflags.CF), int(Rflags.FIXED1), int(Rflags.PF), int(Rflags.AF)
FLAG_ZF, FLAG_SF, FLAG_TF, FLAG_IF = int(Rflags.ZF), int(Rflags.SF), int(Rflags.TF), int(Rflags.IF)
FLAG_DF, FLAG_OF, FLAG_IOPL, FLAG_NT = int(Rflags.DF), int(Rflags.OF), int(Rflags.IOPL), int(Rflags.NT)
FLAG_RF, FLAG_VM, FLAG_AC, FLAG_VIF = int(Rflags.RF), int(Rflags.VM), int(Rflags.AC), int(Rflags.VIF)
FLAG_VIP, FLAG_ID = int(Rflags.VIP), int(Rflags.ID)
ARITH_FLAGS = int(RFLAGS_ARITH)

CR0_PE, CR0_MP, CR0_EM, CR0_TS = int(Cr0.PE), int(Cr0.MP), int(Cr0.EM), int(Cr0.TS)
CR0_ET, CR0_NE, CR0_WP, CR0_AM = int(Cr0.ET), int(Cr0.NE), int(Cr0.WP), int(Cr0.AM)
CR0_NW, CR0_CD, CR0_PG = int(Cr0.NW), int(Cr0.CD), int(Cr0.PG)
CR4_TSD, CR4_DE, CR4_PAE, CR4_PGE = int(Cr4.TSD), int(Cr4.DE), int(Cr4.PAE), int(Cr4.PGE)
CR4_OSFXSR, CR4_FSGSBASE, CR4_OSXSAVE = int(Cr4.OSFXSR), int(Cr4.FSGSBASE), int(Cr4.OSXSAVE)
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = int(Efer.SCE), int(Efer.LME), int(Efer.LMA), int(Efer.NXE)

# General register indices (the SDM's encoding) and address masks by size in bytes.
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
R11 = 11
AMASK = (0, 0, 0xFFFF, 0, 0xFFFFFFFF, 0, 0, 0, MASK64)

# Segment register indices (the SDM's Sreg encoding).
ES, CS, SS, DS, FS, GS = range(6)
SEG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")

RESET_RFLAGS = FLAG_FIXED1
RESET_CR0 = CR0_ET | CR0_NW | CR0_CD
RESET_CS_SELECTOR = 0xF000
RESET_CS_BASE = 0xFFFF0000
RESET_RIP = 0xFFF0
LDT_TYPE = int(SysType.LDT)
TSS_BUSY_TYPE = int(SysType.TSS_BUSY)


@dataclass
class CpuState:
    """Registers of one CPU; see the module docstring."""

    gpr: list[int] = field(default_factory=lambda: [0] * 16)
    rip: int = RESET_RIP
    rflags: int = RESET_RFLAGS
    segs: list[Segment] = field(default_factory=lambda: [Segment() for _ in range(6)])
    ldtr: Segment = field(default_factory=lambda: Segment(type=LDT_TYPE, s=False))
    tr: Segment = field(default_factory=lambda: Segment(type=TSS_BUSY_TYPE, s=False))
    gdtr: TableRegister = field(default_factory=TableRegister)
    idtr: TableRegister = field(default_factory=lambda: TableRegister(0, 0x3FF))
    cr0: int = RESET_CR0
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    cr8: int = 0
    efer: int = 0
    apic_base: int = 0xFEE00900
    xcr0: int = 1
    dr: list[int] = field(default_factory=lambda: [0, 0, 0, 0, 0, 0, 0xFFFF0FF0, 0x400])
    msrs: dict[int, int] = field(default_factory=dict)
    cpl: int = 0
    halted: bool = False
    interrupt_shadow: bool = False  # set by STI / MOV SS / POP SS for one instruction
    #: The x87/SSE/AVX state as a standard-format XSAVE area, made on first use
    #: (``Executor.xsave_area``) or loaded from KVM by the rescue; not compared, not printed.
    xsave_area: bytearray | None = field(default=None, compare=False, repr=False)

    @classmethod
    def reset(cls) -> CpuState:
        """The state after RESET/INIT: real mode at F000:FFF0 (linear FFFFFFF0)."""
        cpu = cls()
        cpu.segs[CS] = Segment(selector=RESET_CS_SELECTOR, base=RESET_CS_BASE, type=SEG_TYPE_CODE_RX_ACCESSED)
        cpu.gpr[2] = 0x600  # EDX: family/model/stepping
        return cpu

    @classmethod
    def real_mode(cls, cs: int = 0, ip: int = 0x7C00) -> CpuState:
        """A convenient real-mode state with every segment at 0 and CS:IP as given."""
        cpu = cls()
        cpu.segs[CS] = Segment(selector=cs, base=cs << 4, type=SEG_TYPE_CODE_RX_ACCESSED)
        cpu.rip = ip
        return cpu

    # --- derived values -------------------------------------------------------------
    @property
    def protected(self) -> bool:
        return bool(self.cr0 & CR0_PE)

    @property
    def long_active(self) -> bool:
        return bool(self.efer & EFER_LMA)

    @property
    def code_bits(self) -> int:
        """16, 32 or 64: the default operand size of the code segment in use."""
        if not self.cr0 & CR0_PE or self.rflags & FLAG_VM:
            return 16
        cs = self.segs[CS]
        if self.efer & EFER_LMA and cs.l:
            return 64
        return 32 if cs.db else 16

    # --- KVM conversions --------------------------------------------------------------
    def to_kvm(self) -> tuple[kvm_regs, kvm_sregs]:
        """``kvm_regs`` and ``kvm_sregs`` holding this state (for KVM_SET_REGS/SREGS)."""
        regs = kvm_regs()
        for name, value in zip(_KVM_GPR_ORDER, self.gpr, strict=True):
            setattr(regs, name, value & MASK64)
        regs.rip = self.rip & MASK64
        regs.rflags = self.rflags & MASK64
        sregs = kvm_sregs()
        for i, name in enumerate(SEG_NAMES):
            setattr(sregs, name, self.segs[i].to_kvm())
        sregs.tr = self.tr.to_kvm()
        sregs.ldt = self.ldtr.to_kvm()
        sregs.gdt = _dtable(self.gdtr)
        sregs.idt = _dtable(self.idtr)
        sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4 = self.cr0, self.cr2, self.cr3, self.cr4
        sregs.cr8 = self.cr8
        sregs.efer = self.efer
        sregs.apic_base = self.apic_base
        return regs, sregs

    @classmethod
    def from_kvm(cls, regs: kvm_regs, sregs: kvm_sregs) -> CpuState:
        """A state from KVM_GET_REGS/KVM_GET_SREGS results."""
        cpu = cls()
        cpu.gpr = [getattr(regs, name) for name in _KVM_GPR_ORDER]
        cpu.rip = regs.rip
        cpu.rflags = regs.rflags | FLAG_FIXED1
        cpu.segs = [Segment.from_kvm(getattr(sregs, name)) for name in SEG_NAMES]
        cpu.tr = Segment.from_kvm(sregs.tr)
        cpu.ldtr = Segment.from_kvm(sregs.ldt)
        cpu.gdtr = TableRegister(sregs.gdt.base, sregs.gdt.limit)
        cpu.idtr = TableRegister(sregs.idt.base, sregs.idt.limit)
        cpu.cr0, cpu.cr2, cpu.cr3, cpu.cr4 = sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4
        cpu.cr8 = sregs.cr8
        cpu.efer = sregs.efer
        cpu.apic_base = sregs.apic_base
        # KVM defines CPL as SS.DPL (CS.RPL is unreliable during mode switches).
        if not cpu.cr0 & CR0_PE:
            cpu.cpl = 0
        elif cpu.rflags & FLAG_VM:
            cpu.cpl = 3
        else:
            cpu.cpl = cpu.segs[SS].dpl
        return cpu

    def assign(self, other: CpuState, system: bool = True) -> None:
        """Take ``other``'s registers in place (an executor keeps its reference to this object).

        With ``system=False`` only the general registers, RIP and RFLAGS are taken
        (what KVM_SET_REGS sets); otherwise also what KVM_SET_SREGS sets.
        """
        self.gpr[:] = other.gpr
        self.rip, self.rflags = other.rip, other.rflags
        if system:
            self.segs[:] = other.segs
            self.tr, self.ldtr, self.gdtr, self.idtr = other.tr, other.ldtr, other.gdtr, other.idtr
            self.cr0, self.cr2, self.cr3, self.cr4 = other.cr0, other.cr2, other.cr3, other.cr4
            self.cr8 = other.cr8
            self.efer, self.apic_base, self.cpl = other.efer, other.apic_base, other.cpl

    def copy(self) -> CpuState:
        """A deep copy (for snapshots and for comparing before/after in tests)."""
        return CpuState(
            gpr=list(self.gpr),
            rip=self.rip,
            rflags=self.rflags,
            segs=[s.copy() for s in self.segs],
            ldtr=self.ldtr.copy(),
            tr=self.tr.copy(),
            gdtr=TableRegister(self.gdtr.base, self.gdtr.limit),
            idtr=TableRegister(self.idtr.base, self.idtr.limit),
            cr0=self.cr0,
            cr2=self.cr2,
            cr3=self.cr3,
            cr4=self.cr4,
            cr8=self.cr8,
            efer=self.efer,
            apic_base=self.apic_base,
            xcr0=self.xcr0,
            dr=list(self.dr),
            msrs=dict(self.msrs),
            cpl=self.cpl,
            halted=self.halted,
            interrupt_shadow=self.interrupt_shadow,
        )


_KVM_GPR_ORDER = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip  # the SDM's register numbering, not kvm_regs' field order


def _dtable(table: TableRegister) -> kvm_dtable:
    out = kvm_dtable()
    out.base = table.base & MASK64
    out.limit = table.limit & 0xFFFF
    return out
