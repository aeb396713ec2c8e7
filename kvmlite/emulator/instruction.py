"""Decoded instructions and their operands, as the decoder hands them to the executor.

:class:`Instruction` and :class:`Operand` are plain slotted records with an
Intel-syntax printer (``format``) matching capstone's, so the decoder can be
checked against it.  The constants name operand kinds (``OP_*``) and register
classes (``RC_*``).  Kept apart from :mod:`kvmlite.emulator.decoder` so that
the instruction handlers, which the opcode tables name, can use them without
importing the decoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmlite.emulator.cpu import DS, SEG_NAMES

if TYPE_CHECKING:
    from kvmlite.emulator.opcodes import Row

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

#: The opcode-row flag of CMPS/SCAS (REPE/REPNE), repeated from :mod:`.opcodes` for printing.
REPZ = 1 << 7
GPR_NAMES = {
    8: ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", *(f"r{i}" for i in range(8, 16))),
    4: ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", *(f"r{i}d" for i in range(8, 16))),
    2: ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di", *(f"r{i}w" for i in range(8, 16))),
    1: ("al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil", *(f"r{i}b" for i in range(8, 16))),
}
GPR8H_NAMES = ("ah", "ch", "dh", "bh")
_SIZE_PTR = {1: "byte", 2: "word", 4: "dword", 8: "qword", 10: "xword", 16: "xmmword", 6: "fword"}

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
        self.seg = DS
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
    ``row`` is the table row (its ``handler`` is the executor routine), ``name``
    the routine's name (``"mov_to_seg"``), for tests and messages.
    """

    __slots__ = (
        "addrsize",
        "length",
        "lock",
        "mnemonic",
        "mode",
        "name",
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
    # Set by the decoder (``Decoder.instruction``); declared here, no class-level values (slots).
    addrsize: int
    length: int
    lock: bool
    mnemonic: str
    mode: int
    name: str
    opcode: int
    opsize: int
    raw: bytes
    rep: int
    rex: int
    seg_override: int

    def __init__(self) -> None:
        self.operands: list[Operand] = []
        self.prefixes: tuple[int, ...] = ()
        self.row: Row

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
                if self.rep == PREFIX_REP and not self.row.flags & REPZ
                else ("repe " if self.rep == PREFIX_REP else "repne ")
            )
        return f"{prefix}{self.mnemonic} {ops}".rstrip()

    def __repr__(self) -> str:
        return f"Instruction({self.raw.hex()}: {self.format()})"


