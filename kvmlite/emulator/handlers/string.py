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

PAGE_SIZE = 4096


def _string_regs(ex: Executor, insn: D.Instruction) -> tuple[int, int]:
    """(address mask, signed step) for a string instruction."""
    size = insn.operands[0].size if insn.operands[0].kind == D.OP_MEM else insn.operands[1].size
    return AMASK[insn.addrsize], (-size if ex.cpu.rflags & FLAG_DF else size)


def _rep_count(ex: Executor, insn: D.Instruction) -> int:
    return ex.cpu.gpr[RCX] & AMASK[insn.addrsize] if insn.rep else 1


# REP MOVS / REP STOS forwards over guest RAM go a page-sized run at a time through the executor's
# host views (memset and memcpy of whole pages are most of a kernel's early work); RSI/RDI/RCX are
# committed after each run, so a fault at the next page leaves them where the element-by-element
# loop would.  Anything else (DF=1, MMIO, watched pages, a run that would wrap, a copy whose
# destination overlaps its source further on) takes the element loop.
def _run_length(ex: Executor, seg: int, offset: int, size: int, n: int, amask: int, write: bool) -> int:
    """Whole elements from ``seg:offset`` to the end of its page, at most ``n`` (0: not worth a run)."""
    try:
        lin = ex.linear(seg, offset, size, write)
    except Exception:  # the element loop raises it at the right element
        return 0
    k = min(n, (PAGE_SIZE - (lin & 0xFFF)) // size)
    if k < 2 or offset + k * size - 1 > amask:
        return 0
    return k


def _stos_run(ex: Executor, offset: int, size: int, n: int, amask: int, pattern: bytes) -> int:
    k = _run_length(ex, ES, offset, size, n, amask, True)
    got = ex.bulk_view(ES, offset, k * size, True) if k else None
    if got is None:
        return 0
    lin, view = got
    off = lin & 0xFFF
    view[off : off + k * size] = pattern * k
    return k


def _movs_run(ex: Executor, seg: int, si: int, di: int, size: int, n: int, amask: int) -> int:
    k = min(_run_length(ex, seg, si, size, n, amask, False), _run_length(ex, ES, di, size, n, amask, True))
    if not k:
        return 0
    src = ex.bulk_view(seg, si, k * size, False)
    dst = ex.bulk_view(ES, di, k * size, True)
    if src is None or dst is None:
        return 0
    nbytes = k * size
    (slin, sview), (dlin, dview) = src, dst
    sphys, dphys = ex.ops.phys_page(slin), ex.ops.phys_page(dlin)
    soff, doff = slin & 0xFFF, dlin & 0xFFF
    if sphys is None or (sphys == dphys and soff < doff < soff + nbytes):
        return 0  # a forward copy onto its own source repeats bytes: element by element
    dview[doff : doff + nbytes] = sview[soff : soff + nbytes]
    return k


def movs(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    size = dst.size
    amask, step = _string_regs(ex, insn)
    gpr = ex.cpu.gpr
    asz = insn.addrsize
    n = _rep_count(ex, insn)
    bulk = insn.rep and step > 0
    while n:
        si, di = gpr[RSI] & amask, gpr[RDI] & amask
        if bulk and n > 1 and (k := _movs_run(ex, src.seg, si, di, size, n, amask)):
            n -= k
            ex.set_reg(RSI, asz, gpr[RSI] + k * size)
            ex.set_reg(RDI, asz, gpr[RDI] + k * size)
            ex.set_reg(RCX, asz, n)
            continue
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
    bulk = insn.rep and step > 0
    pattern = value.to_bytes(size, "little")
    while n:
        if bulk and n > 1 and (k := _stos_run(ex, gpr[RDI] & amask, size, n, amask, pattern)):
            n -= k
            ex.set_reg(RDI, asz, gpr[RDI] + k * size)
            ex.set_reg(RCX, asz, n)
            continue
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
