"""Data movement: MOV and its variants, exchanges, conversions, conditional moves/sets, the stack
(PUSH/POP/ENTER/LEAVE/PUSHF/POPF).

Each handler is ``handler(ex, insn)``: the executor and the decoded instruction; the opcode
rows of :mod:`kvmlite.emulator.opcodes` name them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kvmlite.emulator import instruction as D
from kvmlite.emulator.alu import MASK, SIGN, add, sub, to_signed
from kvmlite.emulator.cpu import (
    AMASK,
    ARITH_FLAGS,
    CR0_PE,
    DS,
    FLAG_AC,
    FLAG_AF,
    FLAG_CF,
    FLAG_DF,
    FLAG_FIXED1,
    FLAG_ID,
    FLAG_IF,
    FLAG_IOPL,
    FLAG_NT,
    FLAG_PF,
    FLAG_RF,
    FLAG_SF,
    FLAG_TF,
    FLAG_VM,
    FLAG_ZF,
    RAX,
    RBP,
    RBX,
    RCX,
    RDI,
    RDX,
    RSI,
    RSP,
    SS,
)
from kvmlite.emulator.faults import (
    gp,
)

if TYPE_CHECKING:
    from kvmlite.emulator.executor import Executor

log = logging.getLogger(__name__)

# RFLAGS bits POPF may change at CPL 0 (VM, VIF, VIP and RF are never loaded by POPF).
POPF_MASK = ARITH_FLAGS | FLAG_TF | FLAG_IF | FLAG_DF | FLAG_IOPL | FLAG_NT | FLAG_AC | FLAG_ID
# LAHF/SAHF move SF ZF AF PF CF (and bit 1).
AH_FLAGS = FLAG_SF | FLAG_ZF | FLAG_AF | FLAG_PF | FLAG_CF


def mov(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    ex.put(dst, ex.get(src))


def movzx(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    ex.put(dst, ex.get(src))


def movsx(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    ex.put(dst, to_signed(ex.get(src), src.size) & MASK[dst.size])


def movbe(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    ex.put(dst, int.from_bytes(ex.get(src).to_bytes(src.size, "little"), "big"))


def lea(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    ex.put(dst, ex.ea(src))


def xchg(ex: Executor, insn: D.Instruction) -> None:
    a, b = insn.operands
    va, vb = ex.get(a), ex.get(b)
    if a.kind == D.OP_MEM:
        ex.put(a, vb)
        ex.put(b, va)
    else:
        ex.put(b, va)
        ex.put(a, vb)


def xadd(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    a, b = ex.get(dst), ex.get(src)
    r, f = add(a, b, 0, dst.size)
    if dst.kind == D.OP_MEM:
        ex.put(dst, r)  # memory first: a faulting write leaves the register alone
        ex.put(src, a)
    else:
        ex.put(src, a)  # SRC <- DEST, then DEST <- sum: with one register twice, the sum wins
        ex.put(dst, r)
    ex.set_flags(f)


def cmpxchg(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    size = dst.size
    acc = ex.cpu.gpr[RAX] & MASK[size]
    cur = ex.get(dst)
    _, f = sub(acc, cur, 0, size)
    if acc == cur:
        ex.put(dst, ex.get(src))
    else:
        if dst.kind == D.OP_MEM:
            ex.put(dst, cur)  # the CPU always writes the destination
        ex.set_reg(RAX, size, cur)
    ex.set_flags(f)


def cmpxchg8b(ex: Executor, insn: D.Instruction) -> None:
    op = insn.operands[0]
    half = op.size // 2
    gpr = ex.cpu.gpr
    off = ex.ea(op)
    if half == 8 and off & 0xF:
        raise gp(0, "CMPXCHG16B operand not 16-byte aligned")
    cur = int.from_bytes(ex.read_bytes(op.seg, off, op.size), "little")
    m = MASK[half]
    expected = ((gpr[RDX] & m) << (half * 8)) | (gpr[RAX] & m)
    if cur == expected:
        new = ((gpr[RCX] & m) << (half * 8)) | (gpr[RBX] & m)
        ex.write(op.seg, off, op.size, new)
        ex.set_flags(FLAG_ZF, FLAG_ZF)
    else:
        ex.write(op.seg, off, op.size, cur)
        ex.set_reg(RAX, half, cur & m)
        ex.set_reg(RDX, half, cur >> (half * 8))
        ex.set_flags(0, FLAG_ZF)


def cbw(ex: Executor, insn: D.Instruction) -> None:
    size = insn.opsize
    half = size // 2
    ex.set_reg(RAX, size, to_signed(ex.cpu.gpr[RAX] & MASK[half], half))


def cwd(ex: Executor, insn: D.Instruction) -> None:
    size = insn.opsize
    ex.set_reg(RDX, size, MASK[size] if ex.cpu.gpr[RAX] & SIGN[size] else 0)


def bswap(ex: Executor, insn: D.Instruction) -> None:
    op = insn.operands[0]
    if op.size == 2:
        ex.put(op, 0)  # undefined; current CPUs zero the register
        return
    ex.put(op, int.from_bytes(ex.get(op).to_bytes(op.size, "little"), "big"))


def cmovcc(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    value = ex.get(src)  # the source is always read (and can fault)
    if ex.cond(insn.row.cond):
        ex.put(dst, value)
    elif dst.size == 4:
        ex.put(dst, ex.get(dst))  # 32-bit CMOVcc zero-extends even when false


def setcc(ex: Executor, insn: D.Instruction) -> None:
    ex.put(insn.operands[0], 1 if ex.cond(insn.row.cond) else 0)


def lahf(ex: Executor, insn: D.Instruction) -> None:
    gpr = ex.cpu.gpr
    gpr[RAX] = (gpr[RAX] & ~0xFF00) | (((ex.cpu.rflags & AH_FLAGS) | FLAG_FIXED1) << 8)


def sahf(ex: Executor, insn: D.Instruction) -> None:
    ex.set_flags((ex.cpu.gpr[RAX] >> 8) & 0xFF, AH_FLAGS)


def xlatb(ex: Executor, insn: D.Instruction) -> None:
    gpr = ex.cpu.gpr
    seg = insn.seg_override if insn.seg_override >= 0 else DS
    off = (gpr[RBX] + (gpr[RAX] & 0xFF)) & AMASK[insn.addrsize]
    ex.set_reg(RAX, 1, ex.read(seg, off, 1))


def nop(ex: Executor, insn: D.Instruction) -> None:
    pass


def push(ex: Executor, insn: D.Instruction) -> None:
    op = insn.operands[0]
    value = ex.get(op)
    if op.kind == D.OP_REG and op.reg == RSP and op.regclass == D.RC_GPR:
        value = ex.cpu.gpr[RSP] & MASK[op.size]  # the value before the push
    ex.push(value, insn.opsize)


def pop(ex: Executor, insn: D.Instruction) -> None:
    op = insn.operands[0]
    size = insn.opsize
    value = ex.stack_peek(0, size)
    if op.kind == D.OP_MEM:
        # POP [rSP-relative]: the address uses RSP after the increment.
        ex.set_reg(RSP, ex.stack_size, ex.cpu.gpr[RSP] + size)
        try:
            ex.put(op, value)
        except BaseException:
            ex.set_reg(RSP, ex.stack_size, ex.cpu.gpr[RSP] - size)
            raise
        return
    ex.set_reg(RSP, ex.stack_size, ex.cpu.gpr[RSP] + size)
    ex.put(op, value)


def pusha(ex: Executor, insn: D.Instruction) -> None:
    size = insn.opsize
    gpr = ex.cpu.gpr
    sp = gpr[RSP]
    for reg in range(8):
        ex.push(sp if reg == RSP else gpr[reg], size)


def popa(ex: Executor, insn: D.Instruction) -> None:
    size = insn.opsize
    values = [ex.stack_peek(i * size, size) for i in range(8)]
    for i, reg in enumerate((RDI, RSI, RBP, RSP, RBX, RDX, RCX, RAX)):
        if reg != RSP:
            ex.set_reg(reg, size, values[i])
    ex.set_reg(RSP, ex.stack_size, ex.cpu.gpr[RSP] + 8 * size)


def enter(ex: Executor, insn: D.Instruction) -> None:
    alloc = insn.operands[0].value
    level = insn.operands[1].value & 0x1F
    size = insn.opsize
    ss = ex.stack_size
    gpr = ex.cpu.gpr
    ex.push(gpr[RBP], size)
    frame = gpr[RSP] & AMASK[ss]
    if level:
        bp = gpr[RBP]
        for _ in range(1, level):
            bp = (bp - size) & AMASK[ss]
            ex.push(ex.read(SS, bp, size), size)
        ex.push(frame, size)
    ex.set_reg(RBP, size, frame)
    new_sp = (gpr[RSP] - alloc) & AMASK[ss]
    ex.read(SS, new_sp, 1)  # the CPU checks the new stack top
    ex.set_reg(RSP, ss, new_sp)


def leave(ex: Executor, insn: D.Instruction) -> None:
    size = insn.opsize
    gpr = ex.cpu.gpr
    bp = gpr[RBP] & AMASK[ex.stack_size]
    value = ex.read(SS, bp, size)
    ex.set_reg(RSP, ex.stack_size, bp + size)
    ex.set_reg(RBP, size, value)


def pushf(ex: Executor, insn: D.Instruction) -> None:
    cpu = ex.cpu
    if cpu.rflags & FLAG_VM and (cpu.rflags & FLAG_IOPL) != FLAG_IOPL:
        raise gp(0, "PUSHF in virtual-8086 mode with IOPL < 3")
    ex.push(cpu.rflags & ~(FLAG_VM | FLAG_RF), insn.opsize)


def popf(ex: Executor, insn: D.Instruction) -> None:
    cpu = ex.cpu
    size = insn.opsize
    if cpu.rflags & FLAG_VM and (cpu.rflags & FLAG_IOPL) != FLAG_IOPL:
        raise gp(0, "POPF in virtual-8086 mode with IOPL < 3")
    value = ex.pop(size)
    mask = POPF_MASK
    if cpu.cr0 & CR0_PE:
        if cpu.cpl > 0:
            mask &= ~FLAG_IOPL
        if cpu.cpl > (cpu.rflags & FLAG_IOPL) >> 12:
            mask &= ~FLAG_IF
    if size == 2:
        mask &= 0xFFFF
    old_if = cpu.rflags & FLAG_IF
    cpu.rflags = ((cpu.rflags & ~mask) | (value & mask) | FLAG_FIXED1) & ~FLAG_RF
    if not old_if and cpu.rflags & FLAG_IF:
        cpu.interrupt_shadow = False


fwait = nop
pause = nop
