"""Generate valid instruction byte strings from the decoder's own opcode tables.

Every :class:`~kvmlite.emulator.opcodes.Row` reachable in the maps is walked
once to learn the constraints on its encoding (map, opcode byte, mandatory
prefix, ModRM.reg, register-or-memory form, ModRM.rm); instances are then made
with random optional prefixes, random ModRM/SIB bytes meeting the constraints
and random displacement/immediate bytes.  The result feeds the comparison
against capstone, so a table row that is wrong shows up as a disagreement.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kvmlite.emulator import opcodes as T

MAP_ESCAPES = {T.MAP_ONE: b"", T.MAP_0F: b"\x0f", T.MAP_0F38: b"\x0f\x38", T.MAP_0F3A: b"\x0f\x3a"}
MANDATORY = (None, 0x66, 0xF3, 0xF2)
ONE_BYTE_PREFIX_OPCODES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x0F})


@dataclass(frozen=True)
class Form:
    """One table row and the constraints its encoding must satisfy."""

    row: T.Row
    map_id: int
    opcode: int
    mandatory: int | None = None
    reg: int | None = None
    mod_reg: bool | None = None  # True: mod == 3, False: memory, None: either
    rm: int | None = None
    via_prefixed: bool = False


def _walk(entry: T.Entry | None, form: dict, out: list[Form]) -> None:
    if entry is None:
        return
    if isinstance(entry, T.Row):
        out.append(Form(row=entry, **form))
    elif isinstance(entry, T.Group):
        for reg, sub in enumerate(entry.entries):
            _walk(sub, {**form, "reg": reg}, out)
    elif isinstance(entry, T.Prefixed):
        for prefix, sub in zip(MANDATORY, entry.entries, strict=True):
            _walk(sub, {**form, "mandatory": prefix, "via_prefixed": True}, out)
    else:
        _walk(entry.mem, {**form, "mod_reg": False}, out)
        if entry.reg_by_rm is not None:
            for idx, sub in enumerate(entry.reg_by_rm):
                _walk(sub, {**form, "mod_reg": True, "reg": idx >> 3, "rm": idx & 7}, out)
        else:
            _walk(entry.reg, {**form, "mod_reg": True}, out)


def all_forms() -> list[Form]:
    """Every instruction form in the tables (prefix opcodes excluded)."""
    out: list[Form] = []
    for map_id, table in enumerate(T.MAPS):
        for opcode, entry in enumerate(table):
            if map_id == T.MAP_ONE and opcode in ONE_BYTE_PREFIX_OPCODES:
                continue
            if map_id == T.MAP_0F and opcode in (0x38, 0x3A):
                continue
            _walk(entry, {"map_id": map_id, "opcode": opcode}, out)
    return out


def comparable(form: Form, mode: int) -> bool:
    """Whether capstone's reading of this form can be compared with ours.

    Excluded, each for a known capstone difference that is not a decoder bug:
    the 0F 19..1E reserved-NOP space (capstone decodes MPX/CET/CLDEMOTE there),
    UD0/UD1 (capstone decodes them without ModRM, the SDM with one), the
    reserved 0F 0D /3../7 prefetch aliases and F2-prefixed BSF/BSR (capstone
    rejects, the CPU ignores the prefix), and in 16-bit mode the SSE forms
    selected by a mandatory 66 (capstone 5 takes the 66 as operand size there).
    """
    row = form.row
    if form.map_id == T.MAP_0F and 0x19 <= form.opcode <= 0x1E:
        return False
    if row.mnemonics[0] in ("ud0", "ud1"):
        return False
    if form.map_id == T.MAP_0F and form.opcode == 0x0D and (form.reg or 0) >= 3:
        return False
    if row.mnemonics[0] in ("bsf", "bsr") and form.mandatory == 0xF2:
        return False
    if mode == 16 and form.mandatory == 0x66:
        return False
    if form.map_id == T.MAP_0F and form.opcode == 0x18 and form.mod_reg:
        return False  # hint-NOP register forms: capstone rejects them
    if mode == 16 and row.mnemonics[0] in ("cbw", "cwd"):
        return False  # capstone 5 prints CWDE/CDQ for 98/99 in 16-bit mode
    return valid_in_mode(form, mode)


def valid_in_mode(form: Form, mode: int) -> bool:
    flags = form.row.flags
    if mode == 64 and flags & T.NO64:
        return False
    if mode != 64 and flags & T.ONLY64:
        return False
    return True


def instance(form: Form, mode: int, rng: random.Random) -> bytes:
    """Random bytes encoding ``form`` in ``mode`` (with random optional prefixes)."""
    prefixes = bytearray()
    flags = form.row.flags
    if form.rm is not None or (form.map_id == T.MAP_ONE and form.opcode == 0x90):
        # Fully specified encodings (fences, VMX, SWAPGS...) and NOP/PAUSE: no optional
        # prefixes; capstone decodes several such combinations as newer instructions.
        return _assemble(form, prefixes, rng, mode, rex_ok=False)
    if rng.random() < 0.15:
        prefixes.append(rng.choice((0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65)))
    if rng.random() < 0.2 and not flags & T.BRANCH and (form.row.operands or flags & (T.STRING | T.ASZ_MNEM)):
        prefixes.append(0x67)
    if form.mandatory == 0x66 or (
        not form.via_prefixed and rng.random() < 0.25 and not flags & (T.SSE | T.F64 | T.X87)
    ):
        prefixes.append(0x66)
    if form.mandatory in (0xF2, 0xF3):
        prefixes.append(form.mandatory)
    elif flags & T.STRING and rng.random() < 0.3:
        prefixes.append(rng.choice((0xF2, 0xF3)) if flags & T.REPZ else 0xF3)
    return _assemble(form, prefixes, rng, mode, rex_ok=True)


def _assemble(form: Form, prefixes: bytearray, rng: random.Random, mode: int, rex_ok: bool) -> bytes:
    flags = form.row.flags
    if mode == 64 and rex_ok and rng.random() < 0.5:
        rex = 0x40 | rng.randrange(16)
        if form.row.name in ("mov_to_cr", "mov_from_cr", "mov_to_dr", "mov_from_dr"):
            rex &= ~4  # REX.R selects CR8..15/DR8..15: only CR8 exists, capstone accepts all
        if 0x66 in prefixes and (flags & T.DEF64 or any(o.size == T.SZ_Z for o in form.row.operands)):
            rex &= ~8  # capstone lets 66 win over REX.W here; the CPU does not
        prefixes.append(rex)
    body = bytearray(MAP_ESCAPES[form.map_id])
    body.append(form.opcode)
    needs_modrm = bool(flags & T.MODRM) or form.reg is not None or form.mod_reg is not None
    if needs_modrm:
        modrm = rng.randrange(256)
        if form.mod_reg is True:
            modrm |= 0xC0
        elif form.mod_reg is False and modrm >= 0xC0:
            modrm &= 0x7F
        if form.reg is not None:
            modrm = (modrm & ~0x38) | (form.reg << 3)
        if form.rm is not None:
            modrm = (modrm & ~7) | form.rm
        if form.row.mnemonics[0] in ("lfence", "mfence", "sfence"):
            modrm &= ~7  # capstone accepts only rm = 0 (the CPU ignores rm)
        if flags & T.MOD3_ANY:
            modrm |= 0xC0
        if form.row.name == "mov_to_seg" or form.row.name == "mov_from_seg":
            modrm = (modrm & ~0x38) | (
                rng.choice((0, 2, 3, 4, 5) if form.row.name == "mov_to_seg" else range(6)) << 3
            )
        if form.row.name in ("mov_to_cr", "mov_from_cr"):
            modrm = (modrm & ~0x38) | (rng.choice((0, 2, 3, 4)) << 3)
        body.append(modrm)
    tail = bytes(rng.randrange(256) for _ in range(16))
    return bytes(prefixes) + bytes(body) + tail
