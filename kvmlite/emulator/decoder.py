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
* :func:`decode` runs four steps over one :class:`_Decoding` state, each a
  method: :meth:`~_Decoding.prefixes` (legacy and REX),
  :meth:`~_Decoding.opcode` (the maps, groups, mandatory prefixes and mod
  splits), :meth:`~_Decoding.modrm` (ModRM, SIB, displacement) and
  :meth:`~_Decoding.operands` (each operand kind of the row).
* Bytes that do not form a valid instruction raise
  :class:`kvmlite.errors.DecodeError`; running out of bytes raises its
  subclass :class:`TruncatedInstruction`, so the executor can fetch the rest
  of an instruction that crosses a page boundary.
"""

from __future__ import annotations

import logging

from kvmlite.emulator import opcodes as T
from kvmlite.emulator.cpu import CS, DS, ES, FS, GS, SS
from kvmlite.emulator.instruction import (
    BASE_RIP,
    MAX_INSN_LENGTH,
    MODE_16,
    MODE_32,
    MODE_64,
    NO_REG,
    OP_FAR,
    OP_IMM,
    OP_MEM,
    OP_REG,
    OP_REL,
    PREFIX_ADDRSIZE,
    PREFIX_LOCK,
    PREFIX_OPSIZE,
    PREFIX_REP,
    PREFIX_REPNE,
    RC_CR,
    RC_DR,
    RC_GPR,
    RC_GPR8H,
    RC_MMX,
    RC_SEG,
    RC_ST,
    RC_XMM,
    Instruction,
    Operand,
)
from kvmlite.errors import DecodeError

log = logging.getLogger(__name__)

_SEG_PREFIXES = {0x26: ES, 0x2E: CS, 0x36: SS, 0x3E: DS, 0x64: FS, 0x65: GS}
_LEGACY_PREFIXES = frozenset(
    (PREFIX_LOCK, PREFIX_REPNE, PREFIX_REP, PREFIX_OPSIZE, PREFIX_ADDRSIZE, *_SEG_PREFIXES)
)
# 16-bit ModRM r/m: (base, index) register numbers.
_MODRM16 = ((3, 6), (3, 7), (5, 6), (5, 7), (6, NO_REG), (7, NO_REG), (5, NO_REG), (3, NO_REG))
_MAPS = T.MAPS
_MEM_METHODS = frozenset((T.M_E, T.M_M, T.M_W, T.M_Q))


class TruncatedInstruction(DecodeError):
    """The bytes end in the middle of an instruction (more may follow on the next page)."""


def decode(code: bytes, mode: int) -> Instruction:
    """Decode one instruction at the start of ``code`` in a 16-, 32- or 64-bit code segment.

    Raises :class:`DecodeError` for bytes that are no valid instruction (the
    executor turns that into #UD) and :class:`TruncatedInstruction` when
    ``code`` ends before the instruction does.
    """
    if mode not in (MODE_16, MODE_32, MODE_64):
        raise DecodeError(f"unknown decode mode {mode!r} (16, 32 or 64)")
    d = _Decoding(code, mode)
    d.prefixes()
    row = d.opcode()
    d.modrm(row.flags)
    operands = d.operands(row)
    return d.instruction(row, operands)


class _Decoding:
    """The state of one decode: the bytes, the position, and what the prefixes and ModRM said."""

    __slots__ = (
        "addrsize",
        "code",
        "is64",
        "lock",
        "map_id",
        "mem",
        "mode",
        "modrm_byte",
        "n",
        "opcode_byte",
        "opsize",
        "p66",
        "p67",
        "pos",
        "prefix_end",
        "reg_field",
        "rep",
        "rex",
        "rm_reg",
        "seg_override",
    )

    def __init__(self, code: bytes, mode: int) -> None:
        self.code = code
        self.n = len(code)
        self.mode = mode
        self.is64 = mode == MODE_64
        self.pos = 0
        self.p66 = self.p67 = self.lock = False
        self.rep = 0
        self.seg_override = -1
        self.rex = 0
        self.modrm_byte = -1
        self.mem: Operand | None = None
        self.rm_reg = self.reg_field = 0

    def need(self, count: int, where: str) -> None:
        if self.pos + count > self.n:
            raise TruncatedInstruction(f"instruction truncated in its {where}")

    # --- step 1: legacy prefixes and REX
    def prefixes(self) -> None:
        code, n, pos = self.code, self.n, 0
        while True:
            if pos >= n:
                raise TruncatedInstruction("instruction truncated in its prefixes")
            b = code[pos]
            if b in _LEGACY_PREFIXES:
                self.rex = 0  # a REX followed by a legacy prefix is ignored
                if b == PREFIX_OPSIZE:
                    self.p66 = True
                elif b == PREFIX_ADDRSIZE:
                    self.p67 = True
                elif b == PREFIX_LOCK:
                    self.lock = True
                elif b == PREFIX_REP or b == PREFIX_REPNE:
                    self.rep = b
                else:
                    self.seg_override = _SEG_PREFIXES[b]
                pos += 1
            elif self.is64 and 0x40 <= b <= 0x4F:
                self.rex = b
                pos += 1
            else:
                break
            if pos >= MAX_INSN_LENGTH:
                raise DecodeError("instruction longer than 15 bytes")
        self.pos = self.prefix_end = pos

    # --- step 2: the opcode maps, down to a row; the effective sizes
    def opcode(self) -> T.Row:
        code, n, is64, rex = self.code, self.n, self.is64, self.rex
        pos = self.pos
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
        self.pos, self.map_id, self.opcode_byte = pos, map_id, opcode
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
        row, p66_mandatory = self._resolve(entry)
        flags = row.flags
        if is64 and flags & T.NO64:
            raise DecodeError(f"opcode {code[self.prefix_end : pos].hex()} is invalid in 64-bit mode")
        if not is64 and flags & T.ONLY64:
            raise DecodeError(f"opcode {code[self.prefix_end : pos].hex()} is valid only in 64-bit mode")
        if p66_mandatory and flags & T.SSE:
            self.p66 = False
        self._sizes(flags)
        return row

    def _resolve(self, entry: T.Entry | None) -> tuple[T.Row, bool]:
        """Groups, mandatory prefixes and mod splits, down to the row (and whether 66 selected it)."""
        p66_mandatory = False
        while entry is not None and not isinstance(entry, T.Row):
            if isinstance(entry, T.Prefixed):
                if self.rep == PREFIX_REP:
                    entry = entry.entries[2]
                elif self.rep == PREFIX_REPNE:
                    entry = entry.entries[3]
                elif self.p66:
                    entry = entry.entries[1]
                    p66_mandatory = True
                else:
                    entry = entry.entries[0]
                continue
            if self.modrm_byte < 0:
                if self.pos >= self.n:
                    raise TruncatedInstruction("instruction truncated before its ModRM byte")
                self.modrm_byte = self.code[self.pos]
            modrm = self.modrm_byte
            if isinstance(entry, T.Group):
                entry = entry.entries[(modrm >> 3) & 7]
            elif modrm >= 0xC0:
                entry = entry.reg_by_rm[modrm & 0x3F] if entry.reg_by_rm is not None else entry.reg
            else:
                entry = entry.mem
        if entry is None:
            raise DecodeError(f"invalid opcode {self.code[self.prefix_end : self.pos].hex()}")
        return entry, p66_mandatory

    def _sizes(self, flags: int) -> None:
        rex, p66, p67 = self.rex, self.p66, self.p67
        if self.is64:
            if rex & 8 or flags & T.F64:
                self.opsize = 8
            elif p66:
                self.opsize = 2
            else:
                self.opsize = 8 if flags & T.DEF64 else 4
            self.addrsize = 4 if p67 else 8
        elif self.mode == MODE_32:
            self.opsize = 2 if p66 else 4
            self.addrsize = 2 if p67 else 4
        else:
            self.opsize = 4 if p66 else 2
            self.addrsize = 4 if p67 else 2

    # --- step 3: ModRM, SIB and displacement
    def modrm(self, flags: int) -> None:
        if not (flags & T.MODRM or self.modrm_byte >= 0):
            return
        code, rex = self.code, self.rex
        self.need(1, "ModRM byte")
        modrm = code[self.pos]
        self.pos += 1
        mod = modrm >> 6
        self.reg_field = ((modrm >> 3) & 7) | ((rex & 4) << 1)
        rm = modrm & 7
        if mod == 3 or flags & T.MOD3_ANY:
            self.rm_reg = rm | ((rex & 1) << 3)
            return
        mem = Operand(OP_MEM, 0)
        mem.addrsize = addrsize = self.addrsize
        default_seg = DS
        if addrsize == 2:
            if mod == 0 and rm == 6:
                self.need(2, "displacement")
                disp = code[self.pos] | code[self.pos + 1] << 8
                mem.disp = disp - 0x10000 if disp & 0x8000 else disp
                self.pos += 2
            else:
                mem.base, mem.index = _MODRM16[rm]
                if mem.base == 5:
                    default_seg = SS
        elif rm == 4:
            default_seg = self._sib(mem, mod)
        elif rm == 5 and mod == 0:
            mem.disp = self._disp32()
            if self.is64:
                mem.base = BASE_RIP
        else:
            mem.base = rm | ((rex & 1) << 3)
            if rm == 5:
                default_seg = SS
        if mod == 1:
            self.need(1, "displacement")
            d = code[self.pos]
            mem.disp = d - 0x100 if d & 0x80 else d
            self.pos += 1
        elif mod == 2:
            width = 2 if addrsize == 2 else 4
            self.need(width, "displacement")
            mem.disp = int.from_bytes(code[self.pos : self.pos + width], "little", signed=True)
            self.pos += width
        mem.seg = self.seg_override if self.seg_override >= 0 else default_seg
        self.mem = mem

    def _sib(self, mem: Operand, mod: int) -> int:
        """The SIB byte of a 32/64-bit address; returns the default segment (SS for rSP/rBP bases)."""
        self.need(1, "SIB byte")
        sib = self.code[self.pos]
        self.pos += 1
        rex = self.rex
        index = ((sib >> 3) & 7) | ((rex & 2) << 2)
        if index != 4:
            mem.index = index
            mem.scale = 1 << (sib >> 6)
        base = sib & 7
        if base == 5 and mod == 0:
            mem.disp = self._disp32()
            return DS
        mem.base = base | ((rex & 1) << 3)
        return SS if base == 4 or base == 5 else DS

    def _disp32(self) -> int:
        self.need(4, "displacement")
        value = int.from_bytes(self.code[self.pos : self.pos + 4], "little", signed=True)
        self.pos += 4
        return value

    # --- step 4: operands
    def operands(self, row: T.Row) -> list[Operand]:
        operands: list[Operand] = []
        opsize, is64 = self.opsize, self.is64
        for spec in row.operands:
            size = spec.size
            if size < 0:
                size = _resolve_size(size, opsize, is64)
            operands.append(self._operand(row, spec, size))
            if self.pos > MAX_INSN_LENGTH:
                raise DecodeError("instruction longer than 15 bytes")
        if self.pos > MAX_INSN_LENGTH:
            raise DecodeError("instruction longer than 15 bytes")
        if self.lock and (not row.flags & T.LOCK or self.mem is None) and not row.flags & T.MOD3_ANY:
            raise DecodeError("LOCK prefix on an instruction that cannot be locked")
        return operands

    def _operand(self, row: T.Row, spec: T.OperandSpec, size: int) -> Operand:
        method = spec.method
        code, rex, is64, opsize = self.code, self.rex, self.is64, self.opsize
        if method in _MEM_METHODS:
            return self._rm_operand(method, size)
        if method == T.M_G:
            return _gpr(self.reg_field, size, rex)
        if method == T.M_I:
            return self._immediate(spec, size)
        if method == T.M_IS:
            self.need(1, "immediate")
            value = code[self.pos]
            self.pos += 1
            op = Operand(OP_IMM, opsize)
            op.value = (value - 0x100 if value & 0x80 else value) & ((1 << (opsize * 8)) - 1)
            return op
        if method == T.M_I2:
            self.need(1, "immediate")
            op = Operand(OP_IMM, 1)
            op.value = code[self.pos]
            self.pos += 1
            return op
        if method == T.M_J:
            width = 1 if size == 1 else (2 if opsize == 2 else 4)
            self.need(width, "branch offset")
            op = Operand(OP_REL, opsize)
            op.value = int.from_bytes(code[self.pos : self.pos + width], "little", signed=True)
            self.pos += width
            return op
        if method == T.M_Z:
            return _gpr((self.opcode_byte & 7) | ((rex & 1) << 3), size, rex)
        if method == T.M_FIXREG:
            return _reg(RC_GPR, spec.reg, size)
        if method == T.M_X or method == T.M_Y:
            op = Operand(OP_MEM, size)
            op.addrsize = self.addrsize
            if method == T.M_X:
                op.base = 6
                op.seg = self.seg_override if self.seg_override >= 0 else DS
            else:
                op.base = 7
                op.seg = ES
            return op
        if method == T.M_O:
            self.need(self.addrsize, "memory offset")
            op = Operand(OP_MEM, size)
            op.addrsize = self.addrsize
            op.disp = int.from_bytes(code[self.pos : self.pos + self.addrsize], "little")
            op.seg = self.seg_override if self.seg_override >= 0 else DS
            self.pos += self.addrsize
            return op
        if method == T.M_ONE:
            op = Operand(OP_IMM, 1)
            op.value = 1
            return op
        if method == T.M_S:
            if (self.reg_field & 7) > 5:
                raise DecodeError("segment register number above 5")
            if self.reg_field & 7 == CS and row.name == "mov_to_seg":
                raise DecodeError("MOV to CS is invalid")
            return _reg(RC_SEG, self.reg_field & 7, 2)
        if method == T.M_FIXSEG:
            return _reg(RC_SEG, spec.reg, opsize)
        if method == T.M_R or method == T.M_U or method == T.M_N:
            if self.mem is not None:
                raise DecodeError("memory operand where the instruction needs a register")
            if method == T.M_R:
                return _gpr(self.rm_reg, 8 if is64 and row.flags & T.MOD3_ANY else size, rex)
            if method == T.M_U:
                return _reg(RC_XMM, self.rm_reg, size)
            return _reg(RC_MMX, self.rm_reg & 7, size)
        if method == T.M_C or method == T.M_D:
            return self._control_or_debug(method)
        if method == T.M_V:
            return _reg(RC_XMM, self.reg_field, size)
        if method == T.M_P:
            return _reg(RC_MMX, self.reg_field & 7, size)
        if method == T.M_A:
            width = 2 if opsize == 2 else 4
            self.need(width + 2, "far pointer")
            op = Operand(OP_FAR, width)
            pos = self.pos
            op.value = int.from_bytes(code[pos : pos + width], "little")
            op.seg = code[pos + width] | code[pos + width + 1] << 8
            self.pos += width + 2
            return op
        # M_ST / M_ST0: x87 register forms
        return _reg(RC_ST, self.rm_reg & 7 if method == T.M_ST else 0, 10)

    def _rm_operand(self, method: int, size: int) -> Operand:
        mem = self.mem
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
            return op
        if method == T.M_M:
            raise DecodeError("register operand where the instruction needs memory")
        if method == T.M_W:
            return _reg(RC_XMM, self.rm_reg, size)
        if method == T.M_Q:
            return _reg(RC_MMX, self.rm_reg & 7, size)
        return _gpr(self.rm_reg, size, self.rex)

    def _immediate(self, spec: T.OperandSpec, size: int) -> Operand:
        if spec.size == T.SZ_Z and self.opsize == 8:
            size = 8  # Iz with a 64-bit operand: imm32 sign-extended to 64 bits
        if size == 8 and not (self.map_id == T.MAP_ONE and 0xB8 <= self.opcode_byte <= 0xBF):
            width = 4  # Iz/Iv are 32-bit immediates sign-extended, except MOV r64, imm64
        else:
            width = size
        self.need(width, "immediate")
        value = int.from_bytes(self.code[self.pos : self.pos + width], "little")
        self.pos += width
        if width < size and value >> (width * 8 - 1):
            value |= ((1 << (size * 8)) - 1) ^ ((1 << (width * 8)) - 1)
        op = Operand(OP_IMM, size)
        op.value = value
        return op

    def _control_or_debug(self, method: int) -> Operand:
        reg = self.reg_field
        width = 8 if self.is64 else 4
        if method == T.M_C:
            if self.lock and not self.is64 and reg == 0:
                reg = 8  # AMD's LOCK MOV CR0 alias for CR8
            if reg not in (0, 2, 3, 4, 8):
                raise DecodeError(f"control register cr{reg} does not exist")
            return _reg(RC_CR, reg, width)
        if reg > 7:
            raise DecodeError(f"debug register dr{reg} does not exist")
        return _reg(RC_DR, reg, width)

    # --- the result
    def instruction(self, row: T.Row, operands: list[Operand]) -> Instruction:
        code, pos = self.code, self.pos
        insn = Instruction()
        insn.length = pos
        insn.row = row
        insn.name = row.name
        insn.operands = operands
        insn.prefixes = tuple(code[: self.prefix_end])
        insn.opsize = opsize = self.opsize
        insn.addrsize = addrsize = self.addrsize
        insn.mode = self.mode
        insn.rep = self.rep if row.flags & T.STRING else 0  # elsewhere F2/F3 are mandatory or ignored
        insn.lock = self.lock
        insn.seg_override = self.seg_override
        insn.rex = self.rex
        insn.opcode = (self.map_id << 8) | self.opcode_byte
        insn.raw = bytes(code[:pos])
        mnems = row.mnemonics
        if len(mnems) == 1:
            insn.mnemonic = mnems[0]
        elif row.flags & T.ASZ_MNEM:
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
