"""Table-driven x86 instruction decoder (16-, 32- and 64-bit modes).

``decode(code, mode)`` walks the bytes once: legacy prefixes, REX, the opcode
through the maps of :mod:`kvmlite.emulator.opcodes` (groups, mandatory
prefixes and mod splits resolved as data), then ModRM/SIB/displacement and
immediates, and returns an :class:`Instruction` whose operands are resolved
to registers, memory references and immediate values.  Nothing here reads
registers or memory: effective addresses are computed by the executor.

Design notes (after QEMU ``decode-new.c.inc`` and Linux ``emulate.c``):

* The opcode tables are the only place an instruction's shape lives; this
  module knows operand *kinds*, never individual opcodes, apart from the few
  encodings the SDM itself special-cases (MOVSXD/ARPL at 63, XCHG r8 at 90
  with REX.B, LES/LDS being VEX in 64-bit mode).
* Bytes that do not form a valid instruction raise
  :class:`kvmlite.errors.DecodeError`; running out of bytes raises its
  subclass :class:`TruncatedInstruction`, so the executor can fetch the rest
  of an instruction that crosses a page boundary.
"""

from __future__ import annotations

import logging

from kvmlite.emulator import opcodes as T
from kvmlite.errors import DecodeError

log = logging.getLogger(__name__)

MODE_16 = 16
MODE_32 = 32
MODE_64 = 64
MAX_INSN_LENGTH = 15

# Operand kinds of a decoded operand.
OP_REG = 0
OP_MEM = 1
OP_IMM = 2
OP_REL = 3  # relative branch target: .value holds the signed displacement
OP_FAR = 4  # direct far pointer: .seg holds the selector, .value the offset

# Register classes of an OP_REG operand.
RC_GPR = 0
RC_GPR8H = 1  # AH, CH, DH, BH (index 0..3 = the register they live in)
RC_SEG = 2
RC_CR = 3
RC_DR = 4
RC_XMM = 5
RC_MMX = 6
RC_ST = 7

# Base "register" number meaning RIP-relative.
BASE_RIP = 16
NO_REG = -1

PREFIX_LOCK = 0xF0
PREFIX_REPNE = 0xF2
PREFIX_REP = 0xF3
PREFIX_OPSIZE = 0x66
PREFIX_ADDRSIZE = 0x67
_SEG_PREFIXES = {
    0x26: T.SEG_ES,
    0x2E: T.SEG_CS,
    0x36: T.SEG_SS,
    0x3E: T.SEG_DS,
    0x64: T.SEG_FS,
    0x65: T.SEG_GS,
}
_LEGACY_PREFIXES = frozenset(
    (PREFIX_LOCK, PREFIX_REPNE, PREFIX_REP, PREFIX_OPSIZE, PREFIX_ADDRSIZE, *_SEG_PREFIXES)
)

GPR_NAMES = {
    8: ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", *(f"r{i}" for i in range(8, 16))),
    4: ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", *(f"r{i}d" for i in range(8, 16))),
    2: ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di", *(f"r{i}w" for i in range(8, 16))),
    1: ("al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil", *(f"r{i}b" for i in range(8, 16))),
}
GPR8H_NAMES = ("ah", "ch", "dh", "bh")
SEG_NAMES = T.SEG_NAMES
_SIZE_PTR = {1: "byte", 2: "word", 4: "dword", 8: "qword", 10: "xword", 16: "xmmword", 6: "fword"}

# 16-bit ModRM r/m: (base, index) register numbers.
_MODRM16 = ((3, 6), (3, 7), (5, 6), (5, 7), (6, NO_REG), (7, NO_REG), (5, NO_REG), (3, NO_REG))

_MAPS = T.MAPS


class TruncatedInstruction(DecodeError):
    """The bytes end in the middle of an instruction (more may follow on the next page)."""


class Operand:
    """One decoded operand, already resolved against prefixes and ModRM.

    ``kind`` is OP_REG / OP_MEM / OP_IMM / OP_REL / OP_FAR, ``size`` is in
    bytes.  Registers: ``regclass`` and ``reg``.  Memory: ``seg`` (effective
    segment, override applied), ``base``/``index`` (NO_REG when absent,
    BASE_RIP for RIP-relative), ``scale``, ``disp`` and ``addrsize``.
    Immediates: ``value`` (unsigned, already extended to ``size``).
    """

    __slots__ = (
        "addrsize",
        "base",
        "disp",
        "index",
        "kind",
        "reg",
        "regclass",
        "scale",
        "seg",
        "size",
        "value",
    )

    def __init__(self, kind: int, size: int) -> None:
        self.kind = kind
        self.size = size
        self.regclass = RC_GPR
        self.reg = 0
        self.seg = T.SEG_DS
        self.base = NO_REG
        self.index = NO_REG
        self.scale = 1
        self.disp = 0
        self.addrsize = 8
        self.value = 0

    def reg_name(self) -> str:
        rc, r = self.regclass, self.reg
        if rc == RC_GPR:
            return GPR_NAMES[self.size][r]
        if rc == RC_GPR8H:
            return GPR8H_NAMES[r]
        if rc == RC_SEG:
            return SEG_NAMES[r]
        if rc == RC_CR:
            return f"cr{r}"
        if rc == RC_DR:
            return f"dr{r}"
        if rc == RC_XMM:
            return f"xmm{r}"
        if rc == RC_MMX:
            return f"mm{r}"
        return f"st({r})"

    def format(self, next_ip: int = 0, seg_explicit: bool = False) -> str:
        """Intel syntax, like capstone/objdump (``dword ptr [rax + rbx*4 + 0x10]``)."""
        kind = self.kind
        if kind == OP_REG:
            return self.reg_name()
        if kind == OP_IMM:
            return _hex(self.value)
        if kind == OP_REL:
            return _hex((next_ip + self.value) & ((1 << (self.size * 8)) - 1))
        if kind == OP_FAR:
            return f"{_hex(self.seg)}:{_hex(self.value)}"
        parts: list[str] = []
        names = GPR_NAMES[self.addrsize]
        if self.base == BASE_RIP:
            parts.append("rip" if self.addrsize == 8 else "eip")
        elif self.base != NO_REG:
            parts.append(names[self.base])
        if self.index != NO_REG:
            parts.append(f"{names[self.index]}*{self.scale}")
        text = " + ".join(parts)
        disp = self.disp
        if disp or not parts:
            if not parts:
                text = _hex(disp & ((1 << (self.addrsize * 8)) - 1))
            elif disp < 0:
                text += f" - {_hex(-disp)}"
            else:
                text += f" + {_hex(disp)}"
        prefix = f"{_SIZE_PTR[self.size]} ptr " if self.size in _SIZE_PTR else ""
        seg = f"{SEG_NAMES[self.seg]}:" if seg_explicit else ""
        return f"{prefix}{seg}[{text}]"

    def __repr__(self) -> str:
        return f"Operand({self.format()})"


def _hex(value: int) -> str:
    return str(value) if 0 <= value < 10 else (f"{value:#x}" if value >= 0 else f"-{-value:#x}")


class Instruction:
    """A decoded instruction: what the executor needs, plus a printable form.

    ``length`` in bytes; ``mnemonic``; ``operands`` (list of :class:`Operand`,
    Intel order: destination first); ``prefixes`` (the legacy and REX prefix
    bytes in order).  ``opsize``/``addrsize`` are the effective sizes in bytes,
    ``rep`` is 0, 0xF3 or 0xF2 (only for string instructions), ``lock`` is
    True with a LOCK prefix, ``seg_override`` the overriding segment or -1.
    ``row`` is the table row (its ``handler`` names the executor routine).
    """

    __slots__ = (
        "addrsize",
        "handler",
        "length",
        "lock",
        "mnemonic",
        "mode",
        "opcode",
        "operands",
        "opsize",
        "prefixes",
        "raw",
        "rep",
        "rex",
        "row",
        "seg_override",
    )

    def __init__(self) -> None:
        self.operands: list[Operand] = []
        self.prefixes: tuple[int, ...] = ()

    def __str__(self) -> str:
        return self.format()

    def format(self, address: int = 0) -> str:
        """Intel syntax; relative branch targets are shown for ``address``."""
        ops = ", ".join(
            o.format(address + self.length, self.seg_override >= 0 and o.kind == OP_MEM)
            for o in self.operands
        )
        prefix = ""
        if self.lock:
            prefix = "lock "
        if self.rep:
            prefix += (
                "rep "
                if self.rep == PREFIX_REP and not self.row.flags & T.REPZ
                else ("repe " if self.rep == PREFIX_REP else "repne ")
            )
        return f"{prefix}{self.mnemonic} {ops}".rstrip()

    def __repr__(self) -> str:
        return f"Instruction({self.raw.hex()}: {self.format()})"


def decode(code: bytes, mode: int) -> Instruction:
    """Decode one instruction at the start of ``code`` in a 16-, 32- or 64-bit code segment.

    Raises :class:`DecodeError` for bytes that are no valid instruction (the
    executor turns that into #UD) and :class:`TruncatedInstruction` when
    ``code`` ends before the instruction does.
    """
    if mode not in (MODE_16, MODE_32, MODE_64):
        raise DecodeError(f"unknown decode mode {mode!r} (16, 32 or 64)")
    n = len(code)
    pos = 0
    p66 = p67 = lock = False
    rep = 0
    seg_override = -1
    rex = 0
    is64 = mode == MODE_64
    # --- prefixes
    while True:
        if pos >= n:
            raise TruncatedInstruction("instruction truncated in its prefixes")
        b = code[pos]
        if b in _LEGACY_PREFIXES:
            rex = 0  # a REX followed by a legacy prefix is ignored
            if b == PREFIX_OPSIZE:
                p66 = True
            elif b == PREFIX_ADDRSIZE:
                p67 = True
            elif b == PREFIX_LOCK:
                lock = True
            elif b == PREFIX_REP or b == PREFIX_REPNE:
                rep = b
            else:
                seg_override = _SEG_PREFIXES[b]
            pos += 1
        elif is64 and 0x40 <= b <= 0x4F:
            rex = b
            pos += 1
        else:
            break
        if pos >= MAX_INSN_LENGTH:
            raise DecodeError("instruction longer than 15 bytes")
    prefix_end = pos
    # --- opcode
    opcode = code[pos]
    pos += 1
    table = T.ONE_BYTE
    map_id = T.MAP_ONE
    if opcode == 0x0F:
        if pos >= n:
            raise TruncatedInstruction("instruction truncated in its opcode")
        opcode = code[pos]
        pos += 1
        map_id = T.MAP_0F
        if opcode == 0x38 or opcode == 0x3A:
            if pos >= n:
                raise TruncatedInstruction("instruction truncated in its opcode")
            map_id = T.MAP_0F38 if opcode == 0x38 else T.MAP_0F3A
            opcode = code[pos]
            pos += 1
        table = _MAPS[map_id]
    entry = table[opcode]
    if map_id == T.MAP_ONE:
        if opcode == 0x63 and is64:
            entry = T.MOVSXD_ROW
        elif opcode == 0x90 and rex & 1:
            entry = T.XCHG_R8_ROW
        elif (opcode == 0xC4 or opcode == 0xC5 or opcode == 0x62) and (
            is64 or (pos < n and code[pos] >= 0xC0)
        ):
            raise DecodeError("VEX/EVEX-encoded instructions are not supported")
    # --- resolve groups, mandatory prefixes and mod splits
    modrm = -1
    p66_mandatory = False
    while entry is not None and not isinstance(entry, T.Row):
        if isinstance(entry, T.Prefixed):
            if rep == PREFIX_REP:
                entry = entry.entries[2]
            elif rep == PREFIX_REPNE:
                entry = entry.entries[3]
            elif p66:
                entry = entry.entries[1]
                p66_mandatory = True
            else:
                entry = entry.entries[0]
            continue
        if modrm < 0:
            if pos >= n:
                raise TruncatedInstruction("instruction truncated before its ModRM byte")
            modrm = code[pos]
        if isinstance(entry, T.Group):
            entry = entry.entries[(modrm >> 3) & 7]
        elif modrm >= 0xC0:
            entry = entry.reg_by_rm[modrm & 0x3F] if entry.reg_by_rm is not None else entry.reg
        else:
            entry = entry.mem
    if entry is None:
        raise DecodeError(f"invalid opcode {code[prefix_end:pos].hex()}")
    row: T.Row = entry
    flags = row.flags
    if is64 and flags & T.NO64:
        raise DecodeError(f"opcode {code[prefix_end:pos].hex()} is invalid in 64-bit mode")
    if not is64 and flags & T.ONLY64:
        raise DecodeError(f"opcode {code[prefix_end:pos].hex()} is valid only in 64-bit mode")
    if p66_mandatory and row.flags & T.SSE:
        p66 = False
    rep_kept = rep if flags & T.STRING else 0  # elsewhere F2/F3 are mandatory prefixes or ignored
    # --- effective sizes
    if is64:
        if rex & 8:
            opsize = 8
        elif flags & T.F64:
            opsize = 8
        elif p66:
            opsize = 2
        elif flags & T.DEF64:
            opsize = 8
        else:
            opsize = 4
        addrsize = 4 if p67 else 8
    elif mode == MODE_32:
        opsize = 2 if p66 else 4
        addrsize = 2 if p67 else 4
    else:
        opsize = 4 if p66 else 2
        addrsize = 4 if p67 else 2
    # --- ModRM / SIB / displacement
    mem: Operand | None = None
    rm_reg = 0
    reg_field = 0
    if flags & T.MODRM or modrm >= 0:
        if pos >= n:
            raise TruncatedInstruction("instruction truncated before its ModRM byte")
        modrm = code[pos]
        pos += 1
        mod = modrm >> 6
        reg_field = ((modrm >> 3) & 7) | ((rex & 4) << 1)
        rm = modrm & 7
        if mod == 3 or flags & T.MOD3_ANY:
            rm_reg = rm | ((rex & 1) << 3)
        else:
            mem = Operand(OP_MEM, 0)
            mem.addrsize = addrsize
            default_seg = T.SEG_DS
            if addrsize == 2:
                if mod == 0 and rm == 6:
                    if pos + 2 > n:
                        raise TruncatedInstruction("instruction truncated in its displacement")
                    disp = code[pos] | code[pos + 1] << 8
                    mem.disp = disp - 0x10000 if disp & 0x8000 else disp
                    pos += 2
                else:
                    mem.base, mem.index = _MODRM16[rm]
                    if mem.base == 5:
                        default_seg = T.SEG_SS
            else:
                if rm == 4:
                    if pos >= n:
                        raise TruncatedInstruction("instruction truncated in its SIB byte")
                    sib = code[pos]
                    pos += 1
                    index = ((sib >> 3) & 7) | ((rex & 2) << 2)
                    if index != 4:
                        mem.index = index
                        mem.scale = 1 << (sib >> 6)
                    base = sib & 7
                    if base == 5 and mod == 0:
                        if pos + 4 > n:
                            raise TruncatedInstruction("instruction truncated in its displacement")
                        mem.disp = int.from_bytes(code[pos : pos + 4], "little", signed=True)
                        pos += 4
                    else:
                        mem.base = base | ((rex & 1) << 3)
                        if base == 4 or base == 5:
                            default_seg = T.SEG_SS
                elif rm == 5 and mod == 0:
                    if pos + 4 > n:
                        raise TruncatedInstruction("instruction truncated in its displacement")
                    mem.disp = int.from_bytes(code[pos : pos + 4], "little", signed=True)
                    pos += 4
                    if is64:
                        mem.base = BASE_RIP
                else:
                    mem.base = rm | ((rex & 1) << 3)
                    if rm == 5:
                        default_seg = T.SEG_SS
            if mod == 1:
                if pos >= n:
                    raise TruncatedInstruction("instruction truncated in its displacement")
                d = code[pos]
                mem.disp = d - 0x100 if d & 0x80 else d
                pos += 1
            elif mod == 2:
                width = 2 if addrsize == 2 else 4
                if pos + width > n:
                    raise TruncatedInstruction("instruction truncated in its displacement")
                mem.disp = int.from_bytes(code[pos : pos + width], "little", signed=True)
                pos += width
            mem.seg = seg_override if seg_override >= 0 else default_seg
    # --- operands
    operands: list[Operand] = []
    for spec in row.operands:
        method = spec.method
        size = spec.size
        if size < 0:
            size = _resolve_size(size, opsize, is64)
        if method == T.M_E or method == T.M_M or method == T.M_W or method == T.M_Q:
            if mem is not None:
                op = Operand(OP_MEM, size)
                op.seg, op.base, op.index, op.scale, op.disp, op.addrsize = (
                    mem.seg,
                    mem.base,
                    mem.index,
                    mem.scale,
                    mem.disp,
                    mem.addrsize,
                )
            elif method == T.M_M:
                raise DecodeError("register operand where the instruction needs memory")
            elif method == T.M_W:
                op = _reg(RC_XMM, rm_reg, size)
            elif method == T.M_Q:
                op = _reg(RC_MMX, rm_reg & 7, size)
            else:
                op = _gpr(rm_reg, size, rex)
        elif method == T.M_G:
            op = _gpr(reg_field, size, rex)
        elif method == T.M_I:
            if spec.size == T.SZ_Z and opsize == 8:
                size = 8  # Iz with a 64-bit operand: imm32 sign-extended to 64 bits
            if size == 8 and not (map_id == T.MAP_ONE and 0xB8 <= opcode <= 0xBF):
                width = 4  # Iz/Iv are 32-bit immediates sign-extended, except MOV r64, imm64
            else:
                width = size
            if pos + width > n:
                raise TruncatedInstruction("instruction truncated in its immediate")
            value = int.from_bytes(code[pos : pos + width], "little")
            pos += width
            if width < size and value >> (width * 8 - 1):
                value |= ((1 << (size * 8)) - 1) ^ ((1 << (width * 8)) - 1)
            op = Operand(OP_IMM, size)
            op.value = value
        elif method == T.M_IS:
            if pos >= n:
                raise TruncatedInstruction("instruction truncated in its immediate")
            value = code[pos]
            pos += 1
            op = Operand(OP_IMM, opsize)
            op.value = (value - 0x100 if value & 0x80 else value) & ((1 << (opsize * 8)) - 1)
        elif method == T.M_I2:
            if pos >= n:
                raise TruncatedInstruction("instruction truncated in its immediate")
            op = Operand(OP_IMM, 1)
            op.value = code[pos]
            pos += 1
        elif method == T.M_J:
            width = 1 if size == 1 else (2 if opsize == 2 else 4)
            if pos + width > n:
                raise TruncatedInstruction("instruction truncated in its branch offset")
            op = Operand(OP_REL, opsize)
            op.value = int.from_bytes(code[pos : pos + width], "little", signed=True)
            pos += width
        elif method == T.M_Z:
            op = _gpr((opcode & 7) | ((rex & 1) << 3), size, rex)
        elif method == T.M_FIXREG:
            op = _reg(RC_GPR, spec.reg, size)
        elif method == T.M_X or method == T.M_Y:
            op = Operand(OP_MEM, size)
            op.addrsize = addrsize
            if method == T.M_X:
                op.base = 6
                op.seg = seg_override if seg_override >= 0 else T.SEG_DS
            else:
                op.base = 7
                op.seg = T.SEG_ES
        elif method == T.M_O:
            if pos + addrsize > n:
                raise TruncatedInstruction("instruction truncated in its memory offset")
            op = Operand(OP_MEM, size)
            op.addrsize = addrsize
            op.disp = int.from_bytes(code[pos : pos + addrsize], "little")
            op.seg = seg_override if seg_override >= 0 else T.SEG_DS
            pos += addrsize
        elif method == T.M_ONE:
            op = Operand(OP_IMM, 1)
            op.value = 1
        elif method == T.M_S:
            if (reg_field & 7) > 5:
                raise DecodeError("segment register number above 5")
            if reg_field & 7 == T.SEG_CS and row.handler == "mov_to_seg":
                raise DecodeError("MOV to CS is invalid")
            op = _reg(RC_SEG, reg_field & 7, 2)
        elif method == T.M_FIXSEG:
            op = _reg(RC_SEG, spec.reg, opsize)
        elif method == T.M_R or method == T.M_U or method == T.M_N:
            if mem is not None:
                raise DecodeError("memory operand where the instruction needs a register")
            if method == T.M_R:
                op = _gpr(rm_reg, 8 if is64 and row.flags & T.MOD3_ANY else size, rex)
            elif method == T.M_U:
                op = _reg(RC_XMM, rm_reg, size)
            else:
                op = _reg(RC_MMX, rm_reg & 7, size)
        elif method == T.M_C or method == T.M_D:
            reg = reg_field
            if method == T.M_C:
                if lock and not is64 and reg == 0:
                    reg = 8  # AMD's LOCK MOV CR0 alias for CR8
                if reg not in (0, 2, 3, 4, 8):
                    raise DecodeError(f"control register cr{reg} does not exist")
                op = _reg(RC_CR, reg, 8 if is64 else 4)
            else:
                if reg > 7:
                    raise DecodeError(f"debug register dr{reg} does not exist")
                op = _reg(RC_DR, reg, 8 if is64 else 4)
        elif method == T.M_V:
            op = _reg(RC_XMM, reg_field, size)
        elif method == T.M_P:
            op = _reg(RC_MMX, reg_field & 7, size)
        elif method == T.M_A:
            width = 2 if opsize == 2 else 4
            if pos + width + 2 > n:
                raise TruncatedInstruction("instruction truncated in its far pointer")
            op = Operand(OP_FAR, width)
            op.value = int.from_bytes(code[pos : pos + width], "little")
            op.seg = code[pos + width] | code[pos + width + 1] << 8
            pos += width + 2
        else:  # M_ST / M_ST0: x87 register forms
            op = _reg(RC_ST, rm_reg & 7 if method == T.M_ST else 0, 10)
        operands.append(op)
        if pos > MAX_INSN_LENGTH:
            raise DecodeError("instruction longer than 15 bytes")
    if pos > MAX_INSN_LENGTH:
        raise DecodeError("instruction longer than 15 bytes")
    if lock and (not flags & T.LOCK or mem is None):
        if not (flags & T.MOD3_ANY):
            raise DecodeError("LOCK prefix on an instruction that cannot be locked")
    insn = Instruction()
    insn.length = pos
    insn.row = row
    insn.handler = row.handler
    insn.operands = operands
    insn.prefixes = tuple(code[:prefix_end])
    insn.opsize = opsize
    insn.addrsize = addrsize
    insn.mode = mode
    insn.rep = rep_kept
    insn.lock = lock
    insn.seg_override = seg_override
    insn.rex = rex
    insn.opcode = (map_id << 8) | opcode
    insn.raw = bytes(code[:pos])
    mnems = row.mnemonics
    if len(mnems) == 1:
        insn.mnemonic = mnems[0]
    elif flags & T.ASZ_MNEM:
        insn.mnemonic = mnems[addrsize.bit_length() - 2]
    else:
        insn.mnemonic = mnems[opsize.bit_length() - 2] if opsize > 1 else mnems[0]
    return insn


def _resolve_size(size: int, opsize: int, is64: bool) -> int:
    if size == T.SZ_V:
        return opsize
    if size == T.SZ_Z:
        return 2 if opsize == 2 else 4
    if size == T.SZ_Y:
        return 8 if opsize == 8 else 4
    if size == T.SZ_P:
        return (2 if opsize == 2 else 4) + 2 if opsize != 8 else 10
    if size == T.SZ_S:
        return 10 if is64 else 6
    if size == T.SZ_A:
        return opsize * 2
    if size == T.SZ_O:
        return 16 if opsize == 8 else 8
    raise DecodeError(f"bad size code {size} in the opcode table")


def _reg(regclass: int, reg: int, size: int) -> Operand:
    op = Operand(OP_REG, size)
    op.regclass = regclass
    op.reg = reg
    return op


def _gpr(reg: int, size: int, rex: int) -> Operand:
    op = Operand(OP_REG, size)
    if size == 1 and not rex and 4 <= reg < 8:
        op.regclass = RC_GPR8H
        op.reg = reg - 4
    else:
        op.reg = reg
    return op


def mode_of(cs_db: bool, cs_l: bool, protected: bool, long_active: bool, vm86: bool = False) -> int:
    """The decode mode for a code segment: 64 for a 64-bit CS in long mode, else 32 or 16."""
    if not protected or vm86:
        return MODE_16
    if long_active and cs_l:
        return MODE_64
    return MODE_32 if cs_db else MODE_16
