"""The x87 control instructions an OS runs to find and reset the FPU: FNINIT, FNCLEX, FNSTSW,
FNSTCW and FLDCW (the x87 state lives in the XSAVE area's legacy region; arithmetic is not
emulated).

Each handler is ``handler(ex, insn)``: the executor and the decoded instruction; the opcode
rows of :mod:`kvmlite.emulator.opcodes` name them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmlite.emulator import instruction as D
from kvmlite.emulator.cpu import CR0_EM, CR0_TS
from kvmlite.emulator.faults import NM, GuestFault
from kvmlite.emulator.xstate import DEFAULT_FCW

if TYPE_CHECKING:
    from kvmlite.emulator.executor import Executor

FCW, FSW, FTW, FOP_TO_FDP = 0, 2, 4, (6, 24)  # offsets in the FXSAVE/XSAVE legacy region
#: FSW bits FNCLEX clears: the exception flags PE..IE, the stack fault, error summary and busy.
FSW_EXCEPTIONS = 0x80FF


def _fpu(ex: Executor) -> bytearray:
    """The save area, after the #NM check every x87 instruction makes (CR0.EM or CR0.TS)."""
    if ex.cpu.cr0 & (CR0_EM | CR0_TS):
        raise GuestFault(NM, reason="x87 instruction with CR0.EM or CR0.TS set")
    return ex.xsave_area()


def _word(area: bytearray, offset: int) -> int:
    return int.from_bytes(area[offset : offset + 2], "little")


def fninit(ex: Executor, insn: D.Instruction) -> None:
    """FCW to its default, FSW and the instruction/operand pointers cleared, every register empty."""
    area = _fpu(ex)
    area[FCW : FCW + 2] = DEFAULT_FCW.to_bytes(2, "little")
    start, end = FOP_TO_FDP
    area[FSW : FSW + 2] = bytes(2)
    area[FTW] = 0  # abridged tag word: 0 = all empty
    area[start:end] = bytes(end - start)


def fnclex(ex: Executor, insn: D.Instruction) -> None:
    area = _fpu(ex)
    area[FSW : FSW + 2] = (_word(area, FSW) & ~FSW_EXCEPTIONS).to_bytes(2, "little")


def fnstsw(ex: Executor, insn: D.Instruction) -> None:
    ex.put(insn.operands[0], _word(_fpu(ex), FSW))


def fnstcw(ex: Executor, insn: D.Instruction) -> None:
    ex.put(insn.operands[0], _word(_fpu(ex), FCW))


def fldcw(ex: Executor, insn: D.Instruction) -> None:
    area = _fpu(ex)
    area[FCW : FCW + 2] = (ex.get(insn.operands[0]) & 0xFFFF).to_bytes(2, "little")
