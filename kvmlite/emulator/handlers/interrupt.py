"""Exceptions and interrupts: delivery through the IVT or the IDT (stack switches, error codes, double
and triple faults), INT n/INT3/INTO/INT1 and IRET.

Each handler is ``handler(ex, insn)``: the executor and the decoded instruction; the opcode
rows of :mod:`kvmlite.emulator.opcodes` name them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kvmlite.emulator import instruction as D
from kvmlite.emulator import segments
from kvmlite.emulator.cpu import (
    AMASK,
    CR0_PE,
    CS,
    EFER_LMA,
    FLAG_AC,
    FLAG_FIXED1,
    FLAG_IF,
    FLAG_IOPL,
    FLAG_NT,
    FLAG_OF,
    FLAG_RF,
    FLAG_TF,
    FLAG_VIF,
    FLAG_VM,
    MASK64,
    RSP,
    SS,
)
from kvmlite.emulator.faults import (
    BP,
    CONTRIBUTORY,
    DB,
    DF,
    GP,
    HAS_ERROR_CODE,
    NP,
    OF,
    PF,
    TS,
    GuestFault,
    TripleFault,
    gp,
)
from kvmlite.emulator.handlers import segment
from kvmlite.emulator.mmu import NonCanonicalAddress, PageFault
from kvmlite.emulator.ops import ACCESS_USER, ACCESS_WRITE
from kvmlite.emulator.segments import (
    TYPE_ACCESSED,
    TYPE_CODE,
    TYPE_CONFORMING,
    Segment,
)
from kvmlite.errors import UnsupportedInstruction
from kvmlite.x86 import SysType

if TYPE_CHECKING:
    from kvmlite.emulator.executor import Executor

log = logging.getLogger(__name__)

TSS64_RSP0 = 4
TSS64_IST1 = 0x24
TSS32_ESP0 = 4
IRET_FLAGS = 0x3F7FD5  # every RFLAGS bit IRET may load (CPL 0)


def deliver_exception(
    ex: Executor, vector: int, error_code: int | None = None, address: int = 0, external: bool = False
) -> None:
    """Deliver an exception (CPU-detected or external), escalating to #DF and triple fault."""
    cpu = ex.cpu
    first = vector
    while True:
        if vector == PF:
            cpu.cr2 = address
        if not cpu.cr0 & CR0_PE:
            error_code = None
        elif vector not in HAS_ERROR_CODE or external:
            error_code = None
        try:
            _deliver(ex, vector, error_code, soft=False, return_rip=cpu.rip)
            return
        except (GuestFault, PageFault, NonCanonicalAddress) as second:
            vec2: int
            code2: int | None
            if isinstance(second, PageFault):
                vec2, code2, addr2 = PF, second.error_code, second.address
            elif isinstance(second, NonCanonicalAddress):
                vec2, code2, addr2 = GP, 0, 0
            else:
                vec2, code2, addr2 = second.vector, second.error_code, second.address
            log.debug("fault %d while delivering %d: %s", vec2, vector, second)
            if vector == DF:
                raise TripleFault(f"triple fault: {second} while delivering #DF (first {first})") from second
            benign = not (vector in CONTRIBUTORY or vector == PF) or not (vec2 in CONTRIBUTORY or vec2 == PF)
            if vector in CONTRIBUTORY and vec2 == PF:
                benign = True
            if not cpu.cr0 & CR0_PE:
                raise TripleFault(f"fault {second} delivering vector {vector} in real mode") from second
            if benign:
                vector, error_code, address, external = vec2, code2, addr2, False
            else:
                vector, error_code, address, external = DF, 0, 0, False


def _deliver(ex: Executor, vector: int, error_code: int | None, soft: bool, return_rip: int) -> None:
    cpu = ex.cpu
    ext = 0 if soft else 1
    if not cpu.cr0 & CR0_PE:
        _deliver_real(ex, vector, return_rip)
        return
    if cpu.rflags & FLAG_VM:
        raise UnsupportedInstruction("interrupts in virtual-8086 mode are not implemented")
    long_mode = bool(cpu.efer & EFER_LMA)
    gate = segments.read_idt_gate(
        ex.sys_read_bytes, cpu.idtr, vector, long_mode=long_mode, external=not soft
    )
    if soft and gate.dpl < cpu.cpl:
        raise gp(vector * 8 + 2, f"INT {vector}: gate DPL {gate.dpl} < CPL {cpu.cpl}")
    if not gate.present:
        raise GuestFault(NP, vector * 8 + 2 + ext, reason=f"IDT gate {vector} not present")
    gtype = gate.type
    if gtype == SysType.TASK_GATE:
        raise UnsupportedInstruction(f"task gate in IDT entry {vector}")
    selector, offset, ist = gate.selector, gate.offset, gate.ist
    if selector & ~3 == 0:
        raise gp(ext, "IDT gate with a null code selector")
    _, desc = segment.read_descriptor(ex, selector)
    target = Segment.from_descriptor(selector, desc)
    if not target.s or not target.type & TYPE_CODE or target.dpl > cpu.cpl:
        raise gp((selector & ~3) + ext, f"IDT gate {vector}: bad target code segment {selector:#x}")
    if not target.present:
        raise GuestFault(NP, (selector & ~3) + ext, reason=f"code segment {selector:#x} not present")
    new_cpl = cpu.cpl if target.type & TYPE_CONFORMING else target.dpl
    old_cs = cpu.segs[CS].selector
    old_ss = cpu.segs[SS].selector
    old_rsp = cpu.gpr[RSP]
    old_flags = cpu.rflags
    gate32 = gtype >= SysType.INT_GATE
    if long_mode:
        if not target.l or target.db:
            raise gp((selector & ~3) + ext, "64-bit IDT gate to a non-64-bit code segment")
        if new_cpl != cpu.cpl or ist:
            rsp = ex.sys_read(
                cpu.tr.base + (TSS64_IST1 + 8 * (ist - 1) if ist else TSS64_RSP0 + 8 * new_cpl), 8
            )
        else:
            rsp = old_rsp
        rsp &= ~0xF
        frame = [old_ss, old_rsp, old_flags, old_cs, return_rip]
        if error_code is not None:
            frame.append(error_code)
        for value in frame:
            rsp = (rsp - 8) & MASK64
            _stack_write(ex, rsp, 8, value, new_cpl)
        if new_cpl != cpu.cpl:
            cpu.segs[SS] = Segment.null(new_cpl, dpl=new_cpl, db=True)
        cpu.gpr[RSP] = rsp
    else:
        size = 4 if gate32 else 2
        if new_cpl < cpu.cpl:
            tss_off = TSS32_ESP0 + 8 * new_cpl
            esp = ex.sys_read(cpu.tr.base + tss_off, 4)
            ss_sel = ex.sys_read(cpu.tr.base + tss_off + 4, 2)
            try:
                _, ss_desc = segment.read_descriptor(ex, ss_sel)
            except GuestFault as err:  # a bad stack selector in the TSS is the TSS's fault
                raise GuestFault(TS, err.error_code, reason=str(err)) from err
            new_ss = Segment.from_descriptor(ss_sel, ss_desc)
            if (ss_sel & 3) != new_cpl or new_ss.dpl != new_cpl or new_ss.type & TYPE_CODE:
                raise GuestFault(TS, ss_sel & ~3, reason="bad ring stack in the TSS")
            stack_base, stack_mask = new_ss.base, 0xFFFFFFFF if new_ss.db else 0xFFFF
            frame = [old_ss, old_rsp]
        else:
            new_ss = None
            esp = old_rsp
            ss = cpu.segs[SS]
            stack_base, stack_mask = ss.base, 0xFFFFFFFF if ss.db else 0xFFFF
            frame = []
        frame += [old_flags, old_cs, return_rip]
        if error_code is not None:
            frame.append(error_code)
        for value in frame:
            esp = (esp - size) & stack_mask
            _stack_write(ex, stack_base + esp, size, value, new_cpl)
        if new_ss is not None:
            cpu.segs[SS] = new_ss
            cpu.gpr[RSP] = esp
        else:
            ex.set_reg(RSP, 4 if stack_mask == 0xFFFFFFFF else 2, esp)
        if not gate32:
            offset &= 0xFFFF
    target.selector = (selector & ~3) | new_cpl
    target.type |= TYPE_ACCESSED
    cpu.segs[CS] = target
    cpu.cpl = new_cpl
    cpu.rip = offset
    cpu.rflags &= ~(FLAG_TF | FLAG_NT | FLAG_RF | FLAG_VM)
    if gtype in (SysType.INT_GATE16, SysType.INT_GATE):
        cpu.rflags &= ~FLAG_IF
    ex.refresh_mode()


def _stack_write(ex: Executor, lin: int, size: int, value: int, cpl: int) -> None:
    access = ACCESS_WRITE | (ACCESS_USER if cpl == 3 else 0)
    ex.ops.write_linear(
        lin & ex.lin_mask(), (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"), access
    )


def _deliver_real(ex: Executor, vector: int, return_rip: int) -> None:
    cpu = ex.cpu
    if vector * 4 + 3 > cpu.idtr.limit:
        raise gp(0, f"vector {vector} beyond the real-mode IVT limit")
    entry = ex.sys_read(cpu.idtr.base + vector * 4, 4)
    flags = cpu.rflags & 0xFFFF
    cs = cpu.segs[CS].selector
    ss = cpu.segs[SS]
    sp = cpu.gpr[RSP]
    for value in (flags, cs, return_rip & 0xFFFF):
        sp = (sp - 2) & 0xFFFF
        _stack_write(ex, ss.base + sp, 2, value, 0)
    ex.set_reg(RSP, 2, sp)
    cpu.rflags &= ~(FLAG_IF | FLAG_TF | FLAG_AC | FLAG_RF)
    seg = cpu.segs[CS]
    seg.selector = entry >> 16
    seg.base = (entry >> 16) << 4
    cpu.rip = entry & 0xFFFF


def _software_interrupt(ex: Executor, vector: int) -> None:
    cpu = ex.cpu
    if cpu.rflags & FLAG_VM and (cpu.rflags & FLAG_IOPL) != FLAG_IOPL:
        raise gp(0, "INT n in virtual-8086 mode with IOPL < 3")
    _deliver(ex, vector, None, soft=True, return_rip=ex.next_rip)
    ex.next_rip = cpu.rip


def int_(ex: Executor, insn: D.Instruction) -> None:
    _software_interrupt(ex, insn.operands[0].value)


def int3(ex: Executor, insn: D.Instruction) -> None:
    _software_interrupt(ex, BP)


def into(ex: Executor, insn: D.Instruction) -> None:
    if ex.cpu.rflags & FLAG_OF:
        _software_interrupt(ex, OF)


def int1(ex: Executor, insn: D.Instruction) -> None:
    _deliver(ex, DB, None, soft=False, return_rip=ex.next_rip)
    ex.next_rip = ex.cpu.rip


def iret(ex: Executor, insn: D.Instruction) -> None:
    cpu = ex.cpu
    size = insn.opsize
    if not cpu.cr0 & CR0_PE:
        ip = ex.stack_peek(0, size)
        cs = ex.stack_peek(size, size) & 0xFFFF
        flags = ex.stack_peek(2 * size, size)
        ex.set_reg(RSP, 2, cpu.gpr[RSP] + 3 * size)
        segment.load_code_segment(ex, cs)
        mask = IRET_FLAGS & (0xFFFF if size == 2 else ~(FLAG_VM | FLAG_AC | FLAG_VIF))
        cpu.rflags = (cpu.rflags & ~mask) | (flags & mask) | FLAG_FIXED1
        ex.next_rip = ip & (0xFFFF if size == 2 else 0xFFFFFFFF)
        return
    if cpu.rflags & FLAG_VM:
        raise UnsupportedInstruction("IRET in virtual-8086 mode")
    if cpu.rflags & FLAG_NT and not cpu.efer & EFER_LMA:
        raise UnsupportedInstruction("IRET with NT set (task return)")
    ip = ex.stack_peek(0, size)
    cs_sel = ex.stack_peek(size, size) & 0xFFFF
    flags = ex.stack_peek(2 * size, size)
    if size == 2:
        flags = (cpu.rflags & ~0xFFFF) | flags
    if flags & FLAG_VM and cpu.cpl == 0 and not cpu.efer & EFER_LMA:
        raise UnsupportedInstruction("IRET to virtual-8086 mode")
    rpl = cs_sel & 3
    if rpl < cpu.cpl:
        raise gp(cs_sel & ~3, "IRET to an inner privilege level")
    outer = rpl > cpu.cpl or ex.mode == 64
    if outer:
        new_sp = ex.stack_peek(3 * size, size)
        new_ss = ex.stack_peek(4 * size, size) & 0xFFFF
    old_cpl = cpu.cpl
    saved = (cpu.segs[CS], cpu.cpl, cpu.gpr[RSP])
    if not outer:
        ex.set_reg(RSP, 4 if cpu.segs[SS].db else 2, cpu.gpr[RSP] + 3 * size)
    try:
        segment.load_code_segment(ex, cs_sel, rpl)
        if outer:
            segment.load_segment(ex, SS, new_ss)
            cpu.gpr[RSP] = new_sp & AMASK[size]
    except BaseException:
        cpu.segs[CS], cpu.cpl, cpu.gpr[RSP] = saved
        ex.refresh_mode()
        raise
    mask = IRET_FLAGS & ~FLAG_VM
    if old_cpl > 0:
        mask &= ~FLAG_IOPL
    if old_cpl > (cpu.rflags & FLAG_IOPL) >> 12:
        mask &= ~FLAG_IF
    if size == 2:
        mask &= 0xFFFF
    cpu.rflags = (cpu.rflags & ~mask) | (flags & mask) | FLAG_FIXED1
    if rpl > old_cpl:
        segment.null_outer_data_segments(ex)
    ex.refresh_mode()
    ex.next_rip = ip & (MASK64 if ex.mode == 64 else 0xFFFFFFFF if size >= 4 else 0xFFFF)
