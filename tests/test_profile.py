"""The guest profiler: RIP samples resolved to the guest's own function names."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kvmlite.errors import ConfigError
from kvmlite.loaders.elf import elf_symbols
from kvmlite.vmm.profile import SymbolTable
from tests.conftest import KVM_OK, MULTIBOOT_HEADER, build_multiboot, kvmlite_run

# Spends ten times as many instructions in `hot` as in `cold`, then writes 0x7f to isa-debug-exit:
# kvmlite exits with status (0x7f << 1) | 1 = 255.
GUEST = (
    MULTIBOOT_HEADER
    + """
    .text
    .globl _start, hot, cold
_start:
    mov $0x110000, %esp
    call cold
    call hot
    mov $0xf4, %dx
    mov $0x7f, %eax
    out %eax, %dx
    cli
    hlt
cold:
    mov $LOOPS / 10, %ecx
1:  dec %ecx
    jnz 1b
    ret
hot:
    mov $LOOPS, %ecx
2:  dec %ecx
    jnz 2b
    ret
"""
)


def _guest(tmp_path: Path, loops: int) -> Path:
    return build_multiboot(tmp_path, "profiled", f".set LOOPS, {loops}\n" + GUEST)


def test_elf_symbols_reads_the_functions_of_a_linked_guest(tmp_path: Path) -> None:
    names = {name: addr for addr, _, name in elf_symbols(_guest(tmp_path, 10).read_bytes())}
    assert {"_start", "hot", "cold"} <= set(names)
    assert names["_start"] == 0x10000C  # after the 12-byte multiboot header at 1 MiB


def test_symbol_table_resolves_addresses_inside_functions() -> None:
    table = SymbolTable.from_nm(
        "ffffffff81000000 T _stext\nffffffff81000100 t helper\n0000000000000010 d data\n"
    )
    assert len(table) == 2  # data symbols are left out
    assert table.function(0xFFFFFFFF81000000) == "_stext"
    assert table.function(0xFFFFFFFF810000FF) == "_stext"
    assert table.function(0xFFFFFFFF81000104) == "helper"
    assert table.function(0x1000) == "0x1000"


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "no code symbols"), ("zzzz T name\n", "not a hex address"), ("ffff T\n", "expected 'address")],
)
def test_symbol_map_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SymbolTable.from_nm(text, "System.map")


BACKENDS = ["emu", pytest.param("kvm", marks=pytest.mark.skipif(not KVM_OK, reason="needs /dev/kvm"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_profile_finds_the_hot_function(tmp_path: Path, backend: str) -> None:
    # about 0.6 s of guest work at the emulated speed of either backend on this project's hosts
    kernel = _guest(tmp_path, 200_000 if backend == "emu" else 400_000)
    profile = tmp_path / "profile.txt"
    proc = kvmlite_run(
        "--kernel", str(kernel), "--backend", backend, "--profile", str(profile), "--profile-hz", "1000"
    )
    assert proc.returncode == 255, proc.stderr
    text = profile.read_text()
    whole = text.split("-- since")[0]
    rows = [line.split() for line in whole.splitlines() if line.strip().endswith(("hot", "cold", "_start"))]
    ranked = [row[-1] for row in rows]
    assert ranked[0] == "hot", text
    samples = {row[-1]: int(row[2]) for row in rows}
    assert samples["hot"] >= 20, text
    assert samples["hot"] > 3 * samples.get("cold", 0), text


def test_profile_of_a_stripped_kernel_warns_and_reports_addresses(tmp_path: Path) -> None:
    kernel = _guest(tmp_path, 20_000)
    stripped = tmp_path / "stripped.elf"
    subprocess.run(["strip", "-o", str(stripped), str(kernel)], check=True)
    profile = tmp_path / "p.txt"
    proc = kvmlite_run(
        "--kernel", str(stripped), "--backend", "emu", "--profile", str(profile), "--profile-hz", "1000"
    )
    assert proc.returncode == 255, proc.stderr
    assert "no symbols" in proc.stderr
    assert "0x10" in profile.read_text()


def test_missing_symbol_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = kvmlite_run(
        "--backend", "emu", "--profile", str(tmp_path / "p"), "--symbols", str(tmp_path / "nope.map")
    )
    assert proc.returncode == 2
    assert "nope.map does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_profile_rate_beyond_the_limit_is_a_clear_error(tmp_path: Path) -> None:
    proc = kvmlite_run("--backend", "emu", "--profile", str(tmp_path / "p"), "--profile-hz", "20000")
    assert proc.returncode == 2
    assert "--profile-hz must be between 1 and 10000" in proc.stderr
    assert "Traceback" not in proc.stderr
