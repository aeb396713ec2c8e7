"""Segment registers and descriptor tables: loads with the protected-mode checks (through
:mod:`..segments`), far pointers, LLDT/LTR, LAR/LSL/VERR/VERW/ARPL, LGDT/LIDT/SGDT/SIDT.

Each handler is ``handler(ex, insn)``: the executor and the decoded instruction; the opcode
rows of :mod:`kvmlite.emulator.opcodes` name them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kvmlite.emulator import instruction as D
from kvmlite.emulator import segments
from kvmlite.emulator.cpu import (
    CR0_PE,
    CS,
    DS,
    EFER_LMA,
    ES,
    FLAG_VM,
    FLAG_ZF,
    FS,
    GS,
    RSP,
    SS,
)
from kvmlite.emulator.faults import (
    NP,
    UD,
    GuestFault,
    gp,
)
from kvmlite.emulator.handlers import control
from kvmlite.emulator.segments import (
    TYPE_CODE,
    TYPE_CONFORMING,
    TYPE_READABLE,
    TYPE_WRITABLE,
    Descriptor,
    Segment,
    SegReg,
)
from kvmlite.errors import UnsupportedInstruction
from kvmlite.x86 import SysType

if TYPE_CHECKING:
    from kvmlite.emulator.executor import Executor

log = logging.getLogger(__name__)

TSS_BUSY_BIT = 0x2  # the bit LTR sets in an available TSS descriptor type
_FAR_PTR_SEGMENT = {"les": ES, "lds": DS, "lss": SS, "lfs": FS, "lgs": GS}


def _ldt(ex: Executor) -> Segment | None:
    """LDTR when it holds a table (a null selector in LDTR means there is none)."""
    ldtr = ex.cpu.ldtr
    return None if ldtr.unusable or not ldtr.selector & ~3 else ldtr


def read_descriptor(ex: Executor, selector: int) -> tuple[int, Descriptor]:
    """(linear address, descriptor) for a selector; #GP(selector) if outside its table."""
    return segments.read_descriptor(ex.sys_read_bytes, selector, ex.cpu.gdtr, _ldt(ex))


def load_segment(ex: Executor, seg: int, selector: int) -> None:
    """MOV/POP to a data segment register or SS, with the protected-mode checks (:mod:`.segments`)."""
    cpu = ex.cpu
    selector &= 0xFFFF
    if not cpu.cr0 & CR0_PE:
        s = cpu.segs[seg]  # real mode: only selector and base change (limits stay: "unreal" mode)
        s.selector, s.base, s.unusable, s.present = selector, selector << 4, False, True
        return
    if cpu.rflags & FLAG_VM:
        cpu.segs[seg] = Segment(selector, selector << 4, 0xFFFF, dpl=3)
        return
    cpu.segs[seg] = segments.load_segment(
        ex.sys_read_bytes,
        ex.sys_write_bytes,
        seg,  # type: ignore[arg-type]
        selector,
        cpu.cpl,
        cpu.gdtr,
        _ldt(ex),
        long_mode=bool(cpu.efer & EFER_LMA),
        mode64=ex.mode == 64,
    )
    if seg == SS:
        cpu.interrupt_shadow = True


def load_code_segment(ex: Executor, selector: int, new_cpl: int | None = None) -> Segment:
    """Check and load CS for a far transfer; returns the new cache.

    Without ``new_cpl`` (far JMP/CALL, RETF/IRET to the same level) the
    SDM's checks of :func:`.segments.load_segment` apply; a return to an
    outer level passes the CPL it returns to (the RPL of the selector).
    """
    cpu = ex.cpu
    selector &= 0xFFFF
    if not cpu.cr0 & CR0_PE or cpu.rflags & FLAG_VM:
        cs = cpu.segs[CS]
        cs.selector = selector
        cs.base = selector << 4
        return cs
    if new_cpl is None:
        new = segments.load_segment(
            ex.sys_read_bytes,
            ex.sys_write_bytes,
            SegReg.CS,
            selector,
            cpu.cpl,
            cpu.gdtr,
            _ldt(ex),
            long_mode=bool(cpu.efer & EFER_LMA),
        )
        cpl = cpu.cpl
    else:
        if selector & ~3 == 0:
            raise gp(0, "null selector loaded into CS")
        addr, desc = read_descriptor(ex, selector)
        err = selector & ~3
        if not desc.s:
            raise UnsupportedInstruction(f"far return through system descriptor {selector:#x}")
        if not desc.type & TYPE_CODE:
            raise gp(err, f"selector {selector:#x} is not a code segment")
        if not desc.present:
            raise GuestFault(NP, err, reason=f"code segment {selector:#x} not present")
        desc = segments.mark_accessed(ex.sys_write_bytes, addr, desc)
        cpl = new_cpl
        new = Segment.from_descriptor((selector & ~3) | cpl, desc)
    if not new.type & TYPE_CONFORMING:
        new.dpl = cpl
    cpu.segs[CS] = new
    cpu.cpl = cpl
    ex.refresh_mode()
    return new


def null_outer_data_segments(ex: Executor) -> None:
    """After RETF/IRET to an outer level: data registers the new CPL may not use become null."""
    cpu = ex.cpu
    for seg in (ES, DS, FS, GS):
        s = cpu.segs[seg]
        conforming_code = s.type & TYPE_CODE and s.type & TYPE_CONFORMING
        if s.dpl < cpu.cpl and not conforming_code and not s.unusable:
            cpu.segs[seg] = Segment.null()


def mov_to_seg(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    load_segment(ex, dst.reg, ex.get(src) & 0xFFFF)


def mov_from_seg(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    value = ex.cpu.segs[src.reg].selector
    if dst.kind == D.OP_MEM:
        ex.write(dst.seg, ex.ea(dst), 2, value)
    else:
        ex.put(dst, value)


def push_seg(ex: Executor, insn: D.Instruction) -> None:
    ex.push(ex.cpu.segs[insn.operands[0].reg].selector, insn.opsize)


def pop_seg(ex: Executor, insn: D.Instruction) -> None:
    size = insn.opsize
    value = ex.stack_peek(0, size) & 0xFFFF
    load_segment(ex, insn.operands[0].reg, value)
    ex.set_reg(
        RSP,
        8 if ex.mode == 64 else (4 if ex.cpu.segs[SS].db and ex.cpu.cr0 & CR0_PE else 2),
        ex.cpu.gpr[RSP] + size,
    )


def load_far_ptr(ex: Executor, insn: D.Instruction) -> None:
    dst, src = insn.operands
    sel, off = control._far_pointer(ex, src, insn.opsize)
    seg = _FAR_PTR_SEGMENT[insn.mnemonic]
    load_segment(ex, seg, sel)
    ex.put(dst, off)


def _dt_operand(ex: Executor, insn: D.Instruction) -> tuple[int, int]:
    op = insn.operands[0]
    return op.seg, ex.ea(op)


def lgdt(ex: Executor, insn: D.Instruction) -> None:
    _load_dt(ex, insn, ex.cpu.gdtr)


def lidt(ex: Executor, insn: D.Instruction) -> None:
    _load_dt(ex, insn, ex.cpu.idtr)


def _load_dt(ex: Executor, insn: D.Instruction, table: object) -> None:
    seg, off = _dt_operand(ex, insn)
    limit = ex.read(seg, off, 2)
    if ex.mode == 64:
        base = ex.read(seg, off + 2, 8)
    else:
        base = ex.read(seg, off + 2, 4)
        if insn.opsize == 2:
            base &= 0xFFFFFF
    table.base = base  # type: ignore[attr-defined]
    table.limit = limit  # type: ignore[attr-defined]


def sgdt(ex: Executor, insn: D.Instruction) -> None:
    _store_dt(ex, insn, ex.cpu.gdtr)


def sidt(ex: Executor, insn: D.Instruction) -> None:
    _store_dt(ex, insn, ex.cpu.idtr)


def _store_dt(ex: Executor, insn: D.Instruction, table: object) -> None:
    seg, off = _dt_operand(ex, insn)
    ex.write(seg, off, 2, table.limit)  # type: ignore[attr-defined]
    ex.write(seg, off + 2, 8 if ex.mode == 64 else 4, table.base)  # type: ignore[attr-defined]


def _load_system_segment(
    ex: Executor, selector: int, want: tuple[int, ...]
) -> tuple[Segment, int, Descriptor]:
    addr, desc = read_descriptor(ex, selector)
    if desc.s or desc.type not in want:
        raise gp(selector & ~3, f"selector {selector:#x} is not the expected system descriptor")
    if not desc.present:
        raise GuestFault(NP, selector & ~3, reason=f"system segment {selector:#x} not present")
    new = Segment.from_descriptor(selector, desc)
    if ex.cpu.efer & EFER_LMA:
        new.base |= ex.sys_read(addr + 8, 4) << 32
    return new, addr, desc


def lldt(ex: Executor, insn: D.Instruction) -> None:
    if not ex.cpu.cr0 & CR0_PE:
        raise GuestFault(UD, reason="LLDT in real mode")
    sel = ex.get(insn.operands[0]) & 0xFFFF
    if sel & ~3 == 0:
        ex.cpu.ldtr = Segment(sel, type=SysType.LDT, s=False, unusable=True)
        return
    new, _, _ = _load_system_segment(ex, sel, (SysType.LDT,))
    ex.cpu.ldtr = new


def ltr(ex: Executor, insn: D.Instruction) -> None:
    if not ex.cpu.cr0 & CR0_PE:
        raise GuestFault(UD, reason="LTR in real mode")
    sel = ex.get(insn.operands[0]) & 0xFFFF
    if sel & ~3 == 0 or sel & 4:
        raise gp(sel & ~3, "LTR needs a GDT selector")
    new, addr, desc = _load_system_segment(ex, sel, (SysType.TSS_AVAIL, SysType.TSS16_AVAIL))
    busy = desc.to_bytes()[segments.DESC_ACCESS_BYTE] | TSS_BUSY_BIT
    ex.sys_write(addr + segments.DESC_ACCESS_BYTE, 1, busy)
    new.type |= TSS_BUSY_BIT
    ex.cpu.tr = new


def sldt(ex: Executor, insn: D.Instruction) -> None:
    _store_selector(ex, insn, ex.cpu.ldtr.selector)


def str_(ex: Executor, insn: D.Instruction) -> None:
    _store_selector(ex, insn, ex.cpu.tr.selector)


def _store_selector(ex: Executor, insn: D.Instruction, value: int) -> None:
    if not ex.cpu.cr0 & CR0_PE:
        raise GuestFault(UD, reason="SLDT/STR in real mode")
    op = insn.operands[0]
    ex.put(op, value)


def _lar_lsl(ex: Executor, insn: D.Instruction, lsl: bool) -> None:
    cpu = ex.cpu
    if not cpu.cr0 & CR0_PE or cpu.rflags & FLAG_VM:
        raise GuestFault(UD, reason="LAR/LSL outside protected mode")
    dst, src = insn.operands
    sel = ex.get(src) & 0xFFFF
    try:
        _, desc = read_descriptor(ex, sel)
    except GuestFault:
        ex.set_flags(0, FLAG_ZF)
        return
    if sel & ~3 == 0:
        ex.set_flags(0, FLAG_ZF)
        return
    conforming_code = desc.s and desc.type & TYPE_CODE and desc.type & TYPE_CONFORMING
    if not conforming_code and (desc.dpl < cpu.cpl or desc.dpl < (sel & 3)):
        ex.set_flags(0, FLAG_ZF)
        return
    if lsl:
        ex.put(dst, desc.byte_limit)
    else:
        rights = int.from_bytes(desc.to_bytes()[4:8], "little")  # access byte and flags nibble
        ex.put(dst, rights & 0x00FFFF00 if dst.size > 2 else rights & 0xFF00)
    ex.set_flags(FLAG_ZF, FLAG_ZF)


def lar(ex: Executor, insn: D.Instruction) -> None:
    _lar_lsl(ex, insn, False)


def lsl(ex: Executor, insn: D.Instruction) -> None:
    _lar_lsl(ex, insn, True)


def _verify(ex: Executor, insn: D.Instruction, write: bool) -> None:
    cpu = ex.cpu
    sel = ex.get(insn.operands[0]) & 0xFFFF
    ok = False
    if sel & ~3:
        try:
            _, seg = read_descriptor(ex, sel)
            if seg.s:
                if write:
                    ok = not seg.type & TYPE_CODE and bool(seg.type & TYPE_WRITABLE)
                else:
                    ok = not seg.type & TYPE_CODE or bool(seg.type & TYPE_READABLE)
                conforming = seg.type & TYPE_CODE and seg.type & TYPE_CONFORMING
                if not conforming and (seg.dpl < cpu.cpl or seg.dpl < (sel & 3)):
                    ok = False
        except GuestFault:
            ok = False
    ex.set_flags(FLAG_ZF if ok else 0, FLAG_ZF)


def verr(ex: Executor, insn: D.Instruction) -> None:
    _verify(ex, insn, False)


def verw(ex: Executor, insn: D.Instruction) -> None:
    _verify(ex, insn, True)


def arpl(ex: Executor, insn: D.Instruction) -> None:
    if not ex.cpu.cr0 & CR0_PE or ex.cpu.rflags & FLAG_VM:
        raise GuestFault(UD, reason="ARPL outside protected mode")
    dst, src = insn.operands
    a, b = ex.get(dst), ex.get(src)
    if (a & 3) < (b & 3):
        ex.put(dst, (a & ~3) | (b & 3))
        ex.set_flags(FLAG_ZF, FLAG_ZF)
    else:
        ex.set_flags(0, FLAG_ZF)
