"""Execute decoded x86 instructions against a :class:`CpuState` and :class:`EmulatorOps`.

One :meth:`Executor.step` fetches at CS:RIP (through segmentation and the
ops' paging), decodes (with a cache keyed by mode and the fetched bytes, so
a loop decodes once), runs the instruction's handler and commits RIP.  A
handler holds only its instruction's semantics; operand fetch and write-back
are generic (:meth:`Executor.get` / :meth:`Executor.put`), as in QEMU's new
decoder and Linux's ``emulate.c``.  Handlers are methods named ``op_<handler>``
where ``<handler>`` is the table row's handler name; they are bound once into
a dict at construction.

Faults raised while executing (:class:`GuestFault`, the MMU's
:class:`PageFault`/:class:`NonCanonicalAddress`) roll RIP back to the
faulting instruction and are delivered through the IVT (real mode) or IDT
(protected and long mode) by :mod:`kvmlite.emulator.system`.  Handlers
write memory before registers wherever an instruction does both, so a
faulting write leaves the registers as they were.

Not implemented (raise :class:`UnsupportedInstruction`): SSE/MMX/x87
arithmetic, VMX/SVM, task switches, call gates; see the report in the
module's tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kvmlite.emulator import alu
from kvmlite.emulator import decoder as D
from kvmlite.emulator.alu import MASK, SIGN, add, logic, sub, szp, to_signed
from kvmlite.emulator.cpu import (
    ARITH_FLAGS,
    CR0_PE,
    CR0_TS,
    CS,
    DS,
    ES,
    FLAG_AC,
    FLAG_AF,
    FLAG_CF,
    FLAG_DF,
    FLAG_FIXED1,
    FLAG_ID,
    FLAG_IF,
    FLAG_IOPL,
    FLAG_NT,
    FLAG_OF,
    FLAG_PF,
    FLAG_RF,
    FLAG_SF,
    FLAG_TF,
    FLAG_VM,
    FLAG_ZF,
    FS,
    SS,
    CpuState,
)
from kvmlite.emulator.faults import DE, GP, NM, PF, UD, GuestFault, gp
from kvmlite.emulator.faults import SS as VEC_SS
from kvmlite.emulator.mmu import NonCanonicalAddress, PageFault
from kvmlite.emulator.ops import ACCESS_FETCH, ACCESS_USER, ACCESS_WRITE, EmulatorOps
from kvmlite.emulator.segments import RIGHT_READ, RIGHT_WRITE
from kvmlite.emulator.system import SystemMixin
from kvmlite.errors import DecodeError, UnsupportedInstruction

log = logging.getLogger(__name__)

XMM_OFFSET = 160  # XMM0 in the XSAVE area's legacy region
XSTATE_BV_OFFSET = 512

MAX_INSN = D.MAX_INSN_LENGTH
PAGE_SIZE = 4096
DECODE_CACHE_LIMIT = 1 << 14
MASK64 = (1 << 64) - 1
AMASK = (0, 0, 0xFFFF, 0, 0xFFFFFFFF, 0, 0, 0, MASK64)
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
CANONICAL_BIAS = 1 << 47
CANONICAL_LIMIT = 1 << 48

# RFLAGS bits POPF may change at CPL 0 (VM, VIF, VIP and RF are never loaded by POPF).
POPF_MASK = ARITH_FLAGS | FLAG_TF | FLAG_IF | FLAG_DF | FLAG_IOPL | FLAG_NT | FLAG_AC | FLAG_ID
# LAHF/SAHF move SF ZF AF PF CF (and bit 1).
AH_FLAGS = FLAG_SF | FLAG_ZF | FLAG_AF | FLAG_PF | FLAG_CF


class Executor(SystemMixin):
    """Runs guest instructions one at a time; see the module docstring."""

    def __init__(self, cpu: CpuState, ops: EmulatorOps) -> None:
        self.cpu = cpu
        self.ops = ops
        self.instructions = 0
        self.next_rip = 0
        self.mode = 16
        self._acc = 0  # ACCESS_USER at CPL 3
        self._stack_size = 2
        self._decode_cache: dict[
            tuple[int, bytes], tuple[D.Instruction, Callable[[D.Instruction], None]]
        ] = {}
        self._handlers: dict[str, Callable[[D.Instruction], None]] = {
            name[3:]: getattr(self, name) for name in dir(self) if name.startswith("op_")
        }
        ops.paging_changed(cpu.cr0, cpu.cr3, cpu.cr4, cpu.efer)

    # ================================================================== run loop
    def step(self) -> None:
        """Execute one instruction (or deliver the exception it raises)."""
        cpu = self.cpu
        start = cpu.rip
        self._refresh_mode()
        shadow = cpu.interrupt_shadow
        cpu.interrupt_shadow = False
        try:
            insn, handler = self._fetch()
            mode = self.mode
            self.next_rip = (start + insn.length) & (
                MASK64 if mode == 64 else (0xFFFF if mode == 16 else 0xFFFFFFFF)
            )
            handler(insn)
            cpu.rip = self.next_rip
            self.instructions += 1
        except GuestFault as fault:
            cpu.rip = start
            cpu.interrupt_shadow = shadow
            self.deliver_exception(fault.vector, fault.error_code, fault.address)
        except PageFault as fault:
            cpu.rip = start
            cpu.interrupt_shadow = shadow
            self.deliver_exception(PF, fault.error_code, fault.address)
        except NonCanonicalAddress:
            cpu.rip = start
            cpu.interrupt_shadow = shadow
            self.deliver_exception(GP, 0)

    def run(self, count: int) -> int:
        """Execute up to ``count`` instructions; stop early at HLT. Returns how many ran."""
        done = 0
        cpu = self.cpu
        while done < count and not cpu.halted:
            self.step()
            done += 1
        return done

    def _refresh_mode(self) -> None:
        cpu = self.cpu
        self.mode = cpu.code_bits
        self._acc = ACCESS_USER if cpu.cpl == 3 else 0
        if self.mode == 64:
            self._stack_size = 8
        else:
            self._stack_size = 4 if (cpu.cr0 & CR0_PE and cpu.segs[SS].db and not cpu.rflags & FLAG_VM) else 2

    def _fetch(self) -> tuple[D.Instruction, Callable[[D.Instruction], None]]:
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
        key = (mode, code)
        hit = self._decode_cache.get(key)
        if hit is not None:
            insn = hit[0]
        else:
            try:
                try:
                    insn = D.decode(code, mode)
                except D.TruncatedInstruction:
                    if n == MAX_INSN:
                        raise
                    code += self.ops.read_linear(
                        (lin + n) & AMASK[8 if mode == 64 else 4], MAX_INSN - n, ACCESS_FETCH | self._acc
                    )
                    insn = D.decode(code, mode)
            except DecodeError as err:
                raise GuestFault(UD, reason=str(err)) from err
            handler = self._handlers.get(insn.handler)
            if handler is None:
                handler = self._unsupported
            hit = (insn, handler)
            if len(self._decode_cache) >= DECODE_CACHE_LIMIT:
                self._decode_cache.clear()
            self._decode_cache[(mode, code)] = hit
        if mode != 64 and rip + insn.length - 1 > cs.limit:
            raise gp(0, "instruction crosses the CS limit")
        return hit

    def _unsupported(self, insn: D.Instruction) -> None:
        raise UnsupportedInstruction(f"{insn.format(self.cpu.rip)} ({insn.raw.hex()}) is not implemented")

    def flush_decode_cache(self) -> None:
        """Forget decoded instructions (only needed if decode tables change; code writes are safe)."""
        self._decode_cache.clear()

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
            return s.linear(offset, size, ACCESS_WRITE if write else 0, seg == SS)  # raises the fault
        if s.lo <= offset and offset + size - 1 <= s.hi:
            return (s.base + offset) & 0xFFFFFFFF
        return s.linear_real(offset, size, seg == SS)  # raises #GP/#SS

    def read(self, seg: int, offset: int, size: int) -> int:
        lin = self.linear(seg, offset, size)
        return int.from_bytes(self.ops.read_linear(lin, size, self._acc), "little")

    def write(self, seg: int, offset: int, size: int, value: int) -> None:
        lin = self.linear(seg, offset, size, True)
        self.ops.write_linear(
            lin,
            (value & MASK[size] if size <= 8 else value).to_bytes(size, "little"),
            ACCESS_WRITE | self._acc,
        )

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
                return self._get_xmm(op.reg) & ((1 << (8 * op.size)) - 1)
            raise UnsupportedInstruction(f"register class {rc} operands are not implemented")
        if kind == D.OP_MEM:
            if op.size > 8:
                return int.from_bytes(self._read_block(op.seg, self.ea(op), op.size), "little")
            return self.read(op.seg, self.ea(op), op.size)
        return op.value

    # ================================================================== SSE registers
    # XMM registers live in the XSAVE area (see system.py), where KVM_GET/SET_XSAVE keep them too.
    def _get_xmm(self, reg: int) -> int:
        off = XMM_OFFSET + 16 * reg
        return int.from_bytes(self._xsave_area()[off : off + 16], "little")

    def _set_xmm(self, reg: int, value: int) -> None:
        area = self._xsave_area()
        off = XMM_OFFSET + 16 * reg
        area[off : off + 16] = value.to_bytes(16, "little")
        area[XSTATE_BV_OFFSET] |= 1 << 1  # SSE state no longer in its initial configuration

    def _sse_ready(self, insn: D.Instruction, aligned: bool = False) -> None:
        if self.cpu.cr0 & CR0_TS:
            raise GuestFault(NM, reason="SSE with CR0.TS set")
        if aligned:
            for op in insn.operands:
                if op.kind == D.OP_MEM and self.ea(op) & 15:
                    raise gp(0, "misaligned 16-byte SSE access")

    def op_movd(self, insn: D.Instruction) -> None:
        self._sse_ready(insn)
        dst, src = insn.operands
        self.put(dst, self.get(src))

    op_movq = op_movd
    op_movdqu = op_movd
    op_movups = op_movd
    op_movupd = op_movd

    def op_movdqa(self, insn: D.Instruction) -> None:
        self._sse_ready(insn, aligned=True)
        dst, src = insn.operands
        self.put(dst, self.get(src))

    op_movaps = op_movdqa
    op_movapd = op_movdqa

    def op_pxor(self, insn: D.Instruction) -> None:
        self._sse_ready(insn, aligned=True)
        dst, src = insn.operands
        self.put(dst, self.get(dst) ^ self.get(src))

    op_xorps = op_pxor
    op_xorpd = op_pxor

    def _sse_lanes(self, insn: D.Instruction, width: int, fn: Callable[[int, int, int], int]) -> None:
        """A lane-wise SSE2 integer operation on XMM registers: ``fn(a, b, mask)`` per ``width``-byte lane."""
        dst, src = insn.operands
        if dst.kind != D.OP_REG or dst.regclass != D.RC_XMM:
            raise UnsupportedInstruction(f"{insn.mnemonic} on MMX registers is not implemented")
        self._sse_ready(insn, aligned=True)
        a, b = self.get(dst), self.get(src)
        bits = 8 * width
        mask = (1 << bits) - 1
        out = 0
        for shift in range(0, 128, bits):
            out |= (fn((a >> shift) & mask, (b >> shift) & mask, mask) & mask) << shift
        self.put(dst, out)

    def op_pand(self, insn: D.Instruction) -> None:
        self._sse_lanes(insn, 16, lambda a, b, m: a & b)

    def op_pandn(self, insn: D.Instruction) -> None:
        self._sse_lanes(insn, 16, lambda a, b, m: ~a & b)

    def op_por(self, insn: D.Instruction) -> None:
        self._sse_lanes(insn, 16, lambda a, b, m: a | b)

    op_andps = op_andpd = op_pand
    op_andnps = op_andnpd = op_pandn
    op_orps = op_orpd = op_por

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
                self._set_xmm(op.reg, value & ((1 << (8 * size)) - 1))  # zero-extended to 128 bits
            else:
                raise UnsupportedInstruction(f"register class {rc} operands are not implemented")
        elif kind == D.OP_MEM:
            if op.size > 8:
                self._write_block(op.seg, self.ea(op), value.to_bytes(op.size, "little"))
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
        ss = self._stack_size
        sp = (cpu.gpr[RSP] - size) & AMASK[ss]
        self.write(SS, sp, size, value)
        self.set_reg(RSP, ss, sp)

    def pop(self, size: int) -> int:
        cpu = self.cpu
        ss = self._stack_size
        sp = cpu.gpr[RSP] & AMASK[ss]
        value = self.read(SS, sp, size)
        self.set_reg(RSP, ss, sp + size)
        return value

    def stack_peek(self, offset: int, size: int) -> int:
        sp = (self.cpu.gpr[RSP] + offset) & AMASK[self._stack_size]
        return self.read(SS, sp, size)

    # ================================================================== conditions
    def cond(self, cc: int) -> bool:
        f = self.cpu.rflags
        c = cc >> 1
        if c == 0:
            r = f & FLAG_OF
        elif c == 1:
            r = f & FLAG_CF
        elif c == 2:
            r = f & FLAG_ZF
        elif c == 3:
            r = f & (FLAG_CF | FLAG_ZF)
        elif c == 4:
            r = f & FLAG_SF
        elif c == 5:
            r = f & FLAG_PF
        elif c == 6:
            r = bool(f & FLAG_SF) != bool(f & FLAG_OF)
        else:
            r = (f & FLAG_ZF) or (bool(f & FLAG_SF) != bool(f & FLAG_OF))
        return bool(r) != bool(cc & 1)

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

    # ================================================================== ALU
    def _alu2(self, insn: D.Instruction, kind: int) -> None:
        dst, src = insn.operands
        size = dst.size
        a = self.get(dst)
        b = self.get(src) & MASK[size]
        cpu = self.cpu
        if kind == 0:
            r, f = add(a, b, 0, size)
        elif kind == 1:
            r = a | b
            f = logic(r, size)
        elif kind == 2:
            r, f = add(a, b, cpu.rflags & FLAG_CF, size)
        elif kind == 3:
            r, f = sub(a, b, cpu.rflags & FLAG_CF, size)
        elif kind == 4:
            r = a & b
            f = logic(r, size)
        elif kind == 5:
            r, f = sub(a, b, 0, size)
        elif kind == 6:
            r = a ^ b
            f = logic(r, size)
        else:
            r, f = sub(a, b, 0, size)
            cpu.rflags = (cpu.rflags & ~ARITH_FLAGS) | f
            return
        self.put(dst, r)
        cpu.rflags = (cpu.rflags & ~ARITH_FLAGS) | f

    def op_add(self, insn: D.Instruction) -> None:
        self._alu2(insn, 0)

    def op_or(self, insn: D.Instruction) -> None:
        self._alu2(insn, 1)

    def op_adc(self, insn: D.Instruction) -> None:
        self._alu2(insn, 2)

    def op_sbb(self, insn: D.Instruction) -> None:
        self._alu2(insn, 3)

    def op_and(self, insn: D.Instruction) -> None:
        self._alu2(insn, 4)

    def op_sub(self, insn: D.Instruction) -> None:
        self._alu2(insn, 5)

    def op_xor(self, insn: D.Instruction) -> None:
        self._alu2(insn, 6)

    def op_cmp(self, insn: D.Instruction) -> None:
        self._alu2(insn, 7)

    def op_test(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        r = self.get(dst) & self.get(src)
        self.set_flags(logic(r & MASK[dst.size], dst.size))

    def op_inc(self, insn: D.Instruction) -> None:
        op = insn.operands[0]
        r, f = add(self.get(op), 1, 0, op.size)
        self.put(op, r)
        self.set_flags(f, ARITH_FLAGS & ~FLAG_CF)

    def op_dec(self, insn: D.Instruction) -> None:
        op = insn.operands[0]
        r, f = sub(self.get(op), 1, 0, op.size)
        self.put(op, r)
        self.set_flags(f, ARITH_FLAGS & ~FLAG_CF)

    def op_not(self, insn: D.Instruction) -> None:
        op = insn.operands[0]
        self.put(op, ~self.get(op) & MASK[op.size])

    def op_neg(self, insn: D.Instruction) -> None:
        op = insn.operands[0]
        r, f = sub(0, self.get(op), 0, op.size)
        self.put(op, r)
        self.set_flags(f)

    def op_daa(self, insn: D.Instruction) -> None:
        cpu = self.cpu
        al = cpu.gpr[RAX] & 0xFF
        old_al, old_cf = al, cpu.rflags & FLAG_CF
        f = 0
        if (al & 0xF) > 9 or cpu.rflags & FLAG_AF:
            al = (al + 6) & 0xFF
            f |= FLAG_AF
        if old_al > 0x99 or old_cf:
            al = (al + 0x60) & 0xFF
            f |= FLAG_CF
        self.set_reg(RAX, 1, al)
        self.set_flags(f | szp(al, 1), ARITH_FLAGS & ~FLAG_OF)

    def op_das(self, insn: D.Instruction) -> None:
        cpu = self.cpu
        al = cpu.gpr[RAX] & 0xFF
        old_al, old_cf = al, cpu.rflags & FLAG_CF
        f = 0
        if (al & 0xF) > 9 or cpu.rflags & FLAG_AF:
            al = (al - 6) & 0xFF
            f |= FLAG_AF
        if old_al > 0x99 or old_cf:
            al = (al - 0x60) & 0xFF
            f |= FLAG_CF
        self.set_reg(RAX, 1, al)
        self.set_flags(f | szp(al, 1), ARITH_FLAGS & ~FLAG_OF)

    def _aaa_aas(self, sign: int) -> None:
        cpu = self.cpu
        ax = cpu.gpr[RAX] & 0xFFFF
        if (ax & 0xF) > 9 or cpu.rflags & FLAG_AF:
            al = ((ax & 0xFF) + 6 * sign) & 0xFF
            ah = ((ax >> 8) + sign) & 0xFF
            f = FLAG_AF | FLAG_CF
        else:
            al, ah, f = ax & 0xFF, ax >> 8, 0
        self.set_reg(RAX, 2, (ah << 8) | (al & 0xF))
        self.set_flags(f, FLAG_AF | FLAG_CF)

    def op_aaa(self, insn: D.Instruction) -> None:
        self._aaa_aas(1)

    def op_aas(self, insn: D.Instruction) -> None:
        self._aaa_aas(-1)

    def op_aam(self, insn: D.Instruction) -> None:
        base = insn.operands[0].value
        if base == 0:
            raise GuestFault(DE, reason="AAM with base 0")
        al = self.cpu.gpr[RAX] & 0xFF
        ah, al = divmod(al, base)
        self.set_reg(RAX, 2, (ah << 8) | al)
        self.set_flags(szp(al, 1))

    def op_aad(self, insn: D.Instruction) -> None:
        ax = self.cpu.gpr[RAX]
        al = ((ax & 0xFF) + ((ax >> 8) & 0xFF) * insn.operands[0].value) & 0xFF
        self.set_reg(RAX, 2, al)
        self.set_flags(szp(al, 1))

    def op_salc(self, insn: D.Instruction) -> None:
        self.set_reg(RAX, 1, 0xFF if self.cpu.rflags & FLAG_CF else 0)

    # --- shifts -------------------------------------------------------------------
    def _shift(self, insn: D.Instruction) -> None:
        dst, cnt = insn.operands
        size = dst.size
        count = self.get(cnt) & (0x3F if size == 8 else 0x1F)
        if count == 0:
            value = self.get(dst)  # still faults like the CPU does
            if size == 4 and dst.kind == D.OP_REG:
                self.put(dst, value)  # a 32-bit register is written (zero-extended) even so
            return
        cpu = self.cpu
        r, f = alu.shift(
            insn.handler, self.get(dst), count, size, cpu.rflags & FLAG_CF, cpu.rflags & ARITH_FLAGS
        )
        self.put(dst, r)
        cpu.rflags = (cpu.rflags & ~ARITH_FLAGS) | f

    op_rol = op_ror = op_rcl = op_rcr = op_shl = op_shr = op_sar = _shift

    def _shxd(self, insn: D.Instruction, left: bool) -> None:
        dst, src, cnt = insn.operands
        size = dst.size
        bits = size * 8
        count = self.get(cnt) & (0x3F if size == 8 else 0x1F)
        a = self.get(dst)
        if count == 0:
            if size == 4 and dst.kind == D.OP_REG:
                self.put(dst, a)  # zero-extended as for any 32-bit register write
            return
        b = self.get(src)
        mask = MASK[size]
        if left:
            wide = (a << bits) | b
            wide <<= count
            r = (wide >> bits) & mask
            cf = (wide >> (2 * bits)) & 1 if count <= bits else 0
        else:
            wide = (b << bits) | a
            cf = (wide >> (count - 1)) & 1
            r = (wide >> count) & mask
        f = szp(r, size) | (FLAG_CF if cf else 0)
        if bool((r ^ a) & SIGN[size]):
            f |= FLAG_OF
        self.put(dst, r)
        self.set_flags(f)

    def op_shld(self, insn: D.Instruction) -> None:
        self._shxd(insn, True)

    def op_shrd(self, insn: D.Instruction) -> None:
        self._shxd(insn, False)

    # --- multiply / divide ------------------------------------------------------------
    def op_mul(self, insn: D.Instruction) -> None:
        src = insn.operands[0]
        size = src.size
        gpr = self.cpu.gpr
        r = (gpr[RAX] & MASK[size]) * self.get(src)
        bits = size * 8
        lo, hi = r & MASK[size], r >> bits
        if size == 1:
            self.set_reg(RAX, 2, r)
        else:
            self.set_reg(RAX, size, lo)
            self.set_reg(RDX, size, hi)
        f = szp(lo, size)
        if hi:
            f |= FLAG_CF | FLAG_OF
        self.set_flags(f)

    def _imul_flags(self, full: int, size: int) -> int:
        lo = full & MASK[size]
        f = szp(lo, size)
        if to_signed(lo, size) != full:
            f |= FLAG_CF | FLAG_OF
        return f

    def op_imul(self, insn: D.Instruction) -> None:
        src = insn.operands[0]
        size = src.size
        full = to_signed(self.cpu.gpr[RAX] & MASK[size], size) * to_signed(self.get(src), size)
        if size == 1:
            self.set_reg(RAX, 2, full)
        else:
            self.set_reg(RAX, size, full)
            self.set_reg(RDX, size, full >> (size * 8))
        self.set_flags(self._imul_flags(full, size))

    def op_imul2(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        size = dst.size
        full = to_signed(self.get(dst), size) * to_signed(self.get(src), size)
        self.put(dst, full)
        self.set_flags(self._imul_flags(full, size))

    def op_imul3(self, insn: D.Instruction) -> None:
        dst, src, imm = insn.operands
        size = dst.size
        full = to_signed(self.get(src), size) * to_signed(imm.value & MASK[size], size)
        self.put(dst, full)
        self.set_flags(self._imul_flags(full, size))

    def _dividend(self, size: int) -> int:
        gpr = self.cpu.gpr
        if size == 1:
            return gpr[RAX] & 0xFFFF
        return ((gpr[RDX] & MASK[size]) << (size * 8)) | (gpr[RAX] & MASK[size])

    def _div_store(self, q: int, r: int, size: int) -> None:
        if size == 1:
            self.set_reg(RAX, 2, ((r & 0xFF) << 8) | (q & 0xFF))
        else:
            self.set_reg(RAX, size, q)
            self.set_reg(RDX, size, r)

    def op_div(self, insn: D.Instruction) -> None:
        src = insn.operands[0]
        size = src.size
        d = self.get(src)
        if d == 0:
            raise GuestFault(DE, reason="division by zero")
        q, r = divmod(self._dividend(size), d)
        if q > MASK[size]:
            raise GuestFault(DE, reason="quotient too large")
        self._div_store(q, r, size)

    def op_idiv(self, insn: D.Instruction) -> None:
        src = insn.operands[0]
        size = src.size
        d = to_signed(self.get(src), size)
        if d == 0:
            raise GuestFault(DE, reason="division by zero")
        n = to_signed(self._dividend(size), size * 2)
        q = abs(n) // abs(d)
        if (n < 0) != (d < 0):
            q = -q
        r = n - q * d
        if not -SIGN[size] <= q < SIGN[size]:
            raise GuestFault(DE, reason="quotient too large")
        self._div_store(q, r, size)

    # ================================================================== data movement
    def op_mov(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        self.put(dst, self.get(src))

    def op_movzx(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        self.put(dst, self.get(src))

    def op_movsx(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        self.put(dst, to_signed(self.get(src), src.size) & MASK[dst.size])

    def op_movbe(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        self.put(dst, int.from_bytes(self.get(src).to_bytes(src.size, "little"), "big"))

    def op_lea(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        self.put(dst, self.ea(src))

    def op_xchg(self, insn: D.Instruction) -> None:
        a, b = insn.operands
        va, vb = self.get(a), self.get(b)
        if a.kind == D.OP_MEM:
            self.put(a, vb)
            self.put(b, va)
        else:
            self.put(b, va)
            self.put(a, vb)

    def op_xadd(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        a, b = self.get(dst), self.get(src)
        r, f = add(a, b, 0, dst.size)
        if dst.kind == D.OP_MEM:
            self.put(dst, r)  # memory first: a faulting write leaves the register alone
            self.put(src, a)
        else:
            self.put(src, a)  # SRC <- DEST, then DEST <- sum: with one register twice, the sum wins
            self.put(dst, r)
        self.set_flags(f)

    def op_cmpxchg(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        size = dst.size
        acc = self.cpu.gpr[RAX] & MASK[size]
        cur = self.get(dst)
        _, f = sub(acc, cur, 0, size)
        if acc == cur:
            self.put(dst, self.get(src))
        else:
            if dst.kind == D.OP_MEM:
                self.put(dst, cur)  # the CPU always writes the destination
            self.set_reg(RAX, size, cur)
        self.set_flags(f)

    def op_cmpxchg8b(self, insn: D.Instruction) -> None:
        op = insn.operands[0]
        half = op.size // 2
        gpr = self.cpu.gpr
        off = self.ea(op)
        if half == 8 and off & 0xF:
            raise gp(0, "CMPXCHG16B operand not 16-byte aligned")
        cur = int.from_bytes(self.read_bytes(op.seg, off, op.size), "little")
        m = MASK[half]
        expected = ((gpr[RDX] & m) << (half * 8)) | (gpr[RAX] & m)
        if cur == expected:
            new = ((gpr[RCX] & m) << (half * 8)) | (gpr[RBX] & m)
            self.write(op.seg, off, op.size, new)
            self.set_flags(FLAG_ZF, FLAG_ZF)
        else:
            self.write(op.seg, off, op.size, cur)
            self.set_reg(RAX, half, cur & m)
            self.set_reg(RDX, half, cur >> (half * 8))
            self.set_flags(0, FLAG_ZF)

    def op_cbw(self, insn: D.Instruction) -> None:
        size = insn.opsize
        half = size // 2
        self.set_reg(RAX, size, to_signed(self.cpu.gpr[RAX] & MASK[half], half))

    def op_cwd(self, insn: D.Instruction) -> None:
        size = insn.opsize
        self.set_reg(RDX, size, MASK[size] if self.cpu.gpr[RAX] & SIGN[size] else 0)

    def op_bswap(self, insn: D.Instruction) -> None:
        op = insn.operands[0]
        if op.size == 2:
            self.put(op, 0)  # undefined; current CPUs zero the register
            return
        self.put(op, int.from_bytes(self.get(op).to_bytes(op.size, "little"), "big"))

    def op_cmovcc(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        value = self.get(src)  # the source is always read (and can fault)
        if self.cond(insn.row.cond):
            self.put(dst, value)
        elif dst.size == 4:
            self.put(dst, self.get(dst))  # 32-bit CMOVcc zero-extends even when false

    def op_setcc(self, insn: D.Instruction) -> None:
        self.put(insn.operands[0], 1 if self.cond(insn.row.cond) else 0)

    def op_lahf(self, insn: D.Instruction) -> None:
        gpr = self.cpu.gpr
        gpr[RAX] = (gpr[RAX] & ~0xFF00) | (((self.cpu.rflags & AH_FLAGS) | FLAG_FIXED1) << 8)

    def op_sahf(self, insn: D.Instruction) -> None:
        self.set_flags((self.cpu.gpr[RAX] >> 8) & 0xFF, AH_FLAGS)

    def op_xlatb(self, insn: D.Instruction) -> None:
        gpr = self.cpu.gpr
        seg = insn.seg_override if insn.seg_override >= 0 else DS
        off = (gpr[RBX] + (gpr[RAX] & 0xFF)) & AMASK[insn.addrsize]
        self.set_reg(RAX, 1, self.read(seg, off, 1))

    def op_nop(self, insn: D.Instruction) -> None:
        pass

    op_pause = op_fwait = op_nop

    # --- bit operations -------------------------------------------------------------
    def _bit_target(self, insn: D.Instruction) -> tuple[D.Operand, int, int, int]:
        """(operand, value, bit index, memory offset or -1) for BT/BTS/BTR/BTC."""
        dst, src = insn.operands
        size = dst.size
        bits = size * 8
        if dst.kind == D.OP_MEM and src.kind == D.OP_REG:
            offset = to_signed(self.get(src), src.size)
            off = (self.ea(dst) + (offset >> (bits.bit_length() - 1)) * size) & AMASK[dst.addrsize]
            return dst, self.read(dst.seg, off, size), offset & (bits - 1), off
        return dst, self.get(dst), self.get(src) & (bits - 1), -1

    def _bt_common(self, insn: D.Instruction, action: int) -> None:
        dst, value, bit, off = self._bit_target(insn)
        old = (value >> bit) & 1
        if action == 1:
            value |= 1 << bit
        elif action == 2:
            value &= ~(1 << bit)
        elif action == 3:
            value ^= 1 << bit
        if action:
            if off >= 0:
                self.write(dst.seg, off, dst.size, value)
            else:
                self.put(dst, value)
        self.set_flags(FLAG_CF if old else 0, FLAG_CF)

    def op_bt(self, insn: D.Instruction) -> None:
        self._bt_common(insn, 0)

    def op_bts(self, insn: D.Instruction) -> None:
        self._bt_common(insn, 1)

    def op_btr(self, insn: D.Instruction) -> None:
        self._bt_common(insn, 2)

    def op_btc(self, insn: D.Instruction) -> None:
        self._bt_common(insn, 3)

    def op_bsf(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        v = self.get(src)
        if v == 0:
            self.set_flags(FLAG_ZF, FLAG_ZF)  # destination unchanged (AMD documents it, Intel does it)
            return
        self.put(dst, (v & -v).bit_length() - 1)
        self.set_flags(0, FLAG_ZF)

    def op_bsr(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        v = self.get(src)
        if v == 0:
            self.set_flags(FLAG_ZF, FLAG_ZF)
            return
        self.put(dst, v.bit_length() - 1)
        self.set_flags(0, FLAG_ZF)

    def op_tzcnt(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        v = self.get(src)
        r = (v & -v).bit_length() - 1 if v else src.size * 8
        self.put(dst, r)
        self.set_flags((FLAG_CF if v == 0 else 0) | (FLAG_ZF if r == 0 else 0), FLAG_CF | FLAG_ZF)

    def op_lzcnt(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        v = self.get(src)
        r = src.size * 8 - v.bit_length()
        self.put(dst, r)
        self.set_flags((FLAG_CF if v == 0 else 0) | (FLAG_ZF if r == 0 else 0), FLAG_CF | FLAG_ZF)

    def op_popcnt(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        v = self.get(src)
        self.put(dst, v.bit_count())
        self.set_flags(FLAG_ZF if v == 0 else 0)

    # ================================================================== stack instructions
    def op_push(self, insn: D.Instruction) -> None:
        op = insn.operands[0]
        value = self.get(op)
        if op.kind == D.OP_REG and op.reg == RSP and op.regclass == D.RC_GPR:
            value = self.cpu.gpr[RSP] & MASK[op.size]  # the value before the push
        self.push(value, insn.opsize)

    def op_pop(self, insn: D.Instruction) -> None:
        op = insn.operands[0]
        size = insn.opsize
        value = self.stack_peek(0, size)
        if op.kind == D.OP_MEM:
            # POP [rSP-relative]: the address uses RSP after the increment.
            self.set_reg(RSP, self._stack_size, self.cpu.gpr[RSP] + size)
            try:
                self.put(op, value)
            except BaseException:
                self.set_reg(RSP, self._stack_size, self.cpu.gpr[RSP] - size)
                raise
            return
        self.set_reg(RSP, self._stack_size, self.cpu.gpr[RSP] + size)
        self.put(op, value)

    def op_pusha(self, insn: D.Instruction) -> None:
        size = insn.opsize
        gpr = self.cpu.gpr
        sp = gpr[RSP]
        for reg in range(8):
            self.push(sp if reg == RSP else gpr[reg], size)

    def op_popa(self, insn: D.Instruction) -> None:
        size = insn.opsize
        values = [self.stack_peek(i * size, size) for i in range(8)]
        for i, reg in enumerate((RDI, RSI, RBP, RSP, RBX, RDX, RCX, RAX)):
            if reg != RSP:
                self.set_reg(reg, size, values[i])
        self.set_reg(RSP, self._stack_size, self.cpu.gpr[RSP] + 8 * size)

    def op_enter(self, insn: D.Instruction) -> None:
        alloc = insn.operands[0].value
        level = insn.operands[1].value & 0x1F
        size = insn.opsize
        ss = self._stack_size
        gpr = self.cpu.gpr
        self.push(gpr[RBP], size)
        frame = gpr[RSP] & AMASK[ss]
        if level:
            bp = gpr[RBP]
            for _ in range(1, level):
                bp = (bp - size) & AMASK[ss]
                self.push(self.read(SS, bp, size), size)
            self.push(frame, size)
        self.set_reg(RBP, size, frame)
        new_sp = (gpr[RSP] - alloc) & AMASK[ss]
        self.read(SS, new_sp, 1)  # the CPU checks the new stack top
        self.set_reg(RSP, ss, new_sp)

    def op_leave(self, insn: D.Instruction) -> None:
        size = insn.opsize
        gpr = self.cpu.gpr
        bp = gpr[RBP] & AMASK[self._stack_size]
        value = self.read(SS, bp, size)
        self.set_reg(RSP, self._stack_size, bp + size)
        self.set_reg(RBP, size, value)

    def op_pushf(self, insn: D.Instruction) -> None:
        cpu = self.cpu
        if cpu.rflags & FLAG_VM and (cpu.rflags & FLAG_IOPL) != FLAG_IOPL:
            raise gp(0, "PUSHF in virtual-8086 mode with IOPL < 3")
        self.push(cpu.rflags & ~(FLAG_VM | FLAG_RF), insn.opsize)

    def op_popf(self, insn: D.Instruction) -> None:
        cpu = self.cpu
        size = insn.opsize
        if cpu.rflags & FLAG_VM and (cpu.rflags & FLAG_IOPL) != FLAG_IOPL:
            raise gp(0, "POPF in virtual-8086 mode with IOPL < 3")
        value = self.pop(size)
        mask = POPF_MASK
        if cpu.cr0 & CR0_PE:
            if cpu.cpl > 0:
                mask &= ~FLAG_IOPL
            if cpu.cpl > (cpu.rflags & FLAG_IOPL) >> 12:
                mask &= ~FLAG_IF
        if size == 2:
            mask &= 0xFFFF
        old_if = cpu.rflags & FLAG_IF
        cpu.rflags = ((cpu.rflags & ~mask) | (value & mask) | FLAG_FIXED1) & ~FLAG_RF
        if not old_if and cpu.rflags & FLAG_IF:
            cpu.interrupt_shadow = False

    # ================================================================== control transfer
    def op_jmp(self, insn: D.Instruction) -> None:
        self.branch(self.next_rip + insn.operands[0].value, insn.opsize)

    def op_jcc(self, insn: D.Instruction) -> None:
        if self.cond(insn.row.cond):
            self.branch(self.next_rip + insn.operands[0].value, insn.opsize)

    def op_call(self, insn: D.Instruction) -> None:
        target = self.next_rip + insn.operands[0].value
        ret = self.next_rip
        self.branch(target, insn.opsize)
        self.push(ret, insn.opsize)

    def op_call_ind(self, insn: D.Instruction) -> None:
        target = self.get(insn.operands[0])
        ret = self.next_rip
        self.branch(target, insn.opsize)
        self.push(ret, insn.opsize)

    def op_jmp_ind(self, insn: D.Instruction) -> None:
        self.branch(self.get(insn.operands[0]), insn.opsize)

    def op_ret(self, insn: D.Instruction) -> None:
        size = insn.opsize
        target = self.stack_peek(0, size)
        self.branch(target, size)
        extra = insn.operands[0].value if insn.operands else 0
        self.set_reg(RSP, self._stack_size, self.cpu.gpr[RSP] + size + extra)

    def op_loop(self, insn: D.Instruction) -> None:
        asz = insn.addrsize
        count = (self.cpu.gpr[RCX] - 1) & AMASK[asz]
        self.set_reg(RCX, asz, count)
        mn = insn.mnemonic
        take = count != 0
        if take and mn == "loope":
            take = bool(self.cpu.rflags & FLAG_ZF)
        elif take and mn == "loopne":
            take = not self.cpu.rflags & FLAG_ZF
        if take:
            self.branch(self.next_rip + insn.operands[0].value, insn.opsize)

    def op_jcxz(self, insn: D.Instruction) -> None:
        if self.cpu.gpr[RCX] & AMASK[insn.addrsize] == 0:
            self.branch(self.next_rip + insn.operands[0].value, insn.opsize)

    # ================================================================== strings
    def _string_regs(self, insn: D.Instruction) -> tuple[int, int]:
        """(address mask, signed step) for a string instruction."""
        size = insn.operands[0].size if insn.operands[0].kind == D.OP_MEM else insn.operands[1].size
        return AMASK[insn.addrsize], (-size if self.cpu.rflags & FLAG_DF else size)

    def _rep_count(self, insn: D.Instruction) -> int:
        return self.cpu.gpr[RCX] & AMASK[insn.addrsize] if insn.rep else 1

    def op_movs(self, insn: D.Instruction) -> None:
        dst, src = insn.operands
        size = dst.size
        amask, step = self._string_regs(insn)
        gpr = self.cpu.gpr
        asz = insn.addrsize
        n = self._rep_count(insn)
        while n:
            value = self.read(src.seg, gpr[RSI] & amask, size)
            self.write(ES, gpr[RDI] & amask, size, value)
            self.set_reg(RSI, asz, gpr[RSI] + step)
            self.set_reg(RDI, asz, gpr[RDI] + step)
            n -= 1
            if insn.rep:
                self.set_reg(RCX, asz, n)

    def op_stos(self, insn: D.Instruction) -> None:
        dst = insn.operands[0]
        size = dst.size
        amask, step = self._string_regs(insn)
        gpr = self.cpu.gpr
        asz = insn.addrsize
        value = gpr[RAX] & MASK[size]
        n = self._rep_count(insn)
        while n:
            self.write(ES, gpr[RDI] & amask, size, value)
            self.set_reg(RDI, asz, gpr[RDI] + step)
            n -= 1
            if insn.rep:
                self.set_reg(RCX, asz, n)

    def op_lods(self, insn: D.Instruction) -> None:
        src = insn.operands[1]
        size = src.size
        amask, step = self._string_regs(insn)
        gpr = self.cpu.gpr
        asz = insn.addrsize
        n = self._rep_count(insn)
        while n:
            self.set_reg(RAX, size, self.read(src.seg, gpr[RSI] & amask, size))
            self.set_reg(RSI, asz, gpr[RSI] + step)
            n -= 1
            if insn.rep:
                self.set_reg(RCX, asz, n)

    def _cmp_loop(self, insn: D.Instruction, with_source: bool) -> None:
        ops = insn.operands
        size = ops[0].size
        amask, step = self._string_regs(insn)
        gpr = self.cpu.gpr
        asz = insn.addrsize
        rep = insn.rep
        n = self._rep_count(insn)
        while n:
            b = self.read(ES, gpr[RDI] & amask, size)
            if with_source:
                a = self.read(ops[0].seg, gpr[RSI] & amask, size)
                self.set_reg(RSI, asz, gpr[RSI] + step)
            else:
                a = gpr[RAX] & MASK[size]
            _, f = sub(a, b, 0, size)
            self.set_flags(f)
            self.set_reg(RDI, asz, gpr[RDI] + step)
            n -= 1
            if rep:
                self.set_reg(RCX, asz, n)
                zf = bool(f & FLAG_ZF)
                if (rep == D.PREFIX_REP) != zf:
                    break

    def op_cmps(self, insn: D.Instruction) -> None:
        self._cmp_loop(insn, True)

    def op_scas(self, insn: D.Instruction) -> None:
        self._cmp_loop(insn, False)

    def op_ins(self, insn: D.Instruction) -> None:
        dst = insn.operands[0]
        size = dst.size
        self.check_io(self.cpu.gpr[RDX] & 0xFFFF, size)
        amask, step = self._string_regs(insn)
        gpr = self.cpu.gpr
        asz = insn.addrsize
        port = gpr[RDX] & 0xFFFF
        n = self._rep_count(insn)
        while n:
            off = gpr[RDI] & amask
            self.linear(ES, off, size, True)  # check before the device sees the read
            self.write(ES, off, size, self.ops.io_in(port, size))
            self.set_reg(RDI, asz, gpr[RDI] + step)
            n -= 1
            if insn.rep:
                self.set_reg(RCX, asz, n)

    def op_outs(self, insn: D.Instruction) -> None:
        src = insn.operands[1]
        size = src.size
        self.check_io(self.cpu.gpr[RDX] & 0xFFFF, size)
        amask, step = self._string_regs(insn)
        gpr = self.cpu.gpr
        asz = insn.addrsize
        port = gpr[RDX] & 0xFFFF
        n = self._rep_count(insn)
        while n:
            self.ops.io_out(port, size, self.read(src.seg, gpr[RSI] & amask, size))
            self.set_reg(RSI, asz, gpr[RSI] + step)
            n -= 1
            if insn.rep:
                self.set_reg(RCX, asz, n)

    # ================================================================== I/O
    def op_in(self, insn: D.Instruction) -> None:
        dst, port_op = insn.operands
        port = self.get(port_op) & 0xFFFF
        self.check_io(port, dst.size)
        self.put(dst, self.ops.io_in(port, dst.size) & MASK[dst.size])

    def op_out(self, insn: D.Instruction) -> None:
        port_op, src = insn.operands
        port = self.get(port_op) & 0xFFFF
        self.check_io(port, src.size)
        self.ops.io_out(port, src.size, self.get(src))

    # ================================================================== flags
    def op_clc(self, insn: D.Instruction) -> None:
        self.cpu.rflags &= ~FLAG_CF

    def op_stc(self, insn: D.Instruction) -> None:
        self.cpu.rflags |= FLAG_CF

    def op_cmc(self, insn: D.Instruction) -> None:
        self.cpu.rflags ^= FLAG_CF

    def op_cld(self, insn: D.Instruction) -> None:
        self.cpu.rflags &= ~FLAG_DF

    def op_std(self, insn: D.Instruction) -> None:
        self.cpu.rflags |= FLAG_DF

    def op_cli(self, insn: D.Instruction) -> None:
        self.check_iopl()
        self.cpu.rflags &= ~FLAG_IF

    def op_sti(self, insn: D.Instruction) -> None:
        self.check_iopl()
        cpu = self.cpu
        if not cpu.rflags & FLAG_IF:
            cpu.interrupt_shadow = True  # interrupts stay blocked for one more instruction
        cpu.rflags |= FLAG_IF

    def op_ud2(self, insn: D.Instruction) -> None:
        raise GuestFault(UD, reason="UD2")

    op_ud0 = op_ud1 = op_ud2


def _signed(v: int, mask: int) -> int:
    return v - (mask + 1) if v > mask >> 1 else v


def _lane_op(width: int, fn: Callable[[int, int, int], int]) -> Callable[[Executor, D.Instruction], None]:
    def handler(self: Executor, insn: D.Instruction) -> None:
        self._sse_lanes(insn, width, fn)

    return handler


for _width, _suffix in ((1, "b"), (2, "w"), (4, "d"), (8, "q")):
    setattr(Executor, f"op_padd{_suffix}", _lane_op(_width, lambda a, b, m: a + b))
    setattr(Executor, f"op_psub{_suffix}", _lane_op(_width, lambda a, b, m: a - b))
    if _width < 8:
        setattr(Executor, f"op_pcmpeq{_suffix}", _lane_op(_width, lambda a, b, m: m if a == b else 0))
        setattr(
            Executor,
            f"op_pcmpgt{_suffix}",
            _lane_op(_width, lambda a, b, m: m if _signed(a, m) > _signed(b, m) else 0),
        )
