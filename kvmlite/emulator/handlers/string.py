"""String instructions (MOVS, STOS, LODS, CMPS, SCAS, INS, OUTS) with their REP prefixes.

Each handler is ``handler(ex, insn)``: the executor and the decoded instruction; the opcode
rows of :mod:`kvmlite.emulator.opcodes` name them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kvmlite.emulator import instruction as D
from kvmlite.emulator.alu import MASK, sub
from kvmlite.emulator.cpu import (
    AMASK,
    ES,
    FLAG_DF,
    FLAG_ZF,
    RAX,
    RCX,
    RDI,
    RDX,
    RSI,
)
from kvmlite.emulator.handlers import privileged

if TYPE_CHECKING:
    from kvmlite.emulator.executor import Executor

log = logging.getLogger(__name__)


def _string_regs(ex: Executor, insn: D.Instruction) -> tuple[int, int]:
    """(address mask, signed step) for a string instruction."""
    size = insn.operands[0].size if insn.operands[0].kind == D.OP_MEM else insn.operands[1].size
    return AMASK[insn.addrsize], (-size if ex.cpu.rflags & FLAG_DF else size)


def _rep_count(ex: Executor, insn: D.Instruction) -> int:
    return ex.cpu.gpr[RCX] & AMASK[insn.addrsize] if insn.rep else 1


def movs(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    size = dst.size
    amask, step = _string_regs(ex, insn)
    gpr = ex.cpu.gpr
    asz = insn.addrsize
    n = _rep_count(ex, insn)
    while n:
        value = ex.read(src.seg, gpr[RSI] & amask, size)
        ex.write(ES, gpr[RDI] & amask, size, value)
        ex.set_reg(RSI, asz, gpr[RSI] + step)
        ex.set_reg(RDI, asz, gpr[RDI] + step)
        n -= 1
        if insn.rep:
            ex.set_reg(RCX, asz, n)


def stos(ex: Executor, insn: D.Instruction) -> None:
    dst = insn.operands[0]
    size = dst.size
    amask, step = _string_regs(ex, insn)
    gpr = ex.cpu.gpr
    asz = insn.addrsize
    value = gpr[RAX] & MASK[size]
    n = _rep_count(ex, insn)
    while n:
        ex.write(ES, gpr[RDI] & amask, size, value)
        ex.set_reg(RDI, asz, gpr[RDI] + step)
        n -= 1
        if insn.rep:
            ex.set_reg(RCX, asz, n)


def lods(ex: Executor, insn: D.Instruction) -> None:
    src = insn.operands[1]
    size = src.size
    amask, step = _string_regs(ex, insn)
    gpr = ex.cpu.gpr
    asz = insn.addrsize
    n = _rep_count(ex, insn)
    while n:
        ex.set_reg(RAX, size, ex.read(src.seg, gpr[RSI] & amask, size))
        ex.set_reg(RSI, asz, gpr[RSI] + step)
        n -= 1
        if insn.rep:
            ex.set_reg(RCX, asz, n)


def _cmp_loop(ex: Executor, insn: D.Instruction, with_source: bool) -> None:
    ops = insn.operands
    size = ops[0].size
    amask, step = _string_regs(ex, insn)
    gpr = ex.cpu.gpr
    asz = insn.addrsize
    rep = insn.rep
    n = _rep_count(ex, insn)
    while n:
        b = ex.read(ES, gpr[RDI] & amask, size)
        if with_source:
            a = ex.read(ops[0].seg, gpr[RSI] & amask, size)
            ex.set_reg(RSI, asz, gpr[RSI] + step)
        else:
            a = gpr[RAX] & MASK[size]
        _, f = sub(a, b, 0, size)
        ex.set_flags(f)
        ex.set_reg(RDI, asz, gpr[RDI] + step)
        n -= 1
        if rep:
            ex.set_reg(RCX, asz, n)
            zf = bool(f & FLAG_ZF)
            if (rep == D.PREFIX_REP) != zf:
                break


def cmps(ex: Executor, insn: D.Instruction) -> None:
    _cmp_loop(ex, insn, True)


def scas(ex: Executor, insn: D.Instruction) -> None:
    _cmp_loop(ex, insn, False)


def ins(ex: Executor, insn: D.Instruction) -> None:
    dst = insn.operands[0]
    size = dst.size
    privileged.check_io(ex, ex.cpu.gpr[RDX] & 0xFFFF, size)
    amask, step = _string_regs(ex, insn)
    gpr = ex.cpu.gpr
    asz = insn.addrsize
    port = gpr[RDX] & 0xFFFF
    n = _rep_count(ex, insn)
    while n:
        off = gpr[RDI] & amask
        ex.linear(ES, off, size, True)  # check before the device sees the read
        ex.write(ES, off, size, ex.ops.io_in(port, size))
        ex.set_reg(RDI, asz, gpr[RDI] + step)
        n -= 1
        if insn.rep:
            ex.set_reg(RCX, asz, n)


def outs(ex: Executor, insn: D.Instruction) -> None:
    src = insn.operands[1]
    size = src.size
    privileged.check_io(ex, ex.cpu.gpr[RDX] & 0xFFFF, size)
    amask, step = _string_regs(ex, insn)
    gpr = ex.cpu.gpr
    asz = insn.addrsize
    port = gpr[RDX] & 0xFFFF
    n = _rep_count(ex, insn)
    while n:
        ex.ops.io_out(port, size, ex.read(src.seg, gpr[RSI] & amask, size))
        ex.set_reg(RSI, asz, gpr[RSI] + step)
        n -= 1
        if insn.rep:
            ex.set_reg(RCX, asz, n)
