"""The opcode tables of the x86 decoder, written as data.

Shape (after QEMU's ``decode-new.c.inc`` and the Intel SDM volume 2, appendix A):
each opcode byte of a map owns one entry, and an entry is one of

* :class:`Row` -- a final instruction: mnemonic, operand kinds in the SDM's
  notation (``"Ev,Gv"``, ``"AL,Ib"``, ``"Zv"``) and attribute flags;
* :class:`Group` -- eight entries selected by ModRM.reg (``/0`` .. ``/7``);
* :class:`Prefixed` -- entries selected by the mandatory prefix (none, 66, F3,
  F2), for the SSE maps and a few integer instructions (POPCNT, PAUSE);
* :class:`ModSplit` -- one entry for a memory ModRM (mod != 3) and one for a
  register ModRM (mod == 3), the register one optionally per ModRM.rm.

Operand kinds are parsed once, at import, into :class:`OperandSpec` tuples of
small integers so that the decoder's inner loop compares ints, never strings.

Operand notation used here (SDM A.2 plus a few of our own):

=========  ================================================================
``E``      ModRM r/m: general register or memory
``G``      ModRM reg: general register
``M``      ModRM r/m, memory only (register form is #UD)
``R``      ModRM r/m, register only (MOV CR/DR ignore mod)
``S``      ModRM reg: segment register
``C/D``    ModRM reg: control / debug register
``V/W/U``  ModRM reg / r/m / r/m register only, XMM
``P/Q/N``  ModRM reg / r/m / r/m register only, MMX
``I/J``    immediate / relative branch offset (``Ibs``: sign-extended byte)
``O``      absolute offset (moffs) of the address size
``A``      direct far pointer (seg:offset)
``X/Y``    string source DS:rSI / destination ES:rDI
``Z``      register in the opcode's low three bits (+REX.B)
``AL``...  fixed registers; ``rAX`` sized by operand size, ``eAX`` at most 32 bits
``1``      the constant 1 (shift by one)
=========  ================================================================

Sizes: ``b w d q`` fixed, ``v`` operand size, ``z`` operand size capped at 32,
``y`` 32 or 64, ``p`` far pointer, ``s`` descriptor-table pseudo descriptor,
``a`` BOUND pair, ``o`` 8 or 16 (CMPXCHG8B/16B), ``x`` 128-bit vector, ``0`` no size (LEA, FXSAVE).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from kvmlite.emulator.cpu import CS, DS, ES, FS, GS, SEG_NAMES, SS
from kvmlite.emulator.handlers import (
    arith,
    control,
    data,
    interrupt,
    privileged,
    segment,
    string,
    x87,
)
from kvmlite.emulator.instruction import REPZ, Instruction
from kvmlite.x86 import CpuidBit

if TYPE_CHECKING:
    from kvmlite.emulator.executor import Executor

#: An instruction's routine: ``handler(executor, instruction)`` (see :mod:`kvmlite.emulator.handlers`).
Handler = Callable[["Executor", Instruction], None]

# --- attribute flags ------------------------------------------------------------

MODRM = 1 << 0  # a ModRM byte follows the opcode
LOCK = 1 << 1  # accepts a LOCK prefix (with a memory destination)
NO64 = 1 << 2  # invalid in 64-bit mode
ONLY64 = 1 << 3  # valid only in 64-bit mode
DEF64 = 1 << 4  # operand size defaults to 64 bits in 64-bit mode (66 gives 16)
F64 = 1 << 5  # operand size forced to 64 bits in 64-bit mode (66 ignored, Intel)
STRING = 1 << 6  # string instruction: REP prefix repeats it
# REPZ = 1 << 7: REPE/REPNE test ZF (CMPS, SCAS); defined in .instruction, which prints it
SSE = 1 << 8  # vector instruction (length decoding; executor does not run it)
X87 = 1 << 9  # x87 instruction (length decoding only)
ASZ_MNEM = 1 << 10  # mnemonic variant picked by address size (JCXZ), not operand size
NOSIZE_MNEM = 1 << 11  # operand size does not alter the mnemonic
SYS = 1 << 12  # system instruction (informational; CPL0 below is what the executor checks)
MOD3_ANY = 1 << 13  # R operand accepts any mod (MOV CR/DR)
BRANCH = 1 << 14  # changes RIP (informational)

# --- checks the executor makes before a row's handler runs, in this order (as Linux's
# emulate.c checks Priv/Prot and QEMU's decode-new.c.inc its chk() and cpuid fields):
# the row's CPUID feature (#UD), then these, then the handler's own.
LONG_SCE = 1 << 15  # #UD unless EFER.SCE and EFER.LMA (SYSCALL, SYSRET)
MODE64 = 1 << 16  # #UD outside 64-bit mode (SYSRET)
OSXSAVE = 1 << 17  # #UD unless CR4.OSXSAVE (the XSAVE family)
FSGSBASE = 1 << 18  # #UD unless CR4.FSGSBASE (RDFSBASE and friends)
CPL0 = 1 << 19  # #GP(0) unless CPL 0 (in protected and virtual-8086 mode)
IOPL = 1 << 20  # #GP(0) if CPL > IOPL in protected mode (CLI, STI)
CHECKS = LONG_SCE | MODE64 | OSXSAVE | FSGSBASE | CPL0 | IOPL

# --- addressing methods ---------------------------------------------------------

M_NONE = 0
M_E = 1
M_G = 2
M_M = 3
M_R = 4
M_S = 5
M_C = 6
M_D = 7
M_V = 8
M_W = 9
M_U = 10
M_P = 11
M_Q = 12
M_N = 13
M_I = 14  # immediate, zero/size extended
M_IS = 15  # immediate byte sign-extended to operand size
M_J = 16
M_O = 17
M_A = 18
M_X = 19
M_Y = 20
M_Z = 21
M_FIXREG = 22  # fixed general register (index in .reg)
M_FIXSEG = 23  # fixed segment register
M_ONE = 24  # constant 1
M_I2 = 25  # the second immediate of ENTER (a byte after an Iw)
M_ST = 26  # x87 ST(i) from ModRM.rm
M_ST0 = 27  # x87 ST(0)

# --- sizes (positive: bytes; negative: resolved at decode time) -------------------

SZ_NONE = 0
SZ_V = -1
SZ_Z = -2
SZ_Y = -3
SZ_P = -4
SZ_S = -5
SZ_A = -6
SZ_O = -7  # CMPXCHG8B/16B: 8 bytes, 16 with REX.W

_SIZE_CODES: dict[str, int] = {
    "b": 1,
    "w": 2,
    "d": 4,
    "q": 8,
    "dq": 16,
    "x": 16,
    "ps": 16,
    "pd": 16,
    "ss": 4,
    "sd": 8,
    "t": 10,
    "v": SZ_V,
    "z": SZ_Z,
    "y": SZ_Y,
    "p": SZ_P,
    "s": SZ_S,
    "a": SZ_A,
    "o": SZ_O,
    "0": SZ_NONE,
    "": SZ_NONE,
}

_METHODS: dict[str, int] = {
    "E": M_E,
    "G": M_G,
    "M": M_M,
    "R": M_R,
    "S": M_S,
    "C": M_C,
    "D": M_D,
    "V": M_V,
    "W": M_W,
    "U": M_U,
    "P": M_P,
    "Q": M_Q,
    "N": M_N,
    "I": M_I,
    "J": M_J,
    "O": M_O,
    "A": M_A,
    "X": M_X,
    "Y": M_Y,
    "Z": M_Z,
}

GPR_FIXED: dict[str, tuple[int, int]] = {
    # name: (register index, size code)
    "AL": (0, 1),
    "CL": (1, 1),
    "DX": (2, 2),
    "AX": (0, 2),
    "rAX": (0, SZ_V),
    "eAX": (0, SZ_Z),
}

SEG_ES, SEG_CS, SEG_SS, SEG_DS, SEG_FS, SEG_GS = ES, CS, SS, DS, FS, GS  # the SDM's Sreg numbers


class OperandSpec(NamedTuple):
    """One parsed operand kind: addressing method, size code, fixed register."""

    method: int
    size: int
    reg: int = 0


def parse_operand(text: str) -> OperandSpec:
    """Turn SDM notation (``"Ev"``, ``"rAX"``, ``"Ibs"``, ``"ES"``) into an :class:`OperandSpec`."""
    if text in GPR_FIXED:
        reg, size = GPR_FIXED[text]
        return OperandSpec(M_FIXREG, size, reg)
    if text.lower() in SEG_NAMES and text.isupper():
        return OperandSpec(M_FIXSEG, 2, SEG_NAMES.index(text.lower()))
    if text == "1":
        return OperandSpec(M_ONE, 1)
    if text == "I2b":
        return OperandSpec(M_I2, 1)
    if text == "STi":
        return OperandSpec(M_ST, 10)
    if text == "ST0":
        return OperandSpec(M_ST0, 10)
    if text == "Ibs":
        return OperandSpec(M_IS, 1)
    method = _METHODS.get(text[0])
    size_code = _SIZE_CODES.get(text[1:])
    if method is None or size_code is None:
        raise ValueError(f"bad operand kind {text!r} in the opcode table")
    return OperandSpec(method, size_code)


_MODRM_METHODS = frozenset({M_E, M_G, M_M, M_R, M_S, M_C, M_D, M_V, M_W, M_U, M_P, M_Q, M_N, M_ST})


class Row:
    """A final table entry: one instruction form.

    ``mnemonic`` may hold size variants separated by ``/`` (``"cbw/cwde/cdqe"``),
    picked by operand size 16/32/64 (or address size with ``ASZ_MNEM``).
    ``handler`` is the executor's routine for the instruction, a function of
    ``(executor, instruction)`` from :mod:`kvmlite.emulator.handlers` (None:
    decoded but not executed), so e.g. all sixteen ``jcc`` rows share one
    routine; ``name`` is its name.  ``flags`` hold the decoder's attributes
    and the checks the executor makes before the handler runs (``CPL0``,
    ``IOPL``, ``OSXSAVE``...); ``cpuid`` is the CPUID feature the instruction
    needs (#UD without it).  ``cond`` is the condition code of Jcc, SETcc and
    CMOVcc.
    """

    __slots__ = ("checked", "cond", "cpuid", "flags", "handler", "mnemonics", "name", "operands")

    def __init__(
        self,
        mnemonic: str,
        operands: str = "",
        handler: Handler | None = None,
        flags: int = 0,
        cond: int = 0,
        cpuid: CpuidBit | None = None,
    ):
        self.mnemonics: tuple[str, ...] = tuple(mnemonic.split("/"))
        self.operands: tuple[OperandSpec, ...] = tuple(parse_operand(o) for o in operands.split(",") if o)
        if any(o.method in _MODRM_METHODS for o in self.operands):
            flags |= MODRM
        self.flags = flags
        self.handler = handler
        self.name = handler.__name__.rstrip("_") if handler is not None else self.mnemonics[0]
        self.cond = cond
        self.cpuid = cpuid
        #: the executor must check something before running the handler
        self.checked = bool(flags & CHECKS or cpuid is not None)

    def __repr__(self) -> str:
        return f"Row({'/'.join(self.mnemonics)!r})"


class Group:
    """Eight entries selected by ModRM.reg (the SDM's ``/digit`` opcode extensions)."""

    __slots__ = ("entries",)

    def __init__(self, entries: Sequence[Entry | None]):
        if len(entries) != 8:
            raise ValueError("a group has eight entries")
        self.entries = entries


class Prefixed:
    """Entries selected by the mandatory prefix: none, 66, F3, F2."""

    __slots__ = ("entries",)

    def __init__(
        self,
        none: Entry | None = None,
        p66: Entry | None = None,
        pf3: Entry | None = None,
        pf2: Entry | None = None,
    ):
        self.entries = (none, p66, pf3, pf2)


class ModSplit:
    """A memory form and a register form; the register form may be split per ModRM.rm."""

    __slots__ = ("mem", "reg", "reg_by_rm")

    def __init__(
        self, mem: Entry | None, reg: Entry | None = None, reg_by_rm: Sequence[Entry | None] | None = None
    ):
        self.mem = mem
        self.reg = reg
        self.reg_by_rm = reg_by_rm


Entry = Row | Group | Prefixed | ModSplit

# --- helpers to write the tables compactly ---------------------------------------------

CONDITIONS: tuple[str, ...] = (
    "o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g",
)
ALU_OPS: tuple[tuple[str, Handler], ...] = (
    ("add", arith.add),
    ("or", arith.or_),
    ("adc", arith.adc),
    ("sbb", arith.sbb),
    ("and", arith.and_),
    ("sub", arith.sub),
    ("xor", arith.xor),
    ("cmp", arith.cmp),
)
SHIFT_OPS: tuple[tuple[str, Handler], ...] = (
    ("rol", arith.rol),
    ("ror", arith.ror),
    ("rcl", arith.rcl),
    ("rcr", arith.rcr),
    ("shl", arith.shl),
    ("shr", arith.shr),
    ("sal", arith.shl),
    ("sar", arith.sar),
)


def _alu_group(operands: str, extra: int = 0) -> Group:
    return Group([Row(m, operands, fn, (0 if m == "cmp" else LOCK) | extra) for m, fn in ALU_OPS])


def _shift_group(operands: str) -> Group:
    return Group([Row(m, operands, fn) for m, fn in SHIFT_OPS])


def sse_row(name: str, operands: str = "Vx,Wx", extra: int = 0, handler: Handler | None = None) -> Row:
    return Row(name, operands, handler, SSE | NOSIZE_MNEM | extra)


def sse_quartet(base: str, operands: str = "Vx,Wx") -> Prefixed:
    """The ps/pd/ss/sd quartet of 0F 5x arithmetic."""
    return Prefixed(
        sse_row(base + "ps", operands),
        sse_row(base + "pd", operands),
        sse_row(base + "ss", operands.replace("Wx", "Wss")),
        sse_row(base + "sd", operands.replace("Wx", "Wsd")),
    )


def mmx_sse(
    name: str, mmx_ops: str = "Pq,Qq", sse_ops: str = "Vx,Wx", handler: Handler | None = None
) -> Prefixed:
    """An MMX form without prefix and its SSE2 twin under 66."""
    return Prefixed(sse_row(name, mmx_ops, handler=handler), sse_row(name, sse_ops, handler=handler))


def only66(name: str, operands: str = "Vx,Wx", handler: Handler | None = None) -> Prefixed:
    return Prefixed(None, sse_row(name, operands, handler=handler))


# --- one-byte map -----------------------------------------------------------------------

ONE_BYTE: list[Entry | None] = [None] * 256

for _i, (_name, _fn) in enumerate(ALU_OPS):
    _b = _i * 8
    _lk = 0 if _name == "cmp" else LOCK
    ONE_BYTE[_b + 0] = Row(_name, "Eb,Gb", _fn, _lk)
    ONE_BYTE[_b + 1] = Row(_name, "Ev,Gv", _fn, _lk)
    ONE_BYTE[_b + 2] = Row(_name, "Gb,Eb", _fn)
    ONE_BYTE[_b + 3] = Row(_name, "Gv,Ev", _fn)
    ONE_BYTE[_b + 4] = Row(_name, "AL,Ib", _fn)
    ONE_BYTE[_b + 5] = Row(_name, "rAX,Iz", _fn)

ONE_BYTE[0x06] = Row("push", "ES", segment.push_seg, NO64)
ONE_BYTE[0x07] = Row("pop", "ES", segment.pop_seg, NO64)
ONE_BYTE[0x0E] = Row("push", "CS", segment.push_seg, NO64)
ONE_BYTE[0x16] = Row("push", "SS", segment.push_seg, NO64)
ONE_BYTE[0x17] = Row("pop", "SS", segment.pop_seg, NO64)
ONE_BYTE[0x1E] = Row("push", "DS", segment.push_seg, NO64)
ONE_BYTE[0x1F] = Row("pop", "DS", segment.pop_seg, NO64)
ONE_BYTE[0x27] = Row("daa", "", arith.daa, NO64)
ONE_BYTE[0x2F] = Row("das", "", arith.das, NO64)
ONE_BYTE[0x37] = Row("aaa", "", arith.aaa, NO64)
ONE_BYTE[0x3F] = Row("aas", "", arith.aas, NO64)
for _i in range(8):
    ONE_BYTE[0x40 + _i] = Row("inc", "Zv", arith.inc, NO64)
    ONE_BYTE[0x48 + _i] = Row("dec", "Zv", arith.dec, NO64)
    ONE_BYTE[0x50 + _i] = Row("push", "Zv", data.push, DEF64)
    ONE_BYTE[0x58 + _i] = Row("pop", "Zv", data.pop, DEF64)
ONE_BYTE[0x60] = Row("pushaw/pushal", "", data.pusha, NO64)
ONE_BYTE[0x61] = Row("popaw/popal", "", data.popa, NO64)
ONE_BYTE[0x62] = ModSplit(Row("bound", "Gv,Ma", arith.bound, NO64), None)
ONE_BYTE[0x63] = Row("arpl", "Ew,Gw", segment.arpl, NO64)  # MOVSXD in 64-bit mode: see MOVSXD_ROW
ONE_BYTE[0x68] = Row("push", "Iz", data.push, DEF64)
ONE_BYTE[0x69] = Row("imul", "Gv,Ev,Iz", arith.imul3)
ONE_BYTE[0x6A] = Row("push", "Ibs", data.push, DEF64)
ONE_BYTE[0x6B] = Row("imul", "Gv,Ev,Ibs", arith.imul3)
ONE_BYTE[0x6C] = Row("insb", "Yb,DX", string.ins, STRING)
ONE_BYTE[0x6D] = Row("insw/insd/insd", "Yz,DX", string.ins, STRING)
ONE_BYTE[0x6E] = Row("outsb", "DX,Xb", string.outs, STRING)
ONE_BYTE[0x6F] = Row("outsw/outsd/outsd", "DX,Xz", string.outs, STRING)
for _i, _c in enumerate(CONDITIONS):
    ONE_BYTE[0x70 + _i] = Row("j" + _c, "Jb", control.jcc, F64 | BRANCH, cond=_i)
ONE_BYTE[0x80] = _alu_group("Eb,Ib")
ONE_BYTE[0x81] = _alu_group("Ev,Iz")
ONE_BYTE[0x82] = _alu_group("Eb,Ib", NO64)
ONE_BYTE[0x83] = _alu_group("Ev,Ibs")
ONE_BYTE[0x84] = Row("test", "Eb,Gb", arith.test)
ONE_BYTE[0x85] = Row("test", "Ev,Gv", arith.test)
ONE_BYTE[0x86] = Row("xchg", "Eb,Gb", data.xchg, LOCK)
ONE_BYTE[0x87] = Row("xchg", "Ev,Gv", data.xchg, LOCK)
ONE_BYTE[0x88] = Row("mov", "Eb,Gb", data.mov)
ONE_BYTE[0x89] = Row("mov", "Ev,Gv", data.mov)
ONE_BYTE[0x8A] = Row("mov", "Gb,Eb", data.mov)
ONE_BYTE[0x8B] = Row("mov", "Gv,Ev", data.mov)
ONE_BYTE[0x8C] = Row("mov", "Ev,Sw", segment.mov_from_seg)
ONE_BYTE[0x8D] = ModSplit(Row("lea", "Gv,M0", data.lea), None)
ONE_BYTE[0x8E] = Row("mov", "Sw,Ew", segment.mov_to_seg)
ONE_BYTE[0x8F] = Group([Row("pop", "Ev", data.pop, DEF64), None, None, None, None, None, None, None])
ONE_BYTE[0x90] = Prefixed(
    Row("nop", "", data.nop), Row("nop", "", data.nop), Row("pause", "", data.pause), Row("nop", "", data.nop)
)  # REX.B: XCHG_R8_ROW
for _i in range(1, 8):
    ONE_BYTE[0x90 + _i] = Row("xchg", "Zv,rAX", data.xchg)
ONE_BYTE[0x98] = Row("cbw/cwde/cdqe", "", data.cbw)
ONE_BYTE[0x99] = Row("cwd/cdq/cqo", "", data.cwd)
ONE_BYTE[0x9A] = Row("lcall", "Ap", control.call_far, NO64 | BRANCH)
ONE_BYTE[0x9B] = Row("wait", "", data.fwait)
ONE_BYTE[0x9C] = Row("pushf/pushfd/pushfq", "", data.pushf, DEF64)
ONE_BYTE[0x9D] = Row("popf/popfd/popfq", "", data.popf, DEF64)
ONE_BYTE[0x9E] = Row("sahf", "", data.sahf)
ONE_BYTE[0x9F] = Row("lahf", "", data.lahf)
ONE_BYTE[0xA0] = Row("mov", "AL,Ob", data.mov)
ONE_BYTE[0xA1] = Row("mov", "rAX,Ov", data.mov)
ONE_BYTE[0xA2] = Row("mov", "Ob,AL", data.mov)
ONE_BYTE[0xA3] = Row("mov", "Ov,rAX", data.mov)
ONE_BYTE[0xA4] = Row("movsb", "Yb,Xb", string.movs, STRING)
ONE_BYTE[0xA5] = Row("movsw/movsd/movsq", "Yv,Xv", string.movs, STRING)
ONE_BYTE[0xA6] = Row("cmpsb", "Xb,Yb", string.cmps, STRING | REPZ)
ONE_BYTE[0xA7] = Row("cmpsw/cmpsd/cmpsq", "Xv,Yv", string.cmps, STRING | REPZ)
ONE_BYTE[0xA8] = Row("test", "AL,Ib", arith.test)
ONE_BYTE[0xA9] = Row("test", "rAX,Iz", arith.test)
ONE_BYTE[0xAA] = Row("stosb", "Yb,AL", string.stos, STRING)
ONE_BYTE[0xAB] = Row("stosw/stosd/stosq", "Yv,rAX", string.stos, STRING)
ONE_BYTE[0xAC] = Row("lodsb", "AL,Xb", string.lods, STRING)
ONE_BYTE[0xAD] = Row("lodsw/lodsd/lodsq", "rAX,Xv", string.lods, STRING)
ONE_BYTE[0xAE] = Row("scasb", "AL,Yb", string.scas, STRING | REPZ)
ONE_BYTE[0xAF] = Row("scasw/scasd/scasq", "rAX,Yv", string.scas, STRING | REPZ)
for _i in range(8):
    ONE_BYTE[0xB0 + _i] = Row("mov", "Zb,Ib", data.mov)
    ONE_BYTE[0xB8 + _i] = Row("mov", "Zv,Iv", data.mov)  # Iv: a full 64-bit immediate with REX.W
ONE_BYTE[0xC0] = _shift_group("Eb,Ib")
ONE_BYTE[0xC1] = _shift_group("Ev,Ib")
ONE_BYTE[0xC2] = Row("ret", "Iw", control.ret, F64 | BRANCH | NOSIZE_MNEM)
ONE_BYTE[0xC3] = Row("ret", "", control.ret, F64 | BRANCH | NOSIZE_MNEM)
ONE_BYTE[0xC4] = ModSplit(Row("les", "Gz,Mp", segment.load_far_ptr, NO64), None)
ONE_BYTE[0xC5] = ModSplit(Row("lds", "Gz,Mp", segment.load_far_ptr, NO64), None)
ONE_BYTE[0xC6] = Group([Row("mov", "Eb,Ib", data.mov), None, None, None, None, None, None, None])
ONE_BYTE[0xC7] = Group([Row("mov", "Ev,Iz", data.mov), None, None, None, None, None, None, None])
ONE_BYTE[0xC8] = Row("enter", "Iw,I2b", data.enter, DEF64 | NOSIZE_MNEM)
ONE_BYTE[0xC9] = Row("leave", "", data.leave, DEF64 | NOSIZE_MNEM)
ONE_BYTE[0xCA] = Row("retf", "Iw", control.retf, BRANCH | NOSIZE_MNEM)
ONE_BYTE[0xCB] = Row("retf", "", control.retf, BRANCH | NOSIZE_MNEM)
ONE_BYTE[0xCC] = Row("int3", "", interrupt.int3, BRANCH)
ONE_BYTE[0xCD] = Row("int", "Ib", interrupt.int_, BRANCH)
ONE_BYTE[0xCE] = Row("into", "", interrupt.into, NO64 | BRANCH)
ONE_BYTE[0xCF] = Row("iret/iretd/iretq", "", interrupt.iret, BRANCH)
ONE_BYTE[0xD0] = _shift_group("Eb,1")
ONE_BYTE[0xD1] = _shift_group("Ev,1")
ONE_BYTE[0xD2] = _shift_group("Eb,CL")
ONE_BYTE[0xD3] = _shift_group("Ev,CL")
ONE_BYTE[0xD4] = Row("aam", "Ib", arith.aam, NO64)
ONE_BYTE[0xD5] = Row("aad", "Ib", arith.aad, NO64)
ONE_BYTE[0xD6] = Row("salc", "", arith.salc, NO64)
ONE_BYTE[0xD7] = Row("xlatb", "", data.xlatb, NOSIZE_MNEM)
ONE_BYTE[0xE0] = Row("loopne", "Jb", control.loop, F64 | BRANCH)
ONE_BYTE[0xE1] = Row("loope", "Jb", control.loop, F64 | BRANCH)
ONE_BYTE[0xE2] = Row("loop", "Jb", control.loop, F64 | BRANCH)
ONE_BYTE[0xE3] = Row("jcxz/jecxz/jrcxz", "Jb", control.jcxz, F64 | BRANCH | ASZ_MNEM)
ONE_BYTE[0xE4] = Row("in", "AL,Ib", privileged.in_)
ONE_BYTE[0xE5] = Row("in", "eAX,Ib", privileged.in_)
ONE_BYTE[0xE6] = Row("out", "Ib,AL", privileged.out)
ONE_BYTE[0xE7] = Row("out", "Ib,eAX", privileged.out)
ONE_BYTE[0xE8] = Row("call", "Jz", control.call, F64 | BRANCH)
ONE_BYTE[0xE9] = Row("jmp", "Jz", control.jmp, F64 | BRANCH)
ONE_BYTE[0xEA] = Row("ljmp", "Ap", control.jmp_far, NO64 | BRANCH)
ONE_BYTE[0xEB] = Row("jmp", "Jb", control.jmp, F64 | BRANCH)
ONE_BYTE[0xEC] = Row("in", "AL,DX", privileged.in_)
ONE_BYTE[0xED] = Row("in", "eAX,DX", privileged.in_)
ONE_BYTE[0xEE] = Row("out", "DX,AL", privileged.out)
ONE_BYTE[0xEF] = Row("out", "DX,eAX", privileged.out)
ONE_BYTE[0xF1] = Row("int1", "", interrupt.int1, BRANCH)
ONE_BYTE[0xF4] = Row("hlt", "", privileged.hlt, SYS | CPL0)
ONE_BYTE[0xF5] = Row("cmc", "", arith.cmc)
ONE_BYTE[0xF6] = Group(
    [
        Row("test", "Eb,Ib", arith.test),
        Row("test", "Eb,Ib", arith.test),
        Row("not", "Eb", arith.not_, LOCK),
        Row("neg", "Eb", arith.neg, LOCK),
        Row("mul", "Eb", arith.mul),
        Row("imul", "Eb", arith.imul),
        Row("div", "Eb", arith.div),
        Row("idiv", "Eb", arith.idiv),
    ]
)
ONE_BYTE[0xF7] = Group(
    [
        Row("test", "Ev,Iz", arith.test),
        Row("test", "Ev,Iz", arith.test),
        Row("not", "Ev", arith.not_, LOCK),
        Row("neg", "Ev", arith.neg, LOCK),
        Row("mul", "Ev", arith.mul),
        Row("imul", "Ev", arith.imul),
        Row("div", "Ev", arith.div),
        Row("idiv", "Ev", arith.idiv),
    ]
)
ONE_BYTE[0xF8] = Row("clc", "", arith.clc)
ONE_BYTE[0xF9] = Row("stc", "", arith.stc)
ONE_BYTE[0xFA] = Row("cli", "", privileged.cli, IOPL)
ONE_BYTE[0xFB] = Row("sti", "", privileged.sti, IOPL)
ONE_BYTE[0xFC] = Row("cld", "", arith.cld)
ONE_BYTE[0xFD] = Row("std", "", arith.std)
ONE_BYTE[0xFE] = Group(
    [Row("inc", "Eb", arith.inc, LOCK), Row("dec", "Eb", arith.dec, LOCK), None, None, None, None, None, None]
)
ONE_BYTE[0xFF] = Group(
    [
        Row("inc", "Ev", arith.inc, LOCK),
        Row("dec", "Ev", arith.dec, LOCK),
        Row("call", "Ev", control.call_ind, F64 | BRANCH),
        ModSplit(Row("lcall", "Mp", control.call_far_ind, BRANCH), None),
        Row("jmp", "Ev", control.jmp_ind, F64 | BRANCH),
        ModSplit(Row("ljmp", "Mp", control.jmp_far_ind, BRANCH), None),
        Row("push", "Ev", data.push, DEF64),
        None,
    ]
)

# Rows that replace a one-byte entry in 64-bit mode or with REX.B.
MOVSXD_ROW = Row("movsxd", "Gv,Ed", data.movsx)
XCHG_R8_ROW = Row("xchg", "Zv,rAX", data.xchg)

# x87: memory forms by (opcode - D8, ModRM.reg); register forms only decode for length.
_X87_MEM: list[tuple[str, ...]] = [
    ("fadd Md", "fmul Md", "fcom Md", "fcomp Md", "fsub Md", "fsubr Md", "fdiv Md", "fdivr Md"),
    ("fld Md", "", "fst Md", "fstp Md", "fldenv M0", "fldcw Mw", "fnstenv M0", "fnstcw Mw"),
    ("fiadd Md", "fimul Md", "ficom Md", "ficomp Md", "fisub Md", "fisubr Md", "fidiv Md", "fidivr Md"),
    ("fild Md", "fisttp Md", "fist Md", "fistp Md", "", "fld Mt", "", "fstp Mt"),
    ("fadd Mq", "fmul Mq", "fcom Mq", "fcomp Mq", "fsub Mq", "fsubr Mq", "fdiv Mq", "fdivr Mq"),
    ("fld Mq", "fisttp Mq", "fst Mq", "fstp Mq", "frstor M0", "", "fnsave M0", "fnstsw Mw"),
    ("fiadd Mw", "fimul Mw", "ficom Mw", "ficomp Mw", "fisub Mw", "fisubr Mw", "fidiv Mw", "fidivr Mw"),
    ("fild Mw", "fisttp Mw", "fist Mw", "fistp Mw", "fbld Mt", "fild Mq", "fbstp Mt", "fistp Mq"),
]
#: The x87 control instructions the emulator runs (handlers.x87): memory forms by mnemonic, and
#: register forms by (opcode - D8, ModRM & 0x3F).
_X87_HANDLERS = {"fldcw": x87.fldcw, "fnstcw": x87.fnstcw, "fnstsw": x87.fnstsw}
_X87_REG_ROWS = {
    (3, 0x22): Row("fnclex", "", x87.fnclex, X87 | NOSIZE_MNEM),
    (3, 0x23): Row("fninit", "", x87.fninit, X87 | NOSIZE_MNEM),
    (7, 0x20): Row("fnstsw", "AX", x87.fnstsw, X87 | NOSIZE_MNEM),
}
_X87_ANY = Row("x87", "", None, X87 | NOSIZE_MNEM)
for _i in range(8):
    _mem: list[Entry | None] = []
    for _spec in _X87_MEM[_i]:
        if not _spec:
            _mem.append(None)
            continue
        _mn, _ops = _spec.split()
        _mem.append(Row(_mn, _ops, _X87_HANDLERS.get(_mn), X87 | NOSIZE_MNEM))
    _by_rm = [_X87_REG_ROWS.get((_i, _rm), _X87_ANY) for _rm in range(64)]
    _split = _by_rm if any(r is not _X87_ANY for r in _by_rm) else None
    ONE_BYTE[0xD8 + _i] = ModSplit(Group(_mem), _X87_ANY, _split)

# --- the 0F, 0F 38 and 0F 3A maps live in opcodes_0f.py (imported here, after the machinery they use)
from kvmlite.emulator.opcodes_0f import THREE_BYTE_3A, THREE_BYTE_38, TWO_BYTE  # noqa: E402

MAPS: tuple[list[Entry | None], ...] = (ONE_BYTE, TWO_BYTE, THREE_BYTE_38, THREE_BYTE_3A)
MAP_ONE, MAP_0F, MAP_0F38, MAP_0F3A = range(4)
