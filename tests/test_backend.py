"""The backend protocol: both backends implement it, say what they cannot do, and debug the same way."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from kvmlite.backend import BackendUnsupported, VcpuBackend, VmBackend, open_backend
from kvmlite.kvm import exits as E
from kvmlite.kvm.constants import GuestDebug
from kvmlite.loaders.base import EntryMode, LoadResult
from kvmlite.memory.guest import GuestMemory
from kvmlite.vmm.cpu_setup import setup_cpu
from kvmlite.vmm.debug import BreakKind, GuestDebugSettings, HwBreakpoint
from tests.conftest import KVM_OK

BACKENDS = ["emu", pytest.param("kvm", marks=pytest.mark.skipif(not KVM_OK, reason="needs /dev/kvm"))]
ENTRY = 0x10_0000
#: nop; nop; mov eax, 1; out 0x10, al; int3; hlt
CODE = bytes.fromhex("90 90 b8 01 00 00 00 e6 10 cc f4")
MOV_EAX, OUT, INT3 = ENTRY + 2, ENTRY + 7, ENTRY + 9


@contextmanager
def guest_on(backend: str) -> Iterator[tuple[VmBackend, VcpuBackend]]:
    """A long-mode vCPU at CODE on ``backend``."""
    memory = GuestMemory([(0, 4 << 20)])
    vm = open_backend(backend)
    try:
        vm.register_memory(memory)
        cpu = vm.create_vcpu(0)
        regs, sregs = cpu.get_regs(), cpu.get_sregs()
        setup_cpu(regs, sregs, memory, LoadResult("test", ENTRY, EntryMode.LONG64, gdt=0x500))
        cpu.set_sregs(sregs)
        cpu.set_regs(regs)
        memory.write(ENTRY, CODE)
        yield vm, cpu
    finally:
        vm.close()
        memory.close()


@pytest.fixture(params=BACKENDS)
def vcpu(request: pytest.FixtureRequest) -> Iterator[tuple[VmBackend, VcpuBackend]]:
    with guest_on(request.param) as pair:
        yield pair


def test_both_backends_implement_the_protocols(vcpu: tuple[VmBackend, VcpuBackend]) -> None:
    vm, cpu = vcpu
    assert isinstance(vm, VmBackend) and isinstance(cpu, VcpuBackend)
    caps = vm.capabilities()
    assert caps.name in ("kvm", "emu") and caps.max_vcpus >= 1 and caps.guest_debug


def test_an_execution_breakpoint_stops_before_the_instruction(vcpu: tuple[VmBackend, VcpuBackend]) -> None:
    _, cpu = vcpu
    GuestDebugSettings(cpu).request("test", hw=[HwBreakpoint(MOV_EAX)])
    ex = cpu.run()
    assert isinstance(ex, E.Debug) and ex.pc == MOV_EAX and ex.exception == 1
    assert ex.dr6 & 1  # DR0 hit
    assert cpu.get_regs().rip == MOV_EAX


def test_the_emulator_says_what_it_cannot_do() -> None:
    memory = GuestMemory([(0, 1 << 20)])
    vm = open_backend("emu")
    try:
        vm.register_memory(memory)
        cpu = vm.create_vcpu(0)
        caps = vm.capabilities()
        assert not (caps.in_kernel_irqchip or caps.lapic_state or caps.msr_filter)
        with pytest.raises(BackendUnsupported, match="emu backend cannot read a local APIC"):
            cpu.get_lapic()
        with pytest.raises(BackendUnsupported, match="in-kernel irqchip"):
            vm.create_irqchip()
        with pytest.raises(BackendUnsupported, match="I/O port accesses"):
            GuestDebugSettings(cpu).request("test", hw=[HwBreakpoint(0x1000, BreakKind.IO, 4)])
    finally:
        vm.close()
        memory.close()


def test_the_emulator_answers_what_linux_reads_of_an_intel_cpu() -> None:
    """Found booting Linux on emu: leaf 0x15 (the TSC and the LAPIC bus at 1 GHz, so Linux does not
    calibrate against the PIT), and MSRs its early code reads with plain RDMSR (MISC_ENABLE in
    ``verify_cpu``, the microcode revision, MTRRcap, PAT), which #GP'd into a triple fault."""
    memory = GuestMemory([(0, 1 << 20)])
    vm = open_backend("emu")
    try:
        vm.register_memory(memory)
        ops = vm.create_vcpu(0).ops  # type: ignore[attr-defined]
        assert ops.cpuid(0x15, 0) == (1, 1, 1_000_000_000, 0) and ops.cpuid(0, 0)[0] >= 0x15
        assert ops.read_msr(0x1A0) == 0x1801 and ops.read_msr(0x8B) == 0 and ops.read_msr(0xFE) == 0x508
        ops.write_msr(0x277, 0x0606)
        assert ops.read_msr(0x277) == 0x0606
    finally:
        vm.close()
        memory.close()


def test_emulator_breakpoints_resume_over_themselves_and_step_and_catch_int3() -> None:
    with guest_on("emu") as (_, cpu):
        dbg = GuestDebugSettings(cpu)
        dbg.request("test", hw=[HwBreakpoint(MOV_EAX)], sw_breakpoints=True)
        first = cpu.run()
        assert isinstance(first, E.Debug) and first.pc == MOV_EAX
        out = cpu.run()  # the breakpoint does not fire again on the resume (RF)
        assert isinstance(out, E.IoOut) and out.port == 0x10
        trap = cpu.run()
        assert isinstance(trap, E.Debug) and trap.exception == 3 and trap.pc == INT3
        dbg.release("test")
        regs = cpu.get_regs()
        regs.rip = ENTRY
        cpu.set_regs(regs)
        dbg.request("test", single_step=True)
        steps = [cpu.run() for _ in range(2)]
        assert [(type(s), s.pc) for s in steps] == [(E.Debug, ENTRY + 1), (E.Debug, MOV_EAX)]  # type: ignore[union-attr]
        assert all(s.dr6 & (1 << 14) for s in steps)  # type: ignore[union-attr]
        assert int(GuestDebug.SINGLESTEP) & dbg.merged()[0]
