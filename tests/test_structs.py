"""The ctypes layouts and ioctl numbers in ``kvmlite.kvm`` agree with the real kernel headers.

The test is the pyelftools idea applied to ``kvm.h``: instead of trusting a
hand-written mirror, ask the C compiler.  A small C program is generated from
the ctypes field lists themselves, so every field that exists in Python is
checked (``sizeof`` and ``offsetof``, nested members included) and a field
added later is checked automatically.  The same program prints the value of
every ``KVM_*`` macro whose name matches a member of our enums, so each
ioctl number, exit reason and capability is compared too.

Without a C compiler or without ``<linux/kvm.h>`` the whole module skips and
says which one is missing.
"""

from __future__ import annotations

import ctypes as C
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pytest

from kvmlite.kvm import constants as K
from kvmlite.kvm import structs as S

log = logging.getLogger(__name__)

COMPILERS = ("cc", "gcc", "clang")
COMPILE_TIMEOUT_S = 60
RUN_TIMEOUT_S = 10

# Members that are anonymous in C (so the C expression drops the ctypes name).
# Keyed by (top-level struct, dotted ctypes path of the member).
ANONYMOUS_IN_C: frozenset[tuple[str, str]] = frozenset({("kvm_run", "exit")})

# Enum classes of constants.py and the macro prefix their member names get in kvm.h.
ENUM_MACRO_PREFIXES: tuple[tuple[type[Enum], str], ...] = (
    (K.Ioctl, ""),
    (K.ExitReason, "KVM_EXIT_"),
    (K.InternalError, "KVM_INTERNAL_ERROR_"),
    (K.SystemEvent, "KVM_SYSTEM_EVENT_"),
    (K.MpState, "KVM_MP_STATE_"),
    (K.Cap, "KVM_CAP_"),
    (K.MemFlag, "KVM_MEM_"),
    (K.GuestDebug, "KVM_GUESTDBG_"),
    (K.IrqfdFlag, "KVM_IRQFD_FLAG_"),
    (K.IoeventfdFlag, "KVM_IOEVENTFD_FLAG_"),
    (K.MsrExitReason, "KVM_MSR_EXIT_REASON_"),
    (K.IrqchipId, "KVM_IRQCHIP_"),
)

# Plain module-level integers of constants.py that are also kernel macros.
PLAIN_CONSTANTS = (
    "KVM_API_VERSION",
    "KVM_EXIT_IO_IN",
    "KVM_EXIT_IO_OUT",
    "KVM_IRQ_ROUTING_IRQCHIP",
    "KVM_IRQ_ROUTING_MSI",
    "KVM_PIT_SPEAKER_DUMMY",
    "KVM_CPUID_FLAG_SIGNIFCANT_INDEX",
)

# Module-level integers of structs.py that are kernel macros.
STRUCT_MODULE_CONSTANTS = ("KVM_NR_INTERRUPTS", "KVM_APIC_REG_SIZE", "KVM_MAX_XCRS", "KVM_IOAPIC_NUM_PINS")


@dataclass(frozen=True)
class FieldProbe:
    """One member of one structure: where ctypes puts it and how C names it."""

    struct: str
    path: str  # dotted ctypes path, e.g. "cs.base" or "exit.io.port"
    c_expr: str  # member designator for offsetof(), e.g. "io.port"
    offset: int
    size: int


def _walk(top: str, cls: type, prefix: str, c_prefix: str, base: int) -> list[FieldProbe]:
    """Every member of ``cls`` (recursing into nested structures and unions)."""
    probes: list[FieldProbe] = []
    for name, ftype, *_ in cls._fields_:
        path = f"{prefix}{name}"
        offset = base + getattr(cls, name).offset
        anonymous = (top, path) in ANONYMOUS_IN_C
        c_expr = c_prefix.rstrip(".") if anonymous else f"{c_prefix}{name}"
        if not anonymous:
            probes.append(FieldProbe(top, path, c_expr, offset, C.sizeof(ftype)))
        if isinstance(ftype, type) and issubclass(ftype, C.Structure | C.Union):
            inner_prefix = c_prefix if anonymous else f"{c_expr}."
            probes.extend(_walk(top, ftype, f"{path}.", inner_prefix, offset))
    return probes


def all_probes() -> list[FieldProbe]:
    probes: list[FieldProbe] = []
    for name, cls in S.ALL_STRUCTS.items():
        probes.extend(_walk(name, cls, "", "", 0))
    return probes


def _macro_names() -> list[str]:
    names: list[str] = list(PLAIN_CONSTANTS) + list(STRUCT_MODULE_CONSTANTS)
    for enum_cls, prefix in ENUM_MACRO_PREFIXES:
        names.extend(prefix + member for member in enum_cls.__members__)
    return names


def generate_c() -> str:
    """The probe program: prints ``S struct size``, ``F struct path off size``, ``M name value``."""
    lines = [
        "#include <stddef.h>",
        "#include <stdio.h>",
        "#include <linux/kvm.h>",
        "int main(void) {",
    ]
    for name in S.ALL_STRUCTS:
        lines.append(f'  printf("S {name} %zu\\n", sizeof(struct {name}));')
    for p in all_probes():
        lines.append(
            f'  printf("F {p.struct} {p.path} %zu %zu\\n", offsetof(struct {p.struct}, {p.c_expr}), '
            f"sizeof(((struct {p.struct} *)0)->{p.c_expr}));"
        )
    for macro in _macro_names():
        lines += [
            f"#ifdef {macro}",
            f'  printf("M {macro} %llu\\n", (unsigned long long)({macro}));',
            "#endif",
        ]
    lines += ["  return 0;", "}", ""]
    return "\n".join(lines)


@dataclass
class HeaderFacts:
    sizes: dict[str, int]
    fields: dict[tuple[str, str], tuple[int, int]]
    macros: dict[str, int]


def _find_compiler() -> str | None:
    for cc in COMPILERS:
        path = shutil.which(cc)
        if path:
            return path
    return None


def _header_available(cc: str, workdir: Path) -> bool:
    src = workdir / "probe_header.c"
    src.write_text("#include <linux/kvm.h>\nint main(void) { return 0; }\n")
    res = subprocess.run(
        [cc, "-fsyntax-only", str(src)], capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S
    )
    return res.returncode == 0


@pytest.fixture(scope="module")
def header() -> HeaderFacts:
    cc = _find_compiler()
    if cc is None:
        pytest.skip(f"no C compiler found (tried {', '.join(COMPILERS)}); cannot read linux/kvm.h layouts")
    with tempfile.TemporaryDirectory(prefix="kvmlite-structs-") as tmp:
        work = Path(tmp)
        if not _header_available(cc, work):
            pytest.skip("<linux/kvm.h> not found by the C compiler (install linux-libc-dev)")
        src = work / "layout.c"
        exe = work / "layout"
        src.write_text(generate_c())
        res = subprocess.run(
            [cc, "-O0", "-o", str(exe), str(src)], capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S
        )
        # A compile error here means a ctypes field has no C counterpart: that is a finding, not a skip.
        assert res.returncode == 0, (
            f"layout probe did not compile (a field name differs from kvm.h?):\n{res.stderr}"
        )
        out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=True)
    facts = HeaderFacts({}, {}, {})
    for line in out.stdout.splitlines():
        kind, *rest = line.split()
        if kind == "S":
            facts.sizes[rest[0]] = int(rest[1])
        elif kind == "F":
            facts.fields[(rest[0], rest[1])] = (int(rest[2]), int(rest[3]))
        elif kind == "M":
            facts.macros[rest[0]] = int(rest[1])
    return facts


STRUCT_NAMES = sorted(S.ALL_STRUCTS)


def test_generated_probe_covers_nested_and_anonymous_members() -> None:
    """The generator reaches into nested structures and drops kvm_run's anonymous union name."""
    by_path = {(p.struct, p.path): p for p in all_probes()}
    assert by_path[("kvm_sregs", "cs.selector")].c_expr == "cs.selector"
    assert by_path[("kvm_run", "exit.io.port")].c_expr == "io.port"
    assert by_path[("kvm_irqchip", "chip.ioapic.redirtbl")].c_expr == "chip.ioapic.redirtbl"
    assert ("kvm_run", "exit") not in by_path  # anonymous: no C expression names it


@pytest.mark.parametrize("name", STRUCT_NAMES)
def test_struct_size_matches_kernel_header(header: HeaderFacts, name: str) -> None:
    assert C.sizeof(S.ALL_STRUCTS[name]) == header.sizes[name]


@pytest.mark.parametrize("name", STRUCT_NAMES)
def test_every_field_offset_and_size_match_kernel_header(header: HeaderFacts, name: str) -> None:
    probes = [p for p in all_probes() if p.struct == name]
    assert probes, f"{name} has no fields to check"
    wrong = [
        f"{name}.{p.path}: ctypes offset {p.offset} size {p.size}, "
        f"C offset {header.fields[(name, p.path)][0]} size {header.fields[(name, p.path)][1]}"
        for p in probes
        if header.fields[(name, p.path)] != (p.offset, p.size)
    ]
    assert not wrong, "\n".join(wrong)


def _python_value(macro: str) -> int:
    for enum_cls, prefix in ENUM_MACRO_PREFIXES:
        if macro.startswith(prefix) and macro[len(prefix) :] in enum_cls.__members__:
            return int(enum_cls.__members__[macro[len(prefix) :]])
    module = S if macro in STRUCT_MODULE_CONSTANTS else K
    return int(getattr(module, macro))


def test_ioctl_numbers_match_kernel_header(header: HeaderFacts) -> None:
    """Every Ioctl member that the header defines has the header's number."""
    present = [m for m in K.Ioctl.__members__ if m in header.macros]
    missing = sorted(set(K.Ioctl.__members__) - set(present))
    if missing:
        log.warning("ioctls not defined by this linux/kvm.h (not checked): %s", ", ".join(missing))
    assert present, "no Ioctl member name found among the header's macros"
    wrong = [
        f"{m}: ours {int(K.Ioctl[m]):#x}, kvm.h {header.macros[m]:#x}"
        for m in present
        if int(K.Ioctl[m]) != header.macros[m]
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("enum_cls", "prefix"),
    [pytest.param(e, p, id=e.__name__) for e, p in ENUM_MACRO_PREFIXES if e is not K.Ioctl],
)
def test_enum_values_match_kernel_header(header: HeaderFacts, enum_cls: type[Enum], prefix: str) -> None:
    present = [m for m in enum_cls.__members__ if prefix + m in header.macros]
    missing = sorted(set(enum_cls.__members__) - set(present))
    if missing:
        log.warning("%s members without a %s* macro in this header: %s", enum_cls.__name__, prefix, missing)
    assert present, f"no {enum_cls.__name__} member found as a {prefix}* macro"
    wrong = [
        f"{prefix}{m}: ours {int(enum_cls.__members__[m])}, kvm.h {header.macros[prefix + m]}"
        for m in present
        if int(enum_cls.__members__[m]) != header.macros[prefix + m]
    ]
    assert not wrong, "\n".join(wrong)


def test_plain_constants_match_kernel_header(header: HeaderFacts) -> None:
    names = [n for n in (*PLAIN_CONSTANTS, *STRUCT_MODULE_CONSTANTS) if n in header.macros]
    assert names
    wrong = [
        f"{n}: ours {_python_value(n)}, kvm.h {header.macros[n]}"
        for n in names
        if _python_value(n) != header.macros[n]
    ]
    assert not wrong, "\n".join(wrong)
