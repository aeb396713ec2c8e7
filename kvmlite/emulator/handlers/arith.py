"""Arithmetic, logic, shifts, multiply/divide, bit operations and the flag instructions (CLC ... STD).

Each handler is ``handler(ex, insn)``: the executor and the decoded instruction; the opcode
rows of :mod:`kvmlite.emulator.opcodes` name them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kvmlite.emulator import alu
from kvmlite.emulator import instruction as D
from kvmlite.emulator.alu import MASK, SIGN, logic, szp, to_signed
from kvmlite.emulator.alu import add as alu_add
from kvmlite.emulator.alu import sub as alu_sub
from kvmlite.emulator.cpu import (
    AMASK,
    ARITH_FLAGS,
    FLAG_AF,
    FLAG_CF,
    FLAG_DF,
    FLAG_OF,
    FLAG_ZF,
    RAX,
    RDX,
)
from kvmlite.emulator.faults import (
    BR,
    DE,
    GuestFault,
)

if TYPE_CHECKING:
    from kvmlite.emulator.executor import Executor

log = logging.getLogger(__name__)


def _alu2(ex: Executor, insn: D.Instruction, kind: int) -> None:
    dst, src = insn.operands
    size = dst.size
    a = ex.get(dst)
    b = ex.get(src) & MASK[size]
    cpu = ex.cpu
    if kind == 0:
        r, f = alu_add(a, b, 0, size)
    elif kind == 1:
        r = a | b
        f = logic(r, size)
    elif kind == 2:
        r, f = alu_add(a, b, cpu.rflags & FLAG_CF, size)
    elif kind == 3:
        r, f = alu_sub(a, b, cpu.rflags & FLAG_CF, size)
    elif kind == 4:
        r = a & b
        f = logic(r, size)
    elif kind == 5:
        r, f = alu_sub(a, b, 0, size)
    elif kind == 6:
        r = a ^ b
        f = logic(r, size)
    else:
        r, f = alu_sub(a, b, 0, size)
        cpu.rflags = (cpu.rflags & ~ARITH_FLAGS) | f
        return
    ex.put(dst, r)
    cpu.rflags = (cpu.rflags & ~ARITH_FLAGS) | f


def add(ex: Executor, insn: D.Instruction) -> None:
    _alu2(ex, insn, 0)


def or_(ex: Executor, insn: D.Instruction) -> None:
    _alu2(ex, insn, 1)


def adc(ex: Executor, insn: D.Instruction) -> None:
    _alu2(ex, insn, 2)


def sbb(ex: Executor, insn: D.Instruction) -> None:
    _alu2(ex, insn, 3)


def and_(ex: Executor, insn: D.Instruction) -> None:
    _alu2(ex, insn, 4)


def sub(ex: Executor, insn: D.Instruction) -> None:
    _alu2(ex, insn, 5)


def xor(ex: Executor, insn: D.Instruction) -> None:
    _alu2(ex, insn, 6)


def cmp(ex: Executor, insn: D.Instruction) -> None:
    _alu2(ex, insn, 7)


def test(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    r = ex.get(dst) & ex.get(src)
    ex.set_flags(logic(r & MASK[dst.size], dst.size))


def inc(ex: Executor, insn: D.Instruction) -> None:
    op = insn.operands[0]
    r, f = alu_add(ex.get(op), 1, 0, op.size)
    ex.put(op, r)
    ex.set_flags(f, ARITH_FLAGS & ~FLAG_CF)


def dec(ex: Executor, insn: D.Instruction) -> None:
    op = insn.operands[0]
    r, f = alu_sub(ex.get(op), 1, 0, op.size)
    ex.put(op, r)
    ex.set_flags(f, ARITH_FLAGS & ~FLAG_CF)


def not_(ex: Executor, insn: D.Instruction) -> None:
    op = insn.operands[0]
    ex.put(op, ~ex.get(op) & MASK[op.size])


def neg(ex: Executor, insn: D.Instruction) -> None:
    op = insn.operands[0]
    r, f = alu_sub(0, ex.get(op), 0, op.size)
    ex.put(op, r)
    ex.set_flags(f)


def daa(ex: Executor, insn: D.Instruction) -> None:
    cpu = ex.cpu
    al = cpu.gpr[RAX] & 0xFF
    old_al, old_cf = al, cpu.rflags & FLAG_CF
    f = 0
    if (al & 0xF) > 9 or cpu.rflags & FLAG_AF:
        al = (al + 6) & 0xFF
        f |= FLAG_AF
    if old_al > 0x99 or old_cf:
        al = (al + 0x60) & 0xFF
        f |= FLAG_CF
    ex.set_reg(RAX, 1, al)
    ex.set_flags(f | szp(al, 1), ARITH_FLAGS & ~FLAG_OF)


def das(ex: Executor, insn: D.Instruction) -> None:
    cpu = ex.cpu
    al = cpu.gpr[RAX] & 0xFF
    old_al, old_cf = al, cpu.rflags & FLAG_CF
    f = 0
    if (al & 0xF) > 9 or cpu.rflags & FLAG_AF:
        al = (al - 6) & 0xFF
        f |= FLAG_AF
    if old_al > 0x99 or old_cf:
        al = (al - 0x60) & 0xFF
        f |= FLAG_CF
    ex.set_reg(RAX, 1, al)
    ex.set_flags(f | szp(al, 1), ARITH_FLAGS & ~FLAG_OF)


def _aaa_aas(ex: Executor, sign: int) -> None:
    cpu = ex.cpu
    ax = cpu.gpr[RAX] & 0xFFFF
    if (ax & 0xF) > 9 or cpu.rflags & FLAG_AF:
        al = ((ax & 0xFF) + 6 * sign) & 0xFF
        ah = ((ax >> 8) + sign) & 0xFF
        f = FLAG_AF | FLAG_CF
    else:
        al, ah, f = ax & 0xFF, ax >> 8, 0
    ex.set_reg(RAX, 2, (ah << 8) | (al & 0xF))
    ex.set_flags(f, FLAG_AF | FLAG_CF)


def aaa(ex: Executor, insn: D.Instruction) -> None:
    _aaa_aas(ex, 1)


def aas(ex: Executor, insn: D.Instruction) -> None:
    _aaa_aas(ex, -1)


def aam(ex: Executor, insn: D.Instruction) -> None:
    base = insn.operands[0].value
    if base == 0:
        raise GuestFault(DE, reason="AAM with base 0")
    al = ex.cpu.gpr[RAX] & 0xFF
    ah, al = divmod(al, base)
    ex.set_reg(RAX, 2, (ah << 8) | al)
    ex.set_flags(szp(al, 1))


def aad(ex: Executor, insn: D.Instruction) -> None:
    ax = ex.cpu.gpr[RAX]
    al = ((ax & 0xFF) + ((ax >> 8) & 0xFF) * insn.operands[0].value) & 0xFF
    ex.set_reg(RAX, 2, al)
    ex.set_flags(szp(al, 1))


def salc(ex: Executor, insn: D.Instruction) -> None:
    ex.set_reg(RAX, 1, 0xFF if ex.cpu.rflags & FLAG_CF else 0)


def _shift(ex: Executor, insn: D.Instruction, op: str) -> None:
    dst, cnt = insn.operands
    size = dst.size
    count = ex.get(cnt) & (0x3F if size == 8 else 0x1F)
    if count == 0:
        value = ex.get(dst)  # still faults like the CPU does
        if size == 4 and dst.kind == D.OP_REG:
            ex.put(dst, value)  # a 32-bit register is written (zero-extended) even so
        return
    cpu = ex.cpu
    r, f = alu.shift(op, ex.get(dst), count, size, cpu.rflags & FLAG_CF, cpu.rflags & ARITH_FLAGS)
    ex.put(dst, r)
    cpu.rflags = (cpu.rflags & ~ARITH_FLAGS) | f


def rol(ex: Executor, insn: D.Instruction) -> None:
    _shift(ex, insn, "rol")


def ror(ex: Executor, insn: D.Instruction) -> None:
    _shift(ex, insn, "ror")


def rcl(ex: Executor, insn: D.Instruction) -> None:
    _shift(ex, insn, "rcl")


def rcr(ex: Executor, insn: D.Instruction) -> None:
    _shift(ex, insn, "rcr")


def shl(ex: Executor, insn: D.Instruction) -> None:
    _shift(ex, insn, "shl")


def shr(ex: Executor, insn: D.Instruction) -> None:
    _shift(ex, insn, "shr")


def sar(ex: Executor, insn: D.Instruction) -> None:
    _shift(ex, insn, "sar")


def _shxd(ex: Executor, insn: D.Instruction, left: bool) -> None:
    dst, src, cnt = insn.operands
    size = dst.size
    bits = size * 8
    count = ex.get(cnt) & (0x3F if size == 8 else 0x1F)
    a = ex.get(dst)
    if count == 0:
        if size == 4 and dst.kind == D.OP_REG:
            ex.put(dst, a)  # zero-extended as for any 32-bit register write
        return
    b = ex.get(src)
    mask = MASK[size]
    if left:
        wide = (a << bits) | b
        wide <<= count
        r = (wide >> bits) & mask
        cf = (wide >> (2 * bits)) & 1 if count <= bits else 0
    else:
        wide = (b << bits) | a
        cf = (wide >> (count - 1)) & 1
        r = (wide >> count) & mask
    f = szp(r, size) | (FLAG_CF if cf else 0)
    if bool((r ^ a) & SIGN[size]):
        f |= FLAG_OF
    ex.put(dst, r)
    ex.set_flags(f)


def shld(ex: Executor, insn: D.Instruction) -> None:
    _shxd(ex, insn, True)


def shrd(ex: Executor, insn: D.Instruction) -> None:
    _shxd(ex, insn, False)


def mul(ex: Executor, insn: D.Instruction) -> None:
    src = insn.operands[0]
    size = src.size
    gpr = ex.cpu.gpr
    r = (gpr[RAX] & MASK[size]) * ex.get(src)
    bits = size * 8
    lo, hi = r & MASK[size], r >> bits
    if size == 1:
        ex.set_reg(RAX, 2, r)
    else:
        ex.set_reg(RAX, size, lo)
        ex.set_reg(RDX, size, hi)
    f = szp(lo, size)
    if hi:
        f |= FLAG_CF | FLAG_OF
    ex.set_flags(f)


def _imul_flags(ex: Executor, full: int, size: int) -> int:
    lo = full & MASK[size]
    f = szp(lo, size)
    if to_signed(lo, size) != full:
        f |= FLAG_CF | FLAG_OF
    return f


def imul(ex: Executor, insn: D.Instruction) -> None:
    src = insn.operands[0]
    size = src.size
    full = to_signed(ex.cpu.gpr[RAX] & MASK[size], size) * to_signed(ex.get(src), size)
    if size == 1:
        ex.set_reg(RAX, 2, full)
    else:
        ex.set_reg(RAX, size, full)
        ex.set_reg(RDX, size, full >> (size * 8))
    ex.set_flags(_imul_flags(ex, full, size))


def imul2(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    size = dst.size
    full = to_signed(ex.get(dst), size) * to_signed(ex.get(src), size)
    ex.put(dst, full)
    ex.set_flags(_imul_flags(ex, full, size))


def imul3(ex: Executor, insn: D.Instruction) -> None:
    dst, src, imm = insn.operands
    size = dst.size
    full = to_signed(ex.get(src), size) * to_signed(imm.value & MASK[size], size)
    ex.put(dst, full)
    ex.set_flags(_imul_flags(ex, full, size))


def _dividend(ex: Executor, size: int) -> int:
    gpr = ex.cpu.gpr
    if size == 1:
        return gpr[RAX] & 0xFFFF
    return ((gpr[RDX] & MASK[size]) << (size * 8)) | (gpr[RAX] & MASK[size])


def _div_store(ex: Executor, q: int, r: int, size: int) -> None:
    if size == 1:
        ex.set_reg(RAX, 2, ((r & 0xFF) << 8) | (q & 0xFF))
    else:
        ex.set_reg(RAX, size, q)
        ex.set_reg(RDX, size, r)


def div(ex: Executor, insn: D.Instruction) -> None:
    src = insn.operands[0]
    size = src.size
    d = ex.get(src)
    if d == 0:
        raise GuestFault(DE, reason="division by zero")
    q, r = divmod(_dividend(ex, size), d)
    if q > MASK[size]:
        raise GuestFault(DE, reason="quotient too large")
    _div_store(ex, q, r, size)


def idiv(ex: Executor, insn: D.Instruction) -> None:
    src = insn.operands[0]
    size = src.size
    d = to_signed(ex.get(src), size)
    if d == 0:
        raise GuestFault(DE, reason="division by zero")
    n = to_signed(_dividend(ex, size), size * 2)
    q = abs(n) // abs(d)
    if (n < 0) != (d < 0):
        q = -q
    r = n - q * d
    if not -SIGN[size] <= q < SIGN[size]:
        raise GuestFault(DE, reason="quotient too large")
    _div_store(ex, q, r, size)


def _bit_target(ex: Executor, insn: D.Instruction) -> tuple[D.Operand, int, int, int]:
    """(operand, value, bit index, memory offset or -1) for BT/BTS/BTR/BTC."""
    dst, src = insn.operands
    size = dst.size
    bits = size * 8
    if dst.kind == D.OP_MEM and src.kind == D.OP_REG:
        offset = to_signed(ex.get(src), src.size)
        off = (ex.ea(dst) + (offset >> (bits.bit_length() - 1)) * size) & AMASK[dst.addrsize]
        return dst, ex.read(dst.seg, off, size), offset & (bits - 1), off
    return dst, ex.get(dst), ex.get(src) & (bits - 1), -1


def _bt_common(ex: Executor, insn: D.Instruction, action: int) -> None:
    dst, value, bit, off = _bit_target(ex, insn)
    old = (value >> bit) & 1
    if action == 1:
        value |= 1 << bit
    elif action == 2:
        value &= ~(1 << bit)
    elif action == 3:
        value ^= 1 << bit
    if action:
        if off >= 0:
            ex.write(dst.seg, off, dst.size, value)
        else:
            ex.put(dst, value)
    ex.set_flags(FLAG_CF if old else 0, FLAG_CF)


def bt(ex: Executor, insn: D.Instruction) -> None:
    _bt_common(ex, insn, 0)


def bts(ex: Executor, insn: D.Instruction) -> None:
    _bt_common(ex, insn, 1)


def btr(ex: Executor, insn: D.Instruction) -> None:
    _bt_common(ex, insn, 2)


def btc(ex: Executor, insn: D.Instruction) -> None:
    _bt_common(ex, insn, 3)


def bsf(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    v = ex.get(src)
    if v == 0:
        ex.set_flags(FLAG_ZF, FLAG_ZF)  # destination unchanged (AMD documents it, Intel does it)
        return
    ex.put(dst, (v & -v).bit_length() - 1)
    ex.set_flags(0, FLAG_ZF)


def bsr(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    v = ex.get(src)
    if v == 0:
        ex.set_flags(FLAG_ZF, FLAG_ZF)
        return
    ex.put(dst, v.bit_length() - 1)
    ex.set_flags(0, FLAG_ZF)


def tzcnt(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    v = ex.get(src)
    r = (v & -v).bit_length() - 1 if v else src.size * 8
    ex.put(dst, r)
    ex.set_flags((FLAG_CF if v == 0 else 0) | (FLAG_ZF if r == 0 else 0), FLAG_CF | FLAG_ZF)


def lzcnt(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    v = ex.get(src)
    r = src.size * 8 - v.bit_length()
    ex.put(dst, r)
    ex.set_flags((FLAG_CF if v == 0 else 0) | (FLAG_ZF if r == 0 else 0), FLAG_CF | FLAG_ZF)


def popcnt(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    v = ex.get(src)
    ex.put(dst, v.bit_count())
    ex.set_flags(FLAG_ZF if v == 0 else 0)


def clc(ex: Executor, insn: D.Instruction) -> None:
    ex.cpu.rflags &= ~FLAG_CF


def stc(ex: Executor, insn: D.Instruction) -> None:
    ex.cpu.rflags |= FLAG_CF


def cmc(ex: Executor, insn: D.Instruction) -> None:
    ex.cpu.rflags ^= FLAG_CF


def cld(ex: Executor, insn: D.Instruction) -> None:
    ex.cpu.rflags &= ~FLAG_DF


def std(ex: Executor, insn: D.Instruction) -> None:
    ex.cpu.rflags |= FLAG_DF


def bound(ex: Executor, insn: D.Instruction) -> None:
    idx, mem = insn.operands
    half = mem.size // 2
    ea = ex.ea(mem)
    from kvmlite.emulator.alu import to_signed

    lo = to_signed(ex.read(mem.seg, ea, half), half)
    hi = to_signed(ex.read(mem.seg, ea + half, half), half)
    v = to_signed(ex.get(idx), half)
    if not lo <= v <= hi:
        raise GuestFault(BR, reason="BOUND range exceeded")


