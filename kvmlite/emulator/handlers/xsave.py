"""The x87/SSE/AVX state as an XSAVE area: FXSAVE/FXRSTOR, the XSAVE family, LDMXCSR/STMXCSR, XGETBV/XSETBV.

Each handler is ``handler(ex, insn)``: the executor and the decoded instruction; the opcode
rows of :mod:`kvmlite.emulator.opcodes` name them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kvmlite.emulator import instruction as D
from kvmlite.emulator import xstate
from kvmlite.emulator.cpu import (
    CR0_EM,
    CR0_TS,
    RAX,
    RCX,
    RDX,
)
from kvmlite.emulator.faults import (
    NM,
    GuestFault,
    gp,
)
from kvmlite.x86 import Msr

if TYPE_CHECKING:
    from kvmlite.emulator.executor import Executor

log = logging.getLogger(__name__)

FXSAVE_SIZE = 512
MXCSR_OFFSET = 24


def xgetbv(ex: Executor, insn: D.Instruction) -> None:
    gpr = ex.cpu.gpr
    if gpr[RCX] & 0xFFFFFFFF != 0:
        raise gp(0, "XGETBV of an unknown XCR")
    gpr[RAX] = ex.cpu.xcr0 & 0xFFFFFFFF
    gpr[RDX] = ex.cpu.xcr0 >> 32


def xsetbv(ex: Executor, insn: D.Instruction) -> None:
    gpr = ex.cpu.gpr
    value = ((gpr[RDX] & 0xFFFFFFFF) << 32) | (gpr[RAX] & 0xFFFFFFFF)
    if gpr[RCX] & 0xFFFFFFFF != 0 or not value & 1 or value & ~0x3:
        raise gp(0, f"XSETBV {value:#x} not supported (x87 and SSE state only)")
    ex.cpu.xcr0 = value


def _check_fpu_area(ex: Executor, insn: D.Instruction, align: int) -> tuple[int, int]:
    op = insn.operands[0]
    off = ex.ea(op)
    if ex.cpu.cr0 & (CR0_TS | CR0_EM):
        raise GuestFault(NM, reason="FPU unavailable (CR0.TS/EM)")
    if off & (align - 1):
        raise gp(0, "misaligned FXSAVE/XSAVE area")
    return op.seg, off


def fxsave(ex: Executor, insn: D.Instruction) -> None:
    seg, off = _check_fpu_area(ex, insn, 16)
    ex.write_block(seg, off, bytes(ex.xsave_area()[:FXSAVE_SIZE]))


def fxrstor(ex: Executor, insn: D.Instruction) -> None:
    seg, off = _check_fpu_area(ex, insn, 16)
    data = ex.read_block(seg, off, FXSAVE_SIZE)
    mxcsr = int.from_bytes(data[MXCSR_OFFSET : MXCSR_OFFSET + 4], "little")
    if mxcsr & ~0xFFFF:
        raise gp(0, "reserved MXCSR bits in FXRSTOR image")
    area = ex.xsave_area()
    area[:FXSAVE_SIZE] = data
    bv = xstate.xstate_bv(area) | (1 << xstate.X87) | (1 << xstate.SSE)
    area[xstate.HEADER_OFFSET : xstate.HEADER_OFFSET + 8] = bv.to_bytes(8, "little")


def _xstate_op(
    ex: Executor, insn: D.Instruction, supervisor: bool
) -> tuple[int, int, int, list[xstate.Component]]:
    """(segment, offset, requested-feature bitmap, layout); CR4.OSXSAVE and CPL were checked by the row."""
    seg, off = _check_fpu_area(ex, insn, 64)
    gpr = ex.cpu.gpr
    enabled = ex.cpu.xcr0 | (ex.cpu.msrs.get(Msr.XSS, 0) if supervisor else 0)
    rfbm = (((gpr[RDX] & 0xFFFFFFFF) << 32) | (gpr[RAX] & 0xFFFFFFFF)) & enabled
    return seg, off, rfbm, xstate.layout(ex.ops.cpuid, enabled)


def _xsave(ex: Executor, insn: D.Instruction, compacted: bool, supervisor: bool = False) -> None:
    seg, off, rfbm, comps = _xstate_op(ex, insn, supervisor)
    xstate.save(
        ex.xsave_area(),
        comps,
        rfbm,
        compacted,
        lambda o, n: ex.read_block(seg, off + o, n),
        lambda o, data: ex.write_block(seg, off + o, data),
    )


def xsave(ex: Executor, insn: D.Instruction) -> None:
    _xsave(ex, insn, compacted=False)


def xsavec(ex: Executor, insn: D.Instruction) -> None:
    _xsave(ex, insn, compacted=True)


def xsaves(ex: Executor, insn: D.Instruction) -> None:
    _xsave(ex, insn, compacted=True, supervisor=True)


def _xrstor(ex: Executor, insn: D.Instruction, supervisor: bool) -> None:
    seg, off, rfbm, comps = _xstate_op(ex, insn, supervisor)
    area = bytearray(ex.xsave_area())  # applied only if the whole image is accepted
    try:
        xstate.restore(area, comps, rfbm, lambda o, n: ex.read_block(seg, off + o, n), supervisor)
    except xstate.XstateError as err:
        raise gp(0, str(err)) from err
    ex.xsave_area()[:] = area


def xrstor(ex: Executor, insn: D.Instruction) -> None:
    _xrstor(ex, insn, supervisor=False)


def xrstors(ex: Executor, insn: D.Instruction) -> None:
    _xrstor(ex, insn, supervisor=True)


def ldmxcsr(ex: Executor, insn: D.Instruction) -> None:
    value = ex.get(insn.operands[0])
    if value & ~0xFFFF:
        raise gp(0, "reserved MXCSR bits")
    ex.xsave_area()[MXCSR_OFFSET : MXCSR_OFFSET + 4] = value.to_bytes(4, "little")


def stmxcsr(ex: Executor, insn: D.Instruction) -> None:
    area = ex.xsave_area()
    ex.put(insn.operands[0], int.from_bytes(area[MXCSR_OFFSET : MXCSR_OFFSET + 4], "little"))


def emms(ex: Executor, insn: D.Instruction) -> None:
    pass


xsaveopt = xsave
