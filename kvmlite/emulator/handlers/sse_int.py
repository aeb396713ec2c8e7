"""SSE2 integer instructions on XMM registers beyond the plain lane arithmetic of :mod:`.sse`:
unpacks, packs with saturation, shuffles, shifts, saturating and averaging arithmetic, multiplies,
minimum/maximum, byte masks.

The XMM value is one 128-bit integer; an operation splits it into lanes, works per lane and joins
them again.  These are what a static glibc's string functions and compiled C (struct copies, integer
to double conversions) use in user space, which Linux's init runs on the software backend.  MMX
forms of the same opcodes are left unimplemented (no test guest or libc path here uses them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvmlite.emulator import instruction as D
from kvmlite.emulator.handlers.sse import _signed, _sse_lanes, _sse_ready
from kvmlite.errors import UnsupportedInstruction

if TYPE_CHECKING:
    from kvmlite.emulator.executor import Executor

Handler = Callable[["Executor", D.Instruction], None]


def _split(value: int, width: int, count: int = 0) -> list[int]:
    bits = 8 * width
    mask = (1 << bits) - 1
    return [(value >> shift) & mask for shift in range(0, 8 * (count * width or 16), bits)]


def _join(lanes: list[int], width: int) -> int:
    bits = 8 * width
    mask = (1 << bits) - 1
    out = 0
    for i, lane in enumerate(lanes):
        out |= (lane & mask) << (i * bits)
    return out


def _xmm_operands(ex: Executor, insn: D.Instruction) -> tuple[D.Operand, int, int]:
    dst, src = insn.operands[0], insn.operands[1]
    if dst.kind != D.OP_REG or dst.regclass != D.RC_XMM:
        raise UnsupportedInstruction(f"{insn.mnemonic} on MMX registers is not implemented")
    _sse_ready(ex, insn, aligned=True)
    return dst, ex.get(dst), ex.get(src)


def _whole(name: str, fn: Callable[[int, int], int]) -> Handler:
    """A handler computing the destination from the two whole 128-bit values."""

    def handler(ex: Executor, insn: D.Instruction) -> None:
        dst, a, b = _xmm_operands(ex, insn)
        ex.put(dst, fn(a, b))

    handler.__name__ = handler.__qualname__ = name
    return handler


def _lanes(name: str, width: int, fn: Callable[[int, int, int], int]) -> Handler:
    def handler(ex: Executor, insn: D.Instruction) -> None:
        _sse_lanes(ex, insn, width, fn)

    handler.__name__ = handler.__qualname__ = name
    return handler


# --- unpacks and packs ---------------------------------------------------------------------------
def _unpack(width: int, high: bool) -> Callable[[int, int], int]:
    def fn(a: int, b: int) -> int:
        la, lb = _split(a, width), _split(b, width)
        half = len(la) // 2
        start = half if high else 0
        out: list[int] = []
        for i in range(start, start + half):
            out += (la[i], lb[i])
        return _join(out, width)

    return fn


def _saturate(value: int, lo: int, hi: int) -> int:
    return lo if value < lo else hi if value > hi else value


def _pack(width: int, signed_out: bool) -> Callable[[int, int], int]:
    in_mask = (1 << (8 * width)) - 1
    out_bits = 4 * width
    lo, hi = (-(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1) if signed_out else (0, (1 << out_bits) - 1)

    def fn(a: int, b: int) -> int:
        lanes = [_saturate(_signed(v, in_mask), lo, hi) for v in _split(a, width) + _split(b, width)]
        return _join(lanes, width // 2)

    return fn


punpcklbw, punpcklwd, punpckldq, punpcklqdq = (
    _whole(f"punpckl{s}", _unpack(w, False)) for s, w in (("bw", 1), ("wd", 2), ("dq", 4), ("qdq", 8))
)
punpckhbw, punpckhwd, punpckhdq, punpckhqdq = (
    _whole(f"punpckh{s}", _unpack(w, True)) for s, w in (("bw", 1), ("wd", 2), ("dq", 4), ("qdq", 8))
)
packsswb = _whole("packsswb", _pack(2, True))
packuswb = _whole("packuswb", _pack(2, False))
packssdw = _whole("packssdw", _pack(4, True))


# --- shuffles and masks ------------------------------------------------------------------------------
def _shuffle_words(ex: Executor, insn: D.Instruction, width: int, first: int, count: int) -> None:
    dst, src, imm = insn.operands
    if dst.regclass != D.RC_XMM:
        raise UnsupportedInstruction(f"{insn.mnemonic} on MMX registers is not implemented")
    _sse_ready(ex, insn, aligned=True)
    lanes = _split(ex.get(src), width)
    sel = imm.value
    out = list(lanes)
    for i in range(count):
        out[first + i] = lanes[first + ((sel >> (2 * i)) & 3)]
    ex.put(dst, _join(out, width))


def pshufd(ex: Executor, insn: D.Instruction) -> None:
    _shuffle_words(ex, insn, 4, 0, 4)


def pshuflw(ex: Executor, insn: D.Instruction) -> None:
    _shuffle_words(ex, insn, 2, 0, 4)


def pshufhw(ex: Executor, insn: D.Instruction) -> None:
    _shuffle_words(ex, insn, 2, 4, 4)


def pmovmskb(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    if src.regclass != D.RC_XMM:
        raise UnsupportedInstruction("pmovmskb on MMX registers is not implemented")
    _sse_ready(ex, insn)
    value = ex.get(src)
    mask = 0
    for i in range(16):
        mask |= ((value >> (8 * i + 7)) & 1) << i
    ex.put(dst, mask)


# --- shifts --------------------------------------------------------------------------------------------
def _shift(width: int, kind: str) -> Callable[[int, int], int]:
    """``fn(value, count)`` shifting each ``width``-byte lane: 'l' left, 'r' logical right, 'a' arithmetic."""
    bits = 8 * width
    mask = (1 << bits) - 1

    def fn(value: int, count: int) -> int:
        if count >= bits:
            if kind != "a":
                return 0
            count = bits - 1
        lanes = _split(value, width)
        if kind == "l":
            out = [(v << count) & mask for v in lanes]
        elif kind == "r":
            out = [v >> count for v in lanes]
        else:
            out = [(_signed(v, mask) >> count) & mask for v in lanes]
        return _join(out, width)

    return fn


def _shift_by_xmm(name: str, width: int, kind: str) -> Handler:
    op = _shift(width, kind)

    def handler(ex: Executor, insn: D.Instruction) -> None:
        dst, a, b = _xmm_operands(ex, insn)
        ex.put(dst, op(a, b & 0xFFFF_FFFF_FFFF_FFFF))

    handler.__name__ = handler.__qualname__ = name
    return handler


def _shift_by_imm(name: str, width: int, kind: str) -> Handler:
    op = _shift(width, kind)

    def handler(ex: Executor, insn: D.Instruction) -> None:
        dst, imm = insn.operands
        if dst.regclass != D.RC_XMM:
            raise UnsupportedInstruction(f"{name} on MMX registers is not implemented")
        _sse_ready(ex, insn)
        ex.put(dst, op(ex.get(dst), imm.value & 0xFF))

    handler.__name__ = handler.__qualname__ = name
    return handler


psrlw, psrld, psrlq = (_shift_by_xmm(f"psrl{s}", w, "r") for s, w in (("w", 2), ("d", 4), ("q", 8)))
psllw, pslld, psllq = (_shift_by_xmm(f"psll{s}", w, "l") for s, w in (("w", 2), ("d", 4), ("q", 8)))
psraw, psrad = (_shift_by_xmm(f"psra{s}", w, "a") for s, w in (("w", 2), ("d", 4)))
_WDQ = (("w", 2), ("d", 4), ("q", 8))
psrlw_imm, psrld_imm, psrlq_imm = (_shift_by_imm(f"psrl{s}", w, "r") for s, w in _WDQ)
psllw_imm, pslld_imm, psllq_imm = (_shift_by_imm(f"psll{s}", w, "l") for s, w in _WDQ)
psraw_imm, psrad_imm = (_shift_by_imm(f"psra{s}", w, "a") for s, w in (("w", 2), ("d", 4)))
MASK128 = (1 << 128) - 1


def psrldq(ex: Executor, insn: D.Instruction) -> None:
    dst, imm = insn.operands
    _sse_ready(ex, insn)
    count = min(imm.value & 0xFF, 16)
    ex.put(dst, ex.get(dst) >> (8 * count))


def pslldq(ex: Executor, insn: D.Instruction) -> None:
    dst, imm = insn.operands
    _sse_ready(ex, insn)
    count = min(imm.value & 0xFF, 16)
    ex.put(dst, (ex.get(dst) << (8 * count)) & MASK128)


# --- arithmetic ------------------------------------------------------------------------------------------
def _sat_unsigned(op: Callable[[int, int], int]) -> Callable[[int, int, int], int]:
    return lambda a, b, m: _saturate(op(a, b), 0, m)


def _sat_signed(op: Callable[[int, int], int]) -> Callable[[int, int, int], int]:
    def fn(a: int, b: int, m: int) -> int:
        half = (m + 1) >> 1
        return _saturate(op(_signed(a, m), _signed(b, m)), -half, half - 1) & m

    return fn


def _add(a: int, b: int) -> int:
    return a + b


def _sub(a: int, b: int) -> int:
    return a - b


paddusb, paddusw = (_lanes(f"paddus{s}", w, _sat_unsigned(_add)) for s, w in (("b", 1), ("w", 2)))
psubusb, psubusw = (_lanes(f"psubus{s}", w, _sat_unsigned(_sub)) for s, w in (("b", 1), ("w", 2)))
paddsb, paddsw = (_lanes(f"padds{s}", w, _sat_signed(_add)) for s, w in (("b", 1), ("w", 2)))
psubsb, psubsw = (_lanes(f"psubs{s}", w, _sat_signed(_sub)) for s, w in (("b", 1), ("w", 2)))
pminub = _lanes("pminub", 1, lambda a, b, m: min(a, b))
pmaxub = _lanes("pmaxub", 1, lambda a, b, m: max(a, b))
pminsw = _lanes("pminsw", 2, lambda a, b, m: min(_signed(a, m), _signed(b, m)))
pmaxsw = _lanes("pmaxsw", 2, lambda a, b, m: max(_signed(a, m), _signed(b, m)))
pavgb = _lanes("pavgb", 1, lambda a, b, m: (a + b + 1) >> 1)
pavgw = _lanes("pavgw", 2, lambda a, b, m: (a + b + 1) >> 1)
pmullw = _lanes("pmullw", 2, lambda a, b, m: a * b)
pmulhuw = _lanes("pmulhuw", 2, lambda a, b, m: (a * b) >> 16)
pmulhw = _lanes("pmulhw", 2, lambda a, b, m: (_signed(a, m) * _signed(b, m)) >> 16)


def _pmuludq(a: int, b: int) -> int:
    la, lb = _split(a, 4), _split(b, 4)
    return _join([la[0] * lb[0], la[2] * lb[2]], 8)


def _pmaddwd(a: int, b: int) -> int:
    la = [_signed(v, 0xFFFF) for v in _split(a, 2)]
    lb = [_signed(v, 0xFFFF) for v in _split(b, 2)]
    return _join([la[i] * lb[i] + la[i + 1] * lb[i + 1] for i in range(0, 8, 2)], 4)


def _psadbw(a: int, b: int) -> int:
    la, lb = _split(a, 1), _split(b, 1)
    low = sum(abs(la[i] - lb[i]) for i in range(8))
    high = sum(abs(la[i] - lb[i]) for i in range(8, 16))
    return _join([low, high], 8)


pmuludq = _whole("pmuludq", _pmuludq)
pmaddwd = _whole("pmaddwd", _pmaddwd)
psadbw = _whole("psadbw", _psadbw)

#: 0F D1-FE (66 prefix) opcode -> handler, for the rows of kvmlite.emulator.opcodes_0f.
BY_OPCODE: dict[int, Handler] = {
    0xD1: psrlw, 0xD2: psrld, 0xD3: psrlq, 0xD5: pmullw, 0xD8: psubusb, 0xD9: psubusw, 0xDA: pminub,
    0xDC: paddusb, 0xDD: paddusw, 0xDE: pmaxub, 0xE0: pavgb, 0xE1: psraw, 0xE2: psrad, 0xE3: pavgw,
    0xE4: pmulhuw, 0xE5: pmulhw, 0xE8: psubsb, 0xE9: psubsw, 0xEA: pminsw, 0xEC: paddsb, 0xED: paddsw,
    0xEE: pmaxsw, 0xF1: psllw, 0xF2: pslld, 0xF3: psllq, 0xF4: pmuludq, 0xF5: pmaddwd, 0xF6: psadbw,
}  # fmt: skip
#: 0F 60-6D -> handler.
UNPACKS: dict[int, Handler] = {
    0x60: punpcklbw, 0x61: punpcklwd, 0x62: punpckldq, 0x63: packsswb, 0x67: packuswb, 0x68: punpckhbw,
    0x69: punpckhwd, 0x6A: punpckhdq, 0x6B: packssdw, 0x6C: punpcklqdq, 0x6D: punpckhqdq,
}  # fmt: skip
#: The immediate shift groups 0F 71/72/73 by name.
SHIFT_IMM: dict[str, Handler] = {
    "psrlw": psrlw_imm, "psraw": psraw_imm, "psllw": psllw_imm, "psrld": psrld_imm, "psrad": psrad_imm,
    "pslld": pslld_imm, "psrlq": psrlq_imm, "psllq": psllq_imm, "psrldq": psrldq, "pslldq": pslldq,
}  # fmt: skip


# --- half and scalar moves -----------------------------------------------------------------------------
LOW64 = (1 << 64) - 1


def _merge(ex: Executor, dst: D.Operand, value: int, bits: int, shift: int) -> None:
    """Replace ``bits`` bits at ``shift`` of an XMM register, keeping the rest."""
    mask = ((1 << bits) - 1) << shift
    ex.set_xmm(dst.reg, (ex.get_xmm(dst.reg) & ~mask) | ((value << shift) & mask))


def _half_move(high_dst: bool, high_src: bool) -> Handler:
    """movlps/movlpd/movhps/movhpd/movhlps/movlhps: one quadword of an XMM register to or from a quadword."""

    def handler(ex: Executor, insn: D.Instruction) -> None:
        dst, src = insn.operands
        _sse_ready(ex, insn)
        value = ex.get_xmm(src.reg) >> (64 if high_src else 0) if src.kind == D.OP_REG else ex.get(src)
        if dst.kind == D.OP_REG:
            _merge(ex, dst, value & LOW64, 64, 64 if high_dst else 0)
        else:
            ex.put(dst, value & LOW64)

    return handler


movlps_load = _half_move(False, False)
movhps_load = _half_move(True, False)
movlps_store = _half_move(False, False)
movhps_store = _half_move(False, True)
movhlps = _half_move(False, True)
movlhps = _half_move(True, False)


def _scalar_move(bits: int) -> Handler:
    """movss/movsd: a load from memory zero-extends, a register-to-register move keeps the upper bits."""

    def handler(ex: Executor, insn: D.Instruction) -> None:
        dst, src = insn.operands
        _sse_ready(ex, insn)
        value = ex.get_xmm(src.reg) & ((1 << bits) - 1) if src.kind == D.OP_REG else ex.get(src)
        if dst.kind != D.OP_REG:
            ex.put(dst, value)
        elif src.kind == D.OP_REG:
            _merge(ex, dst, value, bits, 0)
        else:
            ex.set_xmm(dst.reg, value)

    return handler


movss = _scalar_move(32)
movsd = _scalar_move(64)
