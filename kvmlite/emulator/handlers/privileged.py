"""System instructions: port I/O with its permission checks, CLI/STI, control and debug registers,
MSRs, CPUID, time stamps, FS/GS bases, SWAPGS, HLT and the other CPL-0 instructions.

Each handler is ``handler(ex, insn)``: the executor and the decoded instruction; the opcode
rows of :mod:`kvmlite.emulator.opcodes` name them.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from kvmlite.emulator import instruction as D
from kvmlite.emulator.alu import MASK
from kvmlite.emulator.cpu import (
    CR0_CD,
    CR0_ET,
    CR0_NW,
    CR0_PE,
    CR0_PG,
    CR0_TS,
    CR4_DE,
    CR4_PAE,
    CR4_TSD,
    EFER_LMA,
    EFER_LME,
    FLAG_AC,
    FLAG_IF,
    FLAG_IOPL,
    FLAG_VM,
    FS,
    GS,
    MASK64,
    RAX,
    RBX,
    RCX,
    RDX,
)
from kvmlite.emulator.faults import (
    UD,
    GuestFault,
    gp,
)
from kvmlite.x86 import Efer, Msr, SysType

if TYPE_CHECKING:
    from kvmlite.emulator.executor import Executor

log = logging.getLogger(__name__)

TSS_IOMAP_OFFSET = 0x66
CR0_RESERVED_HIGH = 0xFFFFFFFF00000000
EFER_WRITABLE = int(Efer.SCE | Efer.LME | Efer.NXE | Efer.SVME | Efer.FFXSR | Efer.TCE)
#: MSRs the executor keeps in ``cpu.msrs`` itself.
LOCAL_MSRS = frozenset(
    {
        Msr.STAR,
        Msr.LSTAR,
        Msr.CSTAR,
        Msr.SFMASK,
        Msr.KERNEL_GS_BASE,
        Msr.TSC_AUX,
        Msr.SYSENTER_CS,
        Msr.SYSENTER_ESP,
        Msr.SYSENTER_EIP,
    }
)


def in_(ex: Executor, insn: D.Instruction) -> None:
    dst, port_op = insn.operands
    port = ex.get(port_op) & 0xFFFF
    check_io(ex, port, dst.size)
    ex.put(dst, ex.ops.io_in(port, dst.size) & MASK[dst.size])


def out(ex: Executor, insn: D.Instruction) -> None:
    port_op, src = insn.operands
    port = ex.get(port_op) & 0xFFFF
    check_io(ex, port, src.size)
    ex.ops.io_out(port, src.size, ex.get(src))


def cli(ex: Executor, insn: D.Instruction) -> None:
    ex.cpu.rflags &= ~FLAG_IF


def sti(ex: Executor, insn: D.Instruction) -> None:
    cpu = ex.cpu
    if not cpu.rflags & FLAG_IF:
        cpu.interrupt_shadow = True  # interrupts stay blocked for one more instruction
    cpu.rflags |= FLAG_IF


def check_io(ex: Executor, port: int, size: int) -> None:
    """I/O permission: CPL <= IOPL, else the TSS I/O bitmap decides."""
    cpu = ex.cpu
    if not cpu.cr0 & CR0_PE:
        return
    if not cpu.rflags & FLAG_VM and cpu.cpl <= (cpu.rflags & FLAG_IOPL) >> 12:
        return
    tr = cpu.tr
    if tr.type not in (SysType.TSS_AVAIL, SysType.TSS_BUSY) or tr.limit < TSS_IOMAP_OFFSET + 1:
        raise gp(0, f"port {port:#x} denied: no I/O bitmap")
    base = ex.sys_read(tr.base + TSS_IOMAP_OFFSET, 2)
    byte = base + port // 8
    if byte + 1 > tr.limit:
        raise gp(0, f"port {port:#x} beyond the I/O bitmap")
    bits = ex.sys_read(tr.base + byte, 2)
    if (bits >> (port & 7)) & ((1 << size) - 1):
        raise gp(0, f"port {port:#x} denied by the I/O bitmap")


def smsw(ex: Executor, insn: D.Instruction) -> None:
    op = insn.operands[0]
    ex.put(op, ex.cpu.cr0 if op.kind == D.OP_REG else ex.cpu.cr0 & 0xFFFF)


def lmsw(ex: Executor, insn: D.Instruction) -> None:
    value = ex.get(insn.operands[0]) & 0xF
    cpu = ex.cpu
    new = (cpu.cr0 & ~0xE) | value | (cpu.cr0 & CR0_PE)  # LMSW cannot clear PE
    _write_cr0(ex, new)


def _write_cr0(ex: Executor, value: int) -> None:
    cpu = ex.cpu
    if value & CR0_RESERVED_HIGH:
        raise gp(0, "reserved CR0 bits")
    value |= CR0_ET
    if value & CR0_PG and not value & CR0_PE:
        raise gp(0, "CR0.PG without CR0.PE")
    if value & CR0_NW and not value & CR0_CD:
        raise gp(0, "CR0.NW without CR0.CD")
    efer = cpu.efer
    if value & CR0_PG and not cpu.cr0 & CR0_PG and efer & EFER_LME:
        if not cpu.cr4 & CR4_PAE:
            raise gp(0, "long mode paging without CR4.PAE")
        efer |= EFER_LMA
    elif not value & CR0_PG and cpu.cr0 & CR0_PG and efer & EFER_LMA:
        if ex.mode == 64:
            raise gp(0, "disabling paging in 64-bit mode")
        efer &= ~EFER_LMA
    ex.ops.paging_changed(value, cpu.cr3, cpu.cr4, efer)
    cpu.cr0 = value
    cpu.efer = efer
    ex.refresh_mode()


def mov_to_cr(ex: Executor, insn: D.Instruction) -> None:
    cr, src = insn.operands
    value = ex.get(src)
    cpu = ex.cpu
    n = cr.reg
    if n == 0:
        _write_cr0(ex, value)
    elif n == 2:
        cpu.cr2 = value
    elif n == 3:
        if ex.mode == 64:
            value &= MASK64
        ex.ops.cr3_written(value)
        cpu.cr3 = value
    elif n == 4:
        if cpu.efer & EFER_LMA and not value & CR4_PAE:
            raise gp(0, "clearing CR4.PAE in long mode")
        if value >> 32:
            raise gp(0, "reserved CR4 bits")
        ex.ops.paging_changed(cpu.cr0, cpu.cr3, value, cpu.efer)
        cpu.cr4 = value
    elif n == 8:
        if value & ~0xF:
            raise gp(0, "reserved CR8 bits")
        cpu.cr8 = value
    else:
        raise GuestFault(UD, reason=f"MOV to CR{n}")


def mov_from_cr(ex: Executor, insn: D.Instruction) -> None:
    dst, cr = insn.operands
    cpu = ex.cpu
    n = cr.reg
    if n == 0:
        value = cpu.cr0
    elif n == 2:
        value = cpu.cr2
    elif n == 3:
        value = cpu.cr3
    elif n == 4:
        value = cpu.cr4
    elif n == 8:
        value = cpu.cr8
    else:
        raise GuestFault(UD, reason=f"MOV from CR{n}")
    ex.put(dst, value)


def _dr_index(ex: Executor, n: int) -> int:
    if n in (4, 5):
        if ex.cpu.cr4 & CR4_DE:
            raise GuestFault(UD, reason=f"DR{n} with CR4.DE")
        return n + 2
    return n


def mov_to_dr(ex: Executor, insn: D.Instruction) -> None:
    dr, src = insn.operands
    n = _dr_index(ex, dr.reg)
    value = ex.get(src)
    if n >= 6 and value >> 32:
        raise gp(0, f"reserved DR{n} bits")
    if n == 6:
        value = (value & 0x1E00F) | 0xFFFF0FF0
    elif n == 7:
        value = (value & ~0xD800) | 0x400
    ex.cpu.dr[n] = value


def mov_from_dr(ex: Executor, insn: D.Instruction) -> None:
    dst, dr = insn.operands
    ex.put(dst, ex.cpu.dr[_dr_index(ex, dr.reg)])


def clts(ex: Executor, insn: D.Instruction) -> None:
    ex.cpu.cr0 &= ~CR0_TS


def invlpg(ex: Executor, insn: D.Instruction) -> None:
    op = insn.operands[0]
    off = ex.ea(op)
    if ex.mode == 64:
        lin = (off + (ex.cpu.segs[op.seg].base if op.seg >= FS else 0)) & MASK64
    else:
        lin = (ex.cpu.segs[op.seg].base + off) & 0xFFFFFFFF
    ex.ops.invlpg(lin)


def invd(ex: Executor, insn: D.Instruction) -> None:
    """INVD/WBINVD: there are no caches to write back."""


def hlt(ex: Executor, insn: D.Instruction) -> None:
    ex.cpu.halted = True
    ex.ops.halt()


def read_msr(ex: Executor, index: int) -> int:
    cpu = ex.cpu
    if index == Msr.EFER:
        return cpu.efer
    if index == Msr.FS_BASE:
        return cpu.segs[FS].base
    if index == Msr.GS_BASE:
        return cpu.segs[GS].base
    if index == Msr.TSC:
        return ex.ops.rdtsc() & MASK64
    if index == Msr.APIC_BASE:
        return cpu.apic_base
    if index in LOCAL_MSRS:
        return cpu.msrs.get(index, 0)
    return ex.ops.read_msr(index)


def write_msr(ex: Executor, index: int, value: int) -> None:
    cpu = ex.cpu
    if index == Msr.EFER:
        if value & ~(EFER_WRITABLE | EFER_LMA):
            raise gp(0, f"reserved EFER bits in {value:#x}")
        if cpu.cr0 & CR0_PG and (value ^ cpu.efer) & EFER_LME:
            raise gp(0, "changing EFER.LME with paging on")
        value = (value & ~EFER_LMA) | (cpu.efer & EFER_LMA)
        ex.ops.paging_changed(cpu.cr0, cpu.cr3, cpu.cr4, value)
        cpu.efer = value
    elif index in (Msr.FS_BASE, Msr.GS_BASE, Msr.KERNEL_GS_BASE, Msr.LSTAR, Msr.CSTAR):
        if ((value + (1 << 47)) & MASK64) >> 48:
            raise gp(0, f"non-canonical value {value:#x} for MSR {index:#x}")
        if index == Msr.FS_BASE:
            cpu.segs[FS].base = value
        elif index == Msr.GS_BASE:
            cpu.segs[GS].base = value
        else:
            cpu.msrs[index] = value
    elif index == Msr.APIC_BASE:
        cpu.apic_base = value
        ex.ops.write_msr(index, value)
    elif index in LOCAL_MSRS:
        cpu.msrs[index] = value
    else:
        ex.ops.write_msr(index, value)


def rdmsr(ex: Executor, insn: D.Instruction) -> None:
    gpr = ex.cpu.gpr
    value = read_msr(ex, gpr[RCX] & 0xFFFFFFFF)
    gpr[RAX] = value & 0xFFFFFFFF
    gpr[RDX] = (value >> 32) & 0xFFFFFFFF


def wrmsr(ex: Executor, insn: D.Instruction) -> None:
    gpr = ex.cpu.gpr
    write_msr(ex, gpr[RCX] & 0xFFFFFFFF, ((gpr[RDX] & 0xFFFFFFFF) << 32) | (gpr[RAX] & 0xFFFFFFFF))


def cpuid(ex: Executor, insn: D.Instruction) -> None:
    gpr = ex.cpu.gpr
    a, b, c, d = ex.ops.cpuid(gpr[RAX] & 0xFFFFFFFF, gpr[RCX] & 0xFFFFFFFF)
    gpr[RAX], gpr[RBX], gpr[RCX], gpr[RDX] = (v & 0xFFFFFFFF for v in (a, b, c, d))


def rdtsc(ex: Executor, insn: D.Instruction) -> None:
    cpu = ex.cpu
    if cpu.cr4 & CR4_TSD and cpu.cpl > 0 and cpu.cr0 & CR0_PE:
        raise gp(0, "RDTSC with CR4.TSD above CPL 0")
    tsc = ex.ops.rdtsc() & MASK64
    cpu.gpr[RAX] = tsc & 0xFFFFFFFF
    cpu.gpr[RDX] = tsc >> 32


def rdtscp(ex: Executor, insn: D.Instruction) -> None:
    rdtsc(ex, insn)
    ex.cpu.gpr[RCX] = ex.cpu.msrs.get(Msr.TSC_AUX, 0) & 0xFFFFFFFF


def rdpid(ex: Executor, insn: D.Instruction) -> None:
    ex.put(insn.operands[0], ex.cpu.msrs.get(Msr.TSC_AUX, 0))


def rdpmc(ex: Executor, insn: D.Instruction) -> None:
    raise gp(0, "RDPMC: no performance counters")


def rdrand(ex: Executor, insn: D.Instruction) -> None:
    op = insn.operands[0]
    ex.put(op, int.from_bytes(os.urandom(op.size), "little"))
    ex.set_flags(1)  # CF=1: a value is available; OF SF ZF AF PF cleared


def _fsgsbase(ex: Executor, insn: D.Instruction, seg: int, write: bool) -> None:
    op = insn.operands[0]
    if write:
        value = ex.get(op)
        if ((value + (1 << 47)) & MASK64) >> 48:
            raise gp(0, "non-canonical segment base")
        ex.cpu.segs[seg].base = value
    else:
        ex.put(op, ex.cpu.segs[seg].base)


def rdfsbase(ex: Executor, insn: D.Instruction) -> None:
    _fsgsbase(ex, insn, FS, False)


def rdgsbase(ex: Executor, insn: D.Instruction) -> None:
    _fsgsbase(ex, insn, GS, False)


def wrfsbase(ex: Executor, insn: D.Instruction) -> None:
    _fsgsbase(ex, insn, FS, True)


def wrgsbase(ex: Executor, insn: D.Instruction) -> None:
    _fsgsbase(ex, insn, GS, True)


def swapgs(ex: Executor, insn: D.Instruction) -> None:
    cpu = ex.cpu
    kernel = cpu.msrs.get(Msr.KERNEL_GS_BASE, 0)
    cpu.msrs[Msr.KERNEL_GS_BASE] = cpu.segs[GS].base
    cpu.segs[GS].base = kernel


def clac(ex: Executor, insn: D.Instruction) -> None:
    ex.cpu.rflags &= ~FLAG_AC


def stac(ex: Executor, insn: D.Instruction) -> None:
    ex.cpu.rflags |= FLAG_AC


def monitor(ex: Executor, insn: D.Instruction) -> None:
    """MONITOR arms nothing: MWAIT never waits."""


def mwait(ex: Executor, insn: D.Instruction) -> None:
    """Treated as a NOP: wakes at once, which MWAIT may do."""


rdseed = rdrand
wbinvd = invd
