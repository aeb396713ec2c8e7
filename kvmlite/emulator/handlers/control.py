"""Control flow: near and far jumps, calls and returns, LOOP/JCXZ, and the UD instructions.

Each handler is ``handler(ex, insn)``: the executor and the decoded instruction; the opcode
rows of :mod:`kvmlite.emulator.opcodes` name them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kvmlite.emulator import instruction as D
from kvmlite.emulator.cpu import (
    AMASK,
    CR0_PE,
    CS,
    FLAG_VM,
    FLAG_ZF,
    RCX,
    RSP,
    SS,
)
from kvmlite.emulator.faults import (
    UD,
    GuestFault,
)
from kvmlite.emulator.handlers import segment

if TYPE_CHECKING:
    from kvmlite.emulator.executor import Executor

log = logging.getLogger(__name__)


def jmp(ex: Executor, insn: D.Instruction) -> None:
    ex.branch(ex.next_rip + insn.operands[0].value, insn.opsize)


def jcc(ex: Executor, insn: D.Instruction) -> None:
    if ex.cond(insn.row.cond):
        ex.branch(ex.next_rip + insn.operands[0].value, insn.opsize)


def call(ex: Executor, insn: D.Instruction) -> None:
    target = ex.next_rip + insn.operands[0].value
    ret = ex.next_rip
    ex.branch(target, insn.opsize)
    ex.push(ret, insn.opsize)


def call_ind(ex: Executor, insn: D.Instruction) -> None:
    target = ex.get(insn.operands[0])
    ret = ex.next_rip
    ex.branch(target, insn.opsize)
    ex.push(ret, insn.opsize)


def jmp_ind(ex: Executor, insn: D.Instruction) -> None:
    ex.branch(ex.get(insn.operands[0]), insn.opsize)


def ret(ex: Executor, insn: D.Instruction) -> None:
    size = insn.opsize
    target = ex.stack_peek(0, size)
    ex.branch(target, size)
    extra = insn.operands[0].value if insn.operands else 0
    ex.set_reg(RSP, ex.stack_size, ex.cpu.gpr[RSP] + size + extra)


def loop(ex: Executor, insn: D.Instruction) -> None:
    asz = insn.addrsize
    count = (ex.cpu.gpr[RCX] - 1) & AMASK[asz]
    ex.set_reg(RCX, asz, count)
    mn = insn.mnemonic
    take = count != 0
    if take and mn == "loope":
        take = bool(ex.cpu.rflags & FLAG_ZF)
    elif take and mn == "loopne":
        take = not ex.cpu.rflags & FLAG_ZF
    if take:
        ex.branch(ex.next_rip + insn.operands[0].value, insn.opsize)


def jcxz(ex: Executor, insn: D.Instruction) -> None:
    if ex.cpu.gpr[RCX] & AMASK[insn.addrsize] == 0:
        ex.branch(ex.next_rip + insn.operands[0].value, insn.opsize)


def ud2(ex: Executor, insn: D.Instruction) -> None:
    raise GuestFault(UD, reason="UD2")


def _far_pointer(ex: Executor, op: D.Operand, opsize: int) -> tuple[int, int]:
    if op.kind == D.OP_FAR:
        return op.seg, op.value
    off_size = op.size - 2
    ea = ex.ea(op)
    offset = ex.read(op.seg, ea, off_size)
    selector = ex.read(op.seg, (ea + off_size) & AMASK[max(op.addrsize, 2)], 2)
    return selector, offset


def _far_jump(ex: Executor, selector: int, offset: int, opsize: int) -> None:
    cpu = ex.cpu
    saved = (cpu.segs[CS], cpu.cpl)
    if cpu.cr0 & CR0_PE and not cpu.rflags & FLAG_VM:
        segment.load_code_segment(ex, selector)
    else:
        cs = cpu.segs[CS]
        cpu.segs[CS] = cs.copy(selector=selector, base=selector << 4)
    try:
        ex.branch(offset, opsize if ex.mode != 64 else 8)
    except BaseException:
        cpu.segs[CS], cpu.cpl = saved
        ex.refresh_mode()
        raise


def jmp_far(ex: Executor, insn: D.Instruction) -> None:
    sel, off = _far_pointer(ex, insn.operands[0], insn.opsize)
    _far_jump(ex, sel, off, insn.opsize)


def call_far(ex: Executor, insn: D.Instruction) -> None:
    cpu = ex.cpu
    sel, off = _far_pointer(ex, insn.operands[0], insn.opsize)
    size = insn.opsize
    old_cs = cpu.segs[CS].selector
    ret = ex.next_rip
    saved = (cpu.segs[CS], cpu.cpl, cpu.gpr[RSP])
    _far_jump(ex, sel, off, size)
    try:
        ex.push(old_cs, size)
        ex.push(ret, size)
    except BaseException:
        cpu.segs[CS], cpu.cpl, cpu.gpr[RSP] = saved  # a failing push leaves CS untouched
        ex.refresh_mode()
        raise


def retf(ex: Executor, insn: D.Instruction) -> None:
    cpu = ex.cpu
    size = insn.opsize
    ip = ex.stack_peek(0, size)
    cs_sel = ex.stack_peek(size, size) & 0xFFFF
    extra = insn.operands[0].value if insn.operands else 0
    pm = cpu.cr0 & CR0_PE and not cpu.rflags & FLAG_VM
    rpl = cs_sel & 3
    if pm and rpl > cpu.cpl:
        new_sp = ex.stack_peek(2 * size + extra, size)
        new_ss = ex.stack_peek(3 * size + extra, size) & 0xFFFF
        segment.load_code_segment(ex, cs_sel, rpl)
        segment.load_segment(ex, SS, new_ss)
        ex.set_reg(RSP, size if size > 2 else 2, new_sp + extra)
        ex.branch(ip, size)
        segment.null_outer_data_segments(ex)
        return
    ss_size = 8 if ex.mode == 64 else (4 if pm and cpu.segs[SS].db else 2)
    _far_jump(ex, cs_sel, ip, size)
    ex.set_reg(RSP, ss_size, cpu.gpr[RSP] + 2 * size + extra)


call_far_ind = call_far
jmp_far_ind = jmp_far
ud0 = ud2
ud1 = ud2
