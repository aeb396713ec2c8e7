"""Fast system calls: SYSCALL/SYSRET and SYSENTER/SYSEXIT, which load flat segments without reading the GDT.

Each handler is ``handler(ex, insn)``: the executor and the decoded instruction; the opcode
rows of :mod:`kvmlite.emulator.opcodes` name them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kvmlite.emulator import instruction as D
from kvmlite.emulator.cpu import (
    CR0_PE,
    CS,
    EFER_LMA,
    FLAG_FIXED1,
    FLAG_IF,
    FLAG_RF,
    FLAG_VM,
    MASK64,
    R11,
    RCX,
    RDX,
    RSP,
    SS,
)
from kvmlite.emulator.faults import (
    gp,
)
from kvmlite.emulator.segments import (
    Segment,
)
from kvmlite.x86 import Msr

if TYPE_CHECKING:
    from kvmlite.emulator.executor import Executor

log = logging.getLogger(__name__)

SFMASK_DEFAULT = 0


def fast_call_code(selector: int, dpl: int, long: bool) -> Segment:
    """The flat code segment SYSCALL/SYSRET/SYSENTER/SYSEXIT load without reading the GDT (SDM vol. 2)."""
    return Segment(selector, 0, 0xFFFFFFFF, 0xB, dpl=dpl, l=long, db=not long, g=True)


def fast_call_stack(selector: int, dpl: int) -> Segment:
    """The flat stack segment those instructions load with it."""
    return Segment(selector, 0, 0xFFFFFFFF, 0x3, dpl=dpl, db=True, g=True)


def syscall(ex: Executor, insn: D.Instruction) -> None:
    cpu = ex.cpu
    star = cpu.msrs.get(Msr.STAR, 0)
    sel = (star >> 32) & 0xFFFC
    cpu.gpr[RCX] = ex.next_rip
    cpu.gpr[R11] = cpu.rflags & ~FLAG_RF
    cpu.rflags &= ~(cpu.msrs.get(Msr.SFMASK, SFMASK_DEFAULT) | FLAG_RF)
    cpu.rflags |= FLAG_FIXED1
    cpu.segs[CS] = fast_call_code(sel, dpl=0, long=True)
    cpu.segs[SS] = fast_call_stack(sel + 8, dpl=0)
    cpu.cpl = 0
    ex.refresh_mode()
    ex.next_rip = cpu.msrs.get(Msr.LSTAR if ex.mode == 64 else Msr.CSTAR, 0)


def sysret(ex: Executor, insn: D.Instruction) -> None:
    cpu = ex.cpu
    star = cpu.msrs.get(Msr.STAR, 0)
    base_sel = (star >> 48) & 0xFFFF
    to64 = insn.opsize == 8
    rip = cpu.gpr[RCX]
    if to64 and ((rip + (1 << 47)) & MASK64) >> 48:
        raise gp(0, "SYSRET to a non-canonical RIP")
    cs_sel = ((base_sel + 16) if to64 else base_sel) | 3
    cpu.segs[CS] = fast_call_code(cs_sel, dpl=3, long=to64)
    ss = cpu.segs[SS]
    cpu.segs[SS] = ss.copy(selector=(base_sel + 8) | 3, dpl=3, unusable=0, present=1, type=0x3, s=1)
    cpu.rflags = (cpu.gpr[R11] & 0x3C7FD7) | FLAG_FIXED1
    cpu.cpl = 3
    ex.refresh_mode()
    ex.next_rip = rip if to64 else rip & 0xFFFFFFFF


def sysenter(ex: Executor, insn: D.Instruction) -> None:
    cpu = ex.cpu
    if not cpu.cr0 & CR0_PE:
        raise gp(0, "SYSENTER in real mode")
    cs_sel = cpu.msrs.get(Msr.SYSENTER_CS, 0) & 0xFFFC
    if cs_sel == 0:
        raise gp(0, "SYSENTER with IA32_SYSENTER_CS = 0")
    long_mode = bool(cpu.efer & EFER_LMA)
    cpu.rflags &= ~(FLAG_VM | FLAG_IF | FLAG_RF)
    cpu.segs[CS] = fast_call_code(cs_sel, dpl=0, long=long_mode)
    cpu.segs[SS] = fast_call_stack(cs_sel + 8, dpl=0)
    cpu.cpl = 0
    esp = cpu.msrs.get(Msr.SYSENTER_ESP, 0)
    eip = cpu.msrs.get(Msr.SYSENTER_EIP, 0)
    cpu.gpr[RSP] = esp if long_mode else esp & 0xFFFFFFFF
    ex.refresh_mode()
    ex.next_rip = eip if long_mode else eip & 0xFFFFFFFF


def sysexit(ex: Executor, insn: D.Instruction) -> None:
    cpu = ex.cpu
    cs_base = cpu.msrs.get(Msr.SYSENTER_CS, 0) & 0xFFFC
    if not cpu.cr0 & CR0_PE or cs_base == 0:
        raise gp(0, "SYSEXIT outside protected mode or with IA32_SYSENTER_CS = 0")
    to64 = insn.opsize == 8
    cs_sel = (cs_base + (32 if to64 else 16)) | 3
    cpu.segs[CS] = fast_call_code(cs_sel, dpl=3, long=to64)
    cpu.segs[SS] = fast_call_stack((cs_sel + 8) | 3, dpl=3)
    cpu.cpl = 3
    mask = MASK64 if to64 else 0xFFFFFFFF
    cpu.gpr[RSP] = cpu.gpr[RCX] & mask
    ex.refresh_mode()
    ex.next_rip = cpu.gpr[RDX] & mask
