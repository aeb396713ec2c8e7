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

from dataclasses import dataclass, replace

from kvmlite.errors import ConfigError
from kvmlite.kvm.cpuid import CpuidEntry


@dataclass(frozen=True)
class Feature:
    leaf: int
    subleaf: int
    reg: str  # "eax", "ebx", "ecx" or "edx"
    bit: int


FEATURES: dict[str, Feature] = {
    # leaf 1 ECX
    "sse3": Feature(1, 0, "ecx", 0),
    "pclmulqdq": Feature(1, 0, "ecx", 1),
    "monitor": Feature(1, 0, "ecx", 3),
    "vmx": Feature(1, 0, "ecx", 5),
    "ssse3": Feature(1, 0, "ecx", 9),
    "fma": Feature(1, 0, "ecx", 12),
    "cx16": Feature(1, 0, "ecx", 13),
    "pcid": Feature(1, 0, "ecx", 17),
    "sse4_1": Feature(1, 0, "ecx", 19),
    "sse4_2": Feature(1, 0, "ecx", 20),
    "x2apic": Feature(1, 0, "ecx", 21),
    "movbe": Feature(1, 0, "ecx", 22),
    "popcnt": Feature(1, 0, "ecx", 23),
    "tsc_deadline_timer": Feature(1, 0, "ecx", 24),
    "aes": Feature(1, 0, "ecx", 25),
    "xsave": Feature(1, 0, "ecx", 26),
    "osxsave": Feature(1, 0, "ecx", 27),
    "avx": Feature(1, 0, "ecx", 28),
    "f16c": Feature(1, 0, "ecx", 29),
    "rdrand": Feature(1, 0, "ecx", 30),
    "hypervisor": Feature(1, 0, "ecx", 31),
    # leaf 1 EDX
    "fpu": Feature(1, 0, "edx", 0),
    "pse": Feature(1, 0, "edx", 3),
    "tsc": Feature(1, 0, "edx", 4),
    "msr": Feature(1, 0, "edx", 5),
    "pae": Feature(1, 0, "edx", 6),
    "cx8": Feature(1, 0, "edx", 8),
    "apic": Feature(1, 0, "edx", 9),
    "sep": Feature(1, 0, "edx", 11),
    "pge": Feature(1, 0, "edx", 13),
    "cmov": Feature(1, 0, "edx", 15),
    "pat": Feature(1, 0, "edx", 16),
    "clflush": Feature(1, 0, "edx", 19),
    "mmx": Feature(1, 0, "edx", 23),
    "fxsr": Feature(1, 0, "edx", 24),
    "sse": Feature(1, 0, "edx", 25),
    "sse2": Feature(1, 0, "edx", 26),
    # leaf 7 EBX / ECX / EDX
    "fsgsbase": Feature(7, 0, "ebx", 0),
    "bmi1": Feature(7, 0, "ebx", 3),
    "avx2": Feature(7, 0, "ebx", 5),
    "smep": Feature(7, 0, "ebx", 7),
    "bmi2": Feature(7, 0, "ebx", 8),
    "erms": Feature(7, 0, "ebx", 9),
    "invpcid": Feature(7, 0, "ebx", 10),
    "avx512f": Feature(7, 0, "ebx", 16),
    "avx512dq": Feature(7, 0, "ebx", 17),
    "rdseed": Feature(7, 0, "ebx", 18),
    "adx": Feature(7, 0, "ebx", 19),
    "smap": Feature(7, 0, "ebx", 20),
    "avx512ifma": Feature(7, 0, "ebx", 21),
    "clflushopt": Feature(7, 0, "ebx", 23),
    "clwb": Feature(7, 0, "ebx", 24),
    "avx512cd": Feature(7, 0, "ebx", 28),
    "sha_ni": Feature(7, 0, "ebx", 29),
    "avx512bw": Feature(7, 0, "ebx", 30),
    "avx512vl": Feature(7, 0, "ebx", 31),
    "avx512vbmi": Feature(7, 0, "ecx", 1),
    "umip": Feature(7, 0, "ecx", 2),
    "pku": Feature(7, 0, "ecx", 3),
    "avx512_vbmi2": Feature(7, 0, "ecx", 6),
    "vaes": Feature(7, 0, "ecx", 9),
    "vpclmulqdq": Feature(7, 0, "ecx", 10),
    "avx512_vnni": Feature(7, 0, "ecx", 11),
    "avx512_bitalg": Feature(7, 0, "ecx", 12),
    "avx512_vpopcntdq": Feature(7, 0, "ecx", 14),
    "la57": Feature(7, 0, "ecx", 16),
    "rdpid": Feature(7, 0, "ecx", 22),
    # leaf 0xD subleaf 1 EAX
    "xsaveopt": Feature(0xD, 1, "eax", 0),
    "xsavec": Feature(0xD, 1, "eax", 1),
    "xgetbv1": Feature(0xD, 1, "eax", 2),
    "xsaves": Feature(0xD, 1, "eax", 3),
    # leaf 0x80000001
    "lahf_lm": Feature(0x8000_0001, 0, "ecx", 0),
    "svm": Feature(0x8000_0001, 0, "ecx", 2),
    "abm": Feature(0x8000_0001, 0, "ecx", 5),
    "sse4a": Feature(0x8000_0001, 0, "ecx", 6),
    "syscall": Feature(0x8000_0001, 0, "edx", 11),
    "nx": Feature(0x8000_0001, 0, "edx", 20),
    "pdpe1gb": Feature(0x8000_0001, 0, "edx", 26),
    "rdtscp": Feature(0x8000_0001, 0, "edx", 27),
    "lm": Feature(0x8000_0001, 0, "edx", 29),
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
XCR0_COMPONENTS: dict[str, int] = {"avx": 1 << 2, "avx512f": (1 << 5) | (1 << 6) | (1 << 7), "pku": 1 << 9}
_REG_INDEX = {"eax": 3, "ebx": 4, "ecx": 5, "edx": 6}


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
        set_bits, clear_bits = masks.get((f.leaf, f.subleaf, f.reg), (0, 0))
        if name in on:
            set_bits |= 1 << f.bit
        else:
            clear_bits |= 1 << f.bit
        masks[(f.leaf, f.subleaf, f.reg)] = (set_bits, clear_bits)
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
