"""Compare one decoded instruction with capstone's reading of the same bytes.

The comparison is structural (length, mnemonic, and per operand: register
name, immediate value, memory base/index/scale/displacement/segment), with a
short, documented list of places where capstone's spelling differs from the
SDM's and neither is wrong.
"""

from __future__ import annotations

import re
from typing import Any

from kvmlite.emulator import decoder as D
from kvmlite.emulator import opcodes as T
from kvmlite.emulator.instruction import GPR_NAMES

try:
    import capstone
    from capstone import x86 as cs_x86
except ImportError:  # pragma: no cover - the test module skips
    capstone = None  # type: ignore[assignment]

CS_MODES = {16: "CS_MODE_16", 32: "CS_MODE_32", 64: "CS_MODE_64"}

# capstone mnemonic -> ours, where both name the same instruction.
MNEMONIC_ALIASES = {
    "movabs": "mov",  # A0-A3 with a 64-bit offset and B8+r imm64
    "sal": "shl",
    "fwait": "wait",
    "xlat": "xlatb",
    "call": "lcall",  # FF /3 without REX.W: capstone says call, the SDM "CALL m16:32"
    "jmp": "ljmp",
    "retf": "retf",
    "retfq": "retf",
    "pushal": "pushal",
    "iret": "iret",
    "int1": "int1",
    "ud1": "ud1",
}

# Instructions whose implicit register operands capstone lists and we leave implicit.
IMPLICIT_OPERANDS = frozenset({"vmrun", "vmload", "vmsave", "invlpga", "monitor", "mwait", "skinit"})

_CMP_PSEUDO = re.compile(r"cmp(eq|lt|le|unord|neq|nlt|nle|ord)(ps|pd|ss|sd)")

_cs_cache: dict[int, Any] = {}


def cs_for(mode: int) -> Any:
    md = _cs_cache.get(mode)
    if md is None:
        md = capstone.Cs(capstone.CS_ARCH_X86, getattr(capstone, CS_MODES[mode]))
        md.detail = True
        _cs_cache[mode] = md
    return md


def capstone_decode(code: bytes, mode: int, address: int = 0x1000) -> Any | None:
    for insn in cs_for(mode).disasm(code, address):
        return insn
    return None


def _norm_mnemonic(text: str) -> str:
    words = text.split()
    while words and words[0] in ("lock", "rep", "repe", "repne", "repz", "repnz", "bnd", "notrack", "data16"):
        words = words[1:]
    return " ".join(words)


def differences(ours: D.Instruction, cs: Any, mode: int, address: int = 0x1000) -> list[str]:
    """A list of human-readable disagreements (empty when they agree)."""
    diffs: list[str] = []
    if ours.length != cs.size:
        diffs.append(f"length {ours.length} != capstone {cs.size}")
        return diffs
    if ours.row.flags & T.X87 and ours.mnemonic == "x87":
        return diffs  # register-form x87: length only
    cs_mn = _norm_mnemonic(cs.mnemonic)
    if _CMP_PSEUDO.fullmatch(cs_mn) and ours.mnemonic == "cmp" + cs_mn[-2:]:
        return diffs  # capstone prints CMPPS/CMPSD with imm8 < 8 as pseudo-ops (cmpltps...)
    if cs_mn == "clflushopt" and ours.mnemonic == "clflush" and 0x66 not in ours.prefixes:
        return diffs  # capstone 5 reads 67 + REX.W 0F AE /7 as CLFLUSHOPT, which needs a 66 prefix
    if cs_mn != ours.mnemonic and MNEMONIC_ALIASES.get(cs_mn) != ours.mnemonic:
        diffs.append(f"mnemonic {ours.mnemonic!r} != capstone {cs_mn!r}")
        return diffs
    cs_ops = list(cs.operands)
    our_ops = list(ours.operands)
    if ours.mnemonic in IMPLICIT_OPERANDS and not our_ops:
        return diffs
    if len(our_ops) == 1 and our_ops[0].kind == D.OP_FAR and len(cs_ops) == 2:
        sel, off = cs_ops[0].imm & 0xFFFF, cs_ops[1].imm & 0xFFFFFFFF
        if (sel, off) != (our_ops[0].seg, our_ops[0].value):
            diffs.append(f"far pointer {our_ops[0].format()} != capstone {sel:#x}:{off:#x}")
        return diffs
    if ours.name in ("ins", "outs", "movs", "cmps", "stos", "lods", "scas") and len(cs_ops) != len(
        our_ops
    ):
        return diffs
    if len(cs_ops) != len(our_ops):
        diffs.append(f"{len(our_ops)} operands != capstone {len(cs_ops)} ({cs.op_str})")
        return diffs
    mask = (1 << (8 * mode // 8)) - 1 if mode != 16 else 0xFFFF
    for i, (o, c) in enumerate(zip(our_ops, cs_ops, strict=True)):
        where = f"operand {i}"
        if c.type == cs_x86.X86_OP_REG:
            name = cs.reg_name(c.reg)
            if o.kind != D.OP_REG:
                diffs.append(f"{where}: ours {o.format()} vs capstone register {name}")
            elif o.reg_name() != name:
                if o.regclass == D.RC_GPR and ours.name in ("mov_to_seg", "mov_from_seg"):
                    continue  # sreg moves: capstone sizes the GPR by operand size
                diffs.append(f"{where}: register {o.reg_name()} != capstone {name}")
        elif c.type == cs_x86.X86_OP_IMM:
            if o.kind == D.OP_REL:
                target = (address + ours.length + o.value) & (mask if ours.opsize != 2 else 0xFFFF)
                if target != c.imm & mask:
                    diffs.append(f"{where}: branch target {target:#x} != capstone {c.imm & mask:#x}")
            elif o.kind == D.OP_IMM:
                m = (1 << (8 * o.size)) - 1
                if o.value & m != c.imm & m:
                    diffs.append(f"{where}: immediate {o.value:#x} != capstone {c.imm & m:#x}")
            elif o.kind == D.OP_FAR:
                continue  # capstone splits seg:off into two immediates; checked by length
            else:
                diffs.append(f"{where}: ours {o.format()} vs capstone immediate {c.imm:#x}")
        elif c.type == cs_x86.X86_OP_MEM:
            if o.kind != D.OP_MEM:
                diffs.append(f"{where}: ours {o.format()} vs capstone memory")
                continue
            m = c.mem
            base = cs.reg_name(m.base) if m.base else None
            index = cs.reg_name(m.index) if m.index else None
            if index in ("riz", "eiz"):
                index = None  # SIB index 100b: "no index" (capstone names it riz)
            names = GPR_NAMES[o.addrsize]
            our_base = None
            if o.base == D.BASE_RIP:
                our_base = "rip" if o.addrsize == 8 else "eip"
            elif o.base != D.NO_REG:
                our_base = names[o.base]
            our_index = names[o.index] if o.index != D.NO_REG else None
            if base != our_base or index != our_index:
                diffs.append(f"{where}: [{our_base}+{our_index}] != capstone [{base}+{index}]")
            if index and m.scale != o.scale:
                diffs.append(f"{where}: scale {o.scale} != capstone {m.scale}")
            amask = (1 << (8 * o.addrsize)) - 1
            if (o.disp & amask) != (m.disp & amask):
                diffs.append(f"{where}: disp {o.disp:#x} != capstone {m.disp:#x}")
            if m.segment and cs.reg_name(m.segment) != T.SEG_NAMES[o.seg]:
                diffs.append(f"{where}: segment {T.SEG_NAMES[o.seg]} != capstone {cs.reg_name(m.segment)}")
    return diffs
