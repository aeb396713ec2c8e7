"""``Vm``: a KVM virtual machine file descriptor (VM ioctls)."""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING

from kvmlite.backend import BackendCaps
from kvmlite.kvm import structs as S
from kvmlite.kvm.coalesced import PAGE_SIZE, CoalescedRing, Writer
from kvmlite.kvm.constants import (
    KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI,
    Cap,
    Ioctl,
    IoeventfdFlag,
    IrqchipId,
    IrqfdFlag,
    MemFlag,
    MsrExitReason,
)
from kvmlite.kvm.ioctl import ioctl
from kvmlite.kvm.vcpu import Vcpu

if TYPE_CHECKING:
    from kvmlite.kvm.cpuid import CpuidEntry
    from kvmlite.kvm.system import Kvm
    from kvmlite.memory.guest import GuestMemory

#: Where kvmlite puts the three pages of the real-mode TSS and the EPT identity map
#: (just below the 4 GiB BIOS area, as QEMU does).
DEFAULT_TSS_ADDR = 0xFFFB_D000
DEFAULT_IDENTITY_MAP_ADDR = 0xFFFB_C000
#: KVM's documented vCPU limit when it reports neither KVM_CAP_MAX_VCPUS nor KVM_CAP_NR_VCPUS.
KVM_DEFAULT_MAX_VCPUS = 4


class Vm:
    """One VM.  Made by :meth:`Kvm.create_vm`.

    ``run_size`` is the size of each vCPU's ``kvm_run`` mapping (KVM_GET_VCPU_MMAP_SIZE);
    ``kvm`` is the system it was made from, kept for the capability and CPUID queries a VMM
    makes about it (the binding itself needs nothing from it).
    """

    def __init__(self, fd: int, run_size: int, kvm: Kvm) -> None:
        self.fd = fd
        self.run_size = run_size
        self.kvm = kvm
        self.vcpus: list[Vcpu] = []
        self._slots: dict[int, S.kvm_userspace_memory_region] = {}
        self.has_irqchip = False
        self.has_pit = False
        #: close() also closes ``kvm`` (set by whoever opened the system for this VM alone).
        self.owns_system = False
        self._caps: BackendCaps | None = None

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.owns_system:
            self.kvm.close()

    def check_extension(self, cap: Cap | int) -> int:
        """Per-VM capability check (KVM_CAP_CHECK_EXTENSION_VM), falling back to the system one."""
        return ioctl(self.fd, Ioctl.KVM_CHECK_EXTENSION, int(cap))

    def enable_cap(self, cap: Cap | int, *args: int, flags: int = 0) -> None:
        ec = S.kvm_enable_cap(cap=int(cap), flags=flags)
        for i, a in enumerate(args):
            ec.args[i] = a
        ioctl(
            self.fd,
            Ioctl.KVM_ENABLE_CAP,
            ec,
            detail=f"capability {Cap(cap).name if cap in Cap._value2member_map_ else cap}",
        )

    def set_msr_filter(self, denied: dict[int, int]) -> None:
        """KVM_X86_SET_MSR_FILTER: guest accesses to the MSRs in ``denied`` exit to userspace.

        ``denied`` maps an MSR index to the kinds of access to trap
        (``MsrFilterFlag.READ``/``WRITE``, or both); every other MSR is left
        to KVM.  The exits (``RdMsr``/``WrMsr``, reason FILTER) need
        KVM_CAP_X86_USER_SPACE_MSR, enabled here.  An empty dict removes the
        filter.  At most 16 MSRs (one range each).
        """
        if len(denied) > S.KVM_MSR_FILTER_MAX_RANGES:
            raise ValueError(f"at most {S.KVM_MSR_FILTER_MAX_RANGES} MSRs can be filtered")
        self.enable_cap(Cap.X86_USER_SPACE_MSR, int(MsrExitReason.FILTER))
        filt = S.kvm_msr_filter(flags=0)  # KVM_MSR_FILTER_DEFAULT_ALLOW
        self._msr_bitmaps = [ctypes.create_string_buffer(1) for _ in denied]  # one 0 bit: "deny"
        for i, ((index, kinds), bitmap) in enumerate(zip(denied.items(), self._msr_bitmaps, strict=True)):
            rng = filt.ranges[i]
            rng.flags, rng.nmsrs, rng.base = int(kinds), 1, index
            rng.bitmap = ctypes.cast(bitmap, ctypes.c_void_p)
        ioctl(self.fd, Ioctl.KVM_X86_SET_MSR_FILTER, filt, detail=f"{len(denied)} MSRs")

    # --- memory -----------------------------------------------------------
    def set_user_memory_region(
        self, slot: int, guest_phys_addr: int, memory_size: int, userspace_addr: int, flags: int = 0
    ) -> None:
        """Map host memory at ``userspace_addr`` into the guest; ``memory_size=0`` deletes the slot."""
        region = S.kvm_userspace_memory_region(slot, flags, guest_phys_addr, memory_size, userspace_addr)
        ioctl(
            self.fd,
            Ioctl.KVM_SET_USER_MEMORY_REGION,
            region,
            detail=f"slot {slot} at {guest_phys_addr:#x}+{memory_size:#x}",
        )
        if memory_size:
            self._slots[slot] = region
        else:
            self._slots.pop(slot, None)

    def register_memory(self, memory: GuestMemory, log_dirty: bool = False) -> None:
        """Register every region of a :class:`~kvmlite.memory.GuestMemory` as consecutive slots."""
        flags = MemFlag.LOG_DIRTY_PAGES if log_dirty else 0
        for slot, region in enumerate(memory):
            ro = MemFlag.READONLY if region.readonly else 0
            self.set_user_memory_region(slot, region.start, region.size, region.host_addr, int(flags | ro))

    def get_dirty_log(self, slot: int) -> bytes:
        """KVM_GET_DIRTY_LOG: one bit per page of the slot, set where the guest wrote since the last call."""
        region = self._slots[slot]
        pages = region.memory_size // 4096
        bitmap = ctypes.create_string_buffer(((pages + 63) // 64) * 8)
        log = S.kvm_dirty_log(slot=slot, dirty_bitmap=ctypes.addressof(bitmap))
        ioctl(self.fd, Ioctl.KVM_GET_DIRTY_LOG, log, detail=f"slot {slot}")
        return bitmap.raw

    def dirty_pages(self, slot: int) -> list[int]:
        """Guest-physical addresses of the pages of ``slot`` dirtied since the last call."""
        base = self._slots[slot].guest_phys_addr
        bitmap = int.from_bytes(self.get_dirty_log(slot), "little")
        out = []
        page = 0
        while bitmap:
            if bitmap & 1:
                out.append(base + page * 4096)
            bitmap >>= 1
            page += 1
        return out

    # --- x86 set-up ---------------------------------------------------------
    def set_tss_addr(self, addr: int = DEFAULT_TSS_ADDR) -> None:
        """KVM_SET_TSS_ADDR: three pages KVM needs on Intel for real-mode emulation."""
        ioctl(self.fd, Ioctl.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int = DEFAULT_IDENTITY_MAP_ADDR) -> None:
        ioctl(self.fd, Ioctl.KVM_SET_IDENTITY_MAP_ADDR, ctypes.c_uint64(addr))

    # --- interrupts -----------------------------------------------------------
    def create_irqchip(self) -> None:
        """In-kernel PIC pair, IOAPIC and a LAPIC per vCPU (create before vCPUs)."""
        ioctl(self.fd, Ioctl.KVM_CREATE_IRQCHIP)
        self.has_irqchip = True

    def create_pit2(self, speaker_dummy: bool = True) -> None:
        """In-kernel i8254 PIT (needs the in-kernel irqchip)."""
        ioctl(self.fd, Ioctl.KVM_CREATE_PIT2, S.kvm_pit_config(flags=1 if speaker_dummy else 0))
        self.has_pit = True

    def irq_line(self, irq: int, level: bool) -> None:
        """KVM_IRQ_LINE: drive a GSI of the in-kernel irqchip."""
        ioctl(self.fd, Ioctl.KVM_IRQ_LINE, S.kvm_irq_level(irq, int(level)), detail=f"irq {irq}")

    def get_irqchip(self, chip: IrqchipId) -> S.kvm_irqchip:
        st = S.kvm_irqchip(chip_id=int(chip))
        ioctl(self.fd, Ioctl.KVM_GET_IRQCHIP, st)
        return st

    def set_irqchip(self, st: S.kvm_irqchip) -> None:
        ioctl(self.fd, Ioctl.KVM_SET_IRQCHIP, st)

    def get_pit2(self) -> S.kvm_pit_state2:
        st = S.kvm_pit_state2()
        ioctl(self.fd, Ioctl.KVM_GET_PIT2, st)
        return st

    def set_pit2(self, st: S.kvm_pit_state2) -> None:
        ioctl(self.fd, Ioctl.KVM_SET_PIT2, st)

    def irqfd(self, fd: int, gsi: int, resamplefd: int | None = None, deassign: bool = False) -> None:
        """Let an eventfd raise ``gsi`` without a trip through userspace."""
        flags = IrqfdFlag.DEASSIGN if deassign else IrqfdFlag(0)
        if resamplefd is not None:
            flags |= IrqfdFlag.RESAMPLE
        ioctl(
            self.fd,
            Ioctl.KVM_IRQFD,
            S.kvm_irqfd(fd=fd, gsi=gsi, flags=int(flags), resamplefd=resamplefd or 0),
            detail=f"gsi {gsi}",
        )

    def set_gsi_routing(
        self, irqchip_routes: list[tuple[int, int, int]], msi_routes: list[tuple[int, int, int]]
    ) -> None:
        """KVM_SET_GSI_ROUTING: the whole table, (gsi, irqchip, pin) and (gsi, address, data) entries."""
        entries = []
        for gsi, chip, pin in irqchip_routes:
            entry = S.kvm_irq_routing_entry(gsi=gsi, type=KVM_IRQ_ROUTING_IRQCHIP)
            entry.u.irqchip.irqchip, entry.u.irqchip.pin = chip, pin
            entries.append(entry)
        for gsi, address, data in msi_routes:
            entry = S.kvm_irq_routing_entry(gsi=gsi, type=KVM_IRQ_ROUTING_MSI)
            entry.u.msi.address_lo, entry.u.msi.address_hi = address & 0xFFFF_FFFF, address >> 32
            entry.u.msi.data = data
            entries.append(entry)
        table = S.irq_routing_with(entries)
        ioctl(self.fd, Ioctl.KVM_SET_GSI_ROUTING, table, detail=f"{len(entries)} routes")

    def ioeventfd(
        self,
        fd: int,
        addr: int,
        length: int,
        pio: bool,
        datamatch: int | None = None,
        deassign: bool = False,
    ) -> None:
        """Signal an eventfd on a guest write to ``addr`` instead of exiting to userspace."""
        flags = IoeventfdFlag(0)
        if pio:
            flags |= IoeventfdFlag.PIO
        if datamatch is not None:
            flags |= IoeventfdFlag.DATAMATCH
        if deassign:
            flags |= IoeventfdFlag.DEASSIGN
        req = S.kvm_ioeventfd(datamatch=datamatch or 0, addr=addr, len=length, fd=fd, flags=int(flags))
        ioctl(self.fd, Ioctl.KVM_IOEVENTFD, req, detail=f"{'pio' if pio else 'mmio'} {addr:#x}")

    def signal_msi(self, address: int, data: int, flags: int = 0, devid: int = 0) -> int:
        """Inject an MSI; returns >0 if delivered, 0 if blocked by the guest."""
        msi = S.kvm_msi(
            address_lo=address & 0xFFFF_FFFF, address_hi=address >> 32, data=data, flags=flags, devid=devid
        )
        return ioctl(self.fd, Ioctl.KVM_SIGNAL_MSI, msi)

    def coalesce_writes(self, addr: int, length: int, pio: bool, deassign: bool = False) -> None:
        """Guest writes to [addr, addr+length) go to the coalesced ring instead of exiting (or no longer)."""
        request = Ioctl.KVM_UNREGISTER_COALESCED_MMIO if deassign else Ioctl.KVM_REGISTER_COALESCED_MMIO
        ioctl(self.fd, request, S.kvm_coalesced_mmio_zone(addr, length, int(pio)))

    def coalesced_ring(self, pio: Writer, mmio: Writer) -> CoalescedRing | None:
        """The VM's coalesced-write ring (in the first vCPU's kvm_run mapping); None without one."""
        page = self.kvm.check_extension(Cap.COALESCED_MMIO)
        if not self.vcpus or not page or (page + 1) * PAGE_SIZE > self.run_size:
            return None
        return CoalescedRing(self.vcpus[0].run_mapping, page, pio, mmio)

    def get_clock(self) -> S.kvm_clock_data:
        st = S.kvm_clock_data()
        ioctl(self.fd, Ioctl.KVM_GET_CLOCK, st)
        return st

    def set_clock(self, st: S.kvm_clock_data) -> None:
        """KVM_SET_CLOCK: the kvmclock value guests read (a snapshot's, on restore)."""
        ioctl(self.fd, Ioctl.KVM_SET_CLOCK, st)

    # --- vCPUs ------------------------------------------------------------
    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        fd = ioctl(self.fd, Ioctl.KVM_CREATE_VCPU, vcpu_id, detail=f"vcpu {vcpu_id}")
        vcpu = Vcpu(vcpu_id, fd, self.run_size)
        self.vcpus.append(vcpu)
        return vcpu

    # --- the backend protocol (kvmlite.backend.VmBackend) ----------------------------------------
    def capabilities(self) -> BackendCaps:
        """What this host's KVM offers, from its capabilities (asked once)."""
        if self._caps is None:
            has = self.kvm.check_extension
            self._caps = BackendCaps(
                name="kvm",
                max_vcpus=has(Cap.MAX_VCPUS) or has(Cap.NR_VCPUS) or KVM_DEFAULT_MAX_VCPUS,
                in_kernel_irqchip=bool(has(Cap.IRQCHIP) and has(Cap.PIT2)),
                guest_debug=bool(has(Cap.SET_GUEST_DEBUG)),
                watchpoints=bool(has(Cap.SET_GUEST_DEBUG)),
                msr_filter=bool(has(Cap.X86_MSR_FILTER)),
                host_cpuid=True,
                fpu_state=True,
                lapic_state=True,
                rescue_emulation=True,
                ioeventfd=bool(has(Cap.IOEVENTFD)),
                irqfd=bool(has(Cap.IRQFD) and has(Cap.IRQ_ROUTING) and has(Cap.IRQCHIP)),
                irqfd_resample=bool(has(Cap.IRQFD_RESAMPLE)),
                coalesced_pio=bool(has(Cap.COALESCED_MMIO) and has(Cap.COALESCED_PIO)),
            )
        return self._caps

    def supported_cpuid(self) -> list[CpuidEntry]:
        return self.kvm.supported_cpuid()

    def msr_index_list(self) -> list[int]:
        return self.kvm.msr_index_list()

    def new_vm(self) -> Vm:
        """Another, empty VM on the same /dev/kvm (a probe of the host's behaviour)."""
        return self.kvm.create_vm()
