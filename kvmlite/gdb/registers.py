"""The register files gdb sees, and the target description (``target.xml``) that tells it so.

Two layouts: ``i386:x86-64`` (a guest in long mode) and ``i386`` (a guest in
protected or real mode).  Each is a list of :class:`Reg` in gdb's register
numbering: the general registers, RIP/EIP, EFLAGS and the segment selectors,
the x87 stack and control registers, the SSE registers (the features gdb's
i386 back end requires by name: ``org.gnu.gdb.i386.core`` and
``org.gnu.gdb.i386.sse``), then the segment bases and the control registers
in a kvmlite feature of their own, so ``info registers cr3`` and ``p $cr0``
work as under QEMU.

Values travel as a ``dict`` of name to integer (:func:`from_kvm` builds it
from KVM's ``kvm_regs``/``kvm_sregs``/``kvm_fpu``, :func:`to_kvm` writes one
back); a register the target cannot provide is sent as ``xx..`` (unavailable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from kvmlite.x86 import Msr, Rflags

CORE = "org.gnu.gdb.i386.core"
SSE = "org.gnu.gdb.i386.sse"
SYSTEM = "org.kvmlite.gdb.x86.system"

ARCH_64 = "i386:x86-64"
ARCH_32 = "i386"


@dataclass(frozen=True, slots=True)
class Reg:
    name: str
    bits: int
    type: str
    feature: str
    group: str = ""

    @property
    def size(self) -> int:
        return self.bits // 8


_GPR64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", *(f"r{i}" for i in range(8, 16)))
#: gdb's i386 order (the hardware's register numbers), not the x86-64 one.
_GPR32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
_SEGS = ("cs", "ss", "ds", "es", "fs", "gs")
_X87_CONTROL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
_PTR_TYPES = {
    "rip": "code_ptr",
    "eip": "code_ptr",
    "rsp": "data_ptr",
    "rbp": "data_ptr",
    "esp": "data_ptr",
    "ebp": "data_ptr",
}


def _layout(bits: int) -> tuple[Reg, ...]:
    wide = bits == 64
    gprs = _GPR64 if wide else _GPR32
    regs = [Reg(n, bits, _PTR_TYPES.get(n, "int64" if wide else "int32"), CORE) for n in gprs]
    regs.append(Reg("rip" if wide else "eip", bits, "code_ptr", CORE))
    regs.append(Reg("eflags", 32, "i386_eflags", CORE))
    regs += [Reg(s, 32, "int32", CORE) for s in _SEGS]
    regs += [Reg(f"st{i}", 80, "i387_ext", CORE) for i in range(8)]
    regs += [Reg(n, 32, "int", CORE, "float") for n in _X87_CONTROL]
    regs += [Reg(f"xmm{i}", 128, "vec128", SSE) for i in range(16 if wide else 8)]
    regs.append(Reg("mxcsr", 32, "i386_mxcsr", SSE, "vector"))
    regs += [Reg(n, bits, "int", SYSTEM, "system") for n in ("fs_base", "gs_base")]
    if wide:
        regs.append(Reg("k_gs_base", 64, "int", SYSTEM, "system"))
    regs += [Reg(n, bits, "int", SYSTEM, "system") for n in ("cr0", "cr2", "cr3", "cr4")]
    if wide:
        regs.append(Reg("cr8", 64, "int", SYSTEM, "system"))
    regs.append(Reg("efer", 64, "int", SYSTEM, "system"))
    return tuple(regs)


LAYOUTS: dict[str, tuple[Reg, ...]] = {ARCH_64: _layout(64), ARCH_32: _layout(32)}

#: target.xml's EFLAGS fields: every one-bit RFLAGS flag (IOPL, two bits, has none), bit 1 unnamed.
_EFLAGS_BITS = tuple(
    (flag.bit_length() - 1, "" if flag is Rflags.FIXED1 else str(flag.name)) for flag in Rflags
)
_MXCSR_BITS = (
    (0, "IE"),
    (1, "DE"),
    (2, "ZE"),
    (3, "OE"),
    (4, "UE"),
    (5, "PE"),
    (6, "DAZ"),
    (7, "IM"),
    (8, "DM"),
    (9, "ZM"),
    (10, "OM"),
    (11, "UM"),
    (12, "PM"),
    (15, "FZ"),
)
_VEC128_FIELDS = (
    ("v8_bfloat16", "bfloat16", 8),
    ("v8_half", "ieee_half", 8),
    ("v4_float", "ieee_single", 4),
    ("v2_double", "ieee_double", 2),
    ("v16_int8", "int8", 16),
    ("v8_int16", "int16", 8),
    ("v4_int32", "int32", 4),
    ("v2_int64", "int64", 2),
)


def _core_types() -> list[str]:
    lines = ['<flags id="i386_eflags" size="4">']
    lines += [f'  <field name="{name}" start="{bit}" end="{bit}"/>' for bit, name in _EFLAGS_BITS]
    return [*lines, "</flags>"]


def _sse_types() -> list[str]:
    """Types are local to a feature: the SSE feature defines its own."""
    lines = ['<flags id="i386_mxcsr" size="4">']
    lines += [f'  <field name="{name}" start="{bit}" end="{bit}"/>' for bit, name in _MXCSR_BITS]
    lines.append("</flags>")
    for name, elem, count in _VEC128_FIELDS:
        lines.append(f'<vector id="{name}" type="{elem}" count="{count}"/>')
    lines.append('<union id="vec128">')
    lines += [f'  <field name="{name}" type="{name}"/>' for name, _, _ in _VEC128_FIELDS]
    lines += ['  <field name="uint128" type="uint128"/>', "</union>"]
    return lines


def target_xml(arch: str) -> str:
    """The target description gdb fetches with ``qXfer:features:read:target.xml``."""
    layout = LAYOUTS[arch]
    out = [
        '<?xml version="1.0"?>',
        '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
        "<target>",
        f"<architecture>{xml_escape(arch)}</architecture>",
    ]
    feature = ""
    for regnum, reg in enumerate(layout):
        if reg.feature != feature:
            if feature:
                out.append("</feature>")
            feature = reg.feature
            out.append(f'<feature name="{feature}">')
            out += _core_types() if feature == CORE else _sse_types() if feature == SSE else []
        group = f' group="{reg.group}"' if reg.group else ""
        out.append(
            f'<reg name="{reg.name}" bitsize="{reg.bits}" type="{reg.type}" regnum="{regnum}"{group}/>'
        )
    out += ["</feature>", "</target>"]
    return "\n".join(out) + "\n"


def encode(layout: tuple[Reg, ...], values: dict[str, int]) -> bytes:
    """The ``g`` reply: every register little-endian in hex, ``xx`` for the ones ``values`` lacks."""
    parts = []
    for reg in layout:
        value = values.get(reg.name)
        if value is None:
            parts.append(b"xx" * reg.size)
        else:
            parts.append((value & ((1 << reg.bits) - 1)).to_bytes(reg.size, "little").hex().encode())
    return b"".join(parts)


def decode(layout: tuple[Reg, ...], data: bytes) -> dict[str, int]:
    """A ``G`` packet's hex back into values (registers gdb sent as ``xx`` are left out)."""
    values: dict[str, int] = {}
    pos = 0
    for reg in layout:
        chunk = data[pos : pos + 2 * reg.size]
        if len(chunk) < 2 * reg.size:
            break
        pos += 2 * reg.size
        if b"x" not in chunk:
            values[reg.name] = int.from_bytes(bytes.fromhex(chunk.decode()), "little")
    return values


# --- KVM structures <-> register values -------------------------------------------------------------
_KVM_GPR64 = {n: n for n in _GPR64}
_KVM_GPR32 = {
    "eax": "rax",
    "ecx": "rcx",
    "edx": "rdx",
    "ebx": "rbx",
    "esp": "rsp",
    "ebp": "rbp",
    "esi": "rsi",
    "edi": "rdi",
    "eip": "rip",
}


def from_kvm(
    arch: str, regs: Any, sregs: Any, fpu: Any = None, msrs: dict[int, int] | None = None
) -> dict[str, int]:
    """Register values for ``arch`` from KVM's structures (``fpu`` and ``msrs`` optional)."""
    out: dict[str, int] = {}
    if arch == ARCH_64:
        for name in _GPR64:
            out[name] = getattr(regs, name)
        out["rip"] = regs.rip
    else:
        for name, kvm_name in _KVM_GPR32.items():
            out[name] = getattr(regs, kvm_name) & 0xFFFF_FFFF
    out["eflags"] = regs.rflags & 0xFFFF_FFFF
    for s in _SEGS:
        out[s] = getattr(sregs, s).selector
    out["fs_base"], out["gs_base"] = sregs.fs.base, sregs.gs.base
    for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer"):
        out[name] = getattr(sregs, name)
    if msrs and Msr.KERNEL_GS_BASE in msrs:
        out["k_gs_base"] = msrs[Msr.KERNEL_GS_BASE]
    if fpu is not None:
        for i in range(8):
            out[f"st{i}"] = int.from_bytes(bytes(fpu.fpr[i])[:10], "little")
        out["fctrl"], out["fstat"] = fpu.fcw, fpu.fsw
        out["ftag"] = _full_tag_word(fpu.ftwx)
        out["fioff"], out["fooff"], out["fop"] = (
            fpu.last_ip & 0xFFFF_FFFF,
            fpu.last_dp & 0xFFFF_FFFF,
            fpu.last_opcode,
        )
        out["fiseg"] = out["foseg"] = 0
        for i in range(16 if arch == ARCH_64 else 8):
            out[f"xmm{i}"] = int.from_bytes(bytes(fpu.xmm[i]), "little")
        out["mxcsr"] = fpu.mxcsr
    return out


def _full_tag_word(abridged: int) -> int:
    """FXSAVE's one-bit-per-register tag to the x87's two bits (valid 00, empty 11)."""
    return sum((0 if abridged >> i & 1 else 3) << (2 * i) for i in range(8))


def to_kvm(arch: str, values: dict[str, int], regs: Any, sregs: Any) -> tuple[bool, bool]:
    """Write general and system register ``values`` into KVM's structures; (regs changed, sregs changed).

    Segment selectors are written as selectors only (a descriptor is not
    reloaded, as with QEMU's stub); the x87/SSE registers are not written.
    """
    names = _KVM_GPR64 if arch == ARCH_64 else _KVM_GPR32
    regs_changed = sregs_changed = False
    for name, value in values.items():
        if name == "rip" and arch == ARCH_64:
            regs.rip = value
        elif name in names:
            kvm_name = names[name]
            if arch == ARCH_64:
                setattr(regs, kvm_name, value)
            else:
                setattr(regs, kvm_name, (getattr(regs, kvm_name) & ~0xFFFF_FFFF) | (value & 0xFFFF_FFFF))
        elif name == "eflags":
            regs.rflags = (regs.rflags & ~0xFFFF_FFFF) | (value & 0xFFFF_FFFF)
        elif name in _SEGS:
            getattr(sregs, name).selector = value
            sregs_changed = True
            continue
        elif name in ("fs_base", "gs_base"):
            getattr(sregs, name[:2]).base = value
            sregs_changed = True
            continue
        elif name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer"):
            setattr(sregs, name, value)
            sregs_changed = True
            continue
        else:
            continue
        regs_changed = True
    return regs_changed, sregs_changed
