"""Emulator bugs found by the KVM differential tests, pinned down without KVM.

Each test is the minimal snippet hypothesis shrank a disagreement with the
real CPU to (``test_differential_kvm.py``), with the value the CPU produced.
They run on the fake ops, so they guard the fix on machines without /dev/kvm.
"""

from __future__ import annotations

from collections.abc import Callable

from kvmlite.emulator.executor import Executor
from tests.emulator.fakes import FakeOps, make

Asm = Callable[..., bytes]
RAX, RCX, RDX = 0, 1, 2
CODE = 0x1000
STACK = 0x8000


def run(asm: Asm, source: str, **regs: int) -> tuple[Executor, FakeOps]:
    ex, ops = make(64, asm(source + "\nhlt\n", 64, CODE), rip=CODE, rsp=STACK)
    for name, value in regs.items():
        ex.cpu.gpr[("rax", "rcx", "rdx").index(name)] = value
    ex.run(100)
    assert ex.cpu.halted
    return ex, ops


def test_xadd_with_one_register_twice_keeps_the_sum(asm: Asm) -> None:
    """SRC <- DEST happens before DEST <- SUM: ``xadd ax, ax`` with AX = 1 leaves 2 (found on KVM)."""
    ex, _ = run(asm, "xadd ax, ax", rax=1)
    assert ex.cpu.gpr[RAX] == 2


def test_xadd_to_memory_still_returns_the_old_value_in_the_register(asm: Asm) -> None:
    ex, ops = run(asm, "mov dword ptr [0x5000], 10\nmov ecx, 5\nxadd dword ptr [0x5000], ecx")
    assert ops.u(0x5000, 4) == 15
    assert ex.cpu.gpr[RCX] == 10


def test_32_bit_shift_by_zero_still_zero_extends_the_register(asm: Asm) -> None:
    """``shl edx, 0`` writes EDX like any 32-bit operation: bits 63:32 clear (found on KVM)."""
    ex, _ = run(asm, "shl edx, 0\nmov cl, 0\nrol eax, cl", rdx=0x1_0000_0001, rax=0xFFFF_FFFF_0000_0002)
    assert ex.cpu.gpr[RDX] == 1
    assert ex.cpu.gpr[RAX] == 2


def test_16_and_64_bit_shift_by_zero_leave_the_register_alone(asm: Asm) -> None:
    ex, _ = run(asm, "shl dx, 0\nshr rax, 64", rdx=0x1_0000_0001, rax=0xFFFF_FFFF_0000_0002)
    assert ex.cpu.gpr[RDX] == 0x1_0000_0001
    assert ex.cpu.gpr[RAX] == 0xFFFF_FFFF_0000_0002


def test_32_bit_double_shift_by_zero_zero_extends_too(asm: Asm) -> None:
    ex, _ = run(asm, "shld edx, eax, 0\nshrd eax, edx, 32", rdx=0x5_0000_0003, rax=0x7_0000_0004)
    assert ex.cpu.gpr[RDX] == 3
    assert ex.cpu.gpr[RAX] == 4
