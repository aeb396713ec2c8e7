"""CPUID feature names and ``--cpu-features`` masks.

``--cpu-features -xsave,-avx512f`` hides features from the guest by clearing
their CPUID bits (``+name`` sets a bit, for features KVM emulates).  Hiding a
feature also hides the features that depend on it, as the SDM requires and
as guests check: without XSAVE there is no OSXSAVE, AVX, AVX2, AVX-512 or
XSAVES; without AVX there is no AVX2, FMA or AVX-512.

Names follow Linux's ``/proc/cpuinfo`` flags.  One more item is accepted:
``vendor=GenuineIntel`` (12 characters) replaces the vendor string of leaves 0
and 0x80000000, as QEMU's ``-cpu ...,vendor=`` does.
"""

from __future__ import annotations

from dataclasses import replace

from kvmlite.errors import ConfigError
from kvmlite.kvm.cpuid import CpuidEntry
from kvmlite.x86 import CpuidBit, CpuidReg, Feature, Xcr0

EAX, EBX, ECX, EDX = CpuidReg.EAX, CpuidReg.EBX, CpuidReg.ECX, CpuidReg.EDX

#: Every feature ``--cpu-features`` knows, by its Linux name; those instructions depend on are
#: :class:`kvmlite.x86.Feature`'s.
FEATURES: dict[str, CpuidBit] = {
    # leaf 1 ECX
    "sse3": CpuidBit(1, 0, ECX, 0),
    "pclmulqdq": CpuidBit(1, 0, ECX, 1),
    "monitor": Feature.MONITOR,
    "vmx": CpuidBit(1, 0, ECX, 5),
    "ssse3": CpuidBit(1, 0, ECX, 9),
    "fma": CpuidBit(1, 0, ECX, 12),
    "cx16": Feature.CX16,
    "pcid": CpuidBit(1, 0, ECX, 17),
    "sse4_1": CpuidBit(1, 0, ECX, 19),
    "sse4_2": CpuidBit(1, 0, ECX, 20),
    "x2apic": CpuidBit(1, 0, ECX, 21),
    "movbe": Feature.MOVBE,
    "popcnt": Feature.POPCNT,
    "tsc_deadline_timer": CpuidBit(1, 0, ECX, 24),
    "aes": CpuidBit(1, 0, ECX, 25),
    "xsave": Feature.XSAVE,
    "osxsave": CpuidBit(1, 0, ECX, 27),
    "avx": CpuidBit(1, 0, ECX, 28),
    "f16c": CpuidBit(1, 0, ECX, 29),
    "rdrand": Feature.RDRAND,
    "hypervisor": CpuidBit(1, 0, ECX, 31),
    # leaf 1 EDX
    "fpu": CpuidBit(1, 0, EDX, 0),
    "pse": CpuidBit(1, 0, EDX, 3),
    "tsc": CpuidBit(1, 0, EDX, 4),
    "msr": CpuidBit(1, 0, EDX, 5),
    "pae": CpuidBit(1, 0, EDX, 6),
    "cx8": Feature.CX8,
    "apic": CpuidBit(1, 0, EDX, 9),
    "sep": Feature.SEP,
    "pge": CpuidBit(1, 0, EDX, 13),
    "cmov": Feature.CMOV,
    "pat": CpuidBit(1, 0, EDX, 16),
    "clflush": Feature.CLFLUSH,
    "mmx": CpuidBit(1, 0, EDX, 23),
    "fxsr": Feature.FXSR,
    "sse": Feature.SSE,
    "sse2": Feature.SSE2,
    # leaf 7 EBX / ECX / EDX
    "fsgsbase": Feature.FSGSBASE,
    "bmi1": Feature.BMI1,
    "avx2": CpuidBit(7, 0, EBX, 5),
    "smep": CpuidBit(7, 0, EBX, 7),
    "bmi2": CpuidBit(7, 0, EBX, 8),
    "erms": CpuidBit(7, 0, EBX, 9),
    "invpcid": CpuidBit(7, 0, EBX, 10),
    "avx512f": CpuidBit(7, 0, EBX, 16),
    "avx512dq": CpuidBit(7, 0, EBX, 17),
    "rdseed": Feature.RDSEED,
    "adx": CpuidBit(7, 0, EBX, 19),
    "smap": Feature.SMAP,
    "avx512ifma": CpuidBit(7, 0, EBX, 21),
    "clflushopt": Feature.CLFLUSHOPT,
    "clwb": Feature.CLWB,
    "avx512cd": CpuidBit(7, 0, EBX, 28),
    "sha_ni": CpuidBit(7, 0, EBX, 29),
    "avx512bw": CpuidBit(7, 0, EBX, 30),
    "avx512vl": CpuidBit(7, 0, EBX, 31),
    "avx512vbmi": CpuidBit(7, 0, ECX, 1),
    "umip": CpuidBit(7, 0, ECX, 2),
    "pku": CpuidBit(7, 0, ECX, 3),
    "avx512_vbmi2": CpuidBit(7, 0, ECX, 6),
    "vaes": CpuidBit(7, 0, ECX, 9),
    "vpclmulqdq": CpuidBit(7, 0, ECX, 10),
    "avx512_vnni": CpuidBit(7, 0, ECX, 11),
    "avx512_bitalg": CpuidBit(7, 0, ECX, 12),
    "avx512_vpopcntdq": CpuidBit(7, 0, ECX, 14),
    "la57": CpuidBit(7, 0, ECX, 16),
    "rdpid": Feature.RDPID,
    # leaf 0xD subleaf 1 EAX
    "xsaveopt": Feature.XSAVEOPT,
    "xsavec": Feature.XSAVEC,
    "xgetbv1": CpuidBit(0xD, 1, EAX, 2),
    "xsaves": Feature.XSAVES,
    # leaf 0x80000001
    "lahf_lm": Feature.LAHF_LM,
    "svm": CpuidBit(0x8000_0001, 0, ECX, 2),
    "abm": Feature.ABM,
    "sse4a": CpuidBit(0x8000_0001, 0, ECX, 6),
    "syscall": Feature.SYSCALL,
    "nx": CpuidBit(0x8000_0001, 0, EDX, 20),
    "pdpe1gb": CpuidBit(0x8000_0001, 0, EDX, 26),
    "rdtscp": Feature.RDTSCP,
    "lm": Feature.LM,
}

#: Hiding the key hides these too.
DEPENDENTS: dict[str, tuple[str, ...]] = {
    "xsave": ("osxsave", "avx", "xsaveopt", "xsavec", "xgetbv1", "xsaves"),
    "avx": ("avx2", "fma", "f16c", "avx512f", "vaes", "vpclmulqdq"),
    "avx512f": (
        "avx512dq", "avx512ifma", "avx512cd", "avx512bw", "avx512vl", "avx512vbmi",
        "avx512_vbmi2", "avx512_vnni", "avx512_bitalg", "avx512_vpopcntdq",
    ),
    "sse": ("sse2",),
    "sse2": ("sse3",),
    "sse3": ("ssse3",),
    "ssse3": ("sse4_1",),
    "sse4_1": ("sse4_2",),
    "fxsr": ("sse",),
}  # fmt: skip

#: XCR0 state components that go with features, for leaf 0xD subleaf 0 (EAX: supported XCR0 bits).
XCR0_COMPONENTS: dict[str, int] = {
    "avx": int(Xcr0.AVX),
    "avx512f": int(Xcr0.OPMASK | Xcr0.ZMM_HI256 | Xcr0.HI16_ZMM),
    "pku": int(Xcr0.PKRU),
}


VENDOR_LEAVES = (0, 0x8000_0000)
VENDOR_LEN = 12


def spec_vendor(spec: str) -> str | None:
    """The ``vendor=NAME`` item of a spec (checked: 12 printable ASCII characters), or None."""
    vendor = None
    for item in (part.strip() for part in spec.split(",")):
        if item.startswith("vendor="):
            vendor = item[len("vendor=") :]
            if len(vendor) != VENDOR_LEN or not (vendor.isascii() and vendor.isprintable()):
                raise ConfigError(f"--cpu-features: {item!r}: a CPU vendor is 12 ASCII characters")
    return vendor


def parse_feature_spec(spec: str) -> tuple[set[str], set[str]]:
    """``"-xsave,+x2apic"`` -> ({"x2apic"}, {"xsave"}): features to set, features to clear."""
    on: set[str] = set()
    off: set[str] = set()
    spec_vendor(spec)
    for item in (part.strip() for part in spec.split(",")):
        if not item or item.startswith("vendor="):
            continue
        if item[0] not in "+-":
            raise ConfigError(f"--cpu-features: {item!r} must start with + or - (for example -xsave)")
        name = item[1:].lower()
        if name not in FEATURES:
            raise ConfigError(
                f"--cpu-features: unknown feature {name!r}; known: {', '.join(sorted(FEATURES))}"
            )
        (on if item[0] == "+" else off).add(name)
    return on, off


def _closure(names: set[str]) -> set[str]:
    out = set(names)
    todo = list(names)
    while todo:
        for dep in DEPENDENTS.get(todo.pop(), ()):
            if dep not in out:
                out.add(dep)
                todo.append(dep)
    return out


def apply_features(entries: list[CpuidEntry], spec: str) -> list[CpuidEntry]:
    """The entries with the ``--cpu-features`` spec applied (dependents of hidden features hidden too)."""
    on, off = parse_feature_spec(spec)
    vendor = spec_vendor(spec)
    off = _closure(off)
    on -= off
    masks: dict[tuple[int, int, str], tuple[int, int]] = {}  # (leaf, subleaf, reg) -> (set bits, clear bits)
    for name in on | off:
        f = FEATURES[name]
        reg = f.reg.name.lower()
        set_bits, clear_bits = masks.get((f.leaf, f.subleaf, reg), (0, 0))
        if name in on:
            set_bits |= 1 << f.bit
        else:
            clear_bits |= 1 << f.bit
        masks[(f.leaf, f.subleaf, reg)] = (set_bits, clear_bits)
    xcr0_clear = 0
    for name in off:
        xcr0_clear |= XCR0_COMPONENTS.get(name, 0)
    out = []
    for e in entries:
        values = {"eax": e.eax, "ebx": e.ebx, "ecx": e.ecx, "edx": e.edx}
        for reg in values:
            set_bits, clear_bits = masks.get((e.function, e.index, reg), (0, 0))
            values[reg] = (values[reg] & ~clear_bits) | set_bits
        if vendor is not None and e.function in VENDOR_LEAVES:
            words = [int.from_bytes(vendor.encode()[i : i + 4], "little") for i in (0, 4, 8)]
            values["ebx"], values["edx"], values["ecx"] = words
        if e.function == 0xD and e.index == 0:
            values["eax"] &= ~xcr0_clear
            if "xsave" in off:
                values = dict.fromkeys(values, 0)
        out.append(replace(e, **values))
    return out
