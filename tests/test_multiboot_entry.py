"""The multiboot entry state, register by register, as QEMU's ``-kernel`` leaves it.

Two small multiboot kernels built here: one saves every register it can see
at its first instruction and prints them to COM1, the other calls a function
before it loads a stack of its own (legal in practice: QEMU and GRUB both
enter with ESP in usable low RAM).  Both run under kvmlite (KVM and the
software backend) and, where it is installed, under ``qemu-system-x86_64
-kernel`` (TCG, so the reference does not depend on this host's KVM).

QEMU's multiboot option ROM defines EAX (the magic), ECX (the entry address,
it jumps through it), ESP (still SeaBIOS's stack), CR0 (PE|ET), the flat
selectors, its five-entry GDT and the real-mode IDT register; those must be
equal.  EBX points at the information structure under both but QEMU puts it
at 0x9500 and kvmlite after the kernel; EDX, ESI, EDI and EBP are firmware
leftovers (EDX changes with the RAM size under QEMU); the GDT's base is in
QEMU's option ROM; the arithmetic flags in EFLAGS are left by the ROM's last
computation (they differ between QEMU's TCG and KVM): none of these is compared.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import KVM_OK, MULTIBOOT_HEADER, build_multiboot, requires_kvm
from tests.images import GUEST_LIB, GUEST_STATUS

QEMU = "qemu-system-x86_64"
TIMEOUT_S = 60
EFLAGS_STATUS_BITS = 0x8D5  # CF PF AF ZF SF OF

requires_qemu = pytest.mark.skipif(shutil.which(QEMU) is None, reason=f"{QEMU} is not installed")
BACKENDS = [pytest.param("kvm", marks=requires_kvm), "emu"]

#: What QEMU 7.2 leaves (measured: TCG and KVM, -M pc and q35, -m 64 to 1024), for the registers it defines.
QEMU_ENTRY = {
    "eax": 0x2BADB002,
    "ecx": 0x10000C,  # the entry point of the kernel below: _start after the 12-byte header
    "esp": 0x6F08,
    "eflags": 0x2,  # with the arithmetic flags masked
    "cr0": 0x11,
    "cr3": 0,
    "cr4": 0,
    "cs": 0x08,
    "ds": 0x10,
    "es": 0x10,
    "fs": 0x10,
    "gs": 0x10,
    "ss": 0x10,
    "gdt_limit": 0x27,
    "idt_limit": 0x3FF,
    "idt_base": 0,
    "efer": 0,
    "mbi_flags": 0x24F,  # memory, boot device, cmdline, modules, mmap, boot loader name
}

_NAMES = (
    "eax ebx ecx edx esi edi ebp esp eflags cr0 cr3 cr4 cs ds es fs gs ss "
    "gdt_limit gdt_base idt_limit idt_base efer mbi_flags"
).split()

ENTRY_REGS_GUEST = (
    MULTIBOOT_HEADER
    + """
.text
.globl _start
_start:                     # save everything before touching the stack or the flags
    mov %eax, saved+0
    mov %ebx, saved+4
    mov %ecx, saved+8
    mov %edx, saved+12
    mov %esi, saved+16
    mov %edi, saved+20
    mov %ebp, saved+24
    mov %esp, saved+28
    mov $stack_top, %esp
    pushf
    popl saved+32
    mov %cr0, %eax
    mov %eax, saved+36
    mov %cr3, %eax
    mov %eax, saved+40
    mov %cr4, %eax
    mov %eax, saved+44
    xor %eax, %eax
    mov %cs, %ax
    mov %eax, saved+48
    mov %ds, %ax
    mov %eax, saved+52
    mov %es, %ax
    mov %eax, saved+56
    mov %fs, %ax
    mov %eax, saved+60
    mov %gs, %ax
    mov %eax, saved+64
    mov %ss, %ax
    mov %eax, saved+68
    sgdt gdtr
    sidt idtr
    movzwl gdtr, %eax
    mov %eax, saved+72
    mov gdtr+2, %eax
    mov %eax, saved+76
    movzwl idtr, %eax
    mov %eax, saved+80
    mov idtr+2, %eax
    mov %eax, saved+84
    mov $0xc0000080, %ecx
    rdmsr
    mov %eax, saved+88
    mov saved+4, %ebx
    mov (%ebx), %eax
    mov %eax, saved+92
    mov $names, %esi
    mov $saved, %edi
next:                       # "name=hex8" per saved register
    cmpb $0, (%esi)
    je exit
    call puts
1:  lodsb                   # skip past the name
    test %al, %al
    jnz 1b
    mov $'=', %al
    call putc
    mov (%edi), %edx
    add $4, %edi
    call puthex
    mov $'\\n', %al
    call putc
    jmp next
"""
    + GUEST_LIB
    + "names:\n"
    + "".join(f'    .asciz "{name}"\n' for name in _NAMES)
    + """    .byte 0
.bss
.align 16
saved: .space 128
gdtr: .space 8
idtr: .space 8
.space 4096
stack_top:
"""
)

CALL_BEFORE_STACK_GUEST = (
    MULTIBOOT_HEADER
    + """
.text
.globl _start
_start:                     # no stack of its own yet: the loader's must do
    call greet
    mov $stack_top, %esp
    mov $done, %esi
    call puts
    jmp exit
greet:
    push %ebp
    mov %esp, %ebp
    mov $hello, %esi
    call puts
    pop %ebp
    ret
hello: .asciz "called greet on the loader's stack\\n"
done: .asciz "returned from greet\\n"
"""
    + GUEST_LIB
    + """
.bss
.align 16
.space 4096
stack_top:
"""
)
CALL_BEFORE_STACK_OUTPUT = "called greet on the loader's stack\nreturned from greet\n"


def parse_dump(text: str) -> dict[str, int]:
    regs = {}
    for line in text.splitlines():
        name, _, value = line.partition("=")
        regs[name] = int(value, 16)
    assert list(regs) == _NAMES, f"incomplete register dump:\n{text}"
    return regs


def defined(regs: dict[str, int]) -> dict[str, int]:
    """The registers QEMU's option ROM defines (see the module docstring), status flags masked."""
    out = {name: regs[name] for name in QEMU_ENTRY}
    out["eflags"] &= ~EFLAGS_STATUS_BITS
    return out


def run_kvmlite(kernel: Path, backend: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvmlite", "run", "--kernel", str(kernel), "--backend", backend],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


def run_qemu(kernel: Path) -> subprocess.CompletedProcess[str]:
    cmd = [QEMU, "-accel", "tcg", "-m", "128", "-display", "none", "-nodefaults", "-no-reboot"]
    cmd += ["-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", str(kernel)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def guests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("mbentry")
    return {
        "regs": build_multiboot(tmp, "mbregs", ENTRY_REGS_GUEST),
        "call": build_multiboot(tmp, "mbcall", CALL_BEFORE_STACK_GUEST),
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_entry_registers_are_those_qemus_multiboot_rom_leaves(backend: str, guests: dict[str, Path]) -> None:
    r = run_kvmlite(guests["regs"], backend)
    assert r.returncode == GUEST_STATUS, r.stderr
    regs = parse_dump(r.stdout)
    assert defined(regs) == QEMU_ENTRY
    assert regs["ebx"] != 0 and regs["gdt_base"] != 0


@requires_qemu
def test_entry_registers_same_as_under_qemu(guests: dict[str, Path]) -> None:
    q = run_qemu(guests["regs"])
    assert q.returncode == GUEST_STATUS, q.stderr
    k = run_kvmlite(guests["regs"], "emu")
    assert k.returncode == GUEST_STATUS, k.stderr
    assert defined(parse_dump(k.stdout)) == defined(parse_dump(q.stdout))


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_calling_before_its_own_stack_runs(backend: str, guests: dict[str, Path]) -> None:
    r = run_kvmlite(guests["call"], backend)
    assert (r.stdout, r.returncode) == (CALL_BEFORE_STACK_OUTPUT, GUEST_STATUS), r.stderr


@requires_qemu
def test_kernel_calling_before_its_own_stack_prints_the_same_as_under_qemu(guests: dict[str, Path]) -> None:
    q = run_qemu(guests["call"])
    k = run_kvmlite(guests["call"], "kvm" if KVM_OK else "emu")
    assert (k.stdout, k.returncode) == (q.stdout, q.returncode) == (CALL_BEFORE_STACK_OUTPUT, GUEST_STATUS)
