"""dump-guest-memory's ELF core: identity and paging views, read back by gdb and readelf."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from kvmlite.memory.guest import GuestMemory
from kvmlite.vmm.coredump import DumpError, virtual_runs, write_core
from tests.gdb.support import GDB, run_gdb

HIGH = 0xFFFF_FFFF_8000_0000  # where Linux keeps its kernel image
PML4, PDPT, PD, PT = 0x10000, 0x11000, 0x12000, 0x13000
TARGET = 0x20_0000


class Regs:
    rip = HIGH + 0x10
    rax = rbx = rcx = rdx = rsi = rdi = rbp = r8 = r9 = r10 = r11 = r12 = r13 = r14 = r15 = 0
    rsp, rflags = HIGH + 0x800, 2


class Seg:
    def __init__(self, selector: int) -> None:
        self.selector, self.base = selector, 0


class Sregs:
    cs, ss, ds, es, fs, gs = (Seg(s) for s in (0x10, 0x18, 0x18, 0x18, 0, 0))
    cr0, cr3, efer = 0x8000_0011, PML4, 0x500


def _mapped_memory() -> GuestMemory:
    """4 MiB of RAM; HIGH -> 0x200000 as one 2 MiB page, and 0x1000 -> 0x3000 as one 4 KiB page."""
    memory = GuestMemory([(0, 4 << 20)])
    memory.write(PML4 + 511 * 8, struct.pack("<Q", PDPT | 3))
    memory.write(PDPT + 510 * 8, struct.pack("<Q", PD | 3))
    memory.write(PD, struct.pack("<Q", TARGET | 0x83))  # present, writable, 2 MiB
    memory.write(PML4, struct.pack("<Q", (PML4 + 0x4000) | 3))  # low half: PDPT at 0x14000
    memory.write(PML4 + 0x4000, struct.pack("<Q", (PML4 + 0x5000) | 3))
    memory.write(PML4 + 0x5000, struct.pack("<Q", PT | 3))
    memory.write(PT + 8, struct.pack("<Q", 0x3000 | 3))
    memory.write(TARGET + 0x10, b"kvmlite!")
    return memory


def test_page_table_walk_finds_each_mapping_as_a_run() -> None:
    memory = _mapped_memory()
    assert virtual_runs(memory, PML4) == [(0x1000, 0x3000, 0x1000), (HIGH, TARGET, 2 << 20)]


def test_paging_needs_long_mode() -> None:
    class Flat(Sregs):
        efer = 0

    with pytest.raises(DumpError, match="long mode"):
        write_core(Path("/nonexistent"), _mapped_memory(), [(Regs(), Flat())], paging=True)


@pytest.mark.skipif(GDB is None or shutil.which("readelf") is None, reason="needs gdb and readelf")
def test_gdb_reads_virtual_addresses_of_a_paging_core(tmp_path: Path) -> None:
    core = tmp_path / "paging.core"
    size = write_core(core, _mapped_memory(), [(Regs(), Sregs())], paging=True)
    assert size == core.stat().st_size
    headers = subprocess.run(["readelf", "-lW", str(core)], capture_output=True, text=True).stdout
    assert "0xffffffff80000000 0x0000000000200000" in headers  # p_vaddr, p_paddr
    out = run_gdb(None, f"core-file {core}", f"x/s {HIGH + 0x10:#x}", "x/s 0x200010", "p/x $rip")
    assert 'kvmlite!"' in out, out
    assert "Cannot access memory at address 0x200010" in out  # the virtual view only
    assert f"$1 = {HIGH + 0x10:#x}" in out
