"""One vCPU's state, and the VM's in-kernel devices, through the backend protocol.

The state is a plain dict of KVM's structures (as bytes, :mod:`.codec`) and
numbers, whatever the backend: ``regs``, ``sregs``, ``msrs`` and
``mp_state`` always; ``fpu``, ``xsave``, ``xcrs`` where the backend has FPU
state; ``events`` and ``debugregs`` where it has a LAPIC-level state; ``lapic``
with the in-kernel irqchip; ``emu`` (the emulator's own extras: XCR0, debug
registers, HLT and interrupt-shadow flags, an interrupt acknowledged but not
yet delivered, its XSAVE area) on the software backend.

Restore order follows what KVM checks against what (QEMU's and Firecracker's
order): special registers before the LAPIC (APIC base), the LAPIC before
the MSRs (TSC deadline), MP state and events last.  The TSC: every vCPU gets
the boot vCPU's saved TSC, so vCPUs that were in step stay in step (KVM
synchronises TSC writes of one value made close together).
"""

from __future__ import annotations

import logging
from typing import Any

from kvmlite.backend import BackendCaps, BackendUnsupported, VcpuBackend, VmBackend
from kvmlite.errors import KvmIoctlError
from kvmlite.kvm import structs as S
from kvmlite.kvm.constants import IrqchipId, MpState
from kvmlite.snapshot import SnapshotError
from kvmlite.snapshot.codec import to_struct
from kvmlite.x86 import Msr

log = logging.getLogger(__name__)

#: kvm_vcpu_events.flags on restore: the NMI-pending and SIPI-vector fields are meant.
EVENTS_VALID_NMI_PENDING = 1 << 0
EVENTS_VALID_SIPI_VECTOR = 1 << 1


def readable_msrs(vcpu: VcpuBackend, indices: list[int]) -> dict[int, int]:
    """Every MSR of ``indices`` the backend reads (KVM stops at the first it cannot: skip it, go on)."""
    out: dict[int, int] = {}
    rest = list(indices)
    while rest:
        got = vcpu.get_msrs(rest)
        out.update(got)
        if len(got) >= len(rest):
            break
        log.debug("vcpu %d: MSR %#x cannot be read: not saved", vcpu.id, rest[len(got)])
        rest = rest[len(got) + 1 :]
    return out


def write_msrs(vcpu: VcpuBackend, values: dict[int, int]) -> None:
    """Write ``values``; where the backend refuses the batch, one by one, skipping those it refuses."""
    if not values:
        return
    try:
        vcpu.set_msrs(values)
        return
    except KvmIoctlError:
        pass
    for index, value in values.items():
        try:
            vcpu.set_msrs({index: value})
        except KvmIoctlError:
            log.debug("vcpu %d: MSR %#x = %#x refused on restore", vcpu.id, index, value)


def writable_msrs(vcpu: VcpuBackend, saved: dict[str, int]) -> dict[int, int]:
    """The saved MSRs the backend takes back (written now, with the values they hold while paused),
    so that each later restore is one batch (a reset-to-snapshot restores thousands of times)."""
    values = {int(k): int(v) for k, v in saved.items()}
    try:
        vcpu.set_msrs(values)
        return values
    except KvmIoctlError:
        pass
    accepted = {}
    for index, value in values.items():
        try:
            vcpu.set_msrs({index: value})
            accepted[index] = value
        except KvmIoctlError:
            log.debug("vcpu %d: MSR %#x is not written back on a reset", vcpu.id, index)
    return accepted


def msr_indices(vm: VmBackend, vcpu: VcpuBackend) -> list[int]:
    """The MSRs a snapshot saves: KVM's list (it holds every MSR kvmlite sets at boot), or the emulator's."""
    listed = vm.msr_index_list()
    if listed:
        return sorted(set(listed) | {Msr.EFER})
    emu_msrs = getattr(getattr(vcpu, "cpu", None), "msrs", {})
    return sorted(set(emu_msrs) | {Msr.EFER})


def capture_vcpu(vcpu: VcpuBackend, caps: BackendCaps, msrs: list[int], lapic: bool) -> dict[str, Any]:
    """Everything of one vCPU (call while the VM is paused or from the vCPU's thread)."""
    st: dict[str, Any] = {
        "id": vcpu.id,
        "regs": vcpu.get_regs(),
        "sregs": vcpu.get_sregs(),
        "msrs": {str(k): v for k, v in readable_msrs(vcpu, msrs).items()},
        "mp_state": int(vcpu.get_mp_state()),
    }
    if caps.fpu_state:
        st["fpu"] = vcpu.get_fpu()
        st["xsave"] = vcpu.get_xsave()
        st["xcrs"] = vcpu.get_xcrs()
    if caps.lapic_state:
        st["events"] = vcpu.get_vcpu_events()
        get_debugregs = getattr(vcpu, "get_debugregs", None)
        if get_debugregs is not None:
            st["debugregs"] = get_debugregs()
    if lapic:
        st["lapic"] = vcpu.get_lapic()
    emu = _emulator_extras(vcpu)
    if emu is not None:
        st["emu"] = emu
    return st


def restore_vcpu(
    vcpu: VcpuBackend,
    caps: BackendCaps,
    st: dict[str, Any],
    lapic: bool,
    tsc: int | None = None,
    reset: bool = False,
) -> None:
    """Load a :func:`capture_vcpu` state into ``vcpu`` (created, CPUID set, not running).

    ``reset`` (reset-to-snapshot, the same vCPU): the LAPIC is written only if it changed
    (KVM_SET_LAPIC costs as much as everything else together on a nested host).
    """
    what = f"vcpu {vcpu.id}"
    try:
        vcpu.set_sregs(to_struct(S.kvm_sregs, st["sregs"], f"{what} sregs"))
        vcpu.set_regs(to_struct(S.kvm_regs, st["regs"], f"{what} regs"))
        if caps.fpu_state and "xsave" in st:
            vcpu.set_fpu(to_struct(S.kvm_fpu, st["fpu"], f"{what} fpu"))
            vcpu.set_xcrs(to_struct(S.kvm_xcrs, st["xcrs"], f"{what} xcrs"))
            vcpu.set_xsave(to_struct(S.kvm_xsave, st["xsave"], f"{what} xsave"))
        if lapic and "lapic" in st:
            saved_lapic = to_struct(S.kvm_lapic_state, st["lapic"], f"{what} lapic")
            if not reset or bytes(vcpu.get_lapic()) != bytes(saved_lapic):
                vcpu.set_lapic(saved_lapic)
        msrs = {int(k): int(v) for k, v in st["msrs"].items()}
        if tsc is not None and Msr.TSC in msrs:
            msrs[Msr.TSC] = tsc
        write_msrs(vcpu, msrs)
        set_debugregs = getattr(vcpu, "set_debugregs", None)
        if caps.lapic_state and "debugregs" in st and set_debugregs is not None:
            set_debugregs(to_struct(S.kvm_debugregs, st["debugregs"], f"{what} debugregs"))
        mp_state = MpState(int(st["mp_state"]))
        if mp_state != vcpu.get_mp_state():
            vcpu.set_mp_state(mp_state)
        if caps.lapic_state and "events" in st:
            events = to_struct(S.kvm_vcpu_events, st["events"], f"{what} events")
            events.flags |= EVENTS_VALID_NMI_PENDING | EVENTS_VALID_SIPI_VECTOR
            vcpu.set_vcpu_events(events)
        if "emu" in st:
            _load_emulator_extras(vcpu, st["emu"])
    except (KeyError, TypeError, ValueError) as err:
        raise SnapshotError(
            f"{what}: the snapshot's CPU state is incomplete or malformed ({err!r})"
        ) from None
    except (KvmIoctlError, BackendUnsupported) as err:
        raise SnapshotError(f"{what}: the backend refused the snapshot's CPU state: {err}") from None


def boot_tsc(cpus: list[dict[str, Any]]) -> int | None:
    """The boot vCPU's saved TSC (every vCPU is given it, see the module docstring)."""
    if not cpus:
        return None
    value = cpus[0].get("msrs", {}).get(str(int(Msr.TSC)))
    return int(value) if value is not None else None


# --- the emulator's extras ------------------------------------------------------------------
def _emulator_extras(vcpu: VcpuBackend) -> dict[str, Any] | None:
    from kvmlite.emulator.backend import EmuVcpu

    if not isinstance(vcpu, EmuVcpu):
        return None
    cpu = vcpu.cpu
    area = cpu.xsave_area
    return {
        "xcr0": cpu.xcr0,
        "dr": list(cpu.dr),
        "halted": cpu.halted,
        "interrupt_shadow": cpu.interrupt_shadow,
        "pending_vector": vcpu._pending_vector,
        "xsave_area": bytes(area) if area is not None else None,
    }


def _load_emulator_extras(vcpu: VcpuBackend, emu: dict[str, Any]) -> None:
    from kvmlite.emulator.backend import EmuVcpu

    if not isinstance(vcpu, EmuVcpu):
        return  # taken on the software backend, restored on KVM: what KVM keeps came in the structures
    cpu = vcpu.cpu
    cpu.xcr0 = int(emu["xcr0"])
    dr = [int(v) for v in emu["dr"]]
    if len(dr) != len(cpu.dr):
        raise ValueError(f"{len(dr)} debug registers")
    cpu.dr[:] = dr
    cpu.halted = bool(emu["halted"])
    cpu.interrupt_shadow = bool(emu["interrupt_shadow"])
    pending = emu.get("pending_vector")
    vcpu._pending_vector = None if pending is None else int(pending) & 0xFF
    area = emu.get("xsave_area")
    if area is not None:
        cpu.xsave_area = bytearray(area)


# --- the VM's in-kernel devices ---------------------------------------------------------------
IRQCHIPS = (IrqchipId.PIC_MASTER, IrqchipId.PIC_SLAVE, IrqchipId.IOAPIC)


def capture_kernel_devices(vm: Any, split: bool = False) -> dict[str, Any]:
    """KVM's PIC pair, IOAPIC, PIT2 and kvmclock (only with the in-kernel irqchip); kvmclock alone
    with the split irqchip (kvmlite has the PIC, IOAPIC and PIT then)."""
    if split:
        return {"clock": vm.get_clock()}
    return {
        "irqchip": [vm.get_irqchip(chip) for chip in IRQCHIPS],
        "pit2": vm.get_pit2(),
        "clock": vm.get_clock(),
    }


def restore_kernel_devices(vm: Any, st: dict[str, Any], split: bool = False) -> None:
    """What :func:`capture_kernel_devices` recorded, back into KVM."""
    try:
        if not split:
            chips = st["irqchip"]
            if len(chips) != len(IRQCHIPS):
                raise ValueError(f"{len(chips)} irqchips")
            for chip_id, data in zip(IRQCHIPS, chips, strict=True):
                chip = to_struct(S.kvm_irqchip, data, f"in-kernel irqchip {chip_id.name}")
                if chip.chip_id != chip_id:
                    raise ValueError(f"irqchip {chip_id.name} recorded as chip {chip.chip_id}")
                vm.set_irqchip(chip)
            vm.set_pit2(to_struct(S.kvm_pit_state2, st["pit2"], "in-kernel PIT"))
        clock = to_struct(S.kvm_clock_data, st["clock"], "kvmclock")
        clock.flags = 0  # the clock value only: "realtime"/"host_tsc" described the old host's moment
        vm.set_clock(clock)
    except (KeyError, TypeError, ValueError) as err:
        raise SnapshotError(f"the snapshot's in-kernel device state is malformed ({err!r})") from None
    except KvmIoctlError as err:
        raise SnapshotError(f"KVM refused the snapshot's in-kernel device state: {err}") from None
