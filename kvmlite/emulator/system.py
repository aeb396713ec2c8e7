"""System instructions and protected-mode machinery, as a mixin of the executor.

Kept apart from :mod:`kvmlite.emulator.executor` (the integer core) because
this half is about *privilege and descriptors*: segment loads with their
checks, exception and interrupt delivery through the IVT or the IDT (with
stack switches from the TSS, error codes and double faults), far transfers,
IRET, SYSCALL/SYSRET, SYSENTER/SYSEXIT, control/debug registers, MSRs,
descriptor tables and the other CPL-0 instructions.

Simplifications (each raises :class:`UnsupportedInstruction` rather than
doing something wrong): task gates and task switches, call gates, IRET to or
interrupts from virtual-8086 mode, VMX/SVM instructions.  Stack pushes during
event delivery are written straight to the linear stack address (no SS
limit check).  The FPU/SSE state for FXSAVE/XSAVE is a stored image that the
guest gets back unchanged; the emulator runs no FPU/SSE arithmetic.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from kvmlite.emulator import decoder as D
from kvmlite.emulator import segments, xstate
from kvmlite.emulator.cpu import (
    CR0_CD,
    CR0_EM,
    CR0_ET,
    CR0_NW,
    CR0_PE,
    CR0_PG,
    CR0_TS,
    CR4_DE,
    CR4_FSGSBASE,
    CR4_OSXSAVE,
    CR4_PAE,
    CR4_TSD,
    CS,
    DS,
    EFER_LMA,
    EFER_LME,
    EFER_SCE,
    ES,
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
    FLAG_ZF,
    FS,
    GS,
    SS,
)
from kvmlite.emulator.faults import (
    BP,
    BR,
    CONTRIBUTORY,
    DB,
    DF,
    GP,
    HAS_ERROR_CODE,
    NM,
    NP,
    OF,
    PF,
    TS,
    UD,
    GuestFault,
    TripleFault,
    gp,
)
from kvmlite.emulator.mmu import NonCanonicalAddress, PageFault
from kvmlite.emulator.ops import ACCESS_READ, ACCESS_USER, ACCESS_WRITE
from kvmlite.emulator.segments import (
    TYPE_ACCESSED,
    TYPE_CODE,
    TYPE_CONFORMING,
    TYPE_READABLE,
    TYPE_WRITABLE,
    Descriptor,
    Segment,
    SegReg,
)
from kvmlite.errors import UnsupportedInstruction
from kvmlite.x86 import Efer, Msr, SysType

if TYPE_CHECKING:
    from kvmlite.emulator.cpu import CpuState
    from kvmlite.emulator.ops import EmulatorOps

log = logging.getLogger(__name__)

MASK64 = (1 << 64) - 1
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
R11 = 11
MASK_BY_SIZE = {2: 0xFFFF, 4: 0xFFFFFFFF, 8: MASK64}

TSS_BUSY_BIT = 0x2  # the bit LTR sets in an available TSS descriptor type
TSS_IOMAP_OFFSET = 0x66
TSS64_RSP0 = 4
TSS64_IST1 = 0x24
TSS32_ESP0 = 4
CR0_RESERVED_HIGH = 0xFFFFFFFF00000000
EFER_WRITABLE = int(Efer.SCE | Efer.LME | Efer.NXE | Efer.SVME | Efer.FFXSR | Efer.TCE)
SFMASK_DEFAULT = 0
FXSAVE_SIZE = 512
XSAVE_HEADER_SIZE = 64
MXCSR_OFFSET = 24
DEFAULT_FCW = 0x037F
DEFAULT_MXCSR = 0x1F80
IRET_FLAGS = 0x3F7FD5  # every RFLAGS bit IRET may load (CPL 0)


def fast_call_code(selector: int, dpl: int, long: bool) -> Segment:
    """The flat code segment SYSCALL/SYSRET/SYSENTER/SYSEXIT load without reading the GDT (SDM vol. 2)."""
    return Segment(
        selector=selector,
        base=0,
        limit=0xFFFFFFFF,
        type=0xB,
        s=1,
        dpl=dpl,
        l=int(long),
        db=int(not long),
        g=1,
    )


def fast_call_stack(selector: int, dpl: int) -> Segment:
    """The flat stack segment those instructions load with it."""
    return Segment(selector=selector, base=0, limit=0xFFFFFFFF, type=0x3, s=1, dpl=dpl, db=1, g=1)


class SystemMixin:
    """The privileged half of :class:`~kvmlite.emulator.executor.Executor`."""

    cpu: CpuState
    ops: EmulatorOps
    next_rip: int
    mode: int

    if TYPE_CHECKING:

        def read(self, seg: int, offset: int, size: int) -> int: ...
        def write(self, seg: int, offset: int, size: int, value: int) -> None: ...
        def get(self, op: D.Operand) -> int: ...
        def put(self, op: D.Operand, value: int) -> None: ...
        def ea(self, op: D.Operand) -> int: ...
        def linear(self, seg: int, offset: int, size: int, write: bool = False) -> int: ...
        def push(self, value: int, size: int) -> None: ...
        def pop(self, size: int) -> int: ...
        def stack_peek(self, offset: int, size: int) -> int: ...
        def set_reg(self, reg: int, size: int, value: int) -> None: ...
        def set_flags(self, flags: int, mask: int = ...) -> None: ...
        def branch(self, target: int, opsize: int) -> None: ...
        def _refresh_mode(self) -> None: ...

    # ================================================================== helpers
    def _sys_read(self, lin: int, size: int) -> int:
        """An implicit supervisor read (descriptor tables, TSS, IDT)."""
        return int.from_bytes(self.ops.read_linear(lin & self._lin_mask(), size, ACCESS_READ), "little")

    def _sys_write(self, lin: int, size: int, value: int) -> None:
        self.ops.write_linear(lin & self._lin_mask(), value.to_bytes(size, "little"), ACCESS_WRITE)

    def _lin_mask(self) -> int:
        return MASK64 if self.cpu.efer & EFER_LMA else 0xFFFFFFFF

    def require_cpl0(self, what: str) -> None:
        cpu = self.cpu
        if cpu.cr0 & CR0_PE and (cpu.cpl != 0 or cpu.rflags & FLAG_VM):
            raise gp(0, f"{what} at CPL {cpu.cpl}")

    def check_iopl(self) -> None:
        cpu = self.cpu
        if cpu.cr0 & CR0_PE and cpu.cpl > (cpu.rflags & FLAG_IOPL) >> 12:
            raise gp(0, "IOPL-sensitive instruction above IOPL")

    def check_io(self, port: int, size: int) -> None:
        """I/O permission: CPL <= IOPL, else the TSS I/O bitmap decides."""
        cpu = self.cpu
        if not cpu.cr0 & CR0_PE:
            return
        if not cpu.rflags & FLAG_VM and cpu.cpl <= (cpu.rflags & FLAG_IOPL) >> 12:
            return
        tr = cpu.tr
        if tr.type not in (SysType.TSS_AVAIL, SysType.TSS_BUSY) or tr.limit < TSS_IOMAP_OFFSET + 1:
            raise gp(0, f"port {port:#x} denied: no I/O bitmap")
        base = self._sys_read(tr.base + TSS_IOMAP_OFFSET, 2)
        byte = base + port // 8
        if byte + 1 > tr.limit:
            raise gp(0, f"port {port:#x} beyond the I/O bitmap")
        bits = self._sys_read(tr.base + byte, 2)
        if (bits >> (port & 7)) & ((1 << size) - 1):
            raise gp(0, f"port {port:#x} denied by the I/O bitmap")

    # ================================================================== descriptors
    def _sys_read_bytes(self, lin: int, size: int) -> bytes:
        return self.ops.read_linear(lin & self._lin_mask(), size, ACCESS_READ)

    def _sys_write_bytes(self, lin: int, data: bytes) -> None:
        self.ops.write_linear(lin & self._lin_mask(), data, ACCESS_WRITE)

    def _ldt(self) -> Segment | None:
        """LDTR when it holds a table (a null selector in LDTR means there is none)."""
        ldtr = self.cpu.ldtr
        return None if ldtr.unusable or not ldtr.selector & ~3 else ldtr

    def read_descriptor(self, selector: int) -> tuple[int, Descriptor]:
        """(linear address, descriptor) for a selector; #GP(selector) if outside its table."""
        return segments.read_descriptor(self._sys_read_bytes, selector, self.cpu.gdtr, self._ldt())

    def load_segment(self, seg: int, selector: int) -> None:
        """MOV/POP to a data segment register or SS, with the protected-mode checks (:mod:`.segments`)."""
        cpu = self.cpu
        selector &= 0xFFFF
        if not cpu.cr0 & CR0_PE:
            s = cpu.segs[seg]  # real mode: only selector and base change (limits stay: "unreal" mode)
            s.selector, s.base, s.unusable, s.present = selector, selector << 4, False, True
            return
        if cpu.rflags & FLAG_VM:
            cpu.segs[seg] = Segment(selector, selector << 4, 0xFFFF, dpl=3)
            return
        cpu.segs[seg] = segments.load_segment(
            self._sys_read_bytes,
            self._sys_write_bytes,
            seg,  # type: ignore[arg-type]
            selector,
            cpu.cpl,
            cpu.gdtr,
            self._ldt(),
            long_mode=bool(cpu.efer & EFER_LMA),
            mode64=self.mode == 64,
        )
        if seg == SS:
            cpu.interrupt_shadow = True

    def load_code_segment(self, selector: int, new_cpl: int | None = None) -> Segment:
        """Check and load CS for a far transfer; returns the new cache.

        Without ``new_cpl`` (far JMP/CALL, RETF/IRET to the same level) the
        SDM's checks of :func:`.segments.load_segment` apply; a return to an
        outer level passes the CPL it returns to (the RPL of the selector).
        """
        cpu = self.cpu
        selector &= 0xFFFF
        if not cpu.cr0 & CR0_PE or cpu.rflags & FLAG_VM:
            cs = cpu.segs[CS]
            cs.selector = selector
            cs.base = selector << 4
            return cs
        if new_cpl is None:
            new = segments.load_segment(
                self._sys_read_bytes,
                self._sys_write_bytes,
                SegReg.CS,
                selector,
                cpu.cpl,
                cpu.gdtr,
                self._ldt(),
                long_mode=bool(cpu.efer & EFER_LMA),
            )
            cpl = cpu.cpl
        else:
            if selector & ~3 == 0:
                raise gp(0, "null selector loaded into CS")
            addr, desc = self.read_descriptor(selector)
            err = selector & ~3
            if not desc.s:
                raise UnsupportedInstruction(f"far return through system descriptor {selector:#x}")
            if not desc.type & TYPE_CODE:
                raise gp(err, f"selector {selector:#x} is not a code segment")
            if not desc.present:
                raise GuestFault(NP, err, reason=f"code segment {selector:#x} not present")
            desc = segments.mark_accessed(self._sys_write_bytes, addr, desc)
            cpl = new_cpl
            new = Segment.from_descriptor((selector & ~3) | cpl, desc)
        if not new.type & TYPE_CONFORMING:
            new.dpl = cpl
        cpu.segs[CS] = new
        cpu.cpl = cpl
        self._refresh_mode()
        return new

    def null_outer_data_segments(self) -> None:
        """After RETF/IRET to an outer level: data registers the new CPL may not use become null."""
        cpu = self.cpu
        for seg in (ES, DS, FS, GS):
            s = cpu.segs[seg]
            conforming_code = s.type & TYPE_CODE and s.type & TYPE_CONFORMING
            if s.dpl < cpu.cpl and not conforming_code and not s.unusable:
                cpu.segs[seg] = Segment.null()

    # ================================================================== event delivery
    def inject_interrupt(self, vector: int) -> None:
        """Deliver an external interrupt now (the caller checked IF and the interrupt shadow)."""
        self.cpu.halted = False
        self._refresh_mode()
        self.deliver_exception(vector, None, external=True)

    def interrupts_enabled(self) -> bool:
        cpu = self.cpu
        return bool(cpu.rflags & FLAG_IF) and not cpu.interrupt_shadow

    def deliver_exception(
        self, vector: int, error_code: int | None = None, address: int = 0, external: bool = False
    ) -> None:
        """Deliver an exception (CPU-detected or external), escalating to #DF and triple fault."""
        cpu = self.cpu
        first = vector
        while True:
            if vector == PF:
                cpu.cr2 = address
            if not cpu.cr0 & CR0_PE:
                error_code = None
            elif vector not in HAS_ERROR_CODE or external:
                error_code = None
            try:
                self._deliver(vector, error_code, soft=False, return_rip=cpu.rip)
                return
            except (GuestFault, PageFault, NonCanonicalAddress) as second:
                if isinstance(second, PageFault):
                    vec2, code2, addr2 = PF, second.error_code, second.address
                elif isinstance(second, NonCanonicalAddress):
                    vec2, code2, addr2 = GP, 0, 0
                else:
                    vec2, code2, addr2 = second.vector, second.error_code, second.address
                log.debug("fault %d while delivering %d: %s", vec2, vector, second)
                if vector == DF:
                    raise TripleFault(
                        f"triple fault: {second} while delivering #DF (first {first})"
                    ) from second
                benign = not (vector in CONTRIBUTORY or vector == PF) or not (
                    vec2 in CONTRIBUTORY or vec2 == PF
                )
                if vector in CONTRIBUTORY and vec2 == PF:
                    benign = True
                if not cpu.cr0 & CR0_PE:
                    raise TripleFault(f"fault {second} delivering vector {vector} in real mode") from second
                if benign:
                    vector, error_code, address, external = vec2, code2, addr2, False
                else:
                    vector, error_code, address, external = DF, 0, 0, False

    def _deliver(self, vector: int, error_code: int | None, soft: bool, return_rip: int) -> None:
        cpu = self.cpu
        ext = 0 if soft else 1
        if not cpu.cr0 & CR0_PE:
            self._deliver_real(vector, return_rip)
            return
        if cpu.rflags & FLAG_VM:
            raise UnsupportedInstruction("interrupts in virtual-8086 mode are not implemented")
        long_mode = bool(cpu.efer & EFER_LMA)
        gate = segments.read_idt_gate(
            self._sys_read_bytes, cpu.idtr, vector, long_mode=long_mode, external=not soft
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
        _, desc = self.read_descriptor(selector)
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
                rsp = self._sys_read(
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
                self._stack_write(rsp, 8, value, new_cpl)
            if new_cpl != cpu.cpl:
                cpu.segs[SS] = Segment.null(new_cpl, dpl=new_cpl, db=True)
            cpu.gpr[RSP] = rsp
        else:
            size = 4 if gate32 else 2
            if new_cpl < cpu.cpl:
                tss_off = TSS32_ESP0 + 8 * new_cpl
                esp = self._sys_read(cpu.tr.base + tss_off, 4)
                ss_sel = self._sys_read(cpu.tr.base + tss_off + 4, 2)
                try:
                    _, ss_desc = self.read_descriptor(ss_sel)
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
                self._stack_write(stack_base + esp, size, value, new_cpl)
            if new_ss is not None:
                cpu.segs[SS] = new_ss
                cpu.gpr[RSP] = esp
            else:
                self.set_reg(RSP, 4 if stack_mask == 0xFFFFFFFF else 2, esp)
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
        self._refresh_mode()

    def _stack_write(self, lin: int, size: int, value: int, cpl: int) -> None:
        access = ACCESS_WRITE | (ACCESS_USER if cpl == 3 else 0)
        self.ops.write_linear(
            lin & self._lin_mask(), (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"), access
        )

    def _deliver_real(self, vector: int, return_rip: int) -> None:
        cpu = self.cpu
        if vector * 4 + 3 > cpu.idtr.limit:
            raise gp(0, f"vector {vector} beyond the real-mode IVT limit")
        entry = self._sys_read(cpu.idtr.base + vector * 4, 4)
        flags = cpu.rflags & 0xFFFF
        cs = cpu.segs[CS].selector
        ss = cpu.segs[SS]
        sp = cpu.gpr[RSP]
        for value in (flags, cs, return_rip & 0xFFFF):
            sp = (sp - 2) & 0xFFFF
            self._stack_write(ss.base + sp, 2, value, 0)
        self.set_reg(RSP, 2, sp)
        cpu.rflags &= ~(FLAG_IF | FLAG_TF | FLAG_AC | FLAG_RF)
        seg = cpu.segs[CS]
        seg.selector = entry >> 16
        seg.base = (entry >> 16) << 4
        cpu.rip = entry & 0xFFFF

    def _software_interrupt(self, vector: int) -> None:
        cpu = self.cpu
        if cpu.rflags & FLAG_VM and (cpu.rflags & FLAG_IOPL) != FLAG_IOPL:
            raise gp(0, "INT n in virtual-8086 mode with IOPL < 3")
        self._deliver(vector, None, soft=True, return_rip=self.next_rip)
        self.next_rip = cpu.rip

    def op_int(self, insn: D.Instruction) -> None:
        self._software_interrupt(insn.operands[0].value)

    def op_int3(self, insn: D.Instruction) -> None:
        self._software_interrupt(BP)

    def op_into(self, insn: D.Instruction) -> None:
        if self.cpu.rflags & FLAG_OF:
            self._software_interrupt(OF)

    def op_int1(self, insn: D.Instruction) -> None:
        self._deliver(DB, None, soft=False, return_rip=self.next_rip)
        self.next_rip = self.cpu.rip

    # ================================================================== IRET and far transfers
    def op_iret(self, insn: D.Instruction) -> None:
        cpu = self.cpu
        size = insn.opsize
        if not cpu.cr0 & CR0_PE:
            ip = self.stack_peek(0, size)
            cs = self.stack_peek(size, size) & 0xFFFF
            flags = self.stack_peek(2 * size, size)
            self.set_reg(RSP, 2, cpu.gpr[RSP] + 3 * size)
            self.load_code_segment(cs)
            mask = IRET_FLAGS & (0xFFFF if size == 2 else ~(FLAG_VM | FLAG_AC | FLAG_VIF))
            cpu.rflags = (cpu.rflags & ~mask) | (flags & mask) | FLAG_FIXED1
            self.next_rip = ip & (0xFFFF if size == 2 else 0xFFFFFFFF)
            return
        if cpu.rflags & FLAG_VM:
            raise UnsupportedInstruction("IRET in virtual-8086 mode")
        if cpu.rflags & FLAG_NT and not cpu.efer & EFER_LMA:
            raise UnsupportedInstruction("IRET with NT set (task return)")
        ip = self.stack_peek(0, size)
        cs_sel = self.stack_peek(size, size) & 0xFFFF
        flags = self.stack_peek(2 * size, size)
        if size == 2:
            flags = (cpu.rflags & ~0xFFFF) | flags
        if flags & FLAG_VM and cpu.cpl == 0 and not cpu.efer & EFER_LMA:
            raise UnsupportedInstruction("IRET to virtual-8086 mode")
        rpl = cs_sel & 3
        if rpl < cpu.cpl:
            raise gp(cs_sel & ~3, "IRET to an inner privilege level")
        outer = rpl > cpu.cpl or self.mode == 64
        if outer:
            new_sp = self.stack_peek(3 * size, size)
            new_ss = self.stack_peek(4 * size, size) & 0xFFFF
        old_cpl = cpu.cpl
        saved = (cpu.segs[CS], cpu.cpl, cpu.gpr[RSP])
        if not outer:
            self.set_reg(RSP, 4 if cpu.segs[SS].db else 2, cpu.gpr[RSP] + 3 * size)
        try:
            self.load_code_segment(cs_sel, rpl)
            if outer:
                self.load_segment(SS, new_ss)
                cpu.gpr[RSP] = new_sp & MASK_BY_SIZE[size]
        except BaseException:
            cpu.segs[CS], cpu.cpl, cpu.gpr[RSP] = saved
            self._refresh_mode()
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
            self.null_outer_data_segments()
        self._refresh_mode()
        self.next_rip = ip & (MASK64 if self.mode == 64 else 0xFFFFFFFF if size >= 4 else 0xFFFF)

    def _far_pointer(self, op: D.Operand, opsize: int) -> tuple[int, int]:
        if op.kind == D.OP_FAR:
            return op.seg, op.value
        off_size = op.size - 2
        ea = self.ea(op)
        offset = self.read(op.seg, ea, off_size)
        selector = self.read(op.seg, (ea + off_size) & MASK_BY_SIZE[max(op.addrsize, 2)], 2)
        return selector, offset

    def _far_jump(self, selector: int, offset: int, opsize: int) -> None:
        cpu = self.cpu
        saved = (cpu.segs[CS], cpu.cpl)
        if cpu.cr0 & CR0_PE and not cpu.rflags & FLAG_VM:
            self.load_code_segment(selector)
        else:
            cs = cpu.segs[CS]
            cpu.segs[CS] = cs.copy(selector=selector, base=selector << 4)
        try:
            self.branch(offset, opsize if self.mode != 64 else 8)
        except BaseException:
            cpu.segs[CS], cpu.cpl = saved
            self._refresh_mode()
            raise

    def op_jmp_far(self, insn: D.Instruction) -> None:
        sel, off = self._far_pointer(insn.operands[0], insn.opsize)
        self._far_jump(sel, off, insn.opsize)

    op_jmp_far_ind = op_jmp_far

    def op_call_far(self, insn: D.Instruction) -> None:
        cpu = self.cpu
        sel, off = self._far_pointer(insn.operands[0], insn.opsize)
        size = insn.opsize
        old_cs = cpu.segs[CS].selector
        ret = self.next_rip
        saved = (cpu.segs[CS], cpu.cpl, cpu.gpr[RSP])
        self._far_jump(sel, off, size)
        try:
            self.push(old_cs, size)
            self.push(ret, size)
        except BaseException:
            cpu.segs[CS], cpu.cpl, cpu.gpr[RSP] = saved  # a failing push leaves CS untouched
            self._refresh_mode()
            raise

    op_call_far_ind = op_call_far

    def op_retf(self, insn: D.Instruction) -> None:
        cpu = self.cpu
        size = insn.opsize
        ip = self.stack_peek(0, size)
        cs_sel = self.stack_peek(size, size) & 0xFFFF
        extra = insn.operands[0].value if insn.operands else 0
        pm = cpu.cr0 & CR0_PE and not cpu.rflags & FLAG_VM
        rpl = cs_sel & 3
        if pm and rpl > cpu.cpl:
            new_sp = self.stack_peek(2 * size + extra, size)
            new_ss = self.stack_peek(3 * size + extra, size) & 0xFFFF
            self.load_code_segment(cs_sel, rpl)
            self.load_segment(SS, new_ss)
            self.set_reg(RSP, size if size > 2 else 2, new_sp + extra)
            self.branch(ip, size)
            self.null_outer_data_segments()
            return
        ss_size = 8 if self.mode == 64 else (4 if pm and cpu.segs[SS].db else 2)
        self._far_jump(cs_sel, ip, size)
        self.set_reg(RSP, ss_size, cpu.gpr[RSP] + 2 * size + extra)

    # ================================================================== segment instructions
    def op_mov_to_seg(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        self.load_segment(dst.reg, self.get(src) & 0xFFFF)

    def op_mov_from_seg(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        value = self.cpu.segs[src.reg].selector
        if dst.kind == D.OP_MEM:
            self.write(dst.seg, self.ea(dst), 2, value)
        else:
            self.put(dst, value)

    def op_push_seg(self, insn: D.Instruction) -> None:
        self.push(self.cpu.segs[insn.operands[0].reg].selector, insn.opsize)

    def op_pop_seg(self, insn: D.Instruction) -> None:
        size = insn.opsize
        value = self.stack_peek(0, size) & 0xFFFF
        self.load_segment(insn.operands[0].reg, value)
        self.set_reg(
            RSP,
            8 if self.mode == 64 else (4 if self.cpu.segs[SS].db and self.cpu.cr0 & CR0_PE else 2),
            self.cpu.gpr[RSP] + size,
        )

    def op_load_far_ptr(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        sel, off = self._far_pointer(src, insn.opsize)
        seg = _FAR_PTR_SEGMENT[insn.mnemonic]
        self.load_segment(seg, sel)
        self.put(dst, off)

    # ================================================================== descriptor tables
    def _dt_operand(self, insn: D.Instruction) -> tuple[int, int]:
        op = insn.operands[0]
        return op.seg, self.ea(op)

    def op_lgdt(self, insn: D.Instruction) -> None:
        self._load_dt(insn, self.cpu.gdtr)

    def op_lidt(self, insn: D.Instruction) -> None:
        self._load_dt(insn, self.cpu.idtr)

    def _load_dt(self, insn: D.Instruction, table: object) -> None:
        self.require_cpl0(insn.mnemonic.upper())
        seg, off = self._dt_operand(insn)
        limit = self.read(seg, off, 2)
        if self.mode == 64:
            base = self.read(seg, off + 2, 8)
        else:
            base = self.read(seg, off + 2, 4)
            if insn.opsize == 2:
                base &= 0xFFFFFF
        table.base = base  # type: ignore[attr-defined]
        table.limit = limit  # type: ignore[attr-defined]

    def op_sgdt(self, insn: D.Instruction) -> None:
        self._store_dt(insn, self.cpu.gdtr)

    def op_sidt(self, insn: D.Instruction) -> None:
        self._store_dt(insn, self.cpu.idtr)

    def _store_dt(self, insn: D.Instruction, table: object) -> None:
        seg, off = self._dt_operand(insn)
        self.write(seg, off, 2, table.limit)  # type: ignore[attr-defined]
        self.write(seg, off + 2, 8 if self.mode == 64 else 4, table.base)  # type: ignore[attr-defined]

    def _load_system_segment(self, selector: int, want: tuple[int, ...]) -> tuple[Segment, int, Descriptor]:
        addr, desc = self.read_descriptor(selector)
        if desc.s or desc.type not in want:
            raise gp(selector & ~3, f"selector {selector:#x} is not the expected system descriptor")
        if not desc.present:
            raise GuestFault(NP, selector & ~3, reason=f"system segment {selector:#x} not present")
        new = Segment.from_descriptor(selector, desc)
        if self.cpu.efer & EFER_LMA:
            new.base |= self._sys_read(addr + 8, 4) << 32
        return new, addr, desc

    def op_lldt(self, insn: D.Instruction) -> None:
        self.require_cpl0("LLDT")
        if not self.cpu.cr0 & CR0_PE:
            raise GuestFault(UD, reason="LLDT in real mode")
        sel = self.get(insn.operands[0]) & 0xFFFF
        if sel & ~3 == 0:
            self.cpu.ldtr = Segment(sel, type=SysType.LDT, s=False, unusable=True)
            return
        new, _, _ = self._load_system_segment(sel, (SysType.LDT,))
        self.cpu.ldtr = new

    def op_ltr(self, insn: D.Instruction) -> None:
        self.require_cpl0("LTR")
        if not self.cpu.cr0 & CR0_PE:
            raise GuestFault(UD, reason="LTR in real mode")
        sel = self.get(insn.operands[0]) & 0xFFFF
        if sel & ~3 == 0 or sel & 4:
            raise gp(sel & ~3, "LTR needs a GDT selector")
        new, addr, desc = self._load_system_segment(sel, (SysType.TSS_AVAIL, SysType.TSS16_AVAIL))
        busy = desc.to_bytes()[segments.DESC_ACCESS_BYTE] | TSS_BUSY_BIT
        self._sys_write(addr + segments.DESC_ACCESS_BYTE, 1, busy)
        new.type |= TSS_BUSY_BIT
        self.cpu.tr = new

    def op_sldt(self, insn: D.Instruction) -> None:
        self._store_selector(insn, self.cpu.ldtr.selector)

    def op_str(self, insn: D.Instruction) -> None:
        self._store_selector(insn, self.cpu.tr.selector)

    def _store_selector(self, insn: D.Instruction, value: int) -> None:
        if not self.cpu.cr0 & CR0_PE:
            raise GuestFault(UD, reason="SLDT/STR in real mode")
        op = insn.operands[0]
        self.put(op, value)

    def op_smsw(self, insn: D.Instruction) -> None:
        op = insn.operands[0]
        self.put(op, self.cpu.cr0 if op.kind == D.OP_REG else self.cpu.cr0 & 0xFFFF)

    def op_lmsw(self, insn: D.Instruction) -> None:
        self.require_cpl0("LMSW")
        value = self.get(insn.operands[0]) & 0xF
        cpu = self.cpu
        new = (cpu.cr0 & ~0xE) | value | (cpu.cr0 & CR0_PE)  # LMSW cannot clear PE
        self._write_cr0(new)

    def _lar_lsl(self, insn: D.Instruction, lsl: bool) -> None:
        cpu = self.cpu
        if not cpu.cr0 & CR0_PE or cpu.rflags & FLAG_VM:
            raise GuestFault(UD, reason="LAR/LSL outside protected mode")
        dst, src = insn.operands
        sel = self.get(src) & 0xFFFF
        try:
            _, desc = self.read_descriptor(sel)
        except GuestFault:
            self.set_flags(0, FLAG_ZF)
            return
        if sel & ~3 == 0:
            self.set_flags(0, FLAG_ZF)
            return
        conforming_code = desc.s and desc.type & TYPE_CODE and desc.type & TYPE_CONFORMING
        if not conforming_code and (desc.dpl < cpu.cpl or desc.dpl < (sel & 3)):
            self.set_flags(0, FLAG_ZF)
            return
        if lsl:
            self.put(dst, desc.byte_limit)
        else:
            rights = int.from_bytes(desc.to_bytes()[4:8], "little")  # access byte and flags nibble
            self.put(dst, rights & 0x00FFFF00 if dst.size > 2 else rights & 0xFF00)
        self.set_flags(FLAG_ZF, FLAG_ZF)

    def op_lar(self, insn: D.Instruction) -> None:
        self._lar_lsl(insn, False)

    def op_lsl(self, insn: D.Instruction) -> None:
        self._lar_lsl(insn, True)

    def _verify(self, insn: D.Instruction, write: bool) -> None:
        cpu = self.cpu
        sel = self.get(insn.operands[0]) & 0xFFFF
        ok = False
        if sel & ~3:
            try:
                _, seg = self.read_descriptor(sel)
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
        self.set_flags(FLAG_ZF if ok else 0, FLAG_ZF)

    def op_verr(self, insn: D.Instruction) -> None:
        self._verify(insn, False)

    def op_verw(self, insn: D.Instruction) -> None:
        self._verify(insn, True)

    def op_arpl(self, insn: D.Instruction) -> None:
        if not self.cpu.cr0 & CR0_PE or self.cpu.rflags & FLAG_VM:
            raise GuestFault(UD, reason="ARPL outside protected mode")
        dst, src = insn.operands
        a, b = self.get(dst), self.get(src)
        if (a & 3) < (b & 3):
            self.put(dst, (a & ~3) | (b & 3))
            self.set_flags(FLAG_ZF, FLAG_ZF)
        else:
            self.set_flags(0, FLAG_ZF)

    def op_bound(self, insn: D.Instruction) -> None:
        idx, mem = insn.operands
        half = mem.size // 2
        ea = self.ea(mem)
        from kvmlite.emulator.alu import to_signed

        lo = to_signed(self.read(mem.seg, ea, half), half)
        hi = to_signed(self.read(mem.seg, ea + half, half), half)
        v = to_signed(self.get(idx), half)
        if not lo <= v <= hi:
            raise GuestFault(BR, reason="BOUND range exceeded")

    # ================================================================== control registers
    def _write_cr0(self, value: int) -> None:
        cpu = self.cpu
        if value & CR0_RESERVED_HIGH:
            raise gp(0, "reserved CR0 bits")
        value |= CR0_ET
        if value & CR0_PG and not value & CR0_PE:
            raise gp(0, "CR0.PG without CR0.PE")
        if value & CR0_NW and not value & CR0_CD:
            raise gp(0, "CR0.NW without CR0.CD")
        efer = cpu.efer
        if value & CR0_PG and not cpu.cr0 & CR0_PG and efer & EFER_LME:
            if not cpu.cr4 & CR4_PAE:
                raise gp(0, "long mode paging without CR4.PAE")
            efer |= EFER_LMA
        elif not value & CR0_PG and cpu.cr0 & CR0_PG and efer & EFER_LMA:
            if self.mode == 64:
                raise gp(0, "disabling paging in 64-bit mode")
            efer &= ~EFER_LMA
        self.ops.paging_changed(value, cpu.cr3, cpu.cr4, efer)
        cpu.cr0 = value
        cpu.efer = efer
        self._refresh_mode()

    def op_mov_to_cr(self, insn: D.Instruction) -> None:
        self.require_cpl0("MOV to CR")
        cr, src = insn.operands
        value = self.get(src)
        cpu = self.cpu
        n = cr.reg
        if n == 0:
            self._write_cr0(value)
        elif n == 2:
            cpu.cr2 = value
        elif n == 3:
            if self.mode == 64:
                value &= MASK64
            self.ops.cr3_written(value)
            cpu.cr3 = value
        elif n == 4:
            if cpu.efer & EFER_LMA and not value & CR4_PAE:
                raise gp(0, "clearing CR4.PAE in long mode")
            if value >> 32:
                raise gp(0, "reserved CR4 bits")
            self.ops.paging_changed(cpu.cr0, cpu.cr3, value, cpu.efer)
            cpu.cr4 = value
        elif n == 8:
            if value & ~0xF:
                raise gp(0, "reserved CR8 bits")
            cpu.cr8 = value
        else:
            raise GuestFault(UD, reason=f"MOV to CR{n}")

    def op_mov_from_cr(self, insn: D.Instruction) -> None:
        self.require_cpl0("MOV from CR")
        dst, cr = insn.operands
        cpu = self.cpu
        n = cr.reg
        if n == 0:
            value = cpu.cr0
        elif n == 2:
            value = cpu.cr2
        elif n == 3:
            value = cpu.cr3
        elif n == 4:
            value = cpu.cr4
        elif n == 8:
            value = cpu.cr8
        else:
            raise GuestFault(UD, reason=f"MOV from CR{n}")
        self.put(dst, value)

    def _dr_index(self, n: int) -> int:
        if n in (4, 5):
            if self.cpu.cr4 & CR4_DE:
                raise GuestFault(UD, reason=f"DR{n} with CR4.DE")
            return n + 2
        return n

    def op_mov_to_dr(self, insn: D.Instruction) -> None:
        self.require_cpl0("MOV to DR")
        dr, src = insn.operands
        n = self._dr_index(dr.reg)
        value = self.get(src)
        if n >= 6 and value >> 32:
            raise gp(0, f"reserved DR{n} bits")
        if n == 6:
            value = (value & 0x1E00F) | 0xFFFF0FF0
        elif n == 7:
            value = (value & ~0xD800) | 0x400
        self.cpu.dr[n] = value

    def op_mov_from_dr(self, insn: D.Instruction) -> None:
        self.require_cpl0("MOV from DR")
        dst, dr = insn.operands
        self.put(dst, self.cpu.dr[self._dr_index(dr.reg)])

    def op_clts(self, insn: D.Instruction) -> None:
        self.require_cpl0("CLTS")
        self.cpu.cr0 &= ~CR0_TS

    def op_invlpg(self, insn: D.Instruction) -> None:
        self.require_cpl0("INVLPG")
        op = insn.operands[0]
        off = self.ea(op)
        if self.mode == 64:
            lin = (off + (self.cpu.segs[op.seg].base if op.seg >= FS else 0)) & MASK64
        else:
            lin = (self.cpu.segs[op.seg].base + off) & 0xFFFFFFFF
        self.ops.invlpg(lin)

    def op_invd(self, insn: D.Instruction) -> None:
        self.require_cpl0("INVD")

    op_wbinvd = op_invd

    def op_hlt(self, insn: D.Instruction) -> None:
        self.require_cpl0("HLT")
        self.cpu.halted = True
        self.ops.halt()

    # ================================================================== MSRs, CPUID, time
    def read_msr(self, index: int) -> int:
        cpu = self.cpu
        if index == Msr.EFER:
            return cpu.efer
        if index == Msr.FS_BASE:
            return cpu.segs[FS].base
        if index == Msr.GS_BASE:
            return cpu.segs[GS].base
        if index == Msr.TSC:
            return self.ops.rdtsc() & MASK64
        if index == Msr.APIC_BASE:
            return cpu.apic_base
        if index in _LOCAL_MSRS:
            return cpu.msrs.get(index, 0)
        return self.ops.read_msr(index)

    def write_msr(self, index: int, value: int) -> None:
        cpu = self.cpu
        if index == Msr.EFER:
            if value & ~(EFER_WRITABLE | EFER_LMA):
                raise gp(0, f"reserved EFER bits in {value:#x}")
            if cpu.cr0 & CR0_PG and (value ^ cpu.efer) & EFER_LME:
                raise gp(0, "changing EFER.LME with paging on")
            value = (value & ~EFER_LMA) | (cpu.efer & EFER_LMA)
            self.ops.paging_changed(cpu.cr0, cpu.cr3, cpu.cr4, value)
            cpu.efer = value
        elif index in (Msr.FS_BASE, Msr.GS_BASE, Msr.KERNEL_GS_BASE, Msr.LSTAR, Msr.CSTAR):
            if ((value + (1 << 47)) & MASK64) >> 48:
                raise gp(0, f"non-canonical value {value:#x} for MSR {index:#x}")
            if index == Msr.FS_BASE:
                cpu.segs[FS].base = value
            elif index == Msr.GS_BASE:
                cpu.segs[GS].base = value
            else:
                cpu.msrs[index] = value
        elif index == Msr.APIC_BASE:
            cpu.apic_base = value
            self.ops.write_msr(index, value)
        elif index in _LOCAL_MSRS:
            cpu.msrs[index] = value
        else:
            self.ops.write_msr(index, value)

    def op_rdmsr(self, insn: D.Instruction) -> None:
        self.require_cpl0("RDMSR")
        gpr = self.cpu.gpr
        value = self.read_msr(gpr[RCX] & 0xFFFFFFFF)
        gpr[RAX] = value & 0xFFFFFFFF
        gpr[RDX] = (value >> 32) & 0xFFFFFFFF

    def op_wrmsr(self, insn: D.Instruction) -> None:
        self.require_cpl0("WRMSR")
        gpr = self.cpu.gpr
        self.write_msr(gpr[RCX] & 0xFFFFFFFF, ((gpr[RDX] & 0xFFFFFFFF) << 32) | (gpr[RAX] & 0xFFFFFFFF))

    def op_cpuid(self, insn: D.Instruction) -> None:
        gpr = self.cpu.gpr
        a, b, c, d = self.ops.cpuid(gpr[RAX] & 0xFFFFFFFF, gpr[RCX] & 0xFFFFFFFF)
        gpr[RAX], gpr[RBX], gpr[RCX], gpr[RDX] = (v & 0xFFFFFFFF for v in (a, b, c, d))

    def op_rdtsc(self, insn: D.Instruction) -> None:
        cpu = self.cpu
        if cpu.cr4 & CR4_TSD and cpu.cpl > 0 and cpu.cr0 & CR0_PE:
            raise gp(0, "RDTSC with CR4.TSD above CPL 0")
        tsc = self.ops.rdtsc() & MASK64
        cpu.gpr[RAX] = tsc & 0xFFFFFFFF
        cpu.gpr[RDX] = tsc >> 32

    def op_rdtscp(self, insn: D.Instruction) -> None:
        self.op_rdtsc(insn)
        self.cpu.gpr[RCX] = self.cpu.msrs.get(Msr.TSC_AUX, 0) & 0xFFFFFFFF

    def op_rdpid(self, insn: D.Instruction) -> None:
        self.put(insn.operands[0], self.cpu.msrs.get(Msr.TSC_AUX, 0))

    def op_rdpmc(self, insn: D.Instruction) -> None:
        raise gp(0, "RDPMC: no performance counters")

    def op_rdrand(self, insn: D.Instruction) -> None:
        op = insn.operands[0]
        self.put(op, int.from_bytes(os.urandom(op.size), "little"))
        self.set_flags(1)  # CF=1: a value is available; OF SF ZF AF PF cleared

    op_rdseed = op_rdrand

    def op_xgetbv(self, insn: D.Instruction) -> None:
        gpr = self.cpu.gpr
        if gpr[RCX] & 0xFFFFFFFF != 0:
            raise gp(0, "XGETBV of an unknown XCR")
        gpr[RAX] = self.cpu.xcr0 & 0xFFFFFFFF
        gpr[RDX] = self.cpu.xcr0 >> 32

    def op_xsetbv(self, insn: D.Instruction) -> None:
        self.require_cpl0("XSETBV")
        gpr = self.cpu.gpr
        value = ((gpr[RDX] & 0xFFFFFFFF) << 32) | (gpr[RAX] & 0xFFFFFFFF)
        if gpr[RCX] & 0xFFFFFFFF != 0 or not value & 1 or value & ~0x3:
            raise gp(0, f"XSETBV {value:#x} not supported (x87 and SSE state only)")
        self.cpu.xcr0 = value

    # ================================================================== FS/GS bases, SWAPGS
    def _fsgsbase(self, insn: D.Instruction, seg: int, write: bool) -> None:
        if not self.cpu.cr4 & CR4_FSGSBASE:
            raise GuestFault(UD, reason="FSGSBASE instructions with CR4.FSGSBASE clear")
        op = insn.operands[0]
        if write:
            value = self.get(op)
            if ((value + (1 << 47)) & MASK64) >> 48:
                raise gp(0, "non-canonical segment base")
            self.cpu.segs[seg].base = value
        else:
            self.put(op, self.cpu.segs[seg].base)

    def op_rdfsbase(self, insn: D.Instruction) -> None:
        self._fsgsbase(insn, FS, False)

    def op_rdgsbase(self, insn: D.Instruction) -> None:
        self._fsgsbase(insn, GS, False)

    def op_wrfsbase(self, insn: D.Instruction) -> None:
        self._fsgsbase(insn, FS, True)

    def op_wrgsbase(self, insn: D.Instruction) -> None:
        self._fsgsbase(insn, GS, True)

    def op_swapgs(self, insn: D.Instruction) -> None:
        self.require_cpl0("SWAPGS")
        cpu = self.cpu
        kernel = cpu.msrs.get(Msr.KERNEL_GS_BASE, 0)
        cpu.msrs[Msr.KERNEL_GS_BASE] = cpu.segs[GS].base
        cpu.segs[GS].base = kernel

    # ================================================================== fast system calls
    def op_syscall(self, insn: D.Instruction) -> None:
        cpu = self.cpu
        if not cpu.efer & EFER_SCE or not cpu.efer & EFER_LMA:
            raise GuestFault(UD, reason="SYSCALL with EFER.SCE clear or outside long mode")
        star = cpu.msrs.get(Msr.STAR, 0)
        sel = (star >> 32) & 0xFFFC
        cpu.gpr[RCX] = self.next_rip
        cpu.gpr[R11] = cpu.rflags & ~FLAG_RF
        cpu.rflags &= ~(cpu.msrs.get(Msr.SFMASK, SFMASK_DEFAULT) | FLAG_RF)
        cpu.rflags |= FLAG_FIXED1
        cpu.segs[CS] = fast_call_code(sel, dpl=0, long=True)
        cpu.segs[SS] = fast_call_stack(sel + 8, dpl=0)
        cpu.cpl = 0
        self._refresh_mode()
        self.next_rip = cpu.msrs.get(Msr.LSTAR if self.mode == 64 else Msr.CSTAR, 0)

    def op_sysret(self, insn: D.Instruction) -> None:
        cpu = self.cpu
        if not cpu.efer & EFER_SCE or not cpu.efer & EFER_LMA or self.mode != 64:
            raise GuestFault(UD, reason="SYSRET outside 64-bit mode or with EFER.SCE clear")
        self.require_cpl0("SYSRET")
        star = cpu.msrs.get(Msr.STAR, 0)
        base_sel = (star >> 48) & 0xFFFF
        to64 = insn.opsize == 8
        rip = cpu.gpr[RCX]
        if to64 and ((rip + (1 << 47)) & MASK64) >> 48:
            raise gp(0, "SYSRET to a non-canonical RIP")
        cs_sel = ((base_sel + 16) if to64 else base_sel) | 3
        cpu.segs[CS] = fast_call_code(cs_sel, dpl=3, long=to64)
        ss = cpu.segs[SS]
        cpu.segs[SS] = ss.copy(selector=(base_sel + 8) | 3, dpl=3, unusable=0, present=1, type=0x3, s=1)
        cpu.rflags = (cpu.gpr[R11] & 0x3C7FD7) | FLAG_FIXED1
        cpu.cpl = 3
        self._refresh_mode()
        self.next_rip = rip if to64 else rip & 0xFFFFFFFF

    def op_sysenter(self, insn: D.Instruction) -> None:
        cpu = self.cpu
        if not cpu.cr0 & CR0_PE:
            raise gp(0, "SYSENTER in real mode")
        cs_sel = cpu.msrs.get(Msr.SYSENTER_CS, 0) & 0xFFFC
        if cs_sel == 0:
            raise gp(0, "SYSENTER with IA32_SYSENTER_CS = 0")
        long_mode = bool(cpu.efer & EFER_LMA)
        cpu.rflags &= ~(FLAG_VM | FLAG_IF | FLAG_RF)
        cpu.segs[CS] = fast_call_code(cs_sel, dpl=0, long=long_mode)
        cpu.segs[SS] = fast_call_stack(cs_sel + 8, dpl=0)
        cpu.cpl = 0
        esp = cpu.msrs.get(Msr.SYSENTER_ESP, 0)
        eip = cpu.msrs.get(Msr.SYSENTER_EIP, 0)
        cpu.gpr[RSP] = esp if long_mode else esp & 0xFFFFFFFF
        self._refresh_mode()
        self.next_rip = eip if long_mode else eip & 0xFFFFFFFF

    def op_sysexit(self, insn: D.Instruction) -> None:
        cpu = self.cpu
        self.require_cpl0("SYSEXIT")
        cs_base = cpu.msrs.get(Msr.SYSENTER_CS, 0) & 0xFFFC
        if not cpu.cr0 & CR0_PE or cs_base == 0:
            raise gp(0, "SYSEXIT outside protected mode or with IA32_SYSENTER_CS = 0")
        to64 = insn.opsize == 8
        cs_sel = (cs_base + (32 if to64 else 16)) | 3
        cpu.segs[CS] = fast_call_code(cs_sel, dpl=3, long=to64)
        cpu.segs[SS] = fast_call_stack((cs_sel + 8) | 3, dpl=3)
        cpu.cpl = 3
        mask = MASK64 if to64 else 0xFFFFFFFF
        cpu.gpr[RSP] = cpu.gpr[RCX] & mask
        self._refresh_mode()
        self.next_rip = cpu.gpr[RDX] & mask

    # ================================================================== FPU/SSE/AVX state (XSAVE area)
    def _xsave_area(self) -> bytearray:
        """The CPU's x87/SSE/AVX state as a standard-format XSAVE area (see :mod:`.xstate`)."""
        area = getattr(self.cpu, "xsave_area", None)
        if area is None:
            area = xstate.init_area()
            self.cpu.xsave_area = area  # type: ignore[attr-defined]
        return area

    def _check_fpu_area(self, insn: D.Instruction, align: int) -> tuple[int, int]:
        op = insn.operands[0]
        off = self.ea(op)
        if self.cpu.cr0 & (CR0_TS | CR0_EM):
            raise GuestFault(NM, reason="FPU unavailable (CR0.TS/EM)")
        if off & (align - 1):
            raise gp(0, "misaligned FXSAVE/XSAVE area")
        return op.seg, off

    def _write_block(self, seg: int, off: int, data: bytes) -> None:
        for i in range(0, len(data), 8):
            chunk = data[i : i + 8]
            self.write(seg, off + i, len(chunk), int.from_bytes(chunk, "little"))

    def _read_block(self, seg: int, off: int, size: int) -> bytes:
        return b"".join(
            self.read(seg, off + i, min(8, size - i)).to_bytes(min(8, size - i), "little")
            for i in range(0, size, 8)
        )

    def op_fxsave(self, insn: D.Instruction) -> None:
        seg, off = self._check_fpu_area(insn, 16)
        self._write_block(seg, off, bytes(self._xsave_area()[:FXSAVE_SIZE]))

    def op_fxrstor(self, insn: D.Instruction) -> None:
        seg, off = self._check_fpu_area(insn, 16)
        data = self._read_block(seg, off, FXSAVE_SIZE)
        mxcsr = int.from_bytes(data[MXCSR_OFFSET : MXCSR_OFFSET + 4], "little")
        if mxcsr & ~0xFFFF:
            raise gp(0, "reserved MXCSR bits in FXRSTOR image")
        area = self._xsave_area()
        area[:FXSAVE_SIZE] = data
        bv = xstate.xstate_bv(area) | (1 << xstate.X87) | (1 << xstate.SSE)
        area[xstate.HEADER_OFFSET : xstate.HEADER_OFFSET + 8] = bv.to_bytes(8, "little")

    def _xstate_op(
        self, insn: D.Instruction, supervisor: bool
    ) -> tuple[int, int, int, list[xstate.Component]]:
        if not self.cpu.cr4 & CR4_OSXSAVE:
            raise GuestFault(UD, reason="XSAVE family with CR4.OSXSAVE clear")
        if supervisor and self.cpu.cpl:
            raise gp(0, "XSAVES/XRSTORS at CPL > 0")
        seg, off = self._check_fpu_area(insn, 64)
        gpr = self.cpu.gpr
        enabled = self.cpu.xcr0 | (self.cpu.msrs.get(Msr.XSS, 0) if supervisor else 0)
        rfbm = (((gpr[RDX] & 0xFFFFFFFF) << 32) | (gpr[RAX] & 0xFFFFFFFF)) & enabled
        return seg, off, rfbm, xstate.layout(self.ops.cpuid, enabled)

    def _xsave(self, insn: D.Instruction, compacted: bool, supervisor: bool = False) -> None:
        seg, off, rfbm, comps = self._xstate_op(insn, supervisor)
        xstate.save(
            self._xsave_area(),
            comps,
            rfbm,
            compacted,
            lambda o, n: self._read_block(seg, off + o, n),
            lambda o, data: self._write_block(seg, off + o, data),
        )

    def op_xsave(self, insn: D.Instruction) -> None:
        self._xsave(insn, compacted=False)

    op_xsaveopt = op_xsave

    def op_xsavec(self, insn: D.Instruction) -> None:
        self._xsave(insn, compacted=True)

    def op_xsaves(self, insn: D.Instruction) -> None:
        self._xsave(insn, compacted=True, supervisor=True)

    def _xrstor(self, insn: D.Instruction, supervisor: bool) -> None:
        seg, off, rfbm, comps = self._xstate_op(insn, supervisor)
        area = bytearray(self._xsave_area())  # applied only if the whole image is accepted
        try:
            xstate.restore(area, comps, rfbm, lambda o, n: self._read_block(seg, off + o, n), supervisor)
        except xstate.XstateError as err:
            raise gp(0, str(err)) from err
        self._xsave_area()[:] = area

    def op_xrstor(self, insn: D.Instruction) -> None:
        self._xrstor(insn, supervisor=False)

    def op_xrstors(self, insn: D.Instruction) -> None:
        self._xrstor(insn, supervisor=True)

    def op_ldmxcsr(self, insn: D.Instruction) -> None:
        value = self.get(insn.operands[0])
        if value & ~0xFFFF:
            raise gp(0, "reserved MXCSR bits")
        self._xsave_area()[MXCSR_OFFSET : MXCSR_OFFSET + 4] = value.to_bytes(4, "little")

    def op_stmxcsr(self, insn: D.Instruction) -> None:
        area = self._xsave_area()
        self.put(insn.operands[0], int.from_bytes(area[MXCSR_OFFSET : MXCSR_OFFSET + 4], "little"))

    def op_emms(self, insn: D.Instruction) -> None:
        pass

    # ================================================================== misc
    def op_clac(self, insn: D.Instruction) -> None:
        self.require_cpl0("CLAC")
        self.cpu.rflags &= ~FLAG_AC

    def op_stac(self, insn: D.Instruction) -> None:
        self.require_cpl0("STAC")
        self.cpu.rflags |= FLAG_AC

    def op_monitor(self, insn: D.Instruction) -> None:
        self.require_cpl0("MONITOR")

    def op_mwait(self, insn: D.Instruction) -> None:
        self.require_cpl0("MWAIT")  # treated as a NOP: wakes at once, which MWAIT may do


_FAR_PTR_SEGMENT = {"les": ES, "lds": DS, "lss": SS, "lfs": FS, "lgs": GS}
_LOCAL_MSRS = frozenset(
    {
        Msr.STAR,
        Msr.LSTAR,
        Msr.CSTAR,
        Msr.SFMASK,
        Msr.KERNEL_GS_BASE,
        Msr.TSC_AUX,
        Msr.SYSENTER_CS,
        Msr.SYSENTER_ESP,
        Msr.SYSENTER_EIP,
    }
)
