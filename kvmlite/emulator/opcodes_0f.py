"""The two- and three-byte opcode maps (0F xx, 0F 38 xx, 0F 3A xx): rows in :mod:`.opcodes`' notation.

Split from :mod:`kvmlite.emulator.opcodes` for size only; the machinery (:class:`Row`,
the flags, the SSE helpers) and the one-byte map are there.
"""

from __future__ import annotations

from kvmlite.emulator.handlers import (
    arith,
    control,
    data,
    fastcall,
    privileged,
    segment,
    sse,
    sse_int,
    xsave,
)
from kvmlite.emulator.opcodes import (
    BRANCH,
    CONDITIONS,
    CPL0,
    DEF64,
    F64,
    FSGSBASE,
    LOCK,
    LONG_SCE,
    MOD3_ANY,
    MODE64,
    NOSIZE_MNEM,
    ONLY64,
    OSXSAVE,
    SSE,
    SYS,
    Entry,
    Group,
    ModSplit,
    Prefixed,
    Row,
    mmx_sse,
    only66,
    sse_quartet,
    sse_row,
)
from kvmlite.x86 import Feature

# --- two-byte map (0F xx) ---------------------------------------------------------------

TWO_BYTE: list[Entry | None] = [None] * 256

TWO_BYTE[0x00] = Group(
    [
        ModSplit(Row("sldt", "Mw", segment.sldt, SYS), Row("sldt", "Rv", segment.sldt, SYS)),
        ModSplit(Row("str", "Mw", segment.str_, SYS), Row("str", "Rv", segment.str_, SYS)),
        Row("lldt", "Ew", segment.lldt, SYS | CPL0),
        Row("ltr", "Ew", segment.ltr, SYS | CPL0),
        Row("verr", "Ew", segment.verr, SYS),
        Row("verw", "Ew", segment.verw, SYS),
        None,
        None,
    ]
)
_G7_REG: list[Entry | None] = [None] * 64  # indexed by (reg << 3) | rm for mod == 3
_G7_REG[0o01] = Row("vmcall", "", None, SYS)
_G7_REG[0o02] = Row("vmlaunch", "", None, SYS)
_G7_REG[0o03] = Row("vmresume", "", None, SYS)
_G7_REG[0o04] = Row("vmxoff", "", None, SYS)
_G7_REG[0o10] = Row("monitor", "", privileged.monitor, SYS | CPL0, cpuid=Feature.MONITOR)
_G7_REG[0o11] = Row("mwait", "", privileged.mwait, SYS | CPL0, cpuid=Feature.MONITOR)
_G7_REG[0o12] = Row("clac", "", privileged.clac, SYS | CPL0, cpuid=Feature.SMAP)
_G7_REG[0o13] = Row("stac", "", privileged.stac, SYS | CPL0, cpuid=Feature.SMAP)
_G7_REG[0o20] = Row("xgetbv", "", xsave.xgetbv, SYS)
_G7_REG[0o21] = Row("xsetbv", "", xsave.xsetbv, SYS | CPL0)
_G7_REG[0o25] = Row("xend", "", None, SYS)
_G7_REG[0o26] = Row("xtest", "", None, SYS)
_G7_REG[0o30] = Row("vmrun", "", None, SYS)
_G7_REG[0o31] = Row("vmmcall", "", None, SYS)
_G7_REG[0o32] = Row("vmload", "", None, SYS)
_G7_REG[0o33] = Row("vmsave", "", None, SYS)
_G7_REG[0o34] = Row("stgi", "", None, SYS)
_G7_REG[0o35] = Row("clgi", "", None, SYS)
_G7_REG[0o37] = Row("invlpga", "", None, SYS)
for _rm in range(8):
    _G7_REG[0o40 + _rm] = Row("smsw", "Rv", privileged.smsw, SYS)
    _G7_REG[0o60 + _rm] = Row("lmsw", "Rw", privileged.lmsw, SYS | CPL0)
_G7_REG[0o56] = Row("rdpkru", "", None, SYS)
_G7_REG[0o57] = Row("wrpkru", "", None, SYS)
_G7_REG[0o70] = Row("swapgs", "", privileged.swapgs, SYS | ONLY64 | CPL0)
_G7_REG[0o71] = Row("rdtscp", "", privileged.rdtscp, SYS, cpuid=Feature.RDTSCP)
TWO_BYTE[0x01] = ModSplit(
    Group(
        [
            Row("sgdt", "Ms", segment.sgdt, SYS | NOSIZE_MNEM),
            Row("sidt", "Ms", segment.sidt, SYS | NOSIZE_MNEM),
            Row("lgdt", "Ms", segment.lgdt, SYS | NOSIZE_MNEM | CPL0),
            Row("lidt", "Ms", segment.lidt, SYS | NOSIZE_MNEM | CPL0),
            Row("smsw", "Mw", privileged.smsw, SYS),
            None,
            Row("lmsw", "Mw", privileged.lmsw, SYS | CPL0),
            Row("invlpg", "Mb", privileged.invlpg, SYS | NOSIZE_MNEM | CPL0),
        ]
    ),
    reg_by_rm=_G7_REG,
)
TWO_BYTE[0x02] = ModSplit(Row("lar", "Gv,Mw", segment.lar, SYS), Row("lar", "Gv,Rz", segment.lar, SYS))
TWO_BYTE[0x03] = ModSplit(Row("lsl", "Gv,Mw", segment.lsl, SYS), Row("lsl", "Gv,Rz", segment.lsl, SYS))
TWO_BYTE[0x05] = Row("syscall", "", fastcall.syscall, BRANCH | LONG_SCE)
TWO_BYTE[0x06] = Row("clts", "", privileged.clts, SYS | CPL0)
TWO_BYTE[0x07] = Row("sysret/sysret/sysretq", "", fastcall.sysret, BRANCH | SYS | CPL0 | LONG_SCE | MODE64)
TWO_BYTE[0x08] = Row("invd", "", privileged.invd, SYS | CPL0)
TWO_BYTE[0x09] = Row("wbinvd", "", privileged.wbinvd, SYS | CPL0)
TWO_BYTE[0x0B] = Row("ud2", "", control.ud2)
TWO_BYTE[0x0D] = ModSplit(
    Group(
        [
            Row("prefetch", "Mb", data.nop, NOSIZE_MNEM),
            Row("prefetchw", "Mb", data.nop, NOSIZE_MNEM),
            Row("prefetchwt1", "Mb", data.nop, NOSIZE_MNEM),
        ]
        + [Row("prefetch", "Mb", data.nop, NOSIZE_MNEM)] * 5  # AMD: reserved aliases of PREFETCH
    ),
    None,
)
TWO_BYTE[0x10] = Prefixed(
    sse_row("movups", "Vps,Wps", handler=sse.movups),
    sse_row("movupd", "Vpd,Wpd", handler=sse.movupd),
    sse_row("movss", "Vx,Wss", handler=sse_int.movss),
    sse_row("movsd", "Vx,Wsd", handler=sse_int.movsd),
)
TWO_BYTE[0x11] = Prefixed(
    sse_row("movups", "Wps,Vps", handler=sse.movups),
    sse_row("movupd", "Wpd,Vpd", handler=sse.movupd),
    sse_row("movss", "Wss,Vx", handler=sse_int.movss),
    sse_row("movsd", "Wsd,Vx", handler=sse_int.movsd),
)
TWO_BYTE[0x12] = Prefixed(
    ModSplit(
        sse_row("movlps", "Vx,Mq", handler=sse_int.movlps_load),
        sse_row("movhlps", "Vx,Ux", handler=sse_int.movhlps),
    ),
    ModSplit(sse_row("movlpd", "Vx,Mq", handler=sse_int.movlps_load), None),
    sse_row("movsldup", "Vx,Wx"),
    sse_row("movddup", "Vx,Wsd"),
)
TWO_BYTE[0x13] = Prefixed(
    ModSplit(sse_row("movlps", "Mq,Vx", handler=sse_int.movlps_store), None),
    ModSplit(sse_row("movlpd", "Mq,Vx", handler=sse_int.movlps_store), None),
)
TWO_BYTE[0x14] = Prefixed(
    sse_row("unpcklps", handler=sse_int.punpckldq), sse_row("unpcklpd", handler=sse_int.punpcklqdq)
)
TWO_BYTE[0x15] = Prefixed(
    sse_row("unpckhps", handler=sse_int.punpckhdq), sse_row("unpckhpd", handler=sse_int.punpckhqdq)
)
TWO_BYTE[0x16] = Prefixed(
    ModSplit(
        sse_row("movhps", "Vx,Mq", handler=sse_int.movhps_load),
        sse_row("movlhps", "Vx,Ux", handler=sse_int.movlhps),
    ),
    ModSplit(sse_row("movhpd", "Vx,Mq", handler=sse_int.movhps_load), None),
    sse_row("movshdup", "Vx,Wx"),
)
TWO_BYTE[0x17] = Prefixed(
    ModSplit(sse_row("movhps", "Mq,Vx", handler=sse_int.movhps_store), None),
    ModSplit(sse_row("movhpd", "Mq,Vx", handler=sse_int.movhps_store), None),
)
TWO_BYTE[0x18] = ModSplit(
    Group(
        [
            Row("prefetchnta", "Mb", data.nop, NOSIZE_MNEM),
            Row("prefetcht0", "Mb", data.nop, NOSIZE_MNEM),
            Row("prefetcht1", "Mb", data.nop, NOSIZE_MNEM),
            Row("prefetcht2", "Mb", data.nop, NOSIZE_MNEM),
        ]
        + [Row("nop", "Ev", data.nop)] * 4
    ),
    Row("nop", "Ev", data.nop),
)
for _op in range(0x19, 0x1F):
    TWO_BYTE[_op] = Row("nop", "Ev", data.nop)
TWO_BYTE[0x1E] = Prefixed(
    Row("nop", "Ev", data.nop),
    Row("nop", "Ev", data.nop),
    ModSplit(
        Row("nop", "Ev", data.nop),
        Row("nop", "Ev", data.nop),
        reg_by_rm=[Row("nop", "Ev", data.nop)] * 58
        + [Row("endbr64", "", data.nop, NOSIZE_MNEM), Row("endbr32", "", data.nop, NOSIZE_MNEM)]
        + [Row("nop", "Ev", data.nop)] * 4,
    ),
    Row("nop", "Ev", data.nop),
)
TWO_BYTE[0x1F] = Row("nop", "Ev", data.nop)
TWO_BYTE[0x20] = Row("mov", "Ry,Cy", privileged.mov_from_cr, SYS | MOD3_ANY | CPL0)
TWO_BYTE[0x21] = Row("mov", "Ry,Dy", privileged.mov_from_dr, SYS | MOD3_ANY | CPL0)
TWO_BYTE[0x22] = Row("mov", "Cy,Ry", privileged.mov_to_cr, SYS | MOD3_ANY | CPL0)
TWO_BYTE[0x23] = Row("mov", "Dy,Ry", privileged.mov_to_dr, SYS | MOD3_ANY | CPL0)
TWO_BYTE[0x28] = Prefixed(
    sse_row("movaps", "Vps,Wps", handler=sse.movaps), sse_row("movapd", "Vpd,Wpd", handler=sse.movapd)
)
TWO_BYTE[0x29] = Prefixed(
    sse_row("movaps", "Wps,Vps", handler=sse.movaps), sse_row("movapd", "Wpd,Vpd", handler=sse.movapd)
)
TWO_BYTE[0x2A] = Prefixed(
    sse_row("cvtpi2ps", "Vx,Qq"),
    sse_row("cvtpi2pd", "Vx,Qq"),
    sse_row("cvtsi2ss", "Vx,Ey"),
    sse_row("cvtsi2sd", "Vx,Ey"),
)
TWO_BYTE[0x2B] = Prefixed(
    ModSplit(sse_row("movntps", "Mps,Vps"), None), ModSplit(sse_row("movntpd", "Mpd,Vpd"), None)
)
TWO_BYTE[0x2C] = Prefixed(
    sse_row("cvttps2pi", "Pq,Wq"),
    sse_row("cvttpd2pi", "Pq,Wpd"),
    sse_row("cvttss2si", "Gy,Wss"),
    sse_row("cvttsd2si", "Gy,Wsd"),
)
TWO_BYTE[0x2D] = Prefixed(
    sse_row("cvtps2pi", "Pq,Wq"),
    sse_row("cvtpd2pi", "Pq,Wpd"),
    sse_row("cvtss2si", "Gy,Wss"),
    sse_row("cvtsd2si", "Gy,Wsd"),
)
TWO_BYTE[0x2E] = Prefixed(sse_row("ucomiss", "Vx,Wss"), sse_row("ucomisd", "Vx,Wsd"))
TWO_BYTE[0x2F] = Prefixed(sse_row("comiss", "Vx,Wss"), sse_row("comisd", "Vx,Wsd"))
TWO_BYTE[0x30] = Row("wrmsr", "", privileged.wrmsr, SYS | CPL0)
TWO_BYTE[0x31] = Row("rdtsc", "", privileged.rdtsc)
TWO_BYTE[0x32] = Row("rdmsr", "", privileged.rdmsr, SYS | CPL0)
TWO_BYTE[0x33] = Row("rdpmc", "", privileged.rdpmc)
TWO_BYTE[0x34] = Row("sysenter", "", fastcall.sysenter, BRANCH)
TWO_BYTE[0x35] = Row("sysexit/sysexit/sysexitq", "", fastcall.sysexit, BRANCH | SYS | CPL0)
for _i, _c in enumerate(CONDITIONS):
    TWO_BYTE[0x40 + _i] = Row("cmov" + _c, "Gv,Ev", data.cmovcc, cond=_i)
    TWO_BYTE[0x80 + _i] = Row("j" + _c, "Jz", control.jcc, F64 | BRANCH, cond=_i)
    TWO_BYTE[0x90 + _i] = Row("set" + _c, "Eb", data.setcc, cond=_i)
TWO_BYTE[0x50] = Prefixed(
    ModSplit(None, sse_row("movmskps", "Gd,Ux")), ModSplit(None, sse_row("movmskpd", "Gd,Ux"))
)
TWO_BYTE[0x51] = sse_quartet("sqrt")
TWO_BYTE[0x52] = Prefixed(sse_row("rsqrtps"), None, sse_row("rsqrtss", "Vx,Wss"))
TWO_BYTE[0x53] = Prefixed(sse_row("rcpps"), None, sse_row("rcpss", "Vx,Wss"))
TWO_BYTE[0x54] = Prefixed(sse_row("andps", handler=sse.andps), sse_row("andpd", handler=sse.andpd))
TWO_BYTE[0x55] = Prefixed(sse_row("andnps", handler=sse.andnps), sse_row("andnpd", handler=sse.andnpd))
TWO_BYTE[0x56] = Prefixed(sse_row("orps", handler=sse.orps), sse_row("orpd", handler=sse.orpd))
TWO_BYTE[0x57] = Prefixed(sse_row("xorps", handler=sse.xorps), sse_row("xorpd", handler=sse.xorpd))
TWO_BYTE[0x58] = sse_quartet("add")
TWO_BYTE[0x59] = sse_quartet("mul")
TWO_BYTE[0x5A] = Prefixed(
    sse_row("cvtps2pd", "Vx,Wq"),
    sse_row("cvtpd2ps"),
    sse_row("cvtss2sd", "Vx,Wss"),
    sse_row("cvtsd2ss", "Vx,Wsd"),
)
TWO_BYTE[0x5B] = Prefixed(sse_row("cvtdq2ps"), sse_row("cvtps2dq"), sse_row("cvttps2dq"))
TWO_BYTE[0x5C] = sse_quartet("sub")
TWO_BYTE[0x5D] = sse_quartet("min")
TWO_BYTE[0x5E] = sse_quartet("div")
TWO_BYTE[0x5F] = sse_quartet("max")
_PCMPGT = {0x64: sse.pcmpgtb, 0x65: sse.pcmpgtw, 0x66: sse.pcmpgtd}
for _op, _name in zip(
    range(0x60, 0x6C),
    (
        "punpcklbw",
        "punpcklwd",
        "punpckldq",
        "packsswb",
        "pcmpgtb",
        "pcmpgtw",
        "pcmpgtd",
        "packuswb",
        "punpckhbw",
        "punpckhwd",
        "punpckhdq",
        "packssdw",
    ),
    strict=True,
):
    handler = _PCMPGT.get(_op) or sse_int.UNPACKS.get(_op)
    TWO_BYTE[_op] = mmx_sse(_name, "Pq,Qd" if _op < 0x63 else "Pq,Qq", handler=handler)
TWO_BYTE[0x6C] = only66("punpcklqdq", handler=sse_int.punpcklqdq)
TWO_BYTE[0x6D] = only66("punpckhqdq", handler=sse_int.punpckhqdq)
TWO_BYTE[0x6E] = Prefixed(
    Row("movd/movd/movq", "Pq,Ey", sse.movd, SSE), Row("movd/movd/movq", "Vx,Ey", sse.movd, SSE)
)
TWO_BYTE[0x6F] = Prefixed(
    sse_row("movq", "Pq,Qq", handler=sse.movq),
    sse_row("movdqa", handler=sse.movdqa),
    sse_row("movdqu", handler=sse.movdqu),
)
TWO_BYTE[0x70] = Prefixed(
    sse_row("pshufw", "Pq,Qq,Ib"),
    sse_row("pshufd", "Vx,Wx,Ib", handler=sse_int.pshufd),
    sse_row("pshufhw", "Vx,Wx,Ib", handler=sse_int.pshufhw),
    sse_row("pshuflw", "Vx,Wx,Ib", handler=sse_int.pshuflw),
)


def _shift_imm_group(names: tuple[str, ...]) -> ModSplit:
    """0F 71/72/73: MMX/SSE shifts by an immediate, register forms only."""
    rows: list[Entry | None] = []
    for name in names:
        if not name:
            rows.append(None)
        elif name in ("psrldq", "pslldq"):
            rows.append(Prefixed(None, sse_row(name, "Ux,Ib", handler=sse_int.SHIFT_IMM[name])))
        else:
            handler = sse_int.SHIFT_IMM[name]
            rows.append(Prefixed(sse_row(name, "Nq,Ib"), sse_row(name, "Ux,Ib", handler=handler)))
    return ModSplit(None, Group(rows))


TWO_BYTE[0x71] = _shift_imm_group(("", "", "psrlw", "", "psraw", "", "psllw", ""))
TWO_BYTE[0x72] = _shift_imm_group(("", "", "psrld", "", "psrad", "", "pslld", ""))
TWO_BYTE[0x73] = _shift_imm_group(("", "", "psrlq", "psrldq", "", "", "psllq", "pslldq"))
TWO_BYTE[0x74] = mmx_sse("pcmpeqb", handler=sse.pcmpeqb)
TWO_BYTE[0x75] = mmx_sse("pcmpeqw", handler=sse.pcmpeqw)
TWO_BYTE[0x76] = mmx_sse("pcmpeqd", handler=sse.pcmpeqd)
TWO_BYTE[0x77] = Prefixed(Row("emms", "", xsave.emms, SSE))
TWO_BYTE[0x7E] = Prefixed(
    Row("movd/movd/movq", "Ey,Pq", sse.movd, SSE),
    Row("movd/movd/movq", "Ey,Vx", sse.movd, SSE),
    sse_row("movq", "Vx,Wq", handler=sse.movq),
)
TWO_BYTE[0x7F] = Prefixed(
    sse_row("movq", "Qq,Pq", handler=sse.movq),
    sse_row("movdqa", "Wx,Vx", handler=sse.movdqa),
    sse_row("movdqu", "Wx,Vx", handler=sse.movdqu),
)
TWO_BYTE[0xA0] = Row("push", "FS", segment.push_seg, DEF64)
TWO_BYTE[0xA1] = Row("pop", "FS", segment.pop_seg, DEF64)
TWO_BYTE[0xA2] = Row("cpuid", "", privileged.cpuid)
TWO_BYTE[0xA3] = Row("bt", "Ev,Gv", arith.bt)
TWO_BYTE[0xA4] = Row("shld", "Ev,Gv,Ib", arith.shld)
TWO_BYTE[0xA5] = Row("shld", "Ev,Gv,CL", arith.shld)
TWO_BYTE[0xA8] = Row("push", "GS", segment.push_seg, DEF64)
TWO_BYTE[0xA9] = Row("pop", "GS", segment.pop_seg, DEF64)
TWO_BYTE[0xAA] = Row("rsm", "", None, SYS)
TWO_BYTE[0xAB] = Row("bts", "Ev,Gv", arith.bts, LOCK)
TWO_BYTE[0xAC] = Row("shrd", "Ev,Gv,Ib", arith.shrd)
TWO_BYTE[0xAD] = Row("shrd", "Ev,Gv,CL", arith.shrd)
_G15_REG: list[Entry | None] = [None] * 64
for _rm in range(8):
    _G15_REG[0o50 + _rm] = Row("lfence", "", data.nop, NOSIZE_MNEM)
    _G15_REG[0o60 + _rm] = Row("mfence", "", data.nop, NOSIZE_MNEM)
    _G15_REG[0o70 + _rm] = Row("sfence", "", data.nop, NOSIZE_MNEM)
TWO_BYTE[0xAE] = Prefixed(
    ModSplit(
        Group(
            [
                Row("fxsave/fxsave/fxsave64", "M0", xsave.fxsave),
                Row("fxrstor/fxrstor/fxrstor64", "M0", xsave.fxrstor),
                Row("ldmxcsr", "Md", xsave.ldmxcsr, NOSIZE_MNEM),
                Row("stmxcsr", "Md", xsave.stmxcsr, NOSIZE_MNEM),
                Row("xsave/xsave/xsave64", "M0", xsave.xsave, OSXSAVE),
                Row("xrstor/xrstor/xrstor64", "M0", xsave.xrstor, OSXSAVE),
                Row("xsaveopt/xsaveopt/xsaveopt64", "M0", xsave.xsaveopt, OSXSAVE, cpuid=Feature.XSAVEOPT),
                Row("clflush", "Mb", data.nop, NOSIZE_MNEM),
            ]
        ),
        reg_by_rm=_G15_REG,
    ),
    ModSplit(
        Group(
            [None] * 6
            + [
                Row("clwb", "Mb", data.nop, NOSIZE_MNEM),
                Row("clflushopt", "Mb", data.nop, NOSIZE_MNEM),
            ]
        ),
        None,
    ),
    ModSplit(
        None,
        Group(
            [
                Row("rdfsbase", "Ry", privileged.rdfsbase, ONLY64 | FSGSBASE, cpuid=Feature.FSGSBASE),
                Row("rdgsbase", "Ry", privileged.rdgsbase, ONLY64 | FSGSBASE, cpuid=Feature.FSGSBASE),
                Row("wrfsbase", "Ry", privileged.wrfsbase, ONLY64 | FSGSBASE, cpuid=Feature.FSGSBASE),
                Row("wrgsbase", "Ry", privileged.wrgsbase, ONLY64 | FSGSBASE, cpuid=Feature.FSGSBASE),
                None,
                None,
                None,
                None,
            ]
        ),
    ),
)
TWO_BYTE[0xAF] = Row("imul", "Gv,Ev", arith.imul2)
TWO_BYTE[0xB0] = Row("cmpxchg", "Eb,Gb", data.cmpxchg, LOCK)
TWO_BYTE[0xB1] = Row("cmpxchg", "Ev,Gv", data.cmpxchg, LOCK)
TWO_BYTE[0xB2] = ModSplit(Row("lss", "Gv,Mp", segment.load_far_ptr), None)
TWO_BYTE[0xB3] = Row("btr", "Ev,Gv", arith.btr, LOCK)
TWO_BYTE[0xB4] = ModSplit(Row("lfs", "Gv,Mp", segment.load_far_ptr), None)
TWO_BYTE[0xB5] = ModSplit(Row("lgs", "Gv,Mp", segment.load_far_ptr), None)
TWO_BYTE[0xB6] = Row("movzx", "Gv,Eb", data.movzx)
TWO_BYTE[0xB7] = Row("movzx", "Gv,Ew", data.movzx)
TWO_BYTE[0xB8] = Prefixed(None, None, Row("popcnt", "Gv,Ev", arith.popcnt, cpuid=Feature.POPCNT))
TWO_BYTE[0xB9] = Row("ud1", "Gv,Ev", control.ud1)
TWO_BYTE[0xBA] = Group(
    [None, None, None, None, Row("bt", "Ev,Ib", arith.bt), Row("bts", "Ev,Ib", arith.bts, LOCK),
     Row("btr", "Ev,Ib", arith.btr, LOCK), Row("btc", "Ev,Ib", arith.btc, LOCK)]
)  # fmt: skip
TWO_BYTE[0xBB] = Row("btc", "Ev,Gv", arith.btc, LOCK)
TWO_BYTE[0xBC] = Prefixed(
    Row("bsf", "Gv,Ev", arith.bsf),
    Row("bsf", "Gv,Ev", arith.bsf),
    Row("tzcnt", "Gv,Ev", arith.tzcnt),
    Row("bsf", "Gv,Ev", arith.bsf),
)
TWO_BYTE[0xBD] = Prefixed(
    Row("bsr", "Gv,Ev", arith.bsr),
    Row("bsr", "Gv,Ev", arith.bsr),
    Row("lzcnt", "Gv,Ev", arith.lzcnt),
    Row("bsr", "Gv,Ev", arith.bsr),
)
TWO_BYTE[0xBE] = Row("movsx", "Gv,Eb", data.movsx)
TWO_BYTE[0xBF] = Row("movsx", "Gv,Ew", data.movsx)
TWO_BYTE[0xC0] = Row("xadd", "Eb,Gb", data.xadd, LOCK)
TWO_BYTE[0xC1] = Row("xadd", "Ev,Gv", data.xadd, LOCK)
TWO_BYTE[0xC2] = sse_quartet("cmp", "Vx,Wx,Ib")
TWO_BYTE[0xC3] = Prefixed(ModSplit(Row("movnti", "My,Gy", data.mov, NOSIZE_MNEM), None))
TWO_BYTE[0xC4] = Prefixed(
    ModSplit(sse_row("pinsrw", "Pq,Mw,Ib"), sse_row("pinsrw", "Pq,Rd,Ib")),
    ModSplit(sse_row("pinsrw", "Vx,Mw,Ib"), sse_row("pinsrw", "Vx,Rd,Ib")),
)
TWO_BYTE[0xC5] = Prefixed(
    ModSplit(None, sse_row("pextrw", "Gd,Nq,Ib")), ModSplit(None, sse_row("pextrw", "Gd,Ux,Ib"))
)
TWO_BYTE[0xC6] = Prefixed(sse_row("shufps", "Vx,Wx,Ib"), sse_row("shufpd", "Vx,Wx,Ib"))
TWO_BYTE[0xC7] = Group(
    [
        None,
        ModSplit(Row("cmpxchg8b/cmpxchg8b/cmpxchg16b", "Mo", data.cmpxchg8b, LOCK), None),
        None,
        ModSplit(
            Row("xrstors/xrstors/xrstors64", "M0", xsave.xrstors, SYS | CPL0 | OSXSAVE, cpuid=Feature.XSAVES),
            None,
        ),
        ModSplit(Row("xsavec/xsavec/xsavec64", "M0", xsave.xsavec, OSXSAVE, cpuid=Feature.XSAVEC), None),
        ModSplit(
            Row("xsaves/xsaves/xsaves64", "M0", xsave.xsaves, SYS | CPL0 | OSXSAVE, cpuid=Feature.XSAVES),
            None,
        ),
        ModSplit(
            Prefixed(
                Row("vmptrld", "Mq", None, SYS | NOSIZE_MNEM),
                Row("vmclear", "Mq", None, SYS | NOSIZE_MNEM),
                Row("vmxon", "Mq", None, SYS | NOSIZE_MNEM),
            ),
            Row("rdrand", "Rv", privileged.rdrand, cpuid=Feature.RDRAND),
        ),
        ModSplit(
            Prefixed(Row("vmptrst", "Mq", None, SYS | NOSIZE_MNEM)),
            Prefixed(
                Row("rdseed", "Rv", privileged.rdseed, cpuid=Feature.RDSEED),
                Row("rdseed", "Rv", privileged.rdseed, cpuid=Feature.RDSEED),
                Row("rdpid", "Ry", privileged.rdpid, F64 | NOSIZE_MNEM, cpuid=Feature.RDPID),
            ),
        ),
    ]
)
for _i in range(8):
    TWO_BYTE[0xC8 + _i] = Row("bswap", "Zv", data.bswap)  # 16-bit BSWAP is undefined; decoded like capstone
_SSE_INT = {
    0xD1: "psrlw", 0xD2: "psrld", 0xD3: "psrlq", 0xD4: "paddq", 0xD5: "pmullw", 0xD8: "psubusb",
    0xD9: "psubusw", 0xDA: "pminub", 0xDB: "pand", 0xDC: "paddusb", 0xDD: "paddusw", 0xDE: "pmaxub",
    0xDF: "pandn", 0xE0: "pavgb", 0xE1: "psraw", 0xE2: "psrad", 0xE3: "pavgw", 0xE4: "pmulhuw",
    0xE5: "pmulhw", 0xE8: "psubsb", 0xE9: "psubsw", 0xEA: "pminsw", 0xEB: "por", 0xEC: "paddsb",
    0xED: "paddsw", 0xEE: "pmaxsw", 0xEF: "pxor", 0xF1: "psllw", 0xF2: "pslld", 0xF3: "psllq",
    0xF4: "pmuludq", 0xF5: "pmaddwd", 0xF6: "psadbw", 0xF8: "psubb", 0xF9: "psubw", 0xFA: "psubd",
    0xFB: "psubq", 0xFC: "paddb", 0xFD: "paddw", 0xFE: "paddd",
}  # fmt: skip
#: The SSE2 integer operations the executor runs (the others decode for length only).
_SSE_INT_HANDLERS = {
    0xD4: sse.paddq, 0xDB: sse.pand, 0xDF: sse.pandn, 0xEB: sse.por, 0xEF: sse.pxor, 0xF8: sse.psubb,
    0xF9: sse.psubw, 0xFA: sse.psubd, 0xFB: sse.psubq, 0xFC: sse.paddb, 0xFD: sse.paddw, 0xFE: sse.paddd,
}  # fmt: skip
for _op, _name in _SSE_INT.items():
    TWO_BYTE[_op] = mmx_sse(_name, handler=_SSE_INT_HANDLERS.get(_op) or sse_int.BY_OPCODE.get(_op))
TWO_BYTE[0xD6] = Prefixed(None, sse_row("movq", "Wq,Vx", handler=sse.movq))
TWO_BYTE[0xD7] = Prefixed(
    ModSplit(None, sse_row("pmovmskb", "Gd,Nq")),
    ModSplit(None, sse_row("pmovmskb", "Gd,Ux", handler=sse_int.pmovmskb)),
)
TWO_BYTE[0xE6] = Prefixed(None, sse_row("cvttpd2dq"), sse_row("cvtdq2pd", "Vx,Wq"), sse_row("cvtpd2dq"))
TWO_BYTE[0xE7] = Prefixed(
    ModSplit(sse_row("movntq", "Mq,Pq"), None), ModSplit(sse_row("movntdq", "Mx,Vx"), None)
)
TWO_BYTE[0xF0] = Prefixed(None, None, None, ModSplit(sse_row("lddqu", "Vx,Mx"), None))
TWO_BYTE[0xF7] = Prefixed(
    ModSplit(None, sse_row("maskmovq", "Pq,Nq")), ModSplit(None, sse_row("maskmovdqu", "Vx,Ux"))
)
TWO_BYTE[0xFF] = Row("ud0", "Gd,Ed", control.ud0, NOSIZE_MNEM)

# --- three-byte maps (0F 38 xx, 0F 3A xx): the SSSE3/SSE4 subset a kernel uses -----------------

THREE_BYTE_38: list[Entry | None] = [None] * 256
_SSSE3_38 = {
    0x00: "pshufb", 0x01: "phaddw", 0x02: "phaddd", 0x03: "phaddsw", 0x04: "pmaddubsw", 0x05: "phsubw",
    0x06: "phsubd", 0x07: "phsubsw", 0x08: "psignb", 0x09: "psignw", 0x0A: "psignd", 0x0B: "pmulhrsw",
    0x1C: "pabsb", 0x1D: "pabsw", 0x1E: "pabsd",
}  # fmt: skip
for _op, _name in _SSSE3_38.items():
    THREE_BYTE_38[_op] = mmx_sse(_name)
_SSE41_38 = {
    0x10: "pblendvb", 0x14: "blendvps", 0x15: "blendvpd", 0x17: "ptest", 0x28: "pmuldq", 0x29: "pcmpeqq",
    0x2B: "packusdw", 0x37: "pcmpgtq", 0x38: "pminsb", 0x39: "pminsd", 0x3A: "pminuw", 0x3B: "pminud",
    0x3C: "pmaxsb", 0x3D: "pmaxsd", 0x3E: "pmaxuw", 0x3F: "pmaxud", 0x40: "pmulld", 0x41: "phminposuw",
    0xDB: "aesimc", 0xDC: "aesenc", 0xDD: "aesenclast", 0xDE: "aesdec", 0xDF: "aesdeclast",
}  # fmt: skip
for _op, _name in _SSE41_38.items():
    THREE_BYTE_38[_op] = only66(_name)
for _op, _name in zip(
    range(0x20, 0x26), ("pmovsxbw", "pmovsxbd", "pmovsxbq", "pmovsxwd", "pmovsxwq", "pmovsxdq"), strict=True
):
    THREE_BYTE_38[_op] = only66(_name, "Vx,Wq")
for _op, _name in zip(
    range(0x30, 0x36), ("pmovzxbw", "pmovzxbd", "pmovzxbq", "pmovzxwd", "pmovzxwq", "pmovzxdq"), strict=True
):
    THREE_BYTE_38[_op] = only66(_name, "Vx,Wq")
THREE_BYTE_38[0x2A] = Prefixed(None, ModSplit(sse_row("movntdqa", "Vx,Mx"), None))
THREE_BYTE_38[0xF0] = Prefixed(
    ModSplit(Row("movbe", "Gv,Mv", data.movbe, cpuid=Feature.MOVBE), None),
    ModSplit(Row("movbe", "Gv,Mv", data.movbe, cpuid=Feature.MOVBE), None),
    None,
    Row("crc32", "Gy,Eb", None, NOSIZE_MNEM),
)
THREE_BYTE_38[0xF1] = Prefixed(
    ModSplit(Row("movbe", "Mv,Gv", data.movbe, cpuid=Feature.MOVBE), None),
    ModSplit(Row("movbe", "Mv,Gv", data.movbe, cpuid=Feature.MOVBE), None),
    None,
    Row("crc32", "Gy,Ev", None, NOSIZE_MNEM),
)

THREE_BYTE_3A: list[Entry | None] = [None] * 256
_SSE41_3A = {
    0x08: "roundps", 0x09: "roundpd", 0x0A: "roundss", 0x0B: "roundsd", 0x0C: "blendps", 0x0D: "blendpd",
    0x0E: "pblendw", 0x40: "dpps", 0x41: "dppd", 0x42: "mpsadbw", 0x44: "pclmulqdq", 0x60: "pcmpestrm",
    0x61: "pcmpestri", 0x62: "pcmpistrm", 0x63: "pcmpistri", 0xDF: "aeskeygenassist", 0x21: "insertps",
}  # fmt: skip
for _op, _name in _SSE41_3A.items():
    THREE_BYTE_3A[_op] = only66(_name, "Vx,Wx,Ib")
THREE_BYTE_3A[0x0F] = mmx_sse("palignr", "Pq,Qq,Ib", "Vx,Wx,Ib")
THREE_BYTE_3A[0x14] = only66("pextrb", "Ed,Vx,Ib")
THREE_BYTE_3A[0x15] = Prefixed(None, ModSplit(sse_row("pextrw", "Mw,Vx,Ib"), sse_row("pextrw", "Rd,Vx,Ib")))
THREE_BYTE_3A[0x16] = Prefixed(None, Row("pextrd/pextrd/pextrq", "Ey,Vx,Ib", None, SSE))
THREE_BYTE_3A[0x17] = only66("extractps", "Ed,Vx,Ib")
THREE_BYTE_3A[0x20] = only66("pinsrb", "Vx,Ed,Ib")
THREE_BYTE_3A[0x22] = Prefixed(None, Row("pinsrd/pinsrd/pinsrq", "Vx,Ey,Ib", None, SSE))
