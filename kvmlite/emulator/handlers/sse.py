"""The SSE instructions the emulator runs: moves and the SSE2 integer lane operations on XMM registers
(held in the XSAVE area).

Each handler is ``handler(ex, insn)``: the executor and the decoded instruction; the opcode
rows of :mod:`kvmlite.emulator.opcodes` name them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from kvmlite.emulator import instruction as D
from kvmlite.emulator.cpu import (
    CR0_TS,
)
from kvmlite.emulator.faults import (
    NM,
    GuestFault,
    gp,
)
from kvmlite.errors import UnsupportedInstruction

if TYPE_CHECKING:
    from kvmlite.emulator.executor import Executor

log = logging.getLogger(__name__)


def _sse_ready(ex: Executor, insn: D.Instruction, aligned: bool = False) -> None:
    if ex.cpu.cr0 & CR0_TS:
        raise GuestFault(NM, reason="SSE with CR0.TS set")
    if aligned:
        for op in insn.operands:
            if op.kind == D.OP_MEM and ex.ea(op) & 15:
                raise gp(0, "misaligned 16-byte SSE access")


def movd(ex: Executor, insn: D.Instruction) -> None:
    _sse_ready(ex, insn)
    dst, src = insn.operands
    ex.put(dst, ex.get(src))


def movdqa(ex: Executor, insn: D.Instruction) -> None:
    _sse_ready(ex, insn, aligned=True)
    dst, src = insn.operands
    ex.put(dst, ex.get(src))


def pxor(ex: Executor, insn: D.Instruction) -> None:
    _sse_ready(ex, insn, aligned=True)
    dst, src = insn.operands
    ex.put(dst, ex.get(dst) ^ ex.get(src))


def _sse_lanes(ex: Executor, insn: D.Instruction, width: int, fn: Callable[[int, int, int], int]) -> None:
    """A lane-wise SSE2 integer operation on XMM registers: ``fn(a, b, mask)`` per ``width``-byte lane."""
    dst, src = insn.operands
    if dst.kind != D.OP_REG or dst.regclass != D.RC_XMM:
        raise UnsupportedInstruction(f"{insn.mnemonic} on MMX registers is not implemented")
    _sse_ready(ex, insn, aligned=True)
    a, b = ex.get(dst), ex.get(src)
    bits = 8 * width
    mask = (1 << bits) - 1
    out = 0
    for shift in range(0, 128, bits):
        out |= (fn((a >> shift) & mask, (b >> shift) & mask, mask) & mask) << shift
    ex.put(dst, out)


def pand(ex: Executor, insn: D.Instruction) -> None:
    _sse_lanes(ex, insn, 16, lambda a, b, m: a & b)


def pandn(ex: Executor, insn: D.Instruction) -> None:
    _sse_lanes(ex, insn, 16, lambda a, b, m: ~a & b)


def por(ex: Executor, insn: D.Instruction) -> None:
    _sse_lanes(ex, insn, 16, lambda a, b, m: a | b)


andnpd = pandn
andnps = pandn
andpd = pand
andps = pand
movapd = movdqa
movaps = movdqa
movdqu = movd
movq = movd
movupd = movd
movups = movd
orpd = por
orps = por
xorpd = pxor
xorps = pxor


def _signed(v: int, mask: int) -> int:
    return v - (mask + 1) if v > mask >> 1 else v


def _lanes(
    name: str, width: int, fn: Callable[[int, int, int], int]
) -> Callable[[Executor, D.Instruction], None]:
    """A handler applying ``fn(a, b, mask)`` to each ``width``-byte lane."""

    def handler(ex: Executor, insn: D.Instruction) -> None:
        _sse_lanes(ex, insn, width, fn)

    handler.__name__ = handler.__qualname__ = name
    return handler


def _add(a: int, b: int, m: int) -> int:
    return a + b


def _sub(a: int, b: int, m: int) -> int:
    return a - b


def _eq(a: int, b: int, m: int) -> int:
    return m if a == b else 0


def _gt(a: int, b: int, m: int) -> int:
    return m if _signed(a, m) > _signed(b, m) else 0


paddb, paddw, paddd, paddq = (
    _lanes(f"padd{s}", w, _add) for s, w in (("b", 1), ("w", 2), ("d", 4), ("q", 8))
)
psubb, psubw, psubd, psubq = (
    _lanes(f"psub{s}", w, _sub) for s, w in (("b", 1), ("w", 2), ("d", 4), ("q", 8))
)
pcmpeqb, pcmpeqw, pcmpeqd = (_lanes(f"pcmpeq{s}", w, _eq) for s, w in (("b", 1), ("w", 2), ("d", 4)))
pcmpgtb, pcmpgtw, pcmpgtd = (_lanes(f"pcmpgt{s}", w, _gt) for s, w in (("b", 1), ("w", 2), ("d", 4)))
