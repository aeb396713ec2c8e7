"""x86 architectural constants, each defined once (Intel SDM, AMD APM).

RFLAGS, CR0, CR4, EFER, XCR0 and paging-entry bits are :class:`~enum.IntFlag`;
MSR numbers, exception vectors and descriptor types are :class:`~enum.IntEnum`.
Names are the SDM's without the ``IA32_`` prefix (``Msr.SYSENTER_CS`` is
IA32_SYSENTER_CS; ``Msr.SFMASK`` is IA32_FMASK, Linux's MSR_SYSCALL_MASK).
DR7's per-breakpoint fields are packed and read by :func:`dr7_slot` and
:func:`dr7_fields` (the VMM's guest-debug owner and the emulator share them).

The module imports nothing but :mod:`enum`, so anything may import it at
start-up.  Hot paths (the emulator's per-instruction code) should bind the
values they test to plain ints once, at import (``IF = int(Rflags.IF)``):
an ``int & IntFlag`` expression goes through the flag's ``__rand__`` and
builds a new flag object, which is many times slower than ``int & int``.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag
from typing import NamedTuple


class Rflags(IntFlag):
    """RFLAGS bits (SDM vol. 1, 3.4.3)."""

    CF = 1 << 0  # carry
    FIXED1 = 1 << 1  # reserved, always reads as 1
    PF = 1 << 2  # parity
    AF = 1 << 4  # auxiliary carry
    ZF = 1 << 6  # zero
    SF = 1 << 7  # sign
    TF = 1 << 8  # trap (single step)
    IF = 1 << 9  # interrupt enable
    DF = 1 << 10  # direction
    OF = 1 << 11  # overflow
    IOPL = 3 << 12  # I/O privilege level (two bits)
    NT = 1 << 14  # nested task
    RF = 1 << 16  # resume
    VM = 1 << 17  # virtual-8086 mode
    AC = 1 << 18  # alignment check / SMAP override
    VIF = 1 << 19  # virtual interrupt flag
    VIP = 1 << 20  # virtual interrupt pending
    ID = 1 << 21  # CPUID available


#: The six status flags arithmetic instructions write.
RFLAGS_ARITH = Rflags.CF | Rflags.PF | Rflags.AF | Rflags.ZF | Rflags.SF | Rflags.OF
#: Where RFLAGS.IOPL sits.
IOPL_SHIFT = 12


class Cr0(IntFlag):
    """CR0 bits (SDM vol. 3, 2.5)."""

    PE = 1 << 0  # protection enable
    MP = 1 << 1  # monitor coprocessor
    EM = 1 << 2  # x87 emulation
    TS = 1 << 3  # task switched
    ET = 1 << 4  # extension type (always 1)
    NE = 1 << 5  # numeric error
    WP = 1 << 16  # write protect
    AM = 1 << 18  # alignment mask
    NW = 1 << 29  # not write-through
    CD = 1 << 30  # cache disable
    PG = 1 << 31  # paging


class Cr4(IntFlag):
    """CR4 bits (SDM vol. 3, 2.5)."""

    VME = 1 << 0
    PVI = 1 << 1
    TSD = 1 << 2  # RDTSC at CPL 0 only
    DE = 1 << 3  # debugging extensions (DR4/DR5 fault)
    PSE = 1 << 4  # 4 MiB pages with 32-bit paging
    PAE = 1 << 5
    MCE = 1 << 6
    PGE = 1 << 7  # global pages
    PCE = 1 << 8
    OSFXSR = 1 << 9
    OSXMMEXCPT = 1 << 10
    UMIP = 1 << 11
    LA57 = 1 << 12  # 5-level paging
    VMXE = 1 << 13
    SMXE = 1 << 14
    FSGSBASE = 1 << 16
    PCIDE = 1 << 17
    OSXSAVE = 1 << 18
    SMEP = 1 << 20
    SMAP = 1 << 21
    PKE = 1 << 22
    CET = 1 << 23
    PKS = 1 << 24


class Efer(IntFlag):
    """IA32_EFER bits (SDM vol. 3, 2.2.1; AMD APM vol. 2, 3.1.7)."""

    SCE = 1 << 0  # SYSCALL enable
    LME = 1 << 8  # long mode enable
    LMA = 1 << 10  # long mode active (read-only)
    NXE = 1 << 11  # no-execute enable
    SVME = 1 << 12  # AMD: SVM enable
    LMSLE = 1 << 13  # AMD: long-mode segment limit enable
    FFXSR = 1 << 14  # AMD: fast FXSAVE/FXRSTOR
    TCE = 1 << 15  # AMD: translation cache extension


class Dr6(IntFlag):
    """DR6 debug-status bits (SDM vol. 3, 18.2.3); the bits named by :data:`DR6_FIXED1` read as 1."""

    B0 = 1 << 0  # breakpoint condition 0 (DR0) met
    B1 = 1 << 1
    B2 = 1 << 2
    B3 = 1 << 3
    BD = 1 << 13  # debug-register access detected
    BS = 1 << 14  # single step
    BT = 1 << 15  # task switch


#: DR6's reserved bits that read as 1 (the value of DR6 with no condition recorded).
DR6_FIXED1 = 0xFFFF_0FF0


class DrRw(IntEnum):
    """DR7's R/Wn field (SDM vol. 3, 18.2.4): what breakpoint n fires on."""

    EXEC = 0
    WRITE = 1
    IO = 2  # with CR4.DE
    ACCESS = 3  # read or write


#: DR7's LENn field by the breakpoint's length in bytes (8 is 0b10, out of order).
DR7_LEN_CODE = {1: 0b00, 2: 0b01, 4: 0b11, 8: 0b10}
DR7_LEN_BYTES = {code: length for length, code in DR7_LEN_CODE.items()}


def dr7_slot(index: int, rw: int, length: int) -> int:
    """DR7 bits that enable breakpoint ``index`` (its G bit) with its R/W and LEN fields."""
    return (2 << (2 * index)) | (rw << (16 + 4 * index)) | (DR7_LEN_CODE[length] << (18 + 4 * index))


def dr7_fields(dr7: int, index: int) -> tuple[bool, int, int]:
    """Breakpoint ``index`` of ``dr7``: (enabled by its L or G bit, R/W, length in bytes)."""
    return (
        bool(dr7 >> (2 * index) & 3),
        dr7 >> (16 + 4 * index) & 3,
        DR7_LEN_BYTES[dr7 >> (18 + 4 * index) & 3],
    )


class Xcr0(IntFlag):
    """XCR0 state-component bits (SDM vol. 1, 13.1)."""

    X87 = 1 << 0
    SSE = 1 << 1
    AVX = 1 << 2
    BNDREGS = 1 << 3
    BNDCSR = 1 << 4
    OPMASK = 1 << 5
    ZMM_HI256 = 1 << 6
    HI16_ZMM = 1 << 7
    PKRU = 1 << 9


class Msr(IntEnum):
    """Architectural MSR numbers (SDM vol. 4, chapter 2) that kvmlite reads or writes."""

    TSC = 0x10
    APIC_BASE = 0x1B
    FEATURE_CONTROL = 0x3A
    TSC_ADJUST = 0x3B
    MTRRCAP = 0xFE
    SYSENTER_CS = 0x174
    SYSENTER_ESP = 0x175
    SYSENTER_EIP = 0x176
    MCG_CAP = 0x179
    MCG_STATUS = 0x17A
    MISC_ENABLE = 0x1A0
    MTRR_PHYSBASE0 = 0x200  # PHYSBASEn = 0x200 + 2n, PHYSMASKn = 0x201 + 2n
    MTRR_PHYSMASK0 = 0x201
    MTRR_FIX64K_00000 = 0x250
    MTRR_FIX16K_80000 = 0x258
    MTRR_FIX16K_A0000 = 0x259
    MTRR_FIX4K_C0000 = 0x268  # ... 0x26F: FIX4K_F8000
    PAT = 0x277
    MTRR_DEF_TYPE = 0x2FF
    TSC_DEADLINE = 0x6E0
    XSS = 0xDA0
    EFER = 0xC000_0080
    STAR = 0xC000_0081
    LSTAR = 0xC000_0082
    CSTAR = 0xC000_0083
    SFMASK = 0xC000_0084  # IA32_FMASK, Linux's MSR_SYSCALL_MASK
    FS_BASE = 0xC000_0100
    GS_BASE = 0xC000_0101
    KERNEL_GS_BASE = 0xC000_0102
    TSC_AUX = 0xC000_0103


class ApicBase(IntFlag):
    """IA32_APIC_BASE bits; the base address is bits 12 and up."""

    BSP = 1 << 8
    EXTD = 1 << 10  # x2APIC mode
    ENABLE = 1 << 11


class MiscEnable(IntFlag):
    """IA32_MISC_ENABLE bits kvmlite sets."""

    FAST_STRING = 1 << 0


class MtrrDefType(IntFlag):
    """IA32_MTRR_DEF_TYPE: the default memory type in bits 7:0, and enables."""

    FE = 1 << 10  # fixed-range MTRRs enabled
    E = 1 << 11  # MTRRs enabled


class MemType(IntEnum):
    """Memory types of the MTRRs and the PAT (SDM vol. 3, 11.3)."""

    UC = 0
    WC = 1
    WT = 4
    WP = 5
    WB = 6


class Vector(IntEnum):
    """Exception vectors (SDM vol. 3, table 6-1)."""

    DE = 0  # divide error
    DB = 1  # debug
    NMI = 2
    BP = 3  # breakpoint (INT3)
    OF = 4  # overflow (INTO)
    BR = 5  # BOUND range exceeded
    UD = 6  # invalid opcode
    NM = 7  # device not available
    DF = 8  # double fault
    TS = 10  # invalid TSS
    NP = 11  # segment not present
    SS = 12  # stack-segment fault
    GP = 13  # general protection
    PF = 14  # page fault
    MF = 16  # x87 floating point
    AC = 17  # alignment check
    MC = 18  # machine check
    XM = 19  # SIMD floating point
    VE = 20  # virtualization exception
    CP = 21  # control protection

    @property
    def mnemonic(self) -> str:
        """The SDM's name: ``#GP``, ``#PF``, ``NMI``."""
        return self.name if self is Vector.NMI else f"#{self.name}"


class Pte(IntFlag):
    """Paging-structure entry bits (SDM vol. 3, 4.3-4.5)."""

    P = 1 << 0  # present
    RW = 1 << 1  # writable
    US = 1 << 2  # user
    PWT = 1 << 3
    PCD = 1 << 4
    A = 1 << 5  # accessed
    D = 1 << 6  # dirty (leaf entries)
    PS = 1 << 7  # page size (large page) in a PDE/PDPTE
    G = 1 << 8  # global (leaf entries)
    NX = 1 << 63  # execute disable (with EFER.NXE)


class PfErr(IntFlag):
    """Page-fault error-code bits (SDM vol. 3, 4.7)."""

    P = 1 << 0  # the page was present (a protection violation)
    W = 1 << 1  # the access was a write
    U = 1 << 2  # the access was made at CPL 3
    RSVD = 1 << 3  # a reserved bit was set in an entry
    ID = 1 << 4  # instruction fetch
    PK = 1 << 5  # protection key


# --- segment selectors and descriptors (SDM vol. 3, 3.4) ---------------------------------------


class Selector(IntFlag):
    """Selector fields: the requested privilege level, the table indicator; the index is bits 15:3."""

    RPL = 3
    TI = 1 << 2  # the LDT rather than the GDT


#: Selector bits that index the descriptor table (and go into a fault's error code).
SELECTOR_INDEX_MASK = 0xFFF8


class SegType(IntFlag):
    """The type field of a code or data descriptor (S = 1). Bits mean different things for each."""

    ACCESSED = 1 << 0
    WRITABLE = 1 << 1  # data segments
    READABLE = 1 << 1  # code segments
    EXPAND_DOWN = 1 << 2  # data segments
    CONFORMING = 1 << 2  # code segments
    CODE = 1 << 3


#: Common code/data types, as they appear in ``kvm_segment.type``.
SEG_TYPE_DATA_RW_ACCESSED = int(SegType.WRITABLE | SegType.ACCESSED)  # 0x3
SEG_TYPE_CODE_RX_ACCESSED = int(SegType.CODE | SegType.READABLE | SegType.ACCESSED)  # 0xB


class SysType(IntEnum):
    """The type field of a system descriptor or gate (S = 0)."""

    TSS16_AVAIL = 0x1
    LDT = 0x2
    TSS16_BUSY = 0x3
    CALL_GATE16 = 0x4
    TASK_GATE = 0x5
    INT_GATE16 = 0x6
    TRAP_GATE16 = 0x7
    TSS_AVAIL = 0x9
    TSS_BUSY = 0xB
    CALL_GATE = 0xC
    INT_GATE = 0xE
    TRAP_GATE = 0xF


class DescAccess(IntFlag):
    """Byte 5 of a descriptor besides the type: S, DPL (two bits at 5) and P."""

    S = 1 << 4  # code/data (1) or system (0)
    DPL = 3 << 5
    P = 1 << 7  # present


#: Where the DPL sits in the access byte.
DPL_SHIFT = 5


class DescFlags(IntFlag):
    """The high nibble of byte 6 of a descriptor (the low nibble is limit bits 19:16)."""

    AVL = 1 << 4
    L = 1 << 5  # 64-bit code
    DB = 1 << 6  # default operation size / big
    G = 1 << 7  # granularity: the limit counts 4 KiB units


# --- CPUID ---------------------------------------------------------------------------------------


class CpuidReg(IntEnum):
    """Index of a CPUID output register in an (EAX, EBX, ECX, EDX) tuple."""

    EAX = 0
    EBX = 1
    ECX = 2
    EDX = 3


class CpuidBit(NamedTuple):
    """Where a CPUID feature flag lives: leaf, subleaf, output register and bit."""

    leaf: int
    subleaf: int
    reg: CpuidReg
    bit: int


class Feature:
    """CPUID feature flags that instructions depend on (names as Linux's ``/proc/cpuinfo``)."""

    MONITOR = CpuidBit(1, 0, CpuidReg.ECX, 3)
    CX16 = CpuidBit(1, 0, CpuidReg.ECX, 13)
    MOVBE = CpuidBit(1, 0, CpuidReg.ECX, 22)
    POPCNT = CpuidBit(1, 0, CpuidReg.ECX, 23)
    XSAVE = CpuidBit(1, 0, CpuidReg.ECX, 26)
    RDRAND = CpuidBit(1, 0, CpuidReg.ECX, 30)
    CX8 = CpuidBit(1, 0, CpuidReg.EDX, 8)
    SEP = CpuidBit(1, 0, CpuidReg.EDX, 11)
    CMOV = CpuidBit(1, 0, CpuidReg.EDX, 15)
    CLFLUSH = CpuidBit(1, 0, CpuidReg.EDX, 19)
    FXSR = CpuidBit(1, 0, CpuidReg.EDX, 24)
    SSE = CpuidBit(1, 0, CpuidReg.EDX, 25)
    SSE2 = CpuidBit(1, 0, CpuidReg.EDX, 26)
    FSGSBASE = CpuidBit(7, 0, CpuidReg.EBX, 0)
    BMI1 = CpuidBit(7, 0, CpuidReg.EBX, 3)
    SMAP = CpuidBit(7, 0, CpuidReg.EBX, 20)
    RDSEED = CpuidBit(7, 0, CpuidReg.EBX, 18)
    CLFLUSHOPT = CpuidBit(7, 0, CpuidReg.EBX, 23)
    CLWB = CpuidBit(7, 0, CpuidReg.EBX, 24)
    RDPID = CpuidBit(7, 0, CpuidReg.ECX, 22)
    XSAVEOPT = CpuidBit(0xD, 1, CpuidReg.EAX, 0)
    XSAVEC = CpuidBit(0xD, 1, CpuidReg.EAX, 1)
    XSAVES = CpuidBit(0xD, 1, CpuidReg.EAX, 3)
    LAHF_LM = CpuidBit(0x8000_0001, 0, CpuidReg.ECX, 0)
    ABM = CpuidBit(0x8000_0001, 0, CpuidReg.ECX, 5)  # LZCNT
    SYSCALL = CpuidBit(0x8000_0001, 0, CpuidReg.EDX, 11)
    RDTSCP = CpuidBit(0x8000_0001, 0, CpuidReg.EDX, 27)
    LM = CpuidBit(0x8000_0001, 0, CpuidReg.EDX, 29)
