"""VmControl: pause every vCPU from another thread, change registers while paused, resume, lose nothing.

The guest counts timer ticks (PIT channel 0 through the PIC, one OUT per
tick with the count) and, after each wake-up from HLT, reads the next
number of a host sequence with IN and checks it.  With two vCPUs the AP
reads its own sequence in a tight loop (an IN exit every few microseconds,
so a pause meets it in the middle of one).  Both leave their loops when the
host sets RSI to MAGIC while the VM is paused.  A lost, duplicated or
half-completed exit shows up as a gap in the ticks or a wrong number in a
sequence (the guest then exits with status 3).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from kvmlite.errors import KvmliteError
from kvmlite.kvm.constants import GuestDebug
from kvmlite.vmm.debug import BreakKind, GuestDebugSettings, HwBreakpoint
from kvmlite.vmm.loop import VmControl
from kvmlite.vmm.machine import Machine, MachineConfig
from kvmlite.vmm.vmem import read_virtual, write_virtual
from tests.conftest import KVM_OK, MULTIBOOT_HEADER, build_multiboot
from tests.images import TICK_GATES, tick_setup

SEQ_PORT, TICK_PORT, AP_SEQ_PORT = 0x700, 0x704, 0x708
TICKS_ADDR, AP_STARTED, AP_DONE = 0x30_0000, 0x9000, 0x9010
MAGIC = 0x600D
CYCLES = 100
STATUS_DONE = (0x21 << 1) | 1
STATUS_BAD_SEQUENCE = (1 << 1) | 1

START_AP = """
    cld
    mov $trampoline, %esi
    mov $0x8000, %edi
    mov $(trampoline_end - trampoline), %ecx
    rep movsb
    movl $0x1FF, 0xFEE000F0          /* software-enable the LAPIC */
    movl $(1 << 24), 0xFEE00310
    movl $0x00004500, 0xFEE00300     /* INIT */
    movl $(1 << 24), 0xFEE00310
    movl $0x00004608, 0xFEE00300     /* startup IPI, vector 8: 0x8000 */
"""
WAIT_AP = """
4:  pause
    cmpl $0, 0x9010
    je 4b
    cmpl $1, 0x9010
    jne bad
"""
TRAMPOLINE = """
trampoline:
.code16
    xor %ax, %ax
    mov %ax, %ds
    xor %ebx, %ebx
    movl $1, 0x9000
1:  mov $0x708, %dx
    in %dx, %eax
    inc %ebx
    cmp %ebx, %eax
    jne 3f
    cmp $0x600D, %esi
    jne 1b
    movl $1, 0x9010
    cli
2:  hlt
    jmp 2b
3:  movl $2, 0x9010
    cli
    hlt
.code32
trampoline_end:
"""

GUEST = (
    MULTIBOOT_HEADER
    + """
.text
.globl _start
_start:
    mov $0x2ff000, %esp
    START_AP
TICK_SETUP
    xor %ebx, %ebx
    xor %esi, %esi
    sti
main:
    hlt
    mov $0x700, %dx
    in %dx, %eax
    inc %ebx
    cmp %ebx, %eax
    jne bad
    cmp $0x600D, %esi
    jne main
    cli
    WAIT_AP
    mov $0x21, %eax
    jmp leave
bad:
    mov $1, %eax
leave:
    mov $0xf4, %dx
    out %eax, %dx
    cli
    hlt

tick:
    push %eax
    push %edx
    incl 0x300000
    mov 0x300000, %eax
    mov $0x704, %dx
    out %eax, %dx
    mov $0x20, %al
    out %al, $0x20
    pop %edx
    pop %eax
spurious:
    iret

TICK_GATES
TRAMPOLINE_CODE

.bss
.align 8
idt:
    .skip 256 * 8
"""
)


class Sequence:
    """A port that answers IN with 1, 2, 3, ... (and counts them)."""

    def __init__(self) -> None:
        self.count = 0

    def read(self, offset: int, size: int) -> int:
        self.count += 1
        return self.count

    def write(self, offset: int, size: int, value: int) -> None: ...


class Recorder:
    """A port that keeps every value written to it."""

    def __init__(self) -> None:
        self.values: list[int] = []

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.values.append(value)


def tick_machine(
    tmp_path: Path, backend: str, irqchip: str, cpus: int
) -> tuple[Machine, Sequence, Sequence, Recorder]:
    smp = cpus > 1
    source = (
        GUEST.replace("TICK_SETUP", tick_setup(5966))
        .replace("TICK_GATES", TICK_GATES)
        .replace("START_AP", START_AP if smp else "")
        .replace("WAIT_AP", WAIT_AP if smp else "")
        .replace("TRAMPOLINE_CODE", TRAMPOLINE if smp else "")
    )
    elf = build_multiboot(tmp_path, f"ticks{cpus}", source)
    config = MachineConfig(
        kernel=elf, backend=backend, irqchip=irqchip, cpus=cpus, memory_mib=16, serial_out=lambda b: None
    )
    machine = Machine(config)
    machine.attach_interrupt_controllers()
    machine.attach_debug_exit()
    seq, ap_seq, ticks = Sequence(), Sequence(), Recorder()
    machine.pio.insert(seq, SEQ_PORT, 4, name="test sequence")
    machine.pio.insert(ticks, TICK_PORT, 4, name="test ticks")
    machine.pio.insert(ap_seq, AP_SEQ_PORT, 4, name="test AP sequence")
    machine.load()
    machine.create_vcpus(cpus)
    return machine, seq, ap_seq, ticks


CONFIGS = [
    pytest.param("kvm", "kernel", 2, id="kvm-kernel-irqchip-2cpus"),
    pytest.param("kvm", "userspace", 1, id="kvm-userspace-irqchip"),
    pytest.param("emu", "userspace", 1, id="emu"),
]


def wait_until(predicate, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.mark.parametrize(("backend", "irqchip", "cpus"), CONFIGS)
def test_pause_change_registers_resume_and_nothing_lost_in_100_cycles(
    tmp_path: Path, backend: str, irqchip: str, cpus: int
) -> None:
    if backend == "kvm" and not KVM_OK:
        pytest.skip("needs a usable /dev/kvm")
    machine, seq, ap_seq, ticks = tick_machine(tmp_path, backend, irqchip, cpus)
    control = machine.control
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(machine.run()))
    try:
        runner.start()
        wait_until(lambda: len(ticks.values) >= 3, "the first timer ticks")
        if cpus > 1:
            wait_until(lambda: machine.memory.read(AP_STARTED, 1) == b"\x01", "the AP")
        for cycle in range(CYCLES):
            assert control.pause(timeout=10), "the vCPUs did not park"
            assert control.paused
            seen = (len(ticks.values), seq.count, ap_seq.count)
            if cycle % 20 == 0:  # nothing runs while paused: no exit reaches a device
                time.sleep(0.02)
                assert (len(ticks.values), seq.count, ap_seq.count) == seen
            control.resume()
            time.sleep(0.003)
        assert runner.is_alive() and not control.stopping, control.stop_info

        def change_registers() -> list[int]:
            rips = []
            for loop in machine.loops:
                regs = loop.vcpu.get_regs()
                rips.append(regs.rip)
                regs.rsi = MAGIC
                loop.vcpu.set_regs(regs)
            return rips

        rips = control.run_paused(change_registers)
        assert all(rip for rip in rips) and len(rips) == cpus
        runner.join(timeout=30)
        assert result == [STATUS_DONE], control.stop_info
        counted = int.from_bytes(machine.memory.read(TICKS_ADDR, 4), "little")
    finally:
        control.stop(99, "test over")
        runner.join(timeout=10)
        machine.close()
    # every tick the guest counted reached the host exactly once, in order; the sequences never broke
    assert ticks.values == list(range(1, counted + 1))
    assert len(ticks.values) >= 10
    # each wake-up from HLT is a tick's doing (KVM's PIT delivers ticks missed in a pause back to back)
    assert 1 <= seq.count <= counted
    if cpus > 1:
        assert ap_seq.count > CYCLES  # the AP was busy with IN exits through every pause



# --- the pieces, without a running guest -------------------------------------------------------------


def test_resume_without_pause_is_an_error_and_pauses_nest() -> None:
    control = VmControl()
    with pytest.raises(KvmliteError, match="without a pause"):
        control.resume()
    assert control.pause(timeout=1) and control.pause(timeout=1)  # no loop runs: paused at once
    control.resume()
    assert control.attention and control.paused
    control.resume()
    assert not control.attention and not control.paused


class FakeDebugVcpu:
    id = 0

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[int], int]] = []

    def set_guest_debug(self, flags: int, addrs: list[int], dr7: int) -> None:
        self.calls.append((int(flags), list(addrs), dr7))


def test_guest_debug_requests_of_two_users_are_merged_not_overwritten() -> None:
    vcpu = FakeDebugVcpu()
    dbg = GuestDebugSettings(vcpu)
    dbg.request("syscall-fix", hw=[HwBreakpoint(0x1000)])
    dbg.request("gdb", sw_breakpoints=True, hw=[HwBreakpoint(0x2000, BreakKind.WRITE, 4)])
    flags, addrs, dr7 = vcpu.calls[-1]
    assert flags == GuestDebug.ENABLE | GuestDebug.USE_HW_BP | GuestDebug.USE_SW_BP
    assert addrs == [0x1000, 0x2000]
    # DR0: global enable, execute; DR1: global enable, R/W=01 (write), LEN=11 (4 bytes)
    assert dr7 == (1 << 1) | (1 << 3) | (0b01 << 20) | (0b11 << 22)
    dbg.request("syscall-fix", single_step=True)  # replaces its own request only
    assert vcpu.calls[-1] == (
        int(GuestDebug.ENABLE | GuestDebug.SINGLESTEP | GuestDebug.USE_SW_BP | GuestDebug.USE_HW_BP),
        [0x2000],
        (1 << 1) | (0b01 << 16) | (0b11 << 18),
    )
    dbg.release("gdb")
    dbg.release("syscall-fix")
    assert vcpu.calls[-1] == (0, [], 0)


def test_more_than_four_hardware_breakpoints_are_refused_and_change_nothing() -> None:
    vcpu = FakeDebugVcpu()
    dbg = GuestDebugSettings(vcpu)
    dbg.request("a", hw=[HwBreakpoint(0x1000 * i) for i in range(1, 4)])
    with pytest.raises(KvmliteError, match="5 hardware breakpoints"):
        dbg.request("b", hw=[HwBreakpoint(0x9000), HwBreakpoint(0xA000)])
    assert len(vcpu.calls) == 1 and "b" not in dbg.requests


def test_virtual_memory_goes_through_the_emulators_page_tables(tmp_path: Path) -> None:
    """On the software backend the one helper walks the guest's long-mode tables (a page mapped at 4 GiB)."""
    from kvmlite.emulator.backend import EmuVm
    from kvmlite.loaders.base import EntryMode, LoadResult
    from kvmlite.memory.guest import GuestMemory
    from kvmlite.vmm.cpu_setup import setup_cpu

    memory = GuestMemory([(0, 4 << 20)])
    vm = EmuVm()
    try:
        vm.register_memory(memory)
        vcpu = vm.create_vcpu(0)
        regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
        setup_cpu(regs, sregs, memory, LoadResult("test", 0x10_0000, EntryMode.LONG64, gdt=0x500))
        vcpu.set_sregs(sregs)
        vcpu.set_regs(regs)
        write_virtual(vcpu, memory, 0x20_0FFE, b"abcd")  # identity-mapped, across a page boundary
        assert memory.read(0x20_0FFE, 4) == b"abcd"
        assert read_virtual(vcpu, memory, 0x20_0FFE, 4) == b"abcd"
        with pytest.raises(KvmliteError, match="not mapped"):
            read_virtual(vcpu, memory, 0x7FFF_FFFF_F000, 1)
    finally:
        vm.close()
        memory.close()
