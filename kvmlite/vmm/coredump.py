"""``dump-guest-memory``: the guest's RAM and vCPU registers as an ELF core file, as QEMU writes one.

The file is what ``gdb KERNEL CORE`` and the ``crash`` utility open:

* one ``PT_LOAD`` per guest RAM region, with ``p_paddr`` the guest-physical
  address and ``p_vaddr`` the same address (the identity view, as QEMU's dump
  without paging), or with ``paging`` one ``PT_LOAD`` per run of virtual
  pages that vCPU 0's long-mode page tables map to RAM, so ``gdb vmlinux
  CORE`` finds the kernel's variables at their virtual addresses (QEMU's
  ``dump-guest-memory -p``).  RAM is written once either way: the virtual
  runs point into it;
* one ``PT_NOTE`` holding an ``NT_PRSTATUS`` per vCPU (the register set
  Linux writes for a process, ``user_regs_struct``), in vCPU order.

ELF64/x86-64 when vCPU 0 is in long mode, ELF32/i386 otherwise (QEMU
chooses the same way), so gdb takes the core for the same architecture as
the guest's kernel.  Take the registers with the VM paused.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from kvmlite.errors import KvmliteError
from kvmlite.memory.guest import GuestMemory
from kvmlite.x86 import Cr0, Efer, Pte

ET_CORE = 4
EM_386, EM_X86_64 = 3, 62
PT_LOAD, PT_NOTE = 1, 4
PF_RWX = 7
NT_PRSTATUS = 1
_CHUNK = 1 << 20
PAGE = 0x1000
PTE_ADDR = 0x000F_FFFF_FFFF_F000
_LEVEL_SHIFTS = (39, 30, 21, 12)  # PML4, PDPT, PD, PT

# user_regs_struct, in the kernel's order
_REGS64 = (
    "r15",
    "r14",
    "r13",
    "r12",
    "rbp",
    "rbx",
    "r11",
    "r10",
    "r9",
    "r8",
    "rax",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "orig_rax",
    "rip",
    "cs",
    "eflags",
    "rsp",
    "ss",
    "fs_base",
    "gs_base",
    "ds",
    "es",
    "fs",
    "gs",
)
_REGS32 = (
    "ebx",
    "ecx",
    "edx",
    "esi",
    "edi",
    "ebp",
    "eax",
    "ds",
    "es",
    "fs",
    "gs",
    "orig_eax",
    "eip",
    "cs",
    "eflags",
    "esp",
    "ss",
)
_KVM_NAME = {
    "eflags": "rflags",
    "ebx": "rbx",
    "ecx": "rcx",
    "edx": "rdx",
    "esi": "rsi",
    "edi": "rdi",
    "ebp": "rbp",
    "eax": "rax",
    "eip": "rip",
    "esp": "rsp",
}


class DumpError(KvmliteError):
    """The core file could not be written."""


def _register(name: str, regs: Any, sregs: Any) -> int:
    if name in ("orig_rax", "orig_eax"):
        return (1 << 64) - 1 if name == "orig_rax" else 0xFFFF_FFFF  # -1: not in a system call
    if name in ("cs", "ss", "ds", "es", "fs", "gs"):
        return int(getattr(sregs, name).selector)
    if name in ("fs_base", "gs_base"):
        return int(getattr(sregs, name[:2]).base)
    return int(getattr(regs, _KVM_NAME.get(name, name)))


def prstatus(pid: int, regs: Any, sregs: Any, wide: bool) -> bytes:
    """One ``struct elf_prstatus`` (x86-64: 336 bytes, i386: 144) for a vCPU."""
    if wide:
        reg_block = struct.pack("<27Q", *(_register(n, regs, sregs) & (2**64 - 1) for n in _REGS64))
        head = struct.pack("<3ih2xQQ4I", 0, 0, 0, 0, 0, 0, pid, 0, 0, 0) + bytes(64)
        return head + reg_block + struct.pack("<i4x", 1)
    reg_block = struct.pack("<17I", *(_register(n, regs, sregs) & 0xFFFF_FFFF for n in _REGS32))
    head = struct.pack("<3ih2xII4I", 0, 0, 0, 0, 0, 0, pid, 0, 0, 0) + bytes(32)
    return head + reg_block + struct.pack("<i", 1)


def _note(name: bytes, kind: int, desc: bytes) -> bytes:
    name += b"\0"

    def pad(b: bytes) -> bytes:
        return b + bytes(-len(b) % 4)

    return struct.pack("<III", len(name), len(desc), kind) + pad(name) + pad(desc)


def virtual_runs(memory: GuestMemory, cr3: int) -> list[tuple[int, int, int]]:
    """(virtual, physical, size) of every RAM page 4-level page tables at ``cr3`` map, merged into runs."""
    runs: list[tuple[int, int, int]] = []

    def add(va: int, pa: int, size: int) -> None:
        if not memory.is_ram(pa, size):
            return
        va &= (1 << 64) - 1
        if runs:
            v, p, n = runs[-1]
            if v + n == va and p + n == pa:
                runs[-1] = (v, p, n + size)
                return
        runs.append((va, pa, size))

    def walk(table: int, level: int, base: int) -> None:
        if not memory.is_ram(table, PAGE):
            return
        shift = _LEVEL_SHIFTS[level]
        for i, entry in enumerate(struct.unpack("<512Q", memory.read(table, PAGE))):
            if not entry & Pte.P:
                continue
            va = base | i << shift
            if level == 0 and va & 1 << 47:
                va |= 0xFFFF << 48  # canonical upper half
            if level == 3 or (level in (1, 2) and entry & Pte.PS):
                size = 1 << shift
                add(va, entry & PTE_ADDR & ~(size - 1), size)
            else:
                walk(entry & PTE_ADDR, level + 1, va)

    walk(cr3 & PTE_ADDR, 0, 0)
    return runs


def write_core(path: Path, memory: GuestMemory, cpus: Sequence[tuple[Any, Any]], paging: bool = False) -> int:
    """Write the core file; ``cpus`` is each vCPU's (kvm_regs, kvm_sregs).  Returns the file's size."""
    if not cpus:
        raise DumpError("dump-guest-memory needs at least one vCPU")
    wide = bool(cpus[0][1].efer & Efer.LMA)
    if paging and not (wide and cpus[0][1].cr0 & Cr0.PG):
        raise DumpError("dump-guest-memory with paging needs vCPU 0 in long mode with paging on")
    notes = b"".join(
        _note(b"CORE", NT_PRSTATUS, prstatus(i + 1, r, s, wide)) for i, (r, s) in enumerate(cpus)
    )
    regions = [(int(r.start), r.size, r.view) for r in memory.regions]
    if paging:
        loads = virtual_runs(memory, cpus[0][1].cr3)
    else:
        loads = [(start, start, size) for start, size, _ in regions]
    phnum = 1 + len(loads)
    if wide:
        ehsize, phentsize = 64, 56
    else:
        ehsize, phentsize = 52, 32
    offset = ehsize + phnum * phentsize
    headers = [_phdr(wide, PT_NOTE, offset, 0, 0, len(notes), 0)]
    offset += len(notes)
    offset += -offset % 0x1000
    data_start = offset
    file_offset = {}  # region start -> where its bytes are in the file
    for start, size, _ in regions:
        file_offset[start] = offset
        offset += size
    for vaddr, paddr, size in loads:
        start = next(s for s, n, _ in regions if s <= paddr < s + n)
        headers.append(_phdr(wide, PT_LOAD, file_offset[start] + paddr - start, vaddr, paddr, size, PF_RWX))
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1, 1, 0]) + bytes(8)
    if wide:
        ehdr = ident + struct.pack(
            "<HHIQQQIHHHHHH", ET_CORE, EM_X86_64, 1, 0, ehsize, 0, 0, ehsize, phentsize, phnum, 64, 0, 0
        )
    else:
        ehdr = ident + struct.pack(
            "<HHIIIIIHHHHHH", ET_CORE, EM_386, 1, 0, ehsize, 0, 0, ehsize, phentsize, phnum, 40, 0, 0
        )
    try:
        with open(path, "wb") as f:
            f.write(ehdr + b"".join(headers) + notes)
            f.seek(data_start)
            for _, size, view in regions:
                _copy(f, view, size)
            return f.tell()
    except OSError as err:
        raise DumpError(f"cannot write {path}: {err.strerror or err}") from err


def _copy(f: BinaryIO, view: memoryview, size: int) -> None:
    for pos in range(0, size, _CHUNK):
        f.write(view[pos : min(pos + _CHUNK, size)])


def _phdr(wide: bool, kind: int, offset: int, vaddr: int, paddr: int, size: int, flags: int) -> bytes:
    if wide:
        return struct.pack("<IIQQQQQQ", kind, flags, offset, vaddr, paddr, size, size, 0)
    return struct.pack("<IIIIIIII", kind, offset, vaddr, paddr, size, size, flags, 0)
