"""SMP: per-vCPU CPUID topology, AP start-up through the in-kernel LAPIC, the end of an SMP guest, --cpus."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from kvmlite.cli.main import main
from kvmlite.errors import ConfigError
from kvmlite.firmware.acpi import MAX_CPUS
from kvmlite.kvm import exits as E
from kvmlite.kvm.constants import MpState
from kvmlite.kvm.cpuid import CpuidEntry
from kvmlite.vmm.cpu_setup import boot_msrs, guest_cpuid
from kvmlite.vmm.irqchip import KernelIrqChip
from kvmlite.vmm.loop import VmControl
from kvmlite.vmm.machine import SMP_NEEDS_KERNEL_IRQCHIP, Machine, MachineConfig
from kvmlite.x86 import Msr
from tests.conftest import MULTIBOOT_HEADER, build_multiboot, requires_kvm

# --- CPUID topology (no KVM needed) -------------------------------------------------------------------

#: The shape of what KVM_GET_SUPPORTED_CPUID gives on an AMD host (zeros in leaf 0xB, host caches).
SUPPORTED = [
    CpuidEntry(0, 0, 0, 0x1C, 0x68747541, 0x444D4163, 0x69746E65),
    CpuidEntry(1, 0, 0, 0xA10F11, 0x00020800, 0x81202000, 0x078BFBFF),
    CpuidEntry(4, 0, 1, 0x121, 0x1C0003F, 0x3F, 0),  # an L1 data cache, as on Intel
    CpuidEntry(4, 1, 1, 0x163, 0x3C0003F, 0x7FFF, 0),  # an L3
    CpuidEntry(0xB, 0, 1, 0, 0, 0, 0),
    CpuidEntry(0x8000_0008, 0, 0, 0x3030, 0, 0x7001, 0),
    CpuidEntry(0x8000_001D, 0, 1, 0x121, 0x1C0003F, 0x3F, 0),
    CpuidEntry(0x8000_001D, 3, 1, 0x4163, 0x3C0003F, 0x7FFF, 1),
    CpuidEntry(0x8000_001E, 0, 0, 0, 0, 0, 0),
]


def leaf(entries: list[CpuidEntry], function: int, index: int = 0) -> CpuidEntry:
    (e,) = [e for e in entries if e.function == function and e.index == index]
    return e


def test_leaf_1_gives_each_vcpu_its_apic_id_and_the_logical_count_with_htt() -> None:
    for vcpu in range(3):
        e = leaf(guest_cpuid(SUPPORTED, vcpu, 3), 1)
        assert e.ebx >> 24 == vcpu and (e.ebx >> 16) & 0xFF == 3
        assert e.edx & (1 << 28)
        assert e.ebx & 0xFFFF == 0x0800  # CLFLUSH size kept


def test_a_single_vcpu_does_not_claim_htt() -> None:
    e = leaf(guest_cpuid(SUPPORTED, 0, 1), 1)
    assert not e.edx & (1 << 28) and (e.ebx >> 16) & 0xFF == 1


def test_leaf_0xb_describes_one_package_of_single_thread_cores_with_x2apic_ids() -> None:
    entries = guest_cpuid(SUPPORTED, 2, 3)
    smt, core, end = (leaf(entries, 0xB, i) for i in range(3))
    assert (smt.eax, smt.ebx, smt.ecx >> 8) == (0, 1, 1)  # SMT level: 1 thread, no ID bits
    assert (core.eax, core.ebx, core.ecx >> 8) == (2, 3, 2)  # core level: 2 ID bits, 3 CPUs
    assert end.ecx >> 8 == 0 and end.ebx == 0
    assert {smt.edx, core.edx, end.edx} == {2}
    assert all(e.flags & 1 for e in (smt, core, end))  # per-subleaf entries


def test_amd_leaves_agree_with_the_same_topology() -> None:
    entries = guest_cpuid(SUPPORTED, 1, 4)
    assert leaf(entries, 0x8000_0008).ecx & 0xF0FF == 3 | (2 << 12)  # NC = 3, ApicIdSize = 2
    e = leaf(entries, 0x8000_001E)
    assert (e.eax, e.ebx, e.ecx) == (1, 1, 0)  # extended APIC ID, core 1 with 1 thread, node 0
    assert (leaf(entries, 0x8000_001D, 0).eax >> 14) & 0xFFF == 0  # L1 per core
    assert (leaf(entries, 0x8000_001D, 3).eax >> 14) & 0xFFF == 3  # L3 shared by the 4


def test_intel_leaf_4_counts_the_cores_of_the_package() -> None:
    entries = guest_cpuid(SUPPORTED, 0, 2)
    assert leaf(entries, 4, 0).eax >> 26 == 1 and (leaf(entries, 4, 0).eax >> 14) & 0xFFF == 0
    assert (leaf(entries, 4, 1).eax >> 14) & 0xFFF == 1


# --- configuration ---------------------------------------------------------------------------------------


def test_kvm_signature_and_paravirt_feature_leaves_pass_through_unchanged() -> None:
    signature = CpuidEntry(0x4000_0000, 0, 0, 0x4000_0001, 0x4B4D564B, 0x564B4D56, 0x4D)  # "KVMKVMKVM"
    features = CpuidEntry(0x4000_0001, 0, 0, 0x0100_7EFB, 0, 0, 0)  # kvmclock (bit 3), stable bit (24)...
    for vcpu in (0, 1):
        out = guest_cpuid([*SUPPORTED, signature, features], vcpu, 2)
        assert leaf(out, 0x4000_0000) == signature and leaf(out, 0x4000_0001) == features


def test_boot_msrs_leave_out_what_kvm_does_not_save_but_always_enable_the_mtrrs() -> None:
    assert boot_msrs(set()) == {Msr.MTRR_DEF_TYPE: 0x806}
    msrs = boot_msrs({Msr.TSC, Msr.LSTAR, 0x1234})
    assert msrs == {Msr.TSC: 0, Msr.LSTAR: 0, Msr.MTRR_DEF_TYPE: 0x806}


@pytest.mark.parametrize("cpus", [0, MAX_CPUS + 1])
def test_cpu_counts_out_of_range_are_a_config_error(cpus: int) -> None:
    with pytest.raises(ConfigError, match="--cpus"):
        MachineConfig(kernel=Path(), cpus=cpus).validate()


def test_cli_refuses_smp_with_the_pic_only_irqchip_of_kvm(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--cpus", "2", "--backend", "kvm", "--irqchip", "userspace"]) == 2
    assert SMP_NEEDS_KERNEL_IRQCHIP in capsys.readouterr().err


def test_the_software_backend_takes_smp() -> None:
    MachineConfig(kernel=Path(), cpus=4, backend="emu").validate()


def test_cli_refuses_more_cpus_than_the_madt_can_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--cpus", str(MAX_CPUS + 1)]) == 2
    assert "--cpus must be between 1 and" in capsys.readouterr().err


@requires_kvm
def test_more_vcpus_than_kvm_allows_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmlite.kvm.system import Kvm

    monkeypatch.setattr(Kvm, "check_extension", lambda self, cap: 2)
    with pytest.raises(ConfigError, match="at most 2 vCPUs"):
        Machine(MachineConfig(kernel=Path(), cpus=3, backend="kvm"))


# --- in a VM -------------------------------------------------------------------------------------------

#: The BSP copies a real-mode trampoline to 0x8000, software-enables its LAPIC (SVR bit 8: this host's
#: KVM sends no IPI from a disabled one, and every OS enables it first), sends INIT and a startup IPI
#: (vector 8) to APIC ID 1, waits for the AP to write 1 at 0x9000, then runs BSP_TAIL.
SMP_GUEST = (
    MULTIBOOT_HEADER
    + """
.text
.globl _start
_start:
    cld
    mov $trampoline, %esi
    mov $0x8000, %edi
    mov $(trampoline_end - trampoline), %ecx
    rep movsb
    movl $0, 0x9000
    movl $0, 0x9004
    movl $0x1FF, 0xFEE000F0
    movl $(1 << 24), 0xFEE00310
    movl $0x00004500, 0xFEE00300
    movl $(1 << 24), 0xFEE00310
    movl $0x00004608, 0xFEE00300
wait_ap:
    pause
    cmpl $1, 0x9000
    jne wait_ap
    BSP_TAIL

trampoline:
.code16
    xor %ax, %ax
    mov %ax, %ds
    mov $0x2FF, %ecx
    rdmsr
    mov %eax, 0x9008
    movl $1, 0x9000
    cli
2:  hlt
    jmp 2b
.code32
trampoline_end:
"""
)
HALT = "cli\n1: hlt\n   jmp 1b"
#: The BSP spins until the host writes 1 at 0x9004 (after some watchdog rounds), then exits with (5 << 1) | 1.
SPIN_THEN_EXIT = (
    "1: pause\n   cmpl $1, 0x9004\n   jne 1b\n   mov $0xf4, %dx\n   mov $5, %eax\n   out %eax, %dx"
)
WATCHDOG_ROUNDS = 3
#: The BSP exits with its MTRR default type register: (type | enable bit 11 moved to bit 3) << 1 | 1.
READ_MTRR_THEN_EXIT = """
    mov $0x2FF, %ecx
    rdmsr
    mov %eax, %ebx
    and $7, %ebx
    shr $11, %eax
    and $1, %eax
    shl $3, %eax
    or %ebx, %eax
    mov $0xf4, %dx
    out %eax, %dx
"""


TEST_TIMEOUT_S = 60
STATUS_TIMED_OUT = 99


def run_bounded(machine: Machine) -> int:
    """Machine.run(), stopped with :data:`STATUS_TIMED_OUT` if the guest has not ended in time."""
    timer = threading.Timer(TEST_TIMEOUT_S, machine.control.stop, (STATUS_TIMED_OUT, "test timed out"))
    timer.start()
    try:
        return machine.run()
    finally:
        timer.cancel()


def smp_machine(
    tmp_path: Path, tail: str, cpus: int = 2, name: str = "smp", backend: str = "kvm"
) -> Machine:
    source = SMP_GUEST.replace("BSP_TAIL", tail)
    elf = build_multiboot(tmp_path, name, source)
    return Machine.build(
        MachineConfig(kernel=elf, backend=backend, memory_mib=16, cpus=cpus, serial_out=lambda b: None)
    )


#: Both backends: KVM's in-kernel LAPICs, and the software backend's userspace ones (kvmlite.vmm.apic).
BACKENDS = [pytest.param("kvm", marks=requires_kvm), "emu"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_the_bsp_gets_the_entry_state_and_aps_wait_for_sipi(tmp_path: Path, backend: str) -> None:
    machine = smp_machine(tmp_path, HALT, cpus=3, backend=backend)
    try:
        bsp, *aps = [loop.vcpu for loop in machine.loops]
        assert bsp.get_regs().rip == machine.load_result.entry
        for ap in aps:
            assert ap.get_mp_state() == MpState.UNINITIALIZED
            assert ap.get_regs().rip == 0xFFF0 and ap.get_sregs().cs.base == 0xFFFF_0000  # reset state
    finally:
        machine.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ap_started_by_init_sipi_runs_and_the_vm_stops_once_every_cpu_halts(
    tmp_path: Path, backend: str
) -> None:
    machine = smp_machine(tmp_path, HALT, backend=backend)
    try:
        status = run_bounded(machine)
        info = machine.control.stop_info
        assert status == 0 and info is not None
        assert info.message == "guest halted with interrupts disabled on every CPU"
        assert machine.memory.read(0x9000, 1) == b"\x01"  # the AP ran its trampoline
    finally:
        machine.close()


@requires_kvm
def test_every_vcpu_starts_with_the_firmware_msrs(tmp_path: Path) -> None:
    machine = smp_machine(tmp_path, READ_MTRR_THEN_EXIT)
    try:
        for loop in machine.loops:
            msrs = loop.vcpu.get_msrs([Msr.MTRR_DEF_TYPE, Msr.SYSENTER_CS, Msr.LSTAR])
            assert msrs == {Msr.MTRR_DEF_TYPE: 0x806, Msr.SYSENTER_CS: 0, Msr.LSTAR: 0}
        status = run_bounded(machine)
        # the BSP read MTRRs enabled, write-back default (6 | 8 = 14), and so did the AP after its SIPI
        assert status == (14 << 1) | 1, machine.control.stop_info
        assert int.from_bytes(machine.memory.read(0x9008, 4), "little") == 0x806
    finally:
        machine.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_cpu_halted_with_interrupts_off_does_not_stop_the_vm(tmp_path: Path, backend: str) -> None:
    machine = smp_machine(tmp_path, SPIN_THEN_EXIT, backend=backend)
    chip = machine.irqchip

    def release_bsp() -> None:
        # the AP halts with IF=0 at once; let several watchdog rounds see that while the BSP spins
        if isinstance(chip, KernelIrqChip):
            first = chip.rounds
            while chip.rounds < first + WATCHDOG_ROUNDS and not machine.control.stopping:
                time.sleep(0.05)
        else:  # the userspace LAPICs see each HLT at once: wait until the AP has halted
            while machine.memory.read(0x9000, 1) != b"\x01" and not machine.control.stopping:
                time.sleep(0.05)
            time.sleep(0.5)
        machine.memory.write(0x9004, b"\x01")

    releaser = threading.Thread(target=release_bsp, daemon=True)
    try:
        releaser.start()
        status = run_bounded(machine)
        assert status == (5 << 1) | 1, machine.control.stop_info
        assert machine.memory.read(0x9000, 1) == b"\x01"  # the AP did run (and halt) meanwhile
    finally:
        releaser.join(timeout=5)
        machine.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_aps_never_started_do_not_keep_a_halted_bsp_running(tmp_path: Path, backend: str) -> None:
    elf = build_multiboot(
        tmp_path,
        "up",
        MULTIBOOT_HEADER + ".text\n.globl _start\n_start:\n" + HALT,
    )
    machine = Machine.build(
        MachineConfig(kernel=elf, backend=backend, memory_mib=16, cpus=2, serial_out=lambda b: None)
    )
    try:
        assert run_bounded(machine) == 0
        assert machine.control.stop_info is not None
        assert "halted with interrupts disabled" in machine.control.stop_info.message
    finally:
        machine.close()


# --- the end-of-guest watch, with fakes (no KVM needed) -------------------------------------------------


class FakeVm:
    def create_irqchip(self) -> None: ...
    def create_pit2(self) -> None: ...


class FakeRegs:
    def __init__(self, rflags: int) -> None:
        self.rflags = rflags


class FakeVcpu:
    def __init__(self, vcpu_id: int, state: MpState = MpState.RUNNABLE, rflags: int = 0x2) -> None:
        self.id, self.state, self.rflags = vcpu_id, state, rflags

    def get_mp_state(self) -> MpState:
        return self.state

    def get_regs(self) -> FakeRegs:
        return FakeRegs(self.rflags)

    def kick(self) -> None: ...


class FakeLoop:
    def __init__(self, vcpu: FakeVcpu) -> None:
        self.vcpu = vcpu
        self.extension = None

    def add(self, extension) -> None:  # type: ignore[no-untyped-def]
        self.extension = extension

    def kicked(self) -> None:
        """What the vCPU thread does on the Interrupted exit a watchdog kick produces."""
        assert E.Interrupted in self.extension.exits
        self.extension.on_exit(self, E.Interrupted())


@pytest.fixture
def watch():  # type: ignore[no-untyped-def]
    control = VmControl()
    chip = KernelIrqChip(FakeVm(), control)
    loops = [FakeLoop(FakeVcpu(i)) for i in range(2)]
    for loop in loops:
        chip.attach(loop)  # type: ignore[arg-type]
    return chip, control, loops


def test_one_halted_cpu_while_another_runs_is_not_the_end(watch) -> None:  # type: ignore[no-untyped-def]
    chip, control, (bsp, ap) = watch
    ap.vcpu.state = MpState.HALTED
    for _ in range(3):
        chip.watchdog()
        bsp.kicked()
        ap.kicked()
    assert not control.stopping


def test_every_cpu_halted_in_the_same_round_stops_the_vm(watch) -> None:  # type: ignore[no-untyped-def]
    chip, control, (bsp, ap) = watch
    bsp.vcpu.state = ap.vcpu.state = MpState.HALTED
    chip.watchdog()
    bsp.kicked()
    assert not control.stopping  # the AP has not reported in this round yet
    ap.kicked()
    assert control.stopping and control.stop_info.status == 0


def test_a_report_from_an_earlier_round_does_not_count(watch) -> None:  # type: ignore[no-untyped-def]
    chip, control, (bsp, ap) = watch
    ap.vcpu.state = MpState.HALTED
    chip.watchdog()
    ap.kicked()  # round 1: AP parked
    ap.vcpu.state = MpState.RUNNABLE  # woken (INIT/SIPI, NMI) and running again, not yet re-checked
    chip.watchdog()
    bsp.vcpu.state = MpState.HALTED
    bsp.kicked()  # round 2: the BSP halts; the AP's round-1 report is stale
    assert not control.stopping


def test_halt_with_interrupts_enabled_is_not_parked(watch) -> None:  # type: ignore[no-untyped-def]
    chip, control, (bsp, ap) = watch
    bsp.vcpu.state, bsp.vcpu.rflags = MpState.HALTED, 0x202
    ap.vcpu.state = MpState.UNINITIALIZED
    chip.watchdog()
    bsp.kicked()
    ap.kicked()
    assert not control.stopping
    bsp.vcpu.rflags = 0x2
    chip.watchdog()
    bsp.kicked()
    ap.kicked()
    assert control.stopping  # a halted BSP with APs never started is the end
