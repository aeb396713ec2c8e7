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

from typing import NamedTuple

# --- attribute flags ------------------------------------------------------------

MODRM = 1 << 0  # a ModRM byte follows the opcode
LOCK = 1 << 1  # accepts a LOCK prefix (with a memory destination)
NO64 = 1 << 2  # invalid in 64-bit mode
ONLY64 = 1 << 3  # valid only in 64-bit mode
DEF64 = 1 << 4  # operand size defaults to 64 bits in 64-bit mode (66 gives 16)
F64 = 1 << 5  # operand size forced to 64 bits in 64-bit mode (66 ignored, Intel)
STRING = 1 << 6  # string instruction: REP prefix repeats it
REPZ = 1 << 7  # REPE/REPNE test ZF (CMPS, SCAS)
SSE = 1 << 8  # vector instruction (length decoding; executor does not run it)
X87 = 1 << 9  # x87 instruction (length decoding only)
ASZ_MNEM = 1 << 10  # mnemonic variant picked by address size (JCXZ), not operand size
NOSIZE_MNEM = 1 << 11  # operand size does not alter the mnemonic
SYS = 1 << 12  # privileged / system instruction (informational)
MOD3_ANY = 1 << 13  # R operand accepts any mod (MOV CR/DR)
BRANCH = 1 << 14  # changes RIP (informational)

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

SEG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")
SEG_ES, SEG_CS, SEG_SS, SEG_DS, SEG_FS, SEG_GS = range(6)


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
    size = _SIZE_CODES.get(text[1:])
    if method is None or size is None:
        raise ValueError(f"bad operand kind {text!r} in the opcode table")
    return OperandSpec(method, size)


_MODRM_METHODS = frozenset({M_E, M_G, M_M, M_R, M_S, M_C, M_D, M_V, M_W, M_U, M_P, M_Q, M_N, M_ST})


class Row:
    """A final table entry: one instruction form.

    ``mnemonic`` may hold size variants separated by ``/`` (``"cbw/cwde/cdqe"``),
    picked by operand size 16/32/64 (or address size with ``ASZ_MNEM``).
    ``handler`` names the executor's semantic routine (defaults to the first
    variant) so that e.g. all eight ``jcc`` rows share one routine.
    """

    __slots__ = ("cond", "flags", "handler", "mnemonics", "operands")

    def __init__(self, mnemonic: str, operands: str = "", flags: int = 0, handler: str = "", cond: int = 0):
        self.mnemonics: tuple[str, ...] = tuple(mnemonic.split("/"))
        self.operands: tuple[OperandSpec, ...] = tuple(parse_operand(o) for o in operands.split(",") if o)
        if any(o.method in _MODRM_METHODS for o in self.operands):
            flags |= MODRM
        self.flags = flags
        self.handler = handler or self.mnemonics[0]
        self.cond = cond

    def __repr__(self) -> str:
        return f"Row({'/'.join(self.mnemonics)!r})"


class Group:
    """Eight entries selected by ModRM.reg (the SDM's ``/digit`` opcode extensions)."""

    __slots__ = ("entries",)

    def __init__(self, entries: list[Entry | None]):
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
        self, mem: Entry | None, reg: Entry | None = None, reg_by_rm: list[Entry | None] | None = None
    ):
        self.mem = mem
        self.reg = reg
        self.reg_by_rm = reg_by_rm


Entry = Row | Group | Prefixed | ModSplit

# --- helpers to write the tables compactly ---------------------------------------------

CONDITIONS = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")
ALU_OPS = ("add", "or", "adc", "sbb", "and", "sub", "xor", "cmp")
SHIFT_OPS = ("rol", "ror", "rcl", "rcr", "shl", "shr", "sal", "sar")


def _alu_group(operands: str, extra: int = 0) -> Group:
    return Group([Row(m, operands, (0 if m == "cmp" else LOCK) | extra, handler=m) for m in ALU_OPS])


def _shift_group(operands: str) -> Group:
    return Group([Row(m, operands, handler="shl" if m == "sal" else m) for m in SHIFT_OPS])


def _sse(name: str, operands: str = "Vx,Wx", extra: int = 0) -> Row:
    return Row(name, operands, SSE | NOSIZE_MNEM | extra)


def _sse4(base: str, operands: str = "Vx,Wx") -> Prefixed:
    """The ps/pd/ss/sd quartet of 0F 5x arithmetic."""
    return Prefixed(
        _sse(base + "ps", operands),
        _sse(base + "pd", operands),
        _sse(base + "ss", operands.replace("Wx", "Wss")),
        _sse(base + "sd", operands.replace("Wx", "Wsd")),
    )


def _mmx_sse(name: str, mmx_ops: str = "Pq,Qq", sse_ops: str = "Vx,Wx") -> Prefixed:
    """An MMX form without prefix and its SSE2 twin under 66."""
    return Prefixed(_sse(name, mmx_ops), _sse(name, sse_ops))


def _only66(name: str, operands: str = "Vx,Wx") -> Prefixed:
    return Prefixed(None, _sse(name, operands))


# --- one-byte map -----------------------------------------------------------------------

ONE_BYTE: list[Entry | None] = [None] * 256

for _i, _name in enumerate(ALU_OPS):
    _b = _i * 8
    _lk = 0 if _name == "cmp" else LOCK
    ONE_BYTE[_b + 0] = Row(_name, "Eb,Gb", _lk)
    ONE_BYTE[_b + 1] = Row(_name, "Ev,Gv", _lk)
    ONE_BYTE[_b + 2] = Row(_name, "Gb,Eb")
    ONE_BYTE[_b + 3] = Row(_name, "Gv,Ev")
    ONE_BYTE[_b + 4] = Row(_name, "AL,Ib")
    ONE_BYTE[_b + 5] = Row(_name, "rAX,Iz")

ONE_BYTE[0x06] = Row("push", "ES", NO64, handler="push_seg")
ONE_BYTE[0x07] = Row("pop", "ES", NO64, handler="pop_seg")
ONE_BYTE[0x0E] = Row("push", "CS", NO64, handler="push_seg")
ONE_BYTE[0x16] = Row("push", "SS", NO64, handler="push_seg")
ONE_BYTE[0x17] = Row("pop", "SS", NO64, handler="pop_seg")
ONE_BYTE[0x1E] = Row("push", "DS", NO64, handler="push_seg")
ONE_BYTE[0x1F] = Row("pop", "DS", NO64, handler="pop_seg")
ONE_BYTE[0x27] = Row("daa", "", NO64)
ONE_BYTE[0x2F] = Row("das", "", NO64)
ONE_BYTE[0x37] = Row("aaa", "", NO64)
ONE_BYTE[0x3F] = Row("aas", "", NO64)
for _i in range(8):
    ONE_BYTE[0x40 + _i] = Row("inc", "Zv", NO64)
    ONE_BYTE[0x48 + _i] = Row("dec", "Zv", NO64)
    ONE_BYTE[0x50 + _i] = Row("push", "Zv", DEF64)
    ONE_BYTE[0x58 + _i] = Row("pop", "Zv", DEF64)
ONE_BYTE[0x60] = Row("pushaw/pushal", "", NO64, handler="pusha")
ONE_BYTE[0x61] = Row("popaw/popal", "", NO64, handler="popa")
ONE_BYTE[0x62] = ModSplit(Row("bound", "Gv,Ma", NO64), None)
ONE_BYTE[0x63] = Row("arpl", "Ew,Gw", NO64)  # MOVSXD in 64-bit mode: see MOVSXD_ROW
ONE_BYTE[0x68] = Row("push", "Iz", DEF64)
ONE_BYTE[0x69] = Row("imul", "Gv,Ev,Iz", handler="imul3")
ONE_BYTE[0x6A] = Row("push", "Ibs", DEF64)
ONE_BYTE[0x6B] = Row("imul", "Gv,Ev,Ibs", handler="imul3")
ONE_BYTE[0x6C] = Row("insb", "Yb,DX", STRING, handler="ins")
ONE_BYTE[0x6D] = Row("insw/insd/insd", "Yz,DX", STRING, handler="ins")
ONE_BYTE[0x6E] = Row("outsb", "DX,Xb", STRING, handler="outs")
ONE_BYTE[0x6F] = Row("outsw/outsd/outsd", "DX,Xz", STRING, handler="outs")
for _i, _c in enumerate(CONDITIONS):
    ONE_BYTE[0x70 + _i] = Row("j" + _c, "Jb", F64 | BRANCH, handler="jcc", cond=_i)
ONE_BYTE[0x80] = _alu_group("Eb,Ib")
ONE_BYTE[0x81] = _alu_group("Ev,Iz")
ONE_BYTE[0x82] = _alu_group("Eb,Ib", NO64)
ONE_BYTE[0x83] = _alu_group("Ev,Ibs")
ONE_BYTE[0x84] = Row("test", "Eb,Gb")
ONE_BYTE[0x85] = Row("test", "Ev,Gv")
ONE_BYTE[0x86] = Row("xchg", "Eb,Gb", LOCK)
ONE_BYTE[0x87] = Row("xchg", "Ev,Gv", LOCK)
ONE_BYTE[0x88] = Row("mov", "Eb,Gb")
ONE_BYTE[0x89] = Row("mov", "Ev,Gv")
ONE_BYTE[0x8A] = Row("mov", "Gb,Eb")
ONE_BYTE[0x8B] = Row("mov", "Gv,Ev")
ONE_BYTE[0x8C] = Row("mov", "Ev,Sw", handler="mov_from_seg")
ONE_BYTE[0x8D] = ModSplit(Row("lea", "Gv,M0"), None)
ONE_BYTE[0x8E] = Row("mov", "Sw,Ew", handler="mov_to_seg")
ONE_BYTE[0x8F] = Group([Row("pop", "Ev", DEF64), None, None, None, None, None, None, None])
ONE_BYTE[0x90] = Prefixed(
    Row("nop", ""), Row("nop", ""), Row("pause", ""), Row("nop", "")
)  # REX.B: XCHG_R8_ROW
for _i in range(1, 8):
    ONE_BYTE[0x90 + _i] = Row("xchg", "Zv,rAX")
ONE_BYTE[0x98] = Row("cbw/cwde/cdqe", "")
ONE_BYTE[0x99] = Row("cwd/cdq/cqo", "")
ONE_BYTE[0x9A] = Row("lcall", "Ap", NO64 | BRANCH, handler="call_far")
ONE_BYTE[0x9B] = Row("wait", "", handler="fwait")
ONE_BYTE[0x9C] = Row("pushf/pushfd/pushfq", "", DEF64)
ONE_BYTE[0x9D] = Row("popf/popfd/popfq", "", DEF64)
ONE_BYTE[0x9E] = Row("sahf", "")
ONE_BYTE[0x9F] = Row("lahf", "")
ONE_BYTE[0xA0] = Row("mov", "AL,Ob")
ONE_BYTE[0xA1] = Row("mov", "rAX,Ov")
ONE_BYTE[0xA2] = Row("mov", "Ob,AL")
ONE_BYTE[0xA3] = Row("mov", "Ov,rAX")
ONE_BYTE[0xA4] = Row("movsb", "Yb,Xb", STRING, handler="movs")
ONE_BYTE[0xA5] = Row("movsw/movsd/movsq", "Yv,Xv", STRING, handler="movs")
ONE_BYTE[0xA6] = Row("cmpsb", "Xb,Yb", STRING | REPZ, handler="cmps")
ONE_BYTE[0xA7] = Row("cmpsw/cmpsd/cmpsq", "Xv,Yv", STRING | REPZ, handler="cmps")
ONE_BYTE[0xA8] = Row("test", "AL,Ib")
ONE_BYTE[0xA9] = Row("test", "rAX,Iz")
ONE_BYTE[0xAA] = Row("stosb", "Yb,AL", STRING, handler="stos")
ONE_BYTE[0xAB] = Row("stosw/stosd/stosq", "Yv,rAX", STRING, handler="stos")
ONE_BYTE[0xAC] = Row("lodsb", "AL,Xb", STRING, handler="lods")
ONE_BYTE[0xAD] = Row("lodsw/lodsd/lodsq", "rAX,Xv", STRING, handler="lods")
ONE_BYTE[0xAE] = Row("scasb", "AL,Yb", STRING | REPZ, handler="scas")
ONE_BYTE[0xAF] = Row("scasw/scasd/scasq", "rAX,Yv", STRING | REPZ, handler="scas")
for _i in range(8):
    ONE_BYTE[0xB0 + _i] = Row("mov", "Zb,Ib")
    ONE_BYTE[0xB8 + _i] = Row("mov", "Zv,Iv")  # Iv: a full 64-bit immediate with REX.W
ONE_BYTE[0xC0] = _shift_group("Eb,Ib")
ONE_BYTE[0xC1] = _shift_group("Ev,Ib")
ONE_BYTE[0xC2] = Row("ret", "Iw", F64 | BRANCH | NOSIZE_MNEM)
ONE_BYTE[0xC3] = Row("ret", "", F64 | BRANCH | NOSIZE_MNEM)
ONE_BYTE[0xC4] = ModSplit(Row("les", "Gz,Mp", NO64, handler="load_far_ptr"), None)
ONE_BYTE[0xC5] = ModSplit(Row("lds", "Gz,Mp", NO64, handler="load_far_ptr"), None)
ONE_BYTE[0xC6] = Group([Row("mov", "Eb,Ib"), None, None, None, None, None, None, None])
ONE_BYTE[0xC7] = Group([Row("mov", "Ev,Iz"), None, None, None, None, None, None, None])
ONE_BYTE[0xC8] = Row("enter", "Iw,I2b", DEF64 | NOSIZE_MNEM)
ONE_BYTE[0xC9] = Row("leave", "", DEF64 | NOSIZE_MNEM)
ONE_BYTE[0xCA] = Row("retf", "Iw", BRANCH | NOSIZE_MNEM)
ONE_BYTE[0xCB] = Row("retf", "", BRANCH | NOSIZE_MNEM)
ONE_BYTE[0xCC] = Row("int3", "", BRANCH)
ONE_BYTE[0xCD] = Row("int", "Ib", BRANCH)
ONE_BYTE[0xCE] = Row("into", "", NO64 | BRANCH)
ONE_BYTE[0xCF] = Row("iret/iretd/iretq", "", BRANCH)
ONE_BYTE[0xD0] = _shift_group("Eb,1")
ONE_BYTE[0xD1] = _shift_group("Ev,1")
ONE_BYTE[0xD2] = _shift_group("Eb,CL")
ONE_BYTE[0xD3] = _shift_group("Ev,CL")
ONE_BYTE[0xD4] = Row("aam", "Ib", NO64)
ONE_BYTE[0xD5] = Row("aad", "Ib", NO64)
ONE_BYTE[0xD6] = Row("salc", "", NO64)
ONE_BYTE[0xD7] = Row("xlatb", "", NOSIZE_MNEM)
ONE_BYTE[0xE0] = Row("loopne", "Jb", F64 | BRANCH, handler="loop")
ONE_BYTE[0xE1] = Row("loope", "Jb", F64 | BRANCH, handler="loop")
ONE_BYTE[0xE2] = Row("loop", "Jb", F64 | BRANCH, handler="loop")
ONE_BYTE[0xE3] = Row("jcxz/jecxz/jrcxz", "Jb", F64 | BRANCH | ASZ_MNEM, handler="jcxz")
ONE_BYTE[0xE4] = Row("in", "AL,Ib")
ONE_BYTE[0xE5] = Row("in", "eAX,Ib")
ONE_BYTE[0xE6] = Row("out", "Ib,AL")
ONE_BYTE[0xE7] = Row("out", "Ib,eAX")
ONE_BYTE[0xE8] = Row("call", "Jz", F64 | BRANCH)
ONE_BYTE[0xE9] = Row("jmp", "Jz", F64 | BRANCH)
ONE_BYTE[0xEA] = Row("ljmp", "Ap", NO64 | BRANCH, handler="jmp_far")
ONE_BYTE[0xEB] = Row("jmp", "Jb", F64 | BRANCH)
ONE_BYTE[0xEC] = Row("in", "AL,DX")
ONE_BYTE[0xED] = Row("in", "eAX,DX")
ONE_BYTE[0xEE] = Row("out", "DX,AL")
ONE_BYTE[0xEF] = Row("out", "DX,eAX")
ONE_BYTE[0xF1] = Row("int1", "", BRANCH)
ONE_BYTE[0xF4] = Row("hlt", "", SYS)
ONE_BYTE[0xF5] = Row("cmc", "")
ONE_BYTE[0xF6] = Group(
    [
        Row("test", "Eb,Ib"),
        Row("test", "Eb,Ib"),
        Row("not", "Eb", LOCK),
        Row("neg", "Eb", LOCK),
        Row("mul", "Eb"),
        Row("imul", "Eb"),
        Row("div", "Eb"),
        Row("idiv", "Eb"),
    ]
)
ONE_BYTE[0xF7] = Group(
    [
        Row("test", "Ev,Iz"),
        Row("test", "Ev,Iz"),
        Row("not", "Ev", LOCK),
        Row("neg", "Ev", LOCK),
        Row("mul", "Ev"),
        Row("imul", "Ev"),
        Row("div", "Ev"),
        Row("idiv", "Ev"),
    ]
)
ONE_BYTE[0xF8] = Row("clc", "")
ONE_BYTE[0xF9] = Row("stc", "")
ONE_BYTE[0xFA] = Row("cli", "")
ONE_BYTE[0xFB] = Row("sti", "")
ONE_BYTE[0xFC] = Row("cld", "")
ONE_BYTE[0xFD] = Row("std", "")
ONE_BYTE[0xFE] = Group([Row("inc", "Eb", LOCK), Row("dec", "Eb", LOCK), None, None, None, None, None, None])
ONE_BYTE[0xFF] = Group(
    [
        Row("inc", "Ev", LOCK),
        Row("dec", "Ev", LOCK),
        Row("call", "Ev", F64 | BRANCH, handler="call_ind"),
        ModSplit(Row("lcall", "Mp", BRANCH, handler="call_far_ind"), None),
        Row("jmp", "Ev", F64 | BRANCH, handler="jmp_ind"),
        ModSplit(Row("ljmp", "Mp", BRANCH, handler="jmp_far_ind"), None),
        Row("push", "Ev", DEF64),
        None,
    ]
)

# Rows that replace a one-byte entry in 64-bit mode or with REX.B.
MOVSXD_ROW = Row("movsxd", "Gv,Ed", handler="movsx")
XCHG_R8_ROW = Row("xchg", "Zv,rAX")

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
for _i in range(8):
    _mem: list[Entry | None] = []
    for _spec in _X87_MEM[_i]:
        if not _spec:
            _mem.append(None)
            continue
        _mn, _ops = _spec.split()
        _mem.append(Row(_mn, _ops, X87 | NOSIZE_MNEM))
    ONE_BYTE[0xD8 + _i] = ModSplit(Group(_mem), Row("x87", "", X87 | NOSIZE_MNEM))

# --- two-byte map (0F xx) ---------------------------------------------------------------

TWO_BYTE: list[Entry | None] = [None] * 256

TWO_BYTE[0x00] = Group(
    [
        ModSplit(Row("sldt", "Mw", SYS), Row("sldt", "Rv", SYS)),
        ModSplit(Row("str", "Mw", SYS), Row("str", "Rv", SYS)),
        Row("lldt", "Ew", SYS),
        Row("ltr", "Ew", SYS),
        Row("verr", "Ew", SYS),
        Row("verw", "Ew", SYS),
        None,
        None,
    ]
)
_G7_REG: list[Entry | None] = [None] * 64  # indexed by (reg << 3) | rm for mod == 3
_G7_REG[0o01] = Row("vmcall", "", SYS)
_G7_REG[0o02] = Row("vmlaunch", "", SYS)
_G7_REG[0o03] = Row("vmresume", "", SYS)
_G7_REG[0o04] = Row("vmxoff", "", SYS)
_G7_REG[0o10] = Row("monitor", "", SYS)
_G7_REG[0o11] = Row("mwait", "", SYS)
_G7_REG[0o12] = Row("clac", "", SYS)
_G7_REG[0o13] = Row("stac", "", SYS)
_G7_REG[0o20] = Row("xgetbv", "", SYS)
_G7_REG[0o21] = Row("xsetbv", "", SYS)
_G7_REG[0o25] = Row("xend", "", SYS)
_G7_REG[0o26] = Row("xtest", "", SYS)
_G7_REG[0o30] = Row("vmrun", "", SYS)
_G7_REG[0o31] = Row("vmmcall", "", SYS)
_G7_REG[0o32] = Row("vmload", "", SYS)
_G7_REG[0o33] = Row("vmsave", "", SYS)
_G7_REG[0o34] = Row("stgi", "", SYS)
_G7_REG[0o35] = Row("clgi", "", SYS)
_G7_REG[0o37] = Row("invlpga", "", SYS)
for _rm in range(8):
    _G7_REG[0o40 + _rm] = Row("smsw", "Rv", SYS)
    _G7_REG[0o60 + _rm] = Row("lmsw", "Rw", SYS)
_G7_REG[0o56] = Row("rdpkru", "", SYS)
_G7_REG[0o57] = Row("wrpkru", "", SYS)
_G7_REG[0o70] = Row("swapgs", "", SYS | ONLY64)
_G7_REG[0o71] = Row("rdtscp", "", SYS)
TWO_BYTE[0x01] = ModSplit(
    Group(
        [
            Row("sgdt", "Ms", SYS | NOSIZE_MNEM),
            Row("sidt", "Ms", SYS | NOSIZE_MNEM),
            Row("lgdt", "Ms", SYS | NOSIZE_MNEM),
            Row("lidt", "Ms", SYS | NOSIZE_MNEM),
            Row("smsw", "Mw", SYS),
            None,
            Row("lmsw", "Mw", SYS),
            Row("invlpg", "Mb", SYS | NOSIZE_MNEM),
        ]
    ),
    reg_by_rm=_G7_REG,
)
TWO_BYTE[0x02] = ModSplit(Row("lar", "Gv,Mw", SYS), Row("lar", "Gv,Rz", SYS))
TWO_BYTE[0x03] = ModSplit(Row("lsl", "Gv,Mw", SYS), Row("lsl", "Gv,Rz", SYS))
TWO_BYTE[0x05] = Row("syscall", "", BRANCH)
TWO_BYTE[0x06] = Row("clts", "", SYS)
TWO_BYTE[0x07] = Row("sysret/sysret/sysretq", "", BRANCH | SYS, handler="sysret")
TWO_BYTE[0x08] = Row("invd", "", SYS)
TWO_BYTE[0x09] = Row("wbinvd", "", SYS)
TWO_BYTE[0x0B] = Row("ud2", "")
TWO_BYTE[0x0D] = ModSplit(
    Group(
        [
            Row("prefetch", "Mb", NOSIZE_MNEM, handler="nop"),
            Row("prefetchw", "Mb", NOSIZE_MNEM, handler="nop"),
            Row("prefetchwt1", "Mb", NOSIZE_MNEM, handler="nop"),
        ]
        + [Row("prefetch", "Mb", NOSIZE_MNEM, handler="nop")] * 5  # AMD: reserved aliases of PREFETCH
    ),
    None,
)
TWO_BYTE[0x10] = Prefixed(
    _sse("movups", "Vps,Wps"), _sse("movupd", "Vpd,Wpd"), _sse("movss", "Vx,Wss"), _sse("movsd", "Vx,Wsd")
)
TWO_BYTE[0x11] = Prefixed(
    _sse("movups", "Wps,Vps"), _sse("movupd", "Wpd,Vpd"), _sse("movss", "Wss,Vx"), _sse("movsd", "Wsd,Vx")
)
TWO_BYTE[0x12] = Prefixed(
    ModSplit(_sse("movlps", "Vx,Mq"), _sse("movhlps", "Vx,Ux")),
    ModSplit(_sse("movlpd", "Vx,Mq"), None),
    _sse("movsldup", "Vx,Wx"),
    _sse("movddup", "Vx,Wsd"),
)
TWO_BYTE[0x13] = Prefixed(ModSplit(_sse("movlps", "Mq,Vx"), None), ModSplit(_sse("movlpd", "Mq,Vx"), None))
TWO_BYTE[0x14] = Prefixed(_sse("unpcklps"), _sse("unpcklpd"))
TWO_BYTE[0x15] = Prefixed(_sse("unpckhps"), _sse("unpckhpd"))
TWO_BYTE[0x16] = Prefixed(
    ModSplit(_sse("movhps", "Vx,Mq"), _sse("movlhps", "Vx,Ux")),
    ModSplit(_sse("movhpd", "Vx,Mq"), None),
    _sse("movshdup", "Vx,Wx"),
)
TWO_BYTE[0x17] = Prefixed(ModSplit(_sse("movhps", "Mq,Vx"), None), ModSplit(_sse("movhpd", "Mq,Vx"), None))
TWO_BYTE[0x18] = ModSplit(
    Group(
        [
            Row("prefetchnta", "Mb", NOSIZE_MNEM, handler="nop"),
            Row("prefetcht0", "Mb", NOSIZE_MNEM, handler="nop"),
            Row("prefetcht1", "Mb", NOSIZE_MNEM, handler="nop"),
            Row("prefetcht2", "Mb", NOSIZE_MNEM, handler="nop"),
        ]
        + [Row("nop", "Ev")] * 4
    ),
    Row("nop", "Ev"),
)
for _op in range(0x19, 0x1F):
    TWO_BYTE[_op] = Row("nop", "Ev")
TWO_BYTE[0x1E] = Prefixed(
    Row("nop", "Ev"),
    Row("nop", "Ev"),
    ModSplit(
        Row("nop", "Ev"),
        Row("nop", "Ev"),
        reg_by_rm=[Row("nop", "Ev")] * 58
        + [Row("endbr64", "", NOSIZE_MNEM, handler="nop"), Row("endbr32", "", NOSIZE_MNEM, handler="nop")]
        + [Row("nop", "Ev")] * 4,
    ),
    Row("nop", "Ev"),
)
TWO_BYTE[0x1F] = Row("nop", "Ev")
TWO_BYTE[0x20] = Row("mov", "Ry,Cy", SYS | MOD3_ANY, handler="mov_from_cr")
TWO_BYTE[0x21] = Row("mov", "Ry,Dy", SYS | MOD3_ANY, handler="mov_from_dr")
TWO_BYTE[0x22] = Row("mov", "Cy,Ry", SYS | MOD3_ANY, handler="mov_to_cr")
TWO_BYTE[0x23] = Row("mov", "Dy,Ry", SYS | MOD3_ANY, handler="mov_to_dr")
TWO_BYTE[0x28] = Prefixed(_sse("movaps", "Vps,Wps"), _sse("movapd", "Vpd,Wpd"))
TWO_BYTE[0x29] = Prefixed(_sse("movaps", "Wps,Vps"), _sse("movapd", "Wpd,Vpd"))
TWO_BYTE[0x2A] = Prefixed(
    _sse("cvtpi2ps", "Vx,Qq"), _sse("cvtpi2pd", "Vx,Qq"), _sse("cvtsi2ss", "Vx,Ey"), _sse("cvtsi2sd", "Vx,Ey")
)
TWO_BYTE[0x2B] = Prefixed(
    ModSplit(_sse("movntps", "Mps,Vps"), None), ModSplit(_sse("movntpd", "Mpd,Vpd"), None)
)
TWO_BYTE[0x2C] = Prefixed(
    _sse("cvttps2pi", "Pq,Wq"),
    _sse("cvttpd2pi", "Pq,Wpd"),
    _sse("cvttss2si", "Gy,Wss"),
    _sse("cvttsd2si", "Gy,Wsd"),
)
TWO_BYTE[0x2D] = Prefixed(
    _sse("cvtps2pi", "Pq,Wq"),
    _sse("cvtpd2pi", "Pq,Wpd"),
    _sse("cvtss2si", "Gy,Wss"),
    _sse("cvtsd2si", "Gy,Wsd"),
)
TWO_BYTE[0x2E] = Prefixed(_sse("ucomiss", "Vx,Wss"), _sse("ucomisd", "Vx,Wsd"))
TWO_BYTE[0x2F] = Prefixed(_sse("comiss", "Vx,Wss"), _sse("comisd", "Vx,Wsd"))
TWO_BYTE[0x30] = Row("wrmsr", "", SYS)
TWO_BYTE[0x31] = Row("rdtsc", "")
TWO_BYTE[0x32] = Row("rdmsr", "", SYS)
TWO_BYTE[0x33] = Row("rdpmc", "")
TWO_BYTE[0x34] = Row("sysenter", "", BRANCH)
TWO_BYTE[0x35] = Row("sysexit/sysexit/sysexitq", "", BRANCH | SYS, handler="sysexit")
for _i, _c in enumerate(CONDITIONS):
    TWO_BYTE[0x40 + _i] = Row("cmov" + _c, "Gv,Ev", handler="cmovcc", cond=_i)
    TWO_BYTE[0x80 + _i] = Row("j" + _c, "Jz", F64 | BRANCH, handler="jcc", cond=_i)
    TWO_BYTE[0x90 + _i] = Row("set" + _c, "Eb", handler="setcc", cond=_i)
TWO_BYTE[0x50] = Prefixed(
    ModSplit(None, _sse("movmskps", "Gd,Ux")), ModSplit(None, _sse("movmskpd", "Gd,Ux"))
)
TWO_BYTE[0x51] = _sse4("sqrt")
TWO_BYTE[0x52] = Prefixed(_sse("rsqrtps"), None, _sse("rsqrtss", "Vx,Wss"))
TWO_BYTE[0x53] = Prefixed(_sse("rcpps"), None, _sse("rcpss", "Vx,Wss"))
TWO_BYTE[0x54] = Prefixed(_sse("andps"), _sse("andpd"))
TWO_BYTE[0x55] = Prefixed(_sse("andnps"), _sse("andnpd"))
TWO_BYTE[0x56] = Prefixed(_sse("orps"), _sse("orpd"))
TWO_BYTE[0x57] = Prefixed(_sse("xorps"), _sse("xorpd"))
TWO_BYTE[0x58] = _sse4("add")
TWO_BYTE[0x59] = _sse4("mul")
TWO_BYTE[0x5A] = Prefixed(
    _sse("cvtps2pd", "Vx,Wq"), _sse("cvtpd2ps"), _sse("cvtss2sd", "Vx,Wss"), _sse("cvtsd2ss", "Vx,Wsd")
)
TWO_BYTE[0x5B] = Prefixed(_sse("cvtdq2ps"), _sse("cvtps2dq"), _sse("cvttps2dq"))
TWO_BYTE[0x5C] = _sse4("sub")
TWO_BYTE[0x5D] = _sse4("min")
TWO_BYTE[0x5E] = _sse4("div")
TWO_BYTE[0x5F] = _sse4("max")
for _op, _name in zip(
    range(0x60, 0x6C),
    (
        "punpcklbw",
        "punpcklwd",
        "punpckldq",
        "packsswb",
        "pcmpgtb",
        "pcmpgtw",
        "pcmpgtd",
        "packuswb",
        "punpckhbw",
        "punpckhwd",
        "punpckhdq",
        "packssdw",
    ),
    strict=True,
):
    TWO_BYTE[_op] = _mmx_sse(_name, "Pq,Qd" if _op < 0x63 else "Pq,Qq")
TWO_BYTE[0x6C] = _only66("punpcklqdq")
TWO_BYTE[0x6D] = _only66("punpckhqdq")
TWO_BYTE[0x6E] = Prefixed(Row("movd/movd/movq", "Pq,Ey", SSE), Row("movd/movd/movq", "Vx,Ey", SSE))
TWO_BYTE[0x6F] = Prefixed(_sse("movq", "Pq,Qq"), _sse("movdqa"), _sse("movdqu"))
TWO_BYTE[0x70] = Prefixed(
    _sse("pshufw", "Pq,Qq,Ib"),
    _sse("pshufd", "Vx,Wx,Ib"),
    _sse("pshufhw", "Vx,Wx,Ib"),
    _sse("pshuflw", "Vx,Wx,Ib"),
)


def _shift_imm_group(names: tuple[str, ...]) -> ModSplit:
    """0F 71/72/73: MMX/SSE shifts by an immediate, register forms only."""
    rows: list[Entry | None] = []
    for name in names:
        if not name:
            rows.append(None)
        elif name in ("psrldq", "pslldq"):
            rows.append(Prefixed(None, _sse(name, "Ux,Ib")))
        else:
            rows.append(Prefixed(_sse(name, "Nq,Ib"), _sse(name, "Ux,Ib")))
    return ModSplit(None, Group(rows))


TWO_BYTE[0x71] = _shift_imm_group(("", "", "psrlw", "", "psraw", "", "psllw", ""))
TWO_BYTE[0x72] = _shift_imm_group(("", "", "psrld", "", "psrad", "", "pslld", ""))
TWO_BYTE[0x73] = _shift_imm_group(("", "", "psrlq", "psrldq", "", "", "psllq", "pslldq"))
TWO_BYTE[0x74] = _mmx_sse("pcmpeqb")
TWO_BYTE[0x75] = _mmx_sse("pcmpeqw")
TWO_BYTE[0x76] = _mmx_sse("pcmpeqd")
TWO_BYTE[0x77] = Prefixed(Row("emms", "", SSE))
TWO_BYTE[0x7E] = Prefixed(
    Row("movd/movd/movq", "Ey,Pq", SSE), Row("movd/movd/movq", "Ey,Vx", SSE), _sse("movq", "Vx,Wq")
)
TWO_BYTE[0x7F] = Prefixed(_sse("movq", "Qq,Pq"), _sse("movdqa", "Wx,Vx"), _sse("movdqu", "Wx,Vx"))
TWO_BYTE[0xA0] = Row("push", "FS", DEF64, handler="push_seg")
TWO_BYTE[0xA1] = Row("pop", "FS", DEF64, handler="pop_seg")
TWO_BYTE[0xA2] = Row("cpuid", "")
TWO_BYTE[0xA3] = Row("bt", "Ev,Gv")
TWO_BYTE[0xA4] = Row("shld", "Ev,Gv,Ib")
TWO_BYTE[0xA5] = Row("shld", "Ev,Gv,CL")
TWO_BYTE[0xA8] = Row("push", "GS", DEF64, handler="push_seg")
TWO_BYTE[0xA9] = Row("pop", "GS", DEF64, handler="pop_seg")
TWO_BYTE[0xAA] = Row("rsm", "", SYS)
TWO_BYTE[0xAB] = Row("bts", "Ev,Gv", LOCK)
TWO_BYTE[0xAC] = Row("shrd", "Ev,Gv,Ib")
TWO_BYTE[0xAD] = Row("shrd", "Ev,Gv,CL")
_G15_REG: list[Entry | None] = [None] * 64
for _rm in range(8):
    _G15_REG[0o50 + _rm] = Row("lfence", "", NOSIZE_MNEM, handler="nop")
    _G15_REG[0o60 + _rm] = Row("mfence", "", NOSIZE_MNEM, handler="nop")
    _G15_REG[0o70 + _rm] = Row("sfence", "", NOSIZE_MNEM, handler="nop")
TWO_BYTE[0xAE] = Prefixed(
    ModSplit(
        Group(
            [
                Row("fxsave/fxsave/fxsave64", "M0", handler="fxsave"),
                Row("fxrstor/fxrstor/fxrstor64", "M0", handler="fxrstor"),
                Row("ldmxcsr", "Md", NOSIZE_MNEM),
                Row("stmxcsr", "Md", NOSIZE_MNEM),
                Row("xsave/xsave/xsave64", "M0", handler="xsave"),
                Row("xrstor/xrstor/xrstor64", "M0", handler="xrstor"),
                Row("xsaveopt/xsaveopt/xsaveopt64", "M0", handler="xsaveopt"),
                Row("clflush", "Mb", NOSIZE_MNEM, handler="nop"),
            ]
        ),
        reg_by_rm=_G15_REG,
    ),
    ModSplit(
        Group(
            [None] * 6
            + [
                Row("clwb", "Mb", NOSIZE_MNEM, handler="nop"),
                Row("clflushopt", "Mb", NOSIZE_MNEM, handler="nop"),
            ]
        ),
        None,
    ),
    ModSplit(
        None,
        Group(
            [
                Row("rdfsbase", "Ry", ONLY64),
                Row("rdgsbase", "Ry", ONLY64),
                Row("wrfsbase", "Ry", ONLY64),
                Row("wrgsbase", "Ry", ONLY64),
                None,
                None,
                None,
                None,
            ]
        ),
    ),
)
TWO_BYTE[0xAF] = Row("imul", "Gv,Ev", handler="imul2")
TWO_BYTE[0xB0] = Row("cmpxchg", "Eb,Gb", LOCK)
TWO_BYTE[0xB1] = Row("cmpxchg", "Ev,Gv", LOCK)
TWO_BYTE[0xB2] = ModSplit(Row("lss", "Gv,Mp", handler="load_far_ptr"), None)
TWO_BYTE[0xB3] = Row("btr", "Ev,Gv", LOCK)
TWO_BYTE[0xB4] = ModSplit(Row("lfs", "Gv,Mp", handler="load_far_ptr"), None)
TWO_BYTE[0xB5] = ModSplit(Row("lgs", "Gv,Mp", handler="load_far_ptr"), None)
TWO_BYTE[0xB6] = Row("movzx", "Gv,Eb")
TWO_BYTE[0xB7] = Row("movzx", "Gv,Ew")
TWO_BYTE[0xB8] = Prefixed(None, None, Row("popcnt", "Gv,Ev"))
TWO_BYTE[0xB9] = Row("ud1", "Gv,Ev")
TWO_BYTE[0xBA] = Group(
    [None, None, None, None, Row("bt", "Ev,Ib"), Row("bts", "Ev,Ib", LOCK), Row("btr", "Ev,Ib", LOCK),
     Row("btc", "Ev,Ib", LOCK)]
)  # fmt: skip
TWO_BYTE[0xBB] = Row("btc", "Ev,Gv", LOCK)
TWO_BYTE[0xBC] = Prefixed(
    Row("bsf", "Gv,Ev"), Row("bsf", "Gv,Ev"), Row("tzcnt", "Gv,Ev"), Row("bsf", "Gv,Ev")
)
TWO_BYTE[0xBD] = Prefixed(
    Row("bsr", "Gv,Ev"), Row("bsr", "Gv,Ev"), Row("lzcnt", "Gv,Ev"), Row("bsr", "Gv,Ev")
)
TWO_BYTE[0xBE] = Row("movsx", "Gv,Eb")
TWO_BYTE[0xBF] = Row("movsx", "Gv,Ew")
TWO_BYTE[0xC0] = Row("xadd", "Eb,Gb", LOCK)
TWO_BYTE[0xC1] = Row("xadd", "Ev,Gv", LOCK)
TWO_BYTE[0xC2] = _sse4("cmp", "Vx,Wx,Ib")
TWO_BYTE[0xC3] = Prefixed(ModSplit(Row("movnti", "My,Gy", NOSIZE_MNEM, handler="mov"), None))
TWO_BYTE[0xC4] = Prefixed(
    ModSplit(_sse("pinsrw", "Pq,Mw,Ib"), _sse("pinsrw", "Pq,Rd,Ib")),
    ModSplit(_sse("pinsrw", "Vx,Mw,Ib"), _sse("pinsrw", "Vx,Rd,Ib")),
)
TWO_BYTE[0xC5] = Prefixed(
    ModSplit(None, _sse("pextrw", "Gd,Nq,Ib")), ModSplit(None, _sse("pextrw", "Gd,Ux,Ib"))
)
TWO_BYTE[0xC6] = Prefixed(_sse("shufps", "Vx,Wx,Ib"), _sse("shufpd", "Vx,Wx,Ib"))
TWO_BYTE[0xC7] = Group(
    [
        None,
        ModSplit(Row("cmpxchg8b/cmpxchg8b/cmpxchg16b", "Mo", LOCK, handler="cmpxchg8b"), None),
        None,
        ModSplit(Row("xrstors/xrstors/xrstors64", "M0", SYS, handler="xrstors"), None),
        ModSplit(Row("xsavec/xsavec/xsavec64", "M0", handler="xsavec"), None),
        ModSplit(Row("xsaves/xsaves/xsaves64", "M0", SYS, handler="xsaves"), None),
        ModSplit(
            Prefixed(
                Row("vmptrld", "Mq", SYS | NOSIZE_MNEM),
                Row("vmclear", "Mq", SYS | NOSIZE_MNEM),
                Row("vmxon", "Mq", SYS | NOSIZE_MNEM),
            ),
            Row("rdrand", "Rv"),
        ),
        ModSplit(
            Prefixed(Row("vmptrst", "Mq", SYS | NOSIZE_MNEM)),
            Prefixed(Row("rdseed", "Rv"), Row("rdseed", "Rv"), Row("rdpid", "Ry", F64 | NOSIZE_MNEM)),
        ),
    ]
)
for _i in range(8):
    TWO_BYTE[0xC8 + _i] = Row("bswap", "Zv")  # 16-bit BSWAP is undefined; decoded like capstone
_SSE_INT = {
    0xD1: "psrlw", 0xD2: "psrld", 0xD3: "psrlq", 0xD4: "paddq", 0xD5: "pmullw", 0xD8: "psubusb",
    0xD9: "psubusw", 0xDA: "pminub", 0xDB: "pand", 0xDC: "paddusb", 0xDD: "paddusw", 0xDE: "pmaxub",
    0xDF: "pandn", 0xE0: "pavgb", 0xE1: "psraw", 0xE2: "psrad", 0xE3: "pavgw", 0xE4: "pmulhuw",
    0xE5: "pmulhw", 0xE8: "psubsb", 0xE9: "psubsw", 0xEA: "pminsw", 0xEB: "por", 0xEC: "paddsb",
    0xED: "paddsw", 0xEE: "pmaxsw", 0xEF: "pxor", 0xF1: "psllw", 0xF2: "pslld", 0xF3: "psllq",
    0xF4: "pmuludq", 0xF5: "pmaddwd", 0xF6: "psadbw", 0xF8: "psubb", 0xF9: "psubw", 0xFA: "psubd",
    0xFB: "psubq", 0xFC: "paddb", 0xFD: "paddw", 0xFE: "paddd",
}  # fmt: skip
for _op, _name in _SSE_INT.items():
    TWO_BYTE[_op] = _mmx_sse(_name)
TWO_BYTE[0xD6] = Prefixed(None, _sse("movq", "Wq,Vx"))
TWO_BYTE[0xD7] = Prefixed(
    ModSplit(None, _sse("pmovmskb", "Gd,Nq")), ModSplit(None, _sse("pmovmskb", "Gd,Ux"))
)
TWO_BYTE[0xE6] = Prefixed(None, _sse("cvttpd2dq"), _sse("cvtdq2pd", "Vx,Wq"), _sse("cvtpd2dq"))
TWO_BYTE[0xE7] = Prefixed(ModSplit(_sse("movntq", "Mq,Pq"), None), ModSplit(_sse("movntdq", "Mx,Vx"), None))
TWO_BYTE[0xF0] = Prefixed(None, None, None, ModSplit(_sse("lddqu", "Vx,Mx"), None))
TWO_BYTE[0xF7] = Prefixed(
    ModSplit(None, _sse("maskmovq", "Pq,Nq")), ModSplit(None, _sse("maskmovdqu", "Vx,Ux"))
)
TWO_BYTE[0xFF] = Row("ud0", "Gd,Ed", NOSIZE_MNEM)

# --- three-byte maps (0F 38 xx, 0F 3A xx): the SSSE3/SSE4 subset a kernel uses -----------------

THREE_BYTE_38: list[Entry | None] = [None] * 256
_SSSE3_38 = {
    0x00: "pshufb", 0x01: "phaddw", 0x02: "phaddd", 0x03: "phaddsw", 0x04: "pmaddubsw", 0x05: "phsubw",
    0x06: "phsubd", 0x07: "phsubsw", 0x08: "psignb", 0x09: "psignw", 0x0A: "psignd", 0x0B: "pmulhrsw",
    0x1C: "pabsb", 0x1D: "pabsw", 0x1E: "pabsd",
}  # fmt: skip
for _op, _name in _SSSE3_38.items():
    THREE_BYTE_38[_op] = _mmx_sse(_name)
_SSE41_38 = {
    0x10: "pblendvb", 0x14: "blendvps", 0x15: "blendvpd", 0x17: "ptest", 0x28: "pmuldq", 0x29: "pcmpeqq",
    0x2B: "packusdw", 0x37: "pcmpgtq", 0x38: "pminsb", 0x39: "pminsd", 0x3A: "pminuw", 0x3B: "pminud",
    0x3C: "pmaxsb", 0x3D: "pmaxsd", 0x3E: "pmaxuw", 0x3F: "pmaxud", 0x40: "pmulld", 0x41: "phminposuw",
    0xDB: "aesimc", 0xDC: "aesenc", 0xDD: "aesenclast", 0xDE: "aesdec", 0xDF: "aesdeclast",
}  # fmt: skip
for _op, _name in _SSE41_38.items():
    THREE_BYTE_38[_op] = _only66(_name)
for _op, _name in zip(
    range(0x20, 0x26), ("pmovsxbw", "pmovsxbd", "pmovsxbq", "pmovsxwd", "pmovsxwq", "pmovsxdq"), strict=True
):
    THREE_BYTE_38[_op] = _only66(_name, "Vx,Wq")
for _op, _name in zip(
    range(0x30, 0x36), ("pmovzxbw", "pmovzxbd", "pmovzxbq", "pmovzxwd", "pmovzxwq", "pmovzxdq"), strict=True
):
    THREE_BYTE_38[_op] = _only66(_name, "Vx,Wq")
THREE_BYTE_38[0x2A] = Prefixed(None, ModSplit(_sse("movntdqa", "Vx,Mx"), None))
THREE_BYTE_38[0xF0] = Prefixed(
    ModSplit(Row("movbe", "Gv,Mv"), None),
    ModSplit(Row("movbe", "Gv,Mv"), None),
    None,
    Row("crc32", "Gy,Eb", NOSIZE_MNEM),
)
THREE_BYTE_38[0xF1] = Prefixed(
    ModSplit(Row("movbe", "Mv,Gv"), None),
    ModSplit(Row("movbe", "Mv,Gv"), None),
    None,
    Row("crc32", "Gy,Ev", NOSIZE_MNEM),
)

THREE_BYTE_3A: list[Entry | None] = [None] * 256
_SSE41_3A = {
    0x08: "roundps", 0x09: "roundpd", 0x0A: "roundss", 0x0B: "roundsd", 0x0C: "blendps", 0x0D: "blendpd",
    0x0E: "pblendw", 0x40: "dpps", 0x41: "dppd", 0x42: "mpsadbw", 0x44: "pclmulqdq", 0x60: "pcmpestrm",
    0x61: "pcmpestri", 0x62: "pcmpistrm", 0x63: "pcmpistri", 0xDF: "aeskeygenassist", 0x21: "insertps",
}  # fmt: skip
for _op, _name in _SSE41_3A.items():
    THREE_BYTE_3A[_op] = _only66(_name, "Vx,Wx,Ib")
THREE_BYTE_3A[0x0F] = _mmx_sse("palignr", "Pq,Qq,Ib", "Vx,Wx,Ib")
THREE_BYTE_3A[0x14] = _only66("pextrb", "Ed,Vx,Ib")
THREE_BYTE_3A[0x15] = Prefixed(None, ModSplit(_sse("pextrw", "Mw,Vx,Ib"), _sse("pextrw", "Rd,Vx,Ib")))
THREE_BYTE_3A[0x16] = Prefixed(None, Row("pextrd/pextrd/pextrq", "Ey,Vx,Ib", SSE))
THREE_BYTE_3A[0x17] = _only66("extractps", "Ed,Vx,Ib")
THREE_BYTE_3A[0x20] = _only66("pinsrb", "Vx,Ed,Ib")
THREE_BYTE_3A[0x22] = Prefixed(None, Row("pinsrd/pinsrd/pinsrq", "Vx,Ey,Ib", SSE))

MAPS: tuple[list[Entry | None], ...] = (ONE_BYTE, TWO_BYTE, THREE_BYTE_38, THREE_BYTE_3A)
MAP_ONE, MAP_0F, MAP_0F38, MAP_0F3A = range(4)
