"""``kvmlite.x86`` agrees with the kernel's ``<asm/processor-flags.h>``, and importing it stays cheap.

As in ``test_structs.py``, the C compiler is the reference: a small program
prints every ``X86_EFLAGS_*``, ``X86_CR0_*`` and ``X86_CR4_*`` macro whose
name matches a member of :class:`Rflags`, :class:`Cr0` or :class:`Cr4`, and
each value is compared with ours.  Without a compiler or the header the
comparison skips and says which one is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from enum import IntFlag
from pathlib import Path

import pytest

from kvmlite.x86 import Cr0, Cr4, Efer, Msr, Rflags, SegType, Vector

HEADER = "asm/processor-flags.h"
#: Our member names that the header spells differently.
MACRO_NAMES = {(Rflags, "FIXED1"): "X86_EFLAGS_FIXED"}
PREFIXES: tuple[tuple[type[IntFlag], str], ...] = (
    (Rflags, "X86_EFLAGS_"),
    (Cr0, "X86_CR0_"),
    (Cr4, "X86_CR4_"),
)


def _header_values(tmp_path: Path) -> dict[str, int]:
    cc = next((path for path in map(shutil.which, ("cc", "gcc", "clang")) if path), None)
    if cc is None:
        pytest.skip("no C compiler (cc, gcc or clang) to read the kernel headers with")
    macros = [MACRO_NAMES.get((cls, m.name), prefix + m.name) for cls, prefix in PREFIXES for m in cls]  # type: ignore[attr-defined]
    lines = [f"#include <{HEADER}>", "#include <stdio.h>", "int main(void) {"]
    for macro in macros:
        lines += [f"#ifdef {macro}", f'printf("{macro} %lu\\n", (unsigned long)({macro}));', "#endif"]
    lines += ["return 0;", "}"]
    src = tmp_path / "flags.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "flags"
    cmd = [cc, str(src), "-o", str(exe)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot compile against <{HEADER}> (linux-libc-dev?): {res.stderr.strip()[:160]}")
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=10, check=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_rflags_cr0_cr4_bits_match_the_kernel_header(tmp_path: Path) -> None:
    values = _header_values(tmp_path)
    compared = 0
    for cls, prefix in PREFIXES:
        for member in cls:  # type: ignore[attr-defined]
            macro = MACRO_NAMES.get((cls, member.name), prefix + member.name)
            if macro in values:
                assert int(member) == values[macro], f"{cls.__name__}.{member.name} != {macro}"
                compared += 1
    # every RFLAGS and CR0 bit we name is in the header; CR4 has a few the installed header may predate
    assert compared >= len(Rflags) + len(Cr0) + 15


def test_flags_combine_and_compare_as_plain_ints() -> None:
    assert Rflags.IF == 0x200 and Rflags.IOPL >> 12 == 3
    assert int(Cr0.PE | Cr0.PG) == 0x8000_0001
    assert Efer.LMA | Efer.LME == 0x500
    assert SegType.READABLE is SegType.WRITABLE  # one bit, two meanings (code vs data)
    assert Msr.LSTAR == 0xC000_0082 and {Msr.TSC: 1}.get(0x10) == 1
    assert Vector.GP.mnemonic == "#GP" and Vector.NMI.mnemonic == "NMI" and f"{Vector.PF}" == "14"


def test_importing_x86_pulls_in_no_other_kvmlite_module() -> None:
    code = "import sys, kvmlite.x86; print(sorted(m for m in sys.modules if m.startswith('kvmlite')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "['kvmlite', 'kvmlite.x86']"
