"""The execution backend protocol: what the VMM asks of a VM and its vCPUs, whoever runs them.

Two backends implement it: KVM (:class:`kvmlite.kvm.Vm` / :class:`kvmlite.kvm.Vcpu`,
over ``/dev/kvm``) and kvmlite's emulator (:class:`kvmlite.emulator.backend.EmuVm` /
``EmuVcpu``).  The machine, the vCPU loop and its extensions talk to these
protocols only; they never ask which backend they have.  What a backend can
do is in its :class:`BackendCaps` (``vm.capabilities()``), and an operation
it cannot do raises :class:`BackendUnsupported` (a :class:`KvmliteError`
naming the backend and the operation) instead of being missing.

State is exchanged in KVM's structures (:mod:`kvmlite.kvm.structs`:
``kvm_regs``, ``kvm_sregs``, ``kvm_fpu``, ``kvm_xsave``, ``kvm_lapic_state``,
``kvm_vcpu_events``, ``kvm_translation``) whatever the backend, as rust-vmm's
``kvm-bindings`` types are the lingua franca of its VMMs: a snapshot taken on
one backend reads on the other.  Exits are the typed exits of
:mod:`kvmlite.kvm.exits`.

Threading: :meth:`VcpuBackend.run` runs on the vCPU's thread; :meth:`kick`
is the one call meant for other threads.  Every other vCPU call is made from
the vCPU's thread or while the VM is paused (:class:`kvmlite.vmm.loop.VmControl`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from kvmlite.errors import KvmliteError, KvmUnavailableError

if TYPE_CHECKING:
    from kvmlite.kvm import exits as E
    from kvmlite.kvm import structs as S
    from kvmlite.kvm.coalesced import CoalescedRing, Writer
    from kvmlite.kvm.constants import MpState
    from kvmlite.kvm.cpuid import CpuidEntry
    from kvmlite.memory.guest import GuestMemory

log = logging.getLogger(__name__)

class BackendUnsupported(KvmliteError):
    """The backend cannot do this (see its :class:`BackendCaps`)."""

    def __init__(self, backend: str, what: str) -> None:
        super().__init__(f"the {backend} backend cannot {what}")
        self.backend = backend
        self.what = what


@dataclass(frozen=True)
class BackendCaps:
    """What a backend can do; the VMM decides by these, never by the backend's name."""

    #: "kvm" or "emu": for messages and logs only.
    name: str
    #: How many vCPUs one VM may have.
    max_vcpus: int
    #: KVM_CREATE_IRQCHIP/KVM_CREATE_PIT2/KVM_IRQ_LINE (PIC, IOAPIC, LAPICs, PIT in the backend).
    #: Without it kvmlite's own PIC injects interrupts (``interrupt(vector)``) and SMP is impossible.
    in_kernel_irqchip: bool
    #: set_guest_debug: single-step and execution breakpoints (and data watchpoints where ``watchpoints``).
    guest_debug: bool
    #: Hardware data breakpoints (DR0-3 with R/W other than execute).
    watchpoints: bool
    #: set_msr_filter: guest RDMSR/WRMSR of chosen MSRs exit to the VMM.
    msr_filter: bool
    #: The CPUID the host can offer (supported_cpuid) and the MSRs it saves (msr_index_list) mean
    #: something: the VMM sets each vCPU's CPUID and boot MSRs from them.
    host_cpuid: bool
    #: get/set_fpu, get/set_xsave, get/set_xcrs.
    fpu_state: bool
    #: get/set_lapic (needs the in-kernel irqchip), get/set_vcpu_events, get/set_debugregs, nmi().
    lapic_state: bool
    #: The backend's own instruction emulation can fail (KVM_EXIT_INTERNAL_ERROR, emulation) where
    #: kvmlite's emulator may succeed: the VMM then rescues the instruction (kvmlite.vmm.rescue).
    rescue_emulation: bool
    #: KVM_IOEVENTFD: a guest write to a chosen address signals an eventfd instead of exiting.
    ioeventfd: bool = False
    #: KVM_IRQFD and KVM_SET_GSI_ROUTING (with the in-kernel irqchip): an eventfd raises a GSI, which
    #: the VMM routes to an irqchip pin or to an MSI message, without an ioctl per interrupt.
    irqfd: bool = False
    #: KVM_IRQFD_FLAG_RESAMPLE: a level-triggered irqfd, lowered at the guest's EOI, which is signalled.
    irqfd_resample: bool = False
    #: KVM_REGISTER_COALESCED_MMIO with KVM_CAP_COALESCED_PIO: guest writes to chosen ports go to a
    #: ring the VMM replays later instead of exiting (kvmlite.kvm.coalesced).
    coalesced_pio: bool = False
    #: The backend runs vCPUs with kvmlite's userspace LAPICs and IOAPIC (kvmlite.vmm.apic): the vCPU
    #: reaches its LAPIC itself (``attach_lapic``), takes NMIs and has KVM's MP states; SMP works without
    #: an in-kernel irqchip.
    userspace_apic: bool = False


@runtime_checkable
class VcpuBackend(Protocol):
    """One vCPU (see the module docstring for threading)."""

    id: int

    # --- running -------------------------------------------------------------------------------
    def run(self) -> E.Exit: ...
    def kick(self) -> None: ...
    def clear_kick(self) -> None: ...
    def bind_thread(self) -> None: ...
    def close(self) -> None: ...

    # --- interrupt injection (the userspace irqchip's contract) ---------------------------------
    @property
    def if_flag(self) -> bool: ...
    @property
    def ready_for_interrupt_injection(self) -> bool: ...
    @property
    def interrupt_window_requested(self) -> bool: ...
    def request_interrupt_window(self, on: bool = True) -> None: ...
    def interrupt(self, vector: int) -> None: ...
    def nmi(self) -> None: ...

    # --- state ---------------------------------------------------------------------------------
    def get_regs(self) -> S.kvm_regs: ...
    def set_regs(self, regs: S.kvm_regs) -> None: ...
    def get_sregs(self) -> S.kvm_sregs: ...
    def set_sregs(self, sregs: S.kvm_sregs) -> None: ...
    def get_fpu(self) -> S.kvm_fpu: ...
    def set_fpu(self, fpu: S.kvm_fpu) -> None: ...
    def get_xsave(self) -> S.kvm_xsave: ...
    def set_xsave(self, xs: S.kvm_xsave) -> None: ...
    def get_xcrs(self) -> S.kvm_xcrs: ...
    def set_xcrs(self, xcrs: S.kvm_xcrs) -> None: ...
    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]: ...
    def set_msrs(self, values: dict[int, int]) -> int: ...
    def get_lapic(self) -> S.kvm_lapic_state: ...
    def set_lapic(self, lapic: S.kvm_lapic_state) -> None: ...
    def get_vcpu_events(self) -> S.kvm_vcpu_events: ...
    def set_vcpu_events(self, events: S.kvm_vcpu_events) -> None: ...
    def get_mp_state(self) -> MpState: ...
    def set_mp_state(self, state: MpState) -> None: ...
    def get_cpuid(self, max_entries: int = 256) -> list[CpuidEntry]: ...
    def set_cpuid(self, entries: list[CpuidEntry]) -> None: ...

    # --- debugging -----------------------------------------------------------------------------
    def set_guest_debug(self, flags: int, hw_breakpoints: Iterable[int] = (), dr7: int = 0) -> None: ...
    def translate(self, linear_address: int) -> S.kvm_translation: ...


@runtime_checkable
class VmBackend(Protocol):
    """One VM: memory slots, vCPUs, the in-kernel devices where there are any."""

    def capabilities(self) -> BackendCaps: ...
    def register_memory(self, memory: GuestMemory, log_dirty: bool = False) -> None: ...
    def create_vcpu(self, vcpu_id: int) -> VcpuBackend: ...
    def supported_cpuid(self) -> list[CpuidEntry]: ...
    def msr_index_list(self) -> list[int]: ...
    def set_msr_filter(self, denied: dict[int, int]) -> None: ...
    def create_irqchip(self) -> None: ...
    def create_pit2(self, speaker_dummy: bool = True) -> None: ...
    def irq_line(self, irq: int, level: bool) -> None: ...
    def signal_msi(self, address: int, data: int, flags: int = 0, devid: int = 0) -> int:
        """An MSI into the in-kernel LAPICs (``in_kernel_irqchip``); >0 delivered, 0 blocked by the guest."""
        ...

    def ioeventfd(
        self, fd: int, addr: int, length: int, pio: bool, datamatch: int | None = None, deassign: bool = False
    ) -> None: ...
    def irqfd(self, fd: int, gsi: int, resamplefd: int | None = None, deassign: bool = False) -> None:
        """An eventfd that raises ``gsi`` (``irqfd``); with ``resamplefd``, level-triggered."""
        ...

    def set_gsi_routing(
        self, irqchip_routes: list[tuple[int, int, int]], msi_routes: list[tuple[int, int, int]]
    ) -> None:
        """Replace the GSI routing table: (gsi, irqchip, pin) and (gsi, MSI address, MSI data) entries."""
        ...

    def coalesce_writes(self, addr: int, length: int, pio: bool, deassign: bool = False) -> None: ...
    def coalesced_ring(self, pio: Writer, mmio: Writer) -> CoalescedRing | None:
        """The ring of coalesced writes, replaying into ``pio``/``mmio`` (after the first vCPU exists)."""
        ...

    def new_vm(self) -> VmBackend:
        """Another, empty VM of the same backend (to probe the host's behaviour)."""
        ...

    def close(self) -> None:
        """Close the VM, its vCPUs and whatever was opened for it alone."""
        ...


def open_backend(choice: str) -> VmBackend:
    """A new VM on ``choice``: "kvm", "emu", or "auto" (KVM where /dev/kvm opens, else the emulator).

    A KVM VM made here owns its /dev/kvm descriptor: closing the VM closes it.
    """
    if choice in ("kvm", "auto"):
        from kvmlite.kvm import Kvm

        try:
            kvm = Kvm()
        except KvmUnavailableError as err:
            if choice == "kvm":
                raise
            log.warning("%s: using the software backend (the guest runs on kvmlite's emulator)", err)
        else:
            try:
                vm = kvm.create_vm()
                vm.owns_system = True
                vm.set_tss_addr()
                vm.set_identity_map_addr()
            except BaseException:
                kvm.close()
                raise
            return vm
    from kvmlite.emulator.backend import EmuVm

    return EmuVm()


def unsupported(backend: str, what: str) -> Any:
    """Raise :class:`BackendUnsupported` (for one-line method bodies)."""
    raise BackendUnsupported(backend, what)
