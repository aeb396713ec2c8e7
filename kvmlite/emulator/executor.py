"""Execute decoded x86 instructions against a :class:`CpuState` and :class:`EmulatorOps`.

(Longer than the project's ~600 lines: fetch, decode cache, translation blocks and the operand and
memory accessors every handler calls are the emulator's per-instruction path, one class.)

One :meth:`Executor.step` fetches at CS:RIP (through segmentation and the
ops' paging), decodes (with a cache keyed by mode and the fetched bytes, so
a loop decodes once), runs the instruction's handler and commits RIP.  The
handler is the function the opcode row names (:mod:`kvmlite.emulator.handlers`,
one module per instruction family); it holds only its instruction's
semantics.  Operand fetch and write-back are generic (:meth:`Executor.get` /
:meth:`Executor.put`), as in QEMU's new decoder and Linux's ``emulate.c``;
so are the checks a row asks for (its CPUID feature, ``CPL0``, ``IOPL``,
``OSXSAVE``...; :func:`check_row`), made once per execution before the
handler runs, and only for rows that have any: the decode cache holds the
handler already wrapped.

Faults raised while executing (:class:`GuestFault`, the MMU's
:class:`PageFault`/:class:`NonCanonicalAddress`) roll RIP back to the
faulting instruction and are delivered through the IVT (real mode) or IDT
(protected and long mode) by :mod:`kvmlite.emulator.handlers.interrupt`.
Handlers write memory before registers wherever an instruction does both,
so a faulting write leaves the registers as they were.

Not implemented (raise :class:`UnsupportedInstruction`): SSE/MMX/x87
arithmetic, VMX/SVM, task switches, call gates, virtual-8086 mode events;
see the report in the module's tests.
"""

from __future__ import annotations

import logging
from typing import Literal

from kvmlite.emulator import decoder as D
from kvmlite.emulator import fastops, tb, xstate
from kvmlite.emulator import opcodes as T
from kvmlite.emulator.alu import MASK
from kvmlite.emulator.cpu import (
    AMASK,
    ARITH_FLAGS,
    CR0_PE,
    CR4_FSGSBASE,
    CR4_OSXSAVE,
    CS,
    EFER_LMA,
    EFER_SCE,
    FLAG_IF,
    FLAG_IOPL,
    FLAG_VM,
    FS,
    MASK64,
    RSP,
    SS,
    CpuState,
)
from kvmlite.emulator.fastops import cond_of
from kvmlite.emulator.faults import GP, PF, UD, GuestFault, gp
from kvmlite.emulator.faults import SS as VEC_SS
from kvmlite.emulator.handlers import interrupt
from kvmlite.emulator.mmu import Access, NonCanonicalAddress, PageFault
from kvmlite.emulator.ops import ACCESS_FETCH, ACCESS_READ, ACCESS_USER, ACCESS_WRITE, EmulatorOps
from kvmlite.emulator.segments import RIGHT_READ, RIGHT_WRITE
from kvmlite.errors import DecodeError, UnsupportedInstruction

log = logging.getLogger(__name__)

XMM_OFFSET = 160  # XMM0 in the XSAVE area's legacy region
FSW_OFFSET, FTW_OFFSET, ST0_OFFSET = 2, 4, 32  # x87 status word (TOP: bits 11-13), abridged tags, ST(0)
XSTATE_BV_OFFSET = 512

MAX_INSN = D.MAX_INSN_LENGTH
PAGE_SIZE = 4096
DECODE_CACHE_LIMIT = 1 << 14
VIEW_LIMIT = 1 << 14
CANONICAL_BIAS = 1 << 47
CANONICAL_LIMIT = 1 << 48
#: The next-RIP mask by code size.
_IP_MASK = {16: 0xFFFF, 32: 0xFFFFFFFF, 64: MASK64}

Handler = T.Handler


class Executor:
    """Runs guest instructions one at a time; see the module docstring."""

    def __init__(self, cpu: CpuState, ops: EmulatorOps) -> None:
        self.cpu = cpu
        self.ops = ops
        self.instructions = 0
        self.next_rip = 0
        self.mode = 16
        self._acc = 0  # ACCESS_USER at CPL 3
        self.stack_size = 2
        self._decode_cache: dict[tuple[int, bytes], tuple[D.Instruction, Handler]] = {}
        self.lazy: tuple | None = None  # pending lazy flags (.fastops), only inside run_blocks
        self.tb_ctx = 0
        self.stop_requested = False
        self.blocks = tb.BlockCache()
        self._generic: dict[tuple[int, bool], Handler] = {}
        # host views by access kind (WRITE|USER bits): virtual page -> RAM page view (see read/write)
        self._views: list[dict[int, memoryview | Literal[False]]] = [{} for _ in range(4)]
        self._rv, self._wv = self._views[0], self._views[ACCESS_WRITE]
        self._views_on = True
        self.blocks.on_new_page = self._watch_changed
        ops.watch_code(self.blocks.pages, self.blocks.invalidate_page, self._tlb_flushed, self._watch_changed)
        ops.paging_changed(cpu.cr0, cpu.cr3, cpu.cr4, cpu.efer)

    # ================================================================== run loop
    def step(self) -> None:
        """Execute one instruction (or deliver the exception it raises)."""
        cpu = self.cpu
        start = cpu.rip
        self.refresh_mode()
        shadow = cpu.interrupt_shadow
        cpu.interrupt_shadow = False
        try:
            insn, handler = self._fetch()
            self.next_rip = (start + insn.length) & _IP_MASK[self.mode]
            if tb.is_locked(insn):
                with tb.ATOMIC:
                    handler(self, insn)
            else:
                handler(self, insn)
            cpu.rip = self.next_rip
            self.instructions += 1
        except (GuestFault, PageFault, NonCanonicalAddress) as fault:
            cpu.rip = start
            cpu.interrupt_shadow = shadow
            self._deliver(fault)

    def _deliver(self, fault: GuestFault | PageFault | NonCanonicalAddress) -> None:
        """Deliver the exception an instruction raised (RIP is already back on the instruction)."""
        if isinstance(fault, GuestFault):
            interrupt.deliver_exception(self, fault.vector, fault.error_code, fault.address)
        elif isinstance(fault, PageFault):
            interrupt.deliver_exception(self, PF, fault.error_code, fault.address)
        else:
            interrupt.deliver_exception(self, GP, 0)

    def run_blocks(self, budget: int) -> int:
        """Execute about ``budget`` instructions through translation blocks (:mod:`.tb`).

        Stops early at HLT or when ``stop_requested`` is set (a kick); returns
        how many instructions ran.  Lazy flags are synced before it returns or
        raises, so callers see plain RFLAGS.  Each instruction's RIP is
        committed only when something needs it: a fault or an exit rolls RIP
        back to the instruction (``start``), generic handlers set it themselves.
        """
        cpu = self.cpu
        cache = self.blocks
        self.stop_requested = False
        self.refresh_mode()
        done = 0
        prev: tb.TranslationBlock | None = None
        try:
            while done < budget and not cpu.halted and not self.stop_requested:
                if cpu.interrupt_shadow:
                    if self.lazy is not None:
                        self.sync_flags()
                    self._step_shadowed()
                    done += 1
                    prev = None
                    continue
                rip = cpu.rip
                mode = self.mode
                lin = rip if mode == 64 else (cpu.segs[CS].base + rip) & 0xFFFFFFFF
                if prev is not None and prev.link_lin == lin and prev.link_gen == cache.generation:
                    block = prev.link
                else:
                    block = cache.jump.get(lin)
                    if block is None or block.ctx != self.tb_ctx:
                        block = self._lookup_block(lin)
                    if prev is not None:
                        prev.link, prev.link_lin, prev.link_gen = block, lin, cache.generation
                if (
                    block is None
                    or not block.ops
                    or (block.epoch != cache.epoch and not self._revalidate(block))
                    or (mode != 64 and rip + block.size - 1 > cpu.segs[CS].limit)
                ):
                    if self.lazy is not None:
                        self.sync_flags()  # step() and its handlers read RFLAGS itself
                    self.step()
                    done += 1
                    prev = None
                    continue
                bound = block.bound if block.bound_rip == rip else block.bind(rip, _IP_MASK[mode])
                start = rip
                try:
                    while True:  # a block that branches to itself runs again without a lookup
                        for fn, insn, start, self.next_rip in bound:  # noqa: B007 (start: for faults)
                            fn(self, insn)
                        done += len(bound)
                        if (
                            self.next_rip != rip
                            or done >= budget
                            or self.stop_requested
                            or block.refresh
                            or not block.valid
                        ):
                            break
                except (GuestFault, PageFault, NonCanonicalAddress) as fault:
                    cpu.rip = start
                    if self.lazy is not None:
                        self.sync_flags()
                    self._deliver(fault)
                    prev = None
                    continue
                except BaseException:
                    cpu.rip = start  # a device exit replays the instruction; anything else reports it
                    raise
                cpu.rip = self.next_rip
                if block.refresh:
                    if self.lazy is not None:
                        self.sync_flags()
                    self.refresh_mode()
                    prev = None
                else:
                    prev = block
        finally:
            if self.lazy is not None:
                self.sync_flags()
            self.instructions += done
        return done

    def _step_shadowed(self) -> None:
        """``step()`` for an instruction in an interrupt shadow (a device exit keeps the shadow)."""
        try:
            self.step()
        except BaseException:
            self.cpu.interrupt_shadow = True
            raise

    def _lookup_block(self, lin: int) -> tb.TranslationBlock | None:
        """The block at linear ``lin`` in the current context, translated if new; None: use step()."""
        try:
            found = self.ops.code_page(lin, ACCESS_FETCH | self._acc)
        except (GuestFault, PageFault, NonCanonicalAddress):
            return None  # step() raises the fault on its own fetch
        if found is None:
            return None
        phys, view = found
        cache = self.blocks
        block = cache.blocks.get((phys, self.tb_ctx))
        if block is None:
            block = tb.translate(self, phys, bytes(view))
            cache.add(block)
            block.epoch = cache.epoch
        cache.jump[lin] = block
        return block

    def _revalidate(self, block: tb.TranslationBlock) -> bool:
        """First use of ``block`` in this epoch: is guest memory still what it was decoded from?"""
        found = self.ops.ram_page(block.phys)
        if found is not None and found[: block.size] == block.code:
            block.epoch = self.blocks.epoch
            return True
        self.blocks.invalidate_page(block.phys >> tb.PAGE_SHIFT)
        return False

    # ================================================================== lazy flags (see .fastops)
    def sync_flags(self) -> None:
        """Fold the pending lazy flag record into RFLAGS."""
        cpu = self.cpu
        cpu.rflags = (cpu.rflags & ~ARITH_FLAGS) | fastops.lazy_flags(self.lazy, cpu.rflags)  # type: ignore[arg-type]
        self.lazy = None

    def flags(self) -> int:
        """RFLAGS with any pending lazy record applied (does not commit it)."""
        lz = self.lazy
        rflags = self.cpu.rflags
        if lz is None:
            return rflags
        return (rflags & ~ARITH_FLAGS) | fastops.lazy_flags(lz, rflags)

    def generic_handler(self, row: T.Row, sync: bool) -> Handler:
        """``row``'s handler with its checks for a block: RIP committed, lazy flags synced if ``sync``."""
        key = (id(row), sync)
        hit = self._generic.get(key)
        if hit is not None:
            return hit
        handler: Handler = row.handler if row.handler is not None else unsupported
        if row.checked:
            handler = _checked(row, handler)
        inner = handler

        def generic(ex: Executor, insn: D.Instruction) -> None:
            if sync and ex.lazy is not None:
                ex.sync_flags()
            ex.cpu.rip = (ex.next_rip - insn.length) & _IP_MASK[ex.mode]
            inner(ex, insn)

        handler = generic
        self._generic[key] = handler
        return handler

    def run(self, count: int) -> int:
        """Execute up to ``count`` instructions; stop early at HLT. Returns how many ran."""
        done = 0
        cpu = self.cpu
        while done < count and not cpu.halted:
            self.step()
            done += 1
        return done

    def refresh_mode(self) -> None:
        """Recompute the code size, stack size and user/supervisor access from the registers."""
        cpu = self.cpu
        self.mode = cpu.code_bits
        self._acc = ACCESS_USER if cpu.cpl == 3 else 0
        if self.mode == 64:
            self.stack_size = 8
        else:
            self.stack_size = 4 if (cpu.cr0 & CR0_PE and cpu.segs[SS].db and not cpu.rflags & FLAG_VM) else 2
        self.tb_ctx = self.mode | self._acc << 8 | self.stack_size << 12
        self._rv, self._wv = self._views[self._acc], self._views[self._acc | ACCESS_WRITE]

    def _fetch(self) -> tuple[D.Instruction, Handler]:
        cpu = self.cpu
        mode = self.mode
        rip = cpu.rip
        cs = cpu.segs[CS]
        if mode == 64:
            lin = rip
        else:
            if rip > cs.limit:
                raise gp(0, "instruction fetch beyond the CS limit")
            lin = (cs.base + rip) & 0xFFFFFFFF
        n = PAGE_SIZE - (lin & (PAGE_SIZE - 1))
        if n > MAX_INSN:
            n = MAX_INSN
        code = self.ops.read_linear(lin, n, ACCESS_FETCH | self._acc)
        hit = self._decode_cache.get((mode, code))
        if hit is None:
            hit = self._decode(code, lin, n, mode)
        if mode != 64 and rip + hit[0].length - 1 > cs.limit:
            raise gp(0, "instruction crosses the CS limit")
        return hit

    def _decode(self, code: bytes, lin: int, n: int, mode: int) -> tuple[D.Instruction, Handler]:
        """Decode (fetching the rest of an instruction that crosses a page) and cache it with its handler."""
        complete = True  # decoded from ``code`` alone, so ``code`` can be its cache key
        try:
            try:
                insn = D.decode(code, mode)
            except D.TruncatedInstruction:
                if n == MAX_INSN:
                    raise
                more = self.ops.read_linear(
                    (lin + n) & AMASK[8 if mode == 64 else 4], MAX_INSN - n, ACCESS_FETCH | self._acc
                )
                insn = D.decode(code + more, mode)
                complete = False
        except DecodeError as err:
            raise GuestFault(UD, reason=str(err)) from err
        row = insn.row
        handler: Handler = row.handler if row.handler is not None else unsupported
        if row.checked:
            handler = _checked(row, handler)
        hit = (insn, handler)
        if not complete:
            return hit  # the rest came from the next page: the first page's bytes do not identify it
        if len(self._decode_cache) >= DECODE_CACHE_LIMIT:
            self._decode_cache.clear()
        self._decode_cache[(mode, code)] = hit
        return hit

    def flush_decode_cache(self) -> None:
        """Forget decoded instructions (only needed if decode tables change; code writes are safe)."""
        self._decode_cache.clear()

    # ================================================================== events (see handlers.interrupt)
    def inject_interrupt(self, vector: int) -> None:
        """Deliver an external interrupt now (the caller checked IF and the interrupt shadow)."""
        self.cpu.halted = False
        self.refresh_mode()
        interrupt.deliver_exception(self, vector, None, external=True)

    def interrupts_enabled(self) -> bool:
        cpu = self.cpu
        return bool(cpu.rflags & FLAG_IF) and not cpu.interrupt_shadow

    def deliver_exception(self, vector: int, error_code: int | None = None, address: int = 0) -> None:
        """Deliver an exception now, escalating to #DF and triple fault as the CPU does."""
        interrupt.deliver_exception(self, vector, error_code, address)

    # ================================================================== memory
    def linear(self, seg: int, offset: int, size: int, write: bool = False) -> int:
        """Segmentation: the linear address of ``seg:offset`` after limit/type checks."""
        cpu = self.cpu
        if self.mode == 64:
            lin = offset + cpu.segs[seg].base if seg >= FS else offset
            lin &= MASK64
            if (lin + CANONICAL_BIAS) & MASK64 >= CANONICAL_LIMIT:
                raise GuestFault(VEC_SS if seg == SS else GP, 0, reason=f"non-canonical address {lin:#x}")
            return lin
        s = cpu.segs[seg]
        if cpu.cr0 & CR0_PE and not cpu.rflags & FLAG_VM:
            need = RIGHT_WRITE if write else RIGHT_READ
            if s.rights & need and s.lo <= offset and offset + size - 1 <= s.hi and not s.unusable:
                return (s.base + offset) & 0xFFFFFFFF
            access = Access.WRITE if write else Access.READ
            return s.linear(offset, size, access, seg == SS)  # raises the fault
        if s.lo <= offset and offset + size - 1 <= s.hi:
            return (s.base + offset) & 0xFFFFFFFF
        return s.linear_real(offset, size, seg == SS)  # raises #GP/#SS

    def data_access(self, write: bool = False) -> int:
        """The access kind (:class:`~kvmlite.emulator.mmu.Access`) of the instruction's data accesses."""
        return ACCESS_WRITE | self._acc if write else self._acc

    def read(self, seg: int, offset: int, size: int) -> int:
        lin = self.linear(seg, offset, size)
        view = self._rv.get(lin >> 12)
        if view:
            off = lin & 0xFFF
            if off + size <= PAGE_SIZE:
                return int.from_bytes(view[off : off + size], "little")
        data = self.ops.read_linear(lin, size, self._acc)
        if view is None and self._views_on:
            self._add_view(self._rv, lin, self._acc)
        return int.from_bytes(data, "little")

    def write(self, seg: int, offset: int, size: int, value: int) -> None:
        lin = self.linear(seg, offset, size, True)
        data = (value & MASK[size] if size <= 8 else value).to_bytes(size, "little")
        view = self._wv.get(lin >> 12)
        if view:
            off = lin & 0xFFF
            if off + size <= PAGE_SIZE:
                view[off : off + size] = data
                return
        self.ops.write_linear(lin, data, ACCESS_WRITE | self._acc)
        if view is None and self._views_on:
            self._add_view(self._wv, lin, ACCESS_WRITE | self._acc)

    # The host views: virtual page -> a memoryview of the guest RAM page, per access kind, filled
    # from translations the MMU made (so its A/D and permission decisions stand) and emptied with
    # them (the MMU's on_flush); write views skip pages holding decoded code or page tables, whose
    # writes must be seen.  A page that is not RAM (MMIO) is remembered as False.
    def _add_view(self, views: dict[int, memoryview | Literal[False]], lin: int, access: int) -> None:
        if len(views) >= VIEW_LIMIT:
            views.clear()
        try:
            views[lin >> 12] = self.ops.page_view(lin, access) or False
        except (PageFault, NonCanonicalAddress, GuestFault):
            pass

    def bulk_view(self, seg: int, offset: int, nbytes: int, write: bool) -> tuple[int, memoryview] | None:
        """(linear address, its page's host view) for ``nbytes`` at ``seg:offset`` that lie in one RAM
        page this CPU may access directly, or None (the caller goes element by element, which
        raises whatever fault is due at the exact element)."""
        if not self._views_on:
            return None
        try:
            lin = self.linear(seg, offset, nbytes, write)
        except (GuestFault, NonCanonicalAddress):
            return None
        if (lin & 0xFFF) + nbytes > PAGE_SIZE:
            return None
        views = self._wv if write else self._rv
        view = views.get(lin >> 12)
        if view is None:
            self._add_view(views, lin, (ACCESS_WRITE if write else 0) | self._acc)
            view = views.get(lin >> 12)
        return (lin, view) if view else None

    def _tlb_flushed(self) -> None:
        """The MMU dropped translations: the jump cache and the host views go with them."""
        self.blocks.flush_jump_cache()
        for views in self._views:
            views.clear()

    def _watch_changed(self) -> None:
        """A page became watched (code or page tables): no more direct writes until refilled."""
        self._views[ACCESS_WRITE].clear()
        self._views[ACCESS_WRITE | ACCESS_USER].clear()

    def use_views(self, on: bool) -> None:
        """Direct host-memory access on or off (off while data breakpoints watch the ops' accessors)."""
        self._views_on = on
        for views in self._views:
            views.clear()

    def reset_caches(self) -> None:
        """A new CPU state was loaded from outside: forget translations, blocks and views."""
        self.ops.reset_translations()
        self.blocks.clear()
        for views in self._views:
            views.clear()

    def read_bytes(self, seg: int, offset: int, size: int) -> bytes:
        return self.ops.read_linear(self.linear(seg, offset, size), size, self._acc)

    def ea(self, op: D.Operand) -> int:
        """Effective address (segment offset) of a memory operand."""
        base = op.base
        if base == D.BASE_RIP:
            return (self.next_rip + op.disp) & AMASK[op.addrsize]
        gpr = self.cpu.gpr
        a = op.disp
        if base >= 0:
            a += gpr[base]
        if op.index >= 0:
            a += gpr[op.index] * op.scale
        return a & AMASK[op.addrsize]

    # ================================================================== operands
    def get(self, op: D.Operand) -> int:
        """Value of an operand (registers, memory, immediates)."""
        kind = op.kind
        if kind == D.OP_REG:
            rc = op.regclass
            if rc == D.RC_GPR:
                return self.cpu.gpr[op.reg] & MASK[op.size]
            if rc == D.RC_GPR8H:
                return (self.cpu.gpr[op.reg] >> 8) & 0xFF
            if rc == D.RC_SEG:
                return self.cpu.segs[op.reg].selector
            if rc == D.RC_XMM:
                return self.get_xmm(op.reg) & ((1 << (8 * op.size)) - 1)
            if rc == D.RC_MMX:
                return self.get_mmx(op.reg) & MASK[op.size]
            raise UnsupportedInstruction(f"register class {rc} operands are not implemented")
        if kind == D.OP_MEM:
            if op.size > 8:
                return int.from_bytes(self.read_block(op.seg, self.ea(op), op.size), "little")
            return self.read(op.seg, self.ea(op), op.size)
        return op.value

    def put(self, op: D.Operand, value: int) -> None:
        """Write an operand; 32-bit register writes zero the upper half, as in hardware."""
        kind = op.kind
        if kind == D.OP_REG:
            rc = op.regclass
            gpr = self.cpu.gpr
            size = op.size
            if rc == D.RC_GPR:
                if size >= 4:
                    gpr[op.reg] = value & MASK[size]
                else:
                    m = MASK[size]
                    gpr[op.reg] = (gpr[op.reg] & ~m) | (value & m)
            elif rc == D.RC_GPR8H:
                gpr[op.reg] = (gpr[op.reg] & ~0xFF00) | ((value & 0xFF) << 8)
            elif rc == D.RC_XMM:
                self.set_xmm(op.reg, value & ((1 << (8 * size)) - 1))  # zero-extended to 128 bits
            elif rc == D.RC_MMX:
                self.set_mmx(op.reg, value & MASK[size])  # zero-extended to 64 bits (movd)
            else:
                raise UnsupportedInstruction(f"register class {rc} operands are not implemented")
        elif kind == D.OP_MEM:
            if op.size > 8:
                self.write_block(op.seg, self.ea(op), value.to_bytes(op.size, "little"))
            else:
                self.write(op.seg, self.ea(op), op.size, value)
        else:
            raise GuestFault(UD, reason="write to an immediate operand")

    def set_reg(self, reg: int, size: int, value: int) -> None:
        gpr = self.cpu.gpr
        if size >= 4:
            gpr[reg] = value & MASK[size]
        else:
            m = MASK[size]
            gpr[reg] = (gpr[reg] & ~m) | (value & m)

    def set_flags(self, flags: int, mask: int = ARITH_FLAGS) -> None:
        cpu = self.cpu
        cpu.rflags = (cpu.rflags & ~mask) | (flags & mask)

    # ================================================================== stack
    def push(self, value: int, size: int) -> None:
        cpu = self.cpu
        ss = self.stack_size
        sp = (cpu.gpr[RSP] - size) & AMASK[ss]
        self.write(SS, sp, size, value)
        self.set_reg(RSP, ss, sp)

    def pop(self, size: int) -> int:
        cpu = self.cpu
        ss = self.stack_size
        sp = cpu.gpr[RSP] & AMASK[ss]
        value = self.read(SS, sp, size)
        self.set_reg(RSP, ss, sp + size)
        return value

    def stack_peek(self, offset: int, size: int) -> int:
        sp = (self.cpu.gpr[RSP] + offset) & AMASK[self.stack_size]
        return self.read(SS, sp, size)

    # ================================================================== conditions
    def cond(self, cc: int) -> bool:
        return cond_of(self.cpu.rflags, cc)

    def branch(self, target: int, opsize: int) -> None:
        if self.mode == 64:
            target &= MASK64
            if (target + CANONICAL_BIAS) & MASK64 >= CANONICAL_LIMIT:
                raise gp(0, f"branch to non-canonical {target:#x}")
        else:
            target &= 0xFFFF if opsize == 2 else 0xFFFFFFFF
            if target > self.cpu.segs[CS].limit:
                raise gp(0, "branch beyond the CS limit")
        self.next_rip = target

    # ================================================================== implicit accesses and blocks
    def sys_read(self, lin: int, size: int) -> int:
        """An implicit supervisor read (descriptor tables, TSS, IDT)."""
        return int.from_bytes(self.ops.read_linear(lin & self.lin_mask(), size, ACCESS_READ), "little")

    def sys_write(self, lin: int, size: int, value: int) -> None:
        self.ops.write_linear(lin & self.lin_mask(), value.to_bytes(size, "little"), ACCESS_WRITE)

    def sys_read_bytes(self, lin: int, size: int) -> bytes:
        return self.ops.read_linear(lin & self.lin_mask(), size, ACCESS_READ)

    def sys_write_bytes(self, lin: int, data: bytes) -> None:
        self.ops.write_linear(lin & self.lin_mask(), data, ACCESS_WRITE)

    def lin_mask(self) -> int:
        return MASK64 if self.cpu.efer & EFER_LMA else 0xFFFFFFFF

    def write_block(self, seg: int, off: int, data: bytes) -> None:
        """Write ``data`` (an operand wider than 8 bytes, an FXSAVE/XSAVE image) at ``seg:off``.

        One segment check and one translation per page (every page before any byte is written), not
        one per 8 bytes: an XSAVE image is dozens of such pieces, each a page walk and a RAM lookup.
        """
        if data:
            self._block_end(seg, off, len(data), True)
            self.ops.write_linear(self.linear(seg, off, len(data), True), data, ACCESS_WRITE | self._acc)

    def read_block(self, seg: int, off: int, size: int) -> bytes:
        """The ``size`` bytes at ``seg:off``, read as :meth:`write_block` writes them."""
        if not size:
            return b""
        self._block_end(seg, off, size, False)
        return self.ops.read_linear(self.linear(seg, off, size), size, self._acc)

    def _block_end(self, seg: int, off: int, size: int, write: bool) -> None:
        """The fault for a block whose end is not canonical, in 64-bit mode (linear() checks its start)."""
        if self.mode == 64:
            self.linear(seg, off + size - 1, 1, write)

    # ================================================================== SSE registers (in the XSAVE area)
    def xsave_area(self) -> bytearray:
        """The CPU's x87/SSE/AVX state as a standard-format XSAVE area (see :mod:`.xstate`)."""
        area = self.cpu.xsave_area
        if area is None:
            area = self.cpu.xsave_area = xstate.init_area()
        return area

    def get_xmm(self, reg: int) -> int:
        off = XMM_OFFSET + 16 * reg
        return int.from_bytes(self.xsave_area()[off : off + 16], "little")

    def set_xmm(self, reg: int, value: int) -> None:
        area = self.xsave_area()
        off = XMM_OFFSET + 16 * reg
        area[off : off + 16] = value.to_bytes(16, "little")
        area[XSTATE_BV_OFFSET] |= 1 << 1  # SSE state no longer in its initial configuration

    def get_mmx(self, reg: int) -> int:
        """MMi: the low 64 bits of x87 physical register i, which the image holds as ST((i - TOP) & 7)."""
        area = self.xsave_area()
        off = ST0_OFFSET + 16 * ((reg - (area[FSW_OFFSET + 1] >> 3)) & 7)
        return int.from_bytes(area[off : off + 8], "little")

    def set_mmx(self, reg: int, value: int) -> None:
        """Write MMi as an MMX instruction does: TOP becomes 0 (the image's ST slots turn with it,
        ST(i) is then physical register i), every register is tagged valid, and the written
        register's exponent field is all ones (SDM vol. 1, 9.5.1)."""
        area = self.xsave_area()
        top = (area[FSW_OFFSET + 1] >> 3) & 7
        if top:
            regs = area[ST0_OFFSET : ST0_OFFSET + 128]
            for r in range(8):  # physical register r was ST((r - top) & 7)
                src = 16 * ((r - top) & 7)
                area[ST0_OFFSET + 16 * r : ST0_OFFSET + 16 * r + 16] = regs[src : src + 16]
            area[FSW_OFFSET + 1] &= ~0x38 & 0xFF
        area[FTW_OFFSET] = 0xFF  # the abridged tag word: all eight valid
        off = ST0_OFFSET + 16 * reg
        area[off : off + 10] = value.to_bytes(8, "little") + b"\xff\xff"
        area[XSTATE_BV_OFFSET] |= 1  # x87 state no longer in its initial configuration


def unsupported(ex: Executor, insn: D.Instruction) -> None:
    """The handler of rows the emulator decodes but does not run."""
    raise UnsupportedInstruction(f"{insn.format(ex.cpu.rip)} ({insn.raw.hex()}) is not implemented")


def _checked(row: T.Row, handler: Handler) -> Handler:
    """``handler`` preceded by the checks ``row`` asks for (only rows that ask pay for them)."""

    def run(ex: Executor, insn: D.Instruction) -> None:
        check_row(ex, row)
        handler(ex, insn)

    return run


def check_row(ex: Executor, row: T.Row) -> None:
    """The generic checks of an opcode row, in the SDM's priority: #UD conditions, then privilege."""
    cpu = ex.cpu
    flags = row.flags
    if row.cpuid is not None:
        leaf, subleaf, reg, bit = row.cpuid
        if not (ex.ops.cpuid(leaf, subleaf)[reg] >> bit) & 1:
            raise GuestFault(UD, reason=f"{row.mnemonics[0].upper()} without its CPUID feature")
    if flags & T.LONG_SCE and not (cpu.efer & EFER_SCE and cpu.efer & EFER_LMA):
        raise GuestFault(UD, reason=f"{row.name.upper()} with EFER.SCE clear or outside long mode")
    if flags & T.MODE64 and ex.mode != 64:
        raise GuestFault(UD, reason=f"{row.name.upper()} outside 64-bit mode")
    if flags & T.OSXSAVE and not cpu.cr4 & CR4_OSXSAVE:
        raise GuestFault(UD, reason="XSAVE family with CR4.OSXSAVE clear")
    if flags & T.FSGSBASE and not cpu.cr4 & CR4_FSGSBASE:
        raise GuestFault(UD, reason="FSGSBASE instructions with CR4.FSGSBASE clear")
    if cpu.cr0 & CR0_PE:
        if flags & T.CPL0 and (cpu.cpl != 0 or cpu.rflags & FLAG_VM):
            raise gp(0, f"{row.mnemonics[0].upper()} at CPL {cpu.cpl}")
        if flags & T.IOPL and cpu.cpl > (cpu.rflags & FLAG_IOPL) >> 12:
            raise gp(0, "IOPL-sensitive instruction above IOPL")
