"""A readable dump of a vCPU's registers, for crashes and ``--trace``."""

from __future__ import annotations

from typing import Any

from kvmlite.x86 import IOPL_SHIFT, Cr0, Efer, Rflags

#: The flags a dump names, as plain (mask, name) pairs: --trace formats one per exit.
_NAMED = (Rflags.CF, Rflags.PF, Rflags.AF, Rflags.ZF, Rflags.SF, Rflags.TF, Rflags.IF, Rflags.DF, Rflags.OF)
_FLAGS = tuple((int(flag), str(flag.name)) for flag in _NAMED)
_IOPL = int(Rflags.IOPL)


def format_flags(rflags: int) -> str:
    names = [name for mask, name in _FLAGS if rflags & mask]
    iopl = (rflags & _IOPL) >> IOPL_SHIFT
    if iopl:
        names.append(f"IOPL={iopl}")
    return " ".join(names) or "-"


def cpu_mode(sregs: Any) -> str:
    if not sregs.cr0 & Cr0.PE:
        return "real mode"
    if sregs.efer & Efer.LMA:
        return "64-bit long mode" if sregs.cs.l else "compatibility mode"
    return "32-bit protected mode" if sregs.cs.db else "16-bit protected mode"


def format_state(regs: Any, sregs: Any) -> str:
    """Registers, segments, control registers and descriptor tables of a ``kvm_regs``/``kvm_sregs`` pair."""
    r = regs
    lines = [
        f"RAX={r.rax:016x} RBX={r.rbx:016x} RCX={r.rcx:016x} RDX={r.rdx:016x}",
        f"RSI={r.rsi:016x} RDI={r.rdi:016x} RBP={r.rbp:016x} RSP={r.rsp:016x}",
        f"R8 ={r.r8:016x} R9 ={r.r9:016x} R10={r.r10:016x} R11={r.r11:016x}",
        f"R12={r.r12:016x} R13={r.r13:016x} R14={r.r14:016x} R15={r.r15:016x}",
        f"RIP={r.rip:016x} RFLAGS={r.rflags:08x} [{format_flags(r.rflags)}]  CPL={sregs.cs.dpl}  "
        f"{cpu_mode(sregs)}",
    ]
    for name in ("cs", "ss", "ds", "es", "fs", "gs", "tr", "ldt"):
        s = getattr(sregs, name)
        lines.append(
            f"{name.upper():<3}={s.selector:04x} base={s.base:016x} limit={s.limit:08x} type={s.type:x} "
            f"p={s.present} dpl={s.dpl} db={s.db} s={s.s} l={s.l} g={s.g}"
        )
    lines.append(
        f"GDT={sregs.gdt.base:016x}/{sregs.gdt.limit:04x} IDT={sregs.idt.base:016x}/{sregs.idt.limit:04x}"
    )
    lines.append(
        f"CR0={sregs.cr0:08x} CR2={sregs.cr2:016x} CR3={sregs.cr3:016x} CR4={sregs.cr4:08x} "
        f"CR8={sregs.cr8:x} EFER={sregs.efer:x}"
    )
    return "\n".join(lines)
