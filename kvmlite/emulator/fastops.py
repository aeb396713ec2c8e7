"""Lazy flags and the specialised handlers that translation blocks run (:mod:`.tb`).

**Lazy flags.**  Inside a translation block, arithmetic does not compute
RFLAGS: it records ``(kind, a, b, result, size)`` in ``Executor.lazy`` and the
six arithmetic flags are derived only when something reads them
(:func:`lazy_flags`): a conditional jump, a handler that is not lazy-aware
(the block runs :meth:`Executor.sync_flags` before it), an exception, an
interrupt, or the end of :meth:`Executor.run_blocks`.  While ``lazy`` is not
None the arithmetic bits of ``cpu.rflags`` are stale; outside ``run_blocks``
``lazy`` is always None, so everything else in the emulator (``step()``, the
handlers, the backends) sees plain RFLAGS.  The flags come out bit for bit as
:mod:`.alu` computes them eagerly (the differential tests check both paths).

INC and DEC keep CF: their record's ``b`` is the record CF comes from (the
one before them, never another INC/DEC, so the chain is one deep) or None for
"CF is in ``cpu.rflags``".

**Specialised handlers.**  :func:`specialise` looks at a decoded instruction's
operand forms once, when its block is translated, and returns a closure with
the register numbers, immediate, sizes and an effective-address function
bound in (``mov r, r``; ``add r, imm``; ``cmp r, [base + disp]``; ...), with
the handler's signature ``fn(ex, insn)``, or None for forms left to the
generic handler.  Each closure keeps the generic handler's order of memory
access before register write, so a fault leaves the registers as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvmlite.emulator import instruction as D
from kvmlite.emulator.alu import MASK, PARITY, SIGN
from kvmlite.emulator.cpu import (
    AMASK,
    FLAG_AF,
    FLAG_CF,
    FLAG_OF,
    FLAG_PF,
    FLAG_SF,
    FLAG_ZF,
    RSP,
    SS,
)
from kvmlite.emulator.faults import gp

if TYPE_CHECKING:
    from kvmlite.emulator.executor import Executor

FastHandler = Callable[["Executor", D.Instruction], None]
EaFn = Callable[["Executor"], int]

CANONICAL_BIAS = 1 << 47
CANONICAL_LIMIT = 1 << 48

# Kinds of lazy flag records.
K_ADD, K_SUB, K_LOGIC, K_INC, K_DEC, K_IMUL = range(6)
MASK64 = MASK[8]


def lazy_flags(lz: tuple, rflags: int) -> int:
    """The six arithmetic flags a lazy record stands for (``rflags`` supplies CF for INC/DEC)."""
    kind, a, b, r, size = lz
    sign = SIGN[size]
    f = PARITY[r & 0xFF]
    if r == 0:
        f |= FLAG_ZF
    if r & sign:
        f |= FLAG_SF
    if kind == K_LOGIC:
        return f
    if kind == K_ADD:
        f |= (a ^ b ^ r) & FLAG_AF
        if r < a:
            f |= FLAG_CF
        if (a ^ r) & (b ^ r) & sign:
            f |= FLAG_OF
        return f
    if kind == K_SUB:
        f |= (a ^ b ^ r) & FLAG_AF
        if a < b:
            f |= FLAG_CF
        if (a ^ b) & (a ^ r) & sign:
            f |= FLAG_OF
        return f
    if kind == K_IMUL:  # a is the full signed product, r its low part
        signed = r - (sign << 1) if r & sign else r
        return f | (FLAG_CF | FLAG_OF if signed != a else 0)
    # INC / DEC: b is where CF comes from
    f |= (a ^ 1 ^ r) & FLAG_AF
    if kind == K_INC:
        if r == sign:
            f |= FLAG_OF
    elif a == sign:
        f |= FLAG_OF
    cf = rflags if b is None else lazy_flags(b, rflags)
    return f | (cf & FLAG_CF)


def cond_of(f: int, cc: int) -> bool:
    """Condition code ``cc`` (Jcc/SETcc/CMOVcc's low nibble) evaluated on flags ``f``."""
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


# ---------------------------------------------------------------------------- operand forms
def _is_gpr(op: D.Operand) -> bool:
    return op.kind == D.OP_REG and op.regclass == D.RC_GPR


def make_ea(op: D.Operand, g: list[int]) -> EaFn:
    """A function of the executor giving a memory operand's effective address (segment offset)."""
    base, index, scale, disp, amask = op.base, op.index, op.scale, op.disp, AMASK[op.addrsize]
    if base == D.BASE_RIP:
        return lambda ex: (ex.next_rip + disp) & amask
    if index < 0:
        if base < 0:
            const = disp & amask
            return lambda ex: const
        if disp == 0:
            return lambda ex: g[base] & amask
        return lambda ex: (g[base] + disp) & amask
    if base < 0:
        return lambda ex: (g[index] * scale + disp) & amask
    return lambda ex: (g[base] + g[index] * scale + disp) & amask


def _full(size: int) -> bool:
    """A register write of this size replaces the whole register (32-bit writes zero-extend)."""
    return size == 4 or size == 8


# ---------------------------------------------------------------------------- moves
def _mov(insn: D.Instruction, g: list[int]) -> FastHandler | None:
    dst, src = insn.operands
    size = dst.size
    m = MASK[size] if size <= 8 else 0
    if _is_gpr(dst) and _full(size):
        d = dst.reg
        if _is_gpr(src):
            s = src.reg

            def mov_rr(ex: Executor, insn: D.Instruction) -> None:
                g[d] = g[s] & m

            return mov_rr
        if src.kind == D.OP_IMM:
            v = src.value & m

            def mov_ri(ex: Executor, insn: D.Instruction) -> None:
                g[d] = v

            return mov_ri
        if src.kind == D.OP_MEM:
            ea, seg = make_ea(src, g), src.seg

            def mov_rm(ex: Executor, insn: D.Instruction) -> None:
                g[d] = ex.read(seg, ea(ex), size)

            return mov_rm
        return None
    if dst.kind == D.OP_MEM and size <= 8:
        ea, seg = make_ea(dst, g), dst.seg
        if _is_gpr(src):
            s = src.reg

            def mov_mr(ex: Executor, insn: D.Instruction) -> None:
                ex.write(seg, ea(ex), size, g[s])

            return mov_mr
        if src.kind == D.OP_IMM:
            v = src.value & m

            def mov_mi(ex: Executor, insn: D.Instruction) -> None:
                ex.write(seg, ea(ex), size, v)

            return mov_mi
    return None


def _lea(insn: D.Instruction, g: list[int]) -> FastHandler | None:
    dst, src = insn.operands
    if not (_is_gpr(dst) and _full(dst.size)):
        return None
    d, m, ea = dst.reg, MASK[dst.size], make_ea(src, g)

    def lea_r(ex: Executor, insn: D.Instruction) -> None:
        g[d] = ea(ex) & m

    return lea_r


def _push(insn: D.Instruction, stack_size: int, g: list[int]) -> FastHandler | None:
    op = insn.operands[0]
    size = insn.opsize
    if not (_is_gpr(op) and _full(stack_size) and op.size == size):
        return None
    r, smask, m = op.reg, AMASK[stack_size], MASK[size]

    def push_r(ex: Executor, insn: D.Instruction) -> None:
        sp = (g[RSP] - size) & smask
        ex.write(SS, sp, size, g[r] & m)
        g[RSP] = sp

    return push_r


def _pop(insn: D.Instruction, stack_size: int, g: list[int]) -> FastHandler | None:
    op = insn.operands[0]
    size = insn.opsize
    if not (_is_gpr(op) and _full(stack_size) and _full(size) and op.size == size):
        return None
    r, smask = op.reg, AMASK[stack_size]

    def pop_r(ex: Executor, insn: D.Instruction) -> None:
        sp = g[RSP] & smask
        value = ex.read(SS, sp, size)
        g[RSP] = (sp + size) & smask
        g[r] = value

    return pop_r


def _extend(insn: D.Instruction, g: list[int], signed: bool) -> FastHandler | None:
    """MOVZX / MOVSX / MOVSXD into a 32- or 64-bit register from a register or memory."""
    dst, src = insn.operands
    size, ssize = dst.size, src.size
    if not (_is_gpr(dst) and _full(size)) or ssize > 4:
        return None
    m, sm, sign, wrap = MASK[size], MASK[ssize], SIGN[ssize], 1 << (8 * ssize)
    d = dst.reg
    if _is_gpr(src):
        s = src.reg

        def ext_r(ex: Executor, insn: D.Instruction) -> None:
            v = g[s] & sm
            g[d] = ((v - wrap) & m) if signed and v & sign else v

        return ext_r
    if src.kind != D.OP_MEM:
        return None
    ea, seg = make_ea(src, g), src.seg

    def ext_m(ex: Executor, insn: D.Instruction) -> None:
        v = ex.read(seg, ea(ex), ssize)
        g[d] = ((v - wrap) & m) if signed and v & sign else v

    return ext_m


def _setcc(insn: D.Instruction, g: list[int]) -> FastHandler | None:
    op = insn.operands[0]
    if not _is_gpr(op):
        return None
    d, cc = op.reg, insn.row.cond

    def setcc_r(ex: Executor, insn: D.Instruction) -> None:
        g[d] = (g[d] & ~0xFF) | (1 if cond_of(ex.flags(), cc) else 0)

    return setcc_r


def _call(insn: D.Instruction, mode: int, stack_size: int, g: list[int]) -> FastHandler | None:
    """CALL rel32 in 64-bit mode: push the return address, then go (a faulting push goes nowhere)."""
    if mode != 64 or stack_size != 8 or insn.opsize != 8:
        return None
    disp = insn.operands[0].value

    def call_rel(ex: Executor, insn: D.Instruction) -> None:
        ret = ex.next_rip
        t = (ret + disp) & MASK64
        if (t + CANONICAL_BIAS) & MASK64 >= CANONICAL_LIMIT:
            raise gp(0, f"branch to non-canonical {t:#x}")
        sp = (g[RSP] - 8) & MASK64
        ex.write(SS, sp, 8, ret)
        g[RSP] = sp
        ex.next_rip = t

    return call_rel


def _ret(insn: D.Instruction, mode: int, stack_size: int, g: list[int]) -> FastHandler | None:
    if mode != 64 or stack_size != 8 or insn.opsize != 8 or insn.operands:
        return None

    def ret_near(ex: Executor, insn: D.Instruction) -> None:
        sp = g[RSP]
        t = ex.read(SS, sp, 8)
        if (t + CANONICAL_BIAS) & MASK64 >= CANONICAL_LIMIT:
            raise gp(0, f"branch to non-canonical {t:#x}")
        g[RSP] = (sp + 8) & MASK64
        ex.next_rip = t

    return ret_near


# ---------------------------------------------------------------------------- arithmetic
#: handler name -> (lazy kind, Python expression of a and b, writes the destination)
_ALU: dict[str, tuple[int, str, bool]] = {
    "add": (K_ADD, "a + b", True),
    "sub": (K_SUB, "a - b", True),
    "cmp": (K_SUB, "a - b", False),
    "and": (K_LOGIC, "a & b", True),
    "or": (K_LOGIC, "a | b", True),
    "xor": (K_LOGIC, "a ^ b", True),
    "test": (K_LOGIC, "a & b", False),
}

# One closure factory per (operation, operand form), made from one template at import: the
# operation and the operand accesses are inlined, so a specialised ALU instruction is one call with
# no dispatch inside.  Forms: rr register/register, ri register/immediate, rm register/memory,
# mr memory/register, mi memory/immediate (the immediate is bound as ``b``).  Memory is read before
# any register is written, and written before the flags are recorded.
_ALU_TEMPLATE = """
def make(g, d, s, m, size, kind, b, ea, seg):
    def alu_{form}(ex, insn):
        {load_b}
        {load_a}
        r = ({expr}) & m
        {store}
        ex.lazy = (kind, a, b, r, size)
    return alu_{form}
"""
#: form -> (how b is loaded, how a is loaded, whether the destination is memory)
_ALU_FORMS = {
    "rr": ("b = g[s] & m", "a = g[d] & m", False),
    "ri": ("pass", "a = g[d] & m", False),
    "rm": ("b = ex.read(seg, ea(ex), size)", "a = g[d] & m", False),
    "mr": ("b = g[s] & m", "off = ea(ex); a = ex.read(seg, off, size)", True),
    "mi": ("pass", "off = ea(ex); a = ex.read(seg, off, size)", True),
}


def _alu_factories() -> dict[tuple[str, str], Callable[..., FastHandler]]:
    out: dict[tuple[str, str], Callable[..., FastHandler]] = {}
    for name, (_kind, expr, writes) in _ALU.items():
        for form, (load_b, load_a, to_memory) in _ALU_FORMS.items():
            store = ("ex.write(seg, off, size, r)" if to_memory else "g[d] = r") if writes else "pass"
            code = _ALU_TEMPLATE.format(form=form, load_b=load_b, load_a=load_a, expr=expr, store=store)
            namespace: dict[str, object] = {}
            exec(compile(code, f"<fastops {name} {form}>", "exec"), namespace)
            out[(name, form)] = namespace["make"]  # type: ignore[assignment]
    return out


_ALU_MAKERS = _alu_factories()


def _alu(insn: D.Instruction, name: str, g: list[int]) -> FastHandler | None:
    kind, _expr, writes = _ALU[name]
    dst, src = insn.operands
    size = dst.size
    if size > 8:
        return None
    m = MASK[size]
    d = s = 0
    b = 0
    ea: EaFn | None = None
    seg = 0
    if _is_gpr(dst) and (_full(size) or not writes):
        d = dst.reg
        if src.kind == D.OP_IMM:
            form, b = "ri", src.value & m
        elif _is_gpr(src):
            form, s = "rr", src.reg
            if s == d and name in ("xor", "sub"):
                return _zero(g, d, kind, size)
        elif src.kind == D.OP_MEM:
            form, ea, seg = "rm", make_ea(src, g), src.seg
        else:
            return None
    elif dst.kind == D.OP_MEM:
        ea, seg = make_ea(dst, g), dst.seg
        if src.kind == D.OP_IMM:
            form, b = "mi", src.value & m
        elif _is_gpr(src):
            form, s = "mr", src.reg
        else:
            return None
    else:
        return None
    return _ALU_MAKERS[(name, form)](g, d, s, m, size, kind, b, ea, seg)


def _zero(g: list[int], d: int, kind: int, size: int) -> FastHandler:
    """``xor r, r`` / ``sub r, r``: zero, with the flags of a zero result."""
    record = (kind, 0, 0, 0, size)

    def zero_r(ex: Executor, insn: D.Instruction) -> None:
        g[d] = 0
        ex.lazy = record

    return zero_r


def _incdec(insn: D.Instruction, kind: int, g: list[int]) -> FastHandler | None:
    op = insn.operands[0]
    size = op.size
    if not (_is_gpr(op) and _full(size)):
        return None
    d, m, step = op.reg, MASK[size], 1 if kind == K_INC else -1

    def incdec_r(ex: Executor, insn: D.Instruction) -> None:
        a = g[d] & m
        r = g[d] = (a + step) & m
        lz = ex.lazy
        if lz is not None and (lz[0] == K_INC or lz[0] == K_DEC):
            lz = lz[2]
        ex.lazy = (kind, a, lz, r, size)

    return incdec_r


def _imul(insn: D.Instruction, g: list[int]) -> FastHandler | None:
    ops = insn.operands
    dst = ops[0]
    size = dst.size
    if not (_is_gpr(dst) and _full(size)):
        return None
    d, m, sign, wrap = dst.reg, MASK[size], SIGN[size], 1 << (8 * size)
    src = ops[1]
    if len(ops) == 3:
        imm = ops[2].value & m
        b_const = imm - wrap if imm & sign else imm
    elif src.kind == D.OP_IMM:
        return None
    else:
        b_const = None
    if _is_gpr(src):
        s = src.reg

        def get_a(ex: Executor) -> int:
            return g[s] & m

    elif src.kind == D.OP_MEM:
        sea, sseg = make_ea(src, g), src.seg

        def get_a(ex: Executor) -> int:
            return ex.read(sseg, sea(ex), size)

    else:
        return None

    if b_const is not None:

        def imul3_r(ex: Executor, insn: D.Instruction) -> None:
            a = get_a(ex)
            full = (a - wrap if a & sign else a) * b_const
            r = g[d] = full & m
            ex.lazy = (K_IMUL, full, 0, r, size)

        return imul3_r
    if _is_gpr(src):

        def imul2_rr(ex: Executor, insn: D.Instruction) -> None:
            a = g[d] & m
            b = g[s] & m
            full = (a - wrap if a & sign else a) * (b - wrap if b & sign else b)
            r = g[d] = full & m
            ex.lazy = (K_IMUL, full, 0, r, size)

        return imul2_rr

    def imul2_r(ex: Executor, insn: D.Instruction) -> None:
        b = get_a(ex)
        a = g[d] & m
        full = (a - wrap if a & sign else a) * (b - wrap if b & sign else b)
        r = g[d] = full & m
        ex.lazy = (K_IMUL, full, 0, r, size)

    return imul2_r


# ---------------------------------------------------------------------------- branches
def _jcc(insn: D.Instruction, mode: int) -> FastHandler | None:
    cc = insn.row.cond
    disp = insn.operands[0].value
    opsize = insn.opsize
    negate = bool(cc & 1)
    if mode != 64:
        # 16/32-bit: the generic branch applies the operand-size wrap and the CS limit
        def jcc_any(ex: Executor, insn: D.Instruction) -> None:
            if cond_of(ex.flags(), cc):
                ex.branch(ex.next_rip + disp, opsize)

        return jcc_any
    c = cc >> 1
    if c == 2:  # ZF: the result was zero, whatever the operation

        def jcc_z(ex: Executor, insn: D.Instruction) -> None:
            lz = ex.lazy
            if ((lz[3] == 0) if lz is not None else bool(ex.cpu.rflags & FLAG_ZF)) != negate:
                t = (ex.next_rip + disp) & MASK64
                if (t + CANONICAL_BIAS) & MASK64 >= CANONICAL_LIMIT:
                    raise gp(0, f"branch to non-canonical {t:#x}")
                ex.next_rip = t

        return jcc_z
    if c == 4:  # SF: the result's sign

        def jcc_s(ex: Executor, insn: D.Instruction) -> None:
            lz = ex.lazy
            s = bool(lz[3] & SIGN[lz[4]]) if lz is not None else bool(ex.cpu.rflags & FLAG_SF)
            if s != negate:
                ex.branch(ex.next_rip + disp, 8)

        return jcc_s

    def jcc_64(ex: Executor, insn: D.Instruction) -> None:
        if cond_of(ex.flags(), cc):
            ex.branch(ex.next_rip + disp, 8)

    return jcc_64


def _jmp(insn: D.Instruction) -> FastHandler:
    disp, opsize = insn.operands[0].value, insn.opsize

    def jmp_rel(ex: Executor, insn: D.Instruction) -> None:
        ex.branch(ex.next_rip + disp, opsize)

    return jmp_rel


def specialise(insn: D.Instruction, mode: int, stack_size: int, g: list[int]) -> FastHandler | None:
    """A closure for ``insn``'s operand form, or None to run the generic handler."""
    row = insn.row
    if row.checked or insn.lock or insn.rep:
        return None
    name = row.name
    if name in _ALU:
        return _alu(insn, name, g)
    if name == "mov":
        return _mov(insn, g)
    if name == "jcc":
        return _jcc(insn, mode)
    if name == "jmp" and insn.operands[0].kind == D.OP_REL:
        return _jmp(insn)
    if name == "inc":
        return _incdec(insn, K_INC, g)
    if name == "dec":
        return _incdec(insn, K_DEC, g)
    if name in ("imul2", "imul3"):
        return _imul(insn, g)
    if name == "lea":
        return _lea(insn, g)
    if name == "movzx":
        return _extend(insn, g, False)
    if name == "movsx":
        return _extend(insn, g, True)
    if name == "setcc":
        return _setcc(insn, g)
    if name == "call" and insn.operands[0].kind == D.OP_REL:
        return _call(insn, mode, stack_size, g)
    if name == "ret":
        return _ret(insn, mode, stack_size, g)
    if name == "push":
        return _push(insn, stack_size, g)
    if name == "pop":
        return _pop(insn, stack_size, g)
    return None
