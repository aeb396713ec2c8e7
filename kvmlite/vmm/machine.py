"""The machine: guest memory, buses, devices, interrupt delivery, vCPUs, built in one place.

(Longer than the project's ~600 lines: the builder is the one place where each PC device's address,
interrupt line and backend wiring and the run's threads are decided; its PCI and virtio half is
:mod:`kvmlite.vmm.pci_wiring`.)

:class:`Machine` is the explicit builder (the Firecracker shape): ``attach_*``
methods put each device on its bus and wire its interrupt line; nothing
attaches itself at import time.  Every device goes through :meth:`Machine.place`,
which records it in :attr:`Machine.devices` (:mod:`kvmlite.vmm.registry`);
where it goes comes from :mod:`kvmlite.vmm.layout`, fixed PC addresses or
:attr:`Machine.allocator`.  ``Machine.run()`` starts one thread per
vCPU plus the timer service and returns the exit status
(:class:`kvmlite.status.ExitStatus`, or ``(v << 1) | 1`` when the guest wrote v
to the debug-exit port, as under QEMU).  The machine talks to its backend
only through :mod:`kvmlite.backend`'s protocols and decides by the backend's
capabilities, never by its name.

Every machine gets ACPI tables (:mod:`kvmlite.firmware.acpi`, in the
reserved BIOS area at 0xF0000) and the ACPI PM and reset-control devices
(:mod:`kvmlite.devices.acpi_pm`), whatever kernel it boots: for Linux they
are how it finds its CPUs and powers off; a guest that never looks at them
pays nothing.  SMP (``cpus`` > 1) needs LAPICs: KVM's in-kernel irqchip, or
on the software backend kvmlite's own (:mod:`kvmlite.vmm.apic`); only vCPU 0
gets the loader's entry state, the APs stay in the reset state the backend
gives them (waiting for INIT/SIPI from their LAPIC).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmlite.backend import VmBackend, open_backend
from kvmlite.devices.acpi_pm import REG_PM1_CNT, REG_PM1_STS, AcpiPm, ResetControl
from kvmlite.devices.base import Device
from kvmlite.devices.debug_exit import DebugExit
from kvmlite.devices.fw_cfg import FwCfg
from kvmlite.devices.i8042 import I8042, PortA20Reset, PostCodePort
from kvmlite.devices.pit import Pit8254
from kvmlite.devices.rtc import CmosRtc
from kvmlite.devices.serial import THR, Serial16550
from kvmlite.errors import ConfigError, KvmliteError, LoaderError
from kvmlite.firmware.acpi import MAX_CPUS, AcpiPlatform, write_tables
from kvmlite.kvm.coalesced import CoalescedRing
from kvmlite.loaders import LoadResult, load_kernel
from kvmlite.memory.bus import Bus
from kvmlite.memory.guest import GuestMemory
from kvmlite.pci.bus import PciBus
from kvmlite.status import ExitStatus
from kvmlite.vmm import layout as L
from kvmlite.vmm import seccomp
from kvmlite.vmm.apic import ApicIrqChip
from kvmlite.vmm.console import SerialConsole, parse_serial_spec
from kvmlite.vmm.cpu_setup import boot_msrs, guest_cpuid, setup_cpu
from kvmlite.vmm.cpuid import apply_features, parse_feature_spec
from kvmlite.vmm.hypercall import host_completes_hypercalls, without_hypercall_features
from kvmlite.vmm.iothread import IoThread
from kvmlite.vmm.irqchip import HALT_WATCH_INTERVAL_S, KernelIrqChip, UserspaceIrqChip
from kvmlite.vmm.irqroute import GsiRouter
from kvmlite.vmm.layout import SystemAllocator
from kvmlite.vmm.limits import OutputLimit, deadline_after, stop_if_past, wait_slice
from kvmlite.vmm.loop import ExitHook, VcpuLoop, VmControl
from kvmlite.vmm.pci_wiring import PciWiring
from kvmlite.vmm.registry import BusSlot, DeviceRecord, DeviceRegistry, slot
from kvmlite.vmm.rescue import Rescuer
from kvmlite.vmm.sleep import Sleep
from kvmlite.vmm.stats import ExitStats
from kvmlite.vmm.syscall_fix import SyscallRepair, host_drops_syscall_privilege
from kvmlite.vmm.timers import Rescheduling, TimerService
from kvmlite.vmm.xstate_quirk import ExtendedStateKeeper, ring3_extra_xcr0

if TYPE_CHECKING:  # imported where used: a run imports only what its configuration attaches
    from kvmlite.devices.pc_testdev import PcTestdev
    from kvmlite.virtio.blk import BlockImage

log = logging.getLogger(__name__)

MIB = 1 << 20
MIN_MEMORY_MIB = 2
MAX_MEMORY_MIB = 64 * 1024
#: Devices a MachineConfig may ask for by name, beyond the standard PC's.
#: The host workarounds ``--host-workarounds`` names (docs/platform-notes.md): Linux's ``clearcpuid=`` on
#: the command line (kvmlite.vmm.host_quirks), the vector state kept across the guest kernel's XSAVE/XRSTOR
#: (kvmlite.vmm.xstate_quirk), the hypercall-based PV features hidden (kvmlite.vmm.hypercall), Linux's
#: boot-time checks skipped and its initramfs unpacked on the host where ring 0 is emulated (``boot-speed``,
#: kvmlite.vmm.host_quirks).
#: ``pvh-entry``: a bzImage's vmlinux, decompressed on the host, booted through its PVH entry there (same).
HOST_WORKAROUNDS = ("clearcpuid", "xstate", "hypercalls", "boot-speed", "pvh-entry")
OPTIONAL_DEVICES = ("pc-testdev", "pci-testdev", "virtio-rng-pci")
SMP_NEEDS_KERNEL_IRQCHIP = (
    "SMP needs local APICs (the KVM backend with --irqchip kernel or auto, or the emu backend)"
)


@dataclass(frozen=True)
class MachineConfig:
    """What to run and how; checked once, when made (a :class:`ConfigError` naming the option)."""

    kernel: Path
    cmdline: str = ""
    initrds: list[Path] = field(default_factory=list)
    memory_mib: int = 128
    cpus: int = 1
    #: CPUID changes, e.g. "-avx,-xsaves" (see kvmlite.vmm.cpuid); KVM backend only.
    cpu_features: str = ""
    backend: str = "auto"  # "kvm", "emu" or "auto"
    irqchip: str = "auto"  # "kernel", "userspace" or "auto" (kernel on KVM)
    serial: str = "stdio"  # see kvmlite.vmm.console
    on_reset: str = "exit"  # "exit" or "restart"
    stats: bool = False
    #: Exits to log (kvmlite.vmm.trace): "" none, "all", or a filter such as "pio:0x3f8,mmio".
    trace: str = ""
    #: Traced exits as JSON lines to this file instead of the log (every exit when ``trace`` is "").
    trace_file: Path | None = None
    #: "auto": complete SYSCALLs the host leaves at CPL 3 (kvmlite.vmm.syscall_fix) where it does; "off".
    syscall_fix: str = "auto"
    #: "auto": work around every host quirk kvmlite probes for (HOST_WORKAROUNDS); "off": leave the guest
    #: to meet them; or a comma-separated list of the workarounds to apply, e.g. "clearcpuid,hypercalls".
    host_workarounds: str = "auto"
    #: Library use: where the guest's serial output goes (overrides ``serial``).
    serial_out: Callable[[bytes], None] | None = None
    #: Devices attached only on request, by QEMU's names (OPTIONAL_DEVICES): "pc-testdev", "pci-testdev", ...
    extra_devices: list[str] = field(default_factory=list)
    #: ``--disk PATH[,readonly=on][,serial=ID]`` specs: one virtio-blk-pci each.
    disks: list[str] = field(default_factory=list)
    #: ``--net`` specs (kvmlite.vmm.netdev.NetSpec): one virtio-net NIC each.
    nets: list[str] = field(default_factory=list)
    #: How virtio devices are attached: "pci" (virtio-pci modern) or "mmio" (virtio-mmio version 2).
    virtio_transport: str = "pci"
    #: A virtio console (the guest's hvc0) on this backend (as ``serial``: stdio, file:PATH, ...); "" none.
    virtio_console: str = ""
    #: Wall-time limit of a run in seconds (0: none); past it the run ends with ExitStatus.TIMEOUT.
    timeout: float = 0.0
    #: Console bytes the guest may write (0: no limit); beyond it the run ends with ExitStatus.OUTPUT_LIMIT.
    max_output: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def workarounds(self) -> frozenset[str]:
        """The host workarounds to apply where the host needs them (a subset of HOST_WORKAROUNDS)."""
        spec = self.host_workarounds
        if spec in ("auto", "off"):
            return frozenset(HOST_WORKAROUNDS if spec == "auto" else ())
        names = frozenset(spec.split(","))
        unknown = sorted(names - set(HOST_WORKAROUNDS))
        if unknown or not spec:
            raise ConfigError(
                f"--host-workarounds {spec!r}: choose auto, off or a comma-separated list of "
                f"{', '.join(HOST_WORKAROUNDS)}"
            )
        return names

    def validate(self) -> None:
        parse_feature_spec(self.cpu_features)
        if self.trace:
            from kvmlite.vmm.trace import parse_trace_filter

            parse_trace_filter(self.trace)
        if not MIN_MEMORY_MIB <= self.memory_mib <= MAX_MEMORY_MIB:
            raise ConfigError(f"--memory must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB")
        if not 1 <= self.cpus <= MAX_CPUS:
            # the MADT's xAPIC entries hold 8-bit APIC IDs, and the IOAPIC takes the ID after the last CPU
            raise ConfigError(f"--cpus must be between 1 and {MAX_CPUS}, not {self.cpus}")
        if self.backend not in ("kvm", "emu", "auto"):
            raise ConfigError(f"unknown backend {self.backend!r} (choose kvm, emu or auto)")
        if self.irqchip not in ("kernel", "userspace", "split", "auto"):
            raise ConfigError(f"unknown irqchip {self.irqchip!r} (choose kernel, userspace, split or auto)")
        if self.syscall_fix not in ("auto", "off"):
            raise ConfigError(f"--syscall-fix {self.syscall_fix!r}: choose auto or off")
        self.workarounds()
        if self.on_reset not in ("exit", "restart"):
            raise ConfigError(f"--on-reset {self.on_reset!r}: choose exit or restart")
        if self.cpus > 1 and self.backend != "emu" and self.irqchip == "userspace":
            raise ConfigError(f"--cpus {self.cpus}: {SMP_NEEDS_KERNEL_IRQCHIP}")
        parse_serial_spec(self.serial)
        if self.timeout < 0 or self.max_output < 0:
            raise ConfigError("--timeout and --max-output must not be negative")
        for name in self.extra_devices:
            if name not in OPTIONAL_DEVICES:
                raise ConfigError(f"unknown device {name!r} (kvmlite adds: {', '.join(OPTIONAL_DEVICES)})")
        if self.disks:
            from kvmlite.virtio.blk import DiskSpec

            for disk in self.disks:
                DiskSpec.parse(disk)
        if self.nets:
            from kvmlite.vmm.netdev import NetSpec

            for index, net in enumerate(self.nets):
                NetSpec.parse(net, index)
        if self.virtio_console:
            parse_serial_spec(self.virtio_console)
            if self.virtio_console == "stdio" and self.serial == "stdio" and self.serial_out is None:
                raise ConfigError("COM1 and the virtio console cannot both be on stdio (give --serial none)")
        if self.virtio_transport not in ("pci", "mmio"):
            raise ConfigError(f"--virtio-transport {self.virtio_transport!r}: choose pci or mmio")


class Machine(PciWiring):
    """A PC-like VM: ACPI, legacy devices, one or more vCPUs."""

    def __init__(self, config: MachineConfig) -> None:
        self.config = config  # validated when it was made
        self.control = VmControl()
        self.lock = threading.RLock()  # the device lock: buses, timers and console threads share it
        self.pio = Bus("pio", self.lock)
        self.mmio = Bus("mmio", self.lock)
        self.memory = GuestMemory.for_pc(config.memory_mib * MIB, L.PCI_HOLE)
        try:
            self.vm: VmBackend = open_backend(config.backend)
        except BaseException:
            self.memory.close()
            raise
        self.caps = self.vm.capabilities()
        self.timers = TimerService(self.lock)
        try:
            self._check_backend(config)
            self.vm.register_memory(self.memory)
            self.irqchip = self._make_irqchip(config.irqchip)
            tracing = config.trace or config.trace_file is not None
            self.tracer = None
            if tracing:
                from kvmlite.vmm.trace import ExitTracer

                self.tracer = ExitTracer(config.trace or "all", config.trace_file)
        except BaseException:
            self.vm.close()
            self.memory.close()
            raise
        #: Every device the builder attached (name, type, bus ranges, IRQs), in attach order.
        self.devices = DeviceRegistry()
        #: Where devices with no fixed PC address get their ports, MMIO ranges and GSIs.
        self.allocator = SystemAllocator(kernel_irqchip=self.irqchip.has_ioapic)
        self.loops: list[VcpuLoop] = []
        self.serial: Serial16550 | None = None
        self.console: SerialConsole | None = None
        self.virtio_console: SerialConsole | None = None  # the host side of virtio-console, if attached
        self.load_result: LoadResult | None = None
        #: The last value the guest wrote to the POST port (0x80), None before any (only the last is kept:
        #: Linux writes the port constantly).
        self.post_code: int | None = None
        self.acpi_pm: AcpiPm | None = None
        self.pci: PciBus | None = None
        self._pci_names: dict[int, str] = {}  # devfn -> the PCI function's registry name
        self._closing: list[Callable[[], None]] = []  # host resources of devices (image files, ...)
        #: Write-only ports whose writes go to the coalesced ring (kvmlite.kvm.coalesced) where the
        #: backend has one: (port, length), registered with the first vCPU.
        self.coalesced_ports: list[tuple[int, int]] = []
        self.coalesced: CoalescedRing | None = None
        self._uarts: list[tuple[int, Serial16550]] = []  # (base port, UART) of every 16550
        self._every_exit = bool(config.trace)  # the trace (or a debugger) shows every access: no coalescing
        self.iothread = IoThread(self.lock)
        self._lazy_probes: list[Callable[[Callable[[], Any]], object]] = []
        #: MSI routes and irqfds (kvmlite.vmm.irqroute) where KVM has them with its irqchip; else None.
        self.gsi_router = (
            GsiRouter(self.vm)
            if isinstance(self.irqchip, KernelIrqChip) and not self.irqchip.split and self.caps.irqfd
            else None
        )
        #: The virtio-blk images; a migration target opens them unlocked (``lock_disks`` False before
        #: the devices are attached) and locks them when the source gives them up.
        self.disk_images: list[BlockImage] = []
        self.lock_disks = True
        #: Appended to the kernel command line by load() (virtio-mmio devices announce themselves there).
        self.cmdline_extra: list[str] = []
        #: ``virtio_mmio.device=`` words, for guests that find virtio-mmio devices on the command line.
        self.mmio_announcements: list[str] = []
        self.rsdp = 0  # guest-physical address of the ACPI RSDP once attach_acpi() ran
        #: ACPI S3: the PM device suspends through it, the RTC's interrupt wakes the guest.
        self.sleep = Sleep(self.control, self.loops, self.memory, lambda: self.rsdp, self._woken)

    # --- construction -------------------------------------------------------------
    def _check_backend(self, config: MachineConfig) -> None:
        """What the configuration asks of the backend that opened (``auto`` may have fallen back)."""
        caps = self.caps
        if config.cpus > 1 and not (caps.in_kernel_irqchip or caps.userspace_apic):
            raise ConfigError(f"--cpus {config.cpus}: {SMP_NEEDS_KERNEL_IRQCHIP}")
        if config.cpus > caps.max_vcpus:
            raise ConfigError(
                f"--cpus {config.cpus}: the {caps.name} backend runs at most {caps.max_vcpus} vCPUs per VM"
            )
        if config.irqchip in ("kernel", "split") and not caps.in_kernel_irqchip:
            raise ConfigError(f"--irqchip {config.irqchip}: the {caps.name} backend has no in-kernel irqchip")

    def _make_irqchip(self, choice: str) -> UserspaceIrqChip | KernelIrqChip:
        if choice == "split":
            from kvmlite.vmm.split_irqchip import SplitIrqChip

            split = SplitIrqChip(self.vm, self.lock, self.control, self.config.cpus)
            self.timers.every(HALT_WATCH_INTERVAL_S, split.watchdog)
            return split
        if choice == "kernel" or (choice == "auto" and self.caps.in_kernel_irqchip):
            chip = KernelIrqChip(self.vm, self.control)
            self.timers.every(HALT_WATCH_INTERVAL_S, chip.watchdog)
            return chip
        if self.caps.userspace_apic:
            return ApicIrqChip(self.lock, self.control, self.timers, self.config.cpus)
        return UserspaceIrqChip(self.lock, self.control)

    def request_reset(self) -> None:
        """The guest asked for a reset (keyboard controller, port 0x92, reset event)."""
        self.control.stop(ExitStatus.OK, "guest requested a reset", reset=True)

    def _woken(self) -> None:
        if self.acpi_pm is not None:
            self.acpi_pm.woken(by_rtc=True)

    def power_off(self) -> None:
        """The guest entered ACPI S5."""
        self.control.stop(ExitStatus.OK, "guest powered off (ACPI S5)")

    # --- the builder: one attach_* per device, each recorded in the registry ------------------
    def place(
        self,
        name: str,
        type_: str,
        device: Any,
        pio: Sequence[BusSlot] = (),
        mmio: Sequence[BusSlot] = (),
        irqs: Sequence[int] = (),
        handlers: dict[str, Device] | None = None,
    ) -> DeviceRecord:
        """Put ``device`` on the buses at its slots and record it as ``name`` in :attr:`devices`.

        A slot whose name is in ``handlers`` is served by that object instead
        of ``device`` (a register block with its own state machine, or a
        wrapper such as :class:`~kvmlite.vmm.timers.Rescheduling`).  All or
        nothing: if one slot overlaps, none stays on a bus.
        """
        record = self.devices.add(DeviceRecord(name, type_, device, list(pio), list(mmio), list(irqs)))
        handlers = handlers or {}
        placed: list[tuple[Bus, int]] = []
        try:
            for bus, slots in ((self.pio, record.pio), (self.mmio, record.mmio)):
                for slot in slots:
                    label = f"{name} {slot.name}" if slot.name else name
                    bus.insert(handlers.get(slot.name, device), slot.base, slot.length, label, slot.offset)
                    placed.append((bus, slot.base))
        except KvmliteError:
            for bus, base in placed:
                bus.remove(base)
            self.devices.remove(name)
            raise
        return record

    def attach_acpi(self) -> AcpiPm:
        """ACPI PM1 registers and the 0xCF9 reset register; :meth:`load` writes the tables describing them."""
        pm = AcpiPm(
            power_off=self.power_off,
            s5_slp_typ=L.S5_SLP_TYP,
            sci=self.irqchip.line(L.IRQ_SCI),
            s3_slp_typ=L.S3_SLP_TYP,
            suspend=self.sleep.suspend,
        )
        evt = slot(L.PM1_EVT_BLK, L.PM1_EVT_LEN, "pm1_evt", offset=REG_PM1_STS)
        cnt = slot(L.PM1_CNT_BLK, L.PM1_CNT_LEN, "pm1_cnt", offset=REG_PM1_CNT)
        self.place("acpi-pm", "PIIX4_PM", pm, pio=[evt, cnt], irqs=[L.IRQ_SCI])
        reset = ResetControl(reset=self.request_reset)
        self.place("reset-control", "rcr", reset, pio=[slot(L.RESET_PORT, 1)])
        self.acpi_pm = pm
        return pm

    def write_acpi_tables(self) -> int:
        """Write the ACPI tables for the devices attached so far; returns the RSDP's address."""
        platform = AcpiPlatform.from_registry(self.devices, self.config.cpus, ioapic=self.irqchip.has_ioapic)
        self.rsdp = write_tables(self.memory, platform)
        return self.rsdp

    def attach_interrupt_controllers(self) -> None:
        """PIC pair and PIT in userspace, or nothing here when KVM has them in the kernel."""
        chip = self.irqchip
        if isinstance(chip, UserspaceIrqChip) or chip.split:
            pic = chip.pic  # type: ignore[union-attr]
            pics = [slot(L.PIC_MASTER, 2, "master"), slot(L.PIC_SLAVE, 2, "slave"), slot(L.ELCR, 2, "elcr")]
            self.place(
                "pic",
                "isa-i8259",
                pic,
                pio=pics,
                handlers={"master": pic.master, "slave": pic.slave, "elcr": pic.elcr},
            )
            pit = Pit8254(irq0=chip.line(L.IRQ_PIT))
            self.timers.add(pit)
            self.place(
                "pit",
                "isa-pit",
                pit,
                pio=[slot(L.PIT_PORT, 4, "pit"), slot(L.PORT_B, 1, "port61")],
                irqs=[L.IRQ_PIT],
                handlers={"pit": Rescheduling(pit, self.timers), "port61": pit.port61},
            )
        if isinstance(chip, ApicIrqChip):
            for lapic in chip.lapics:  # reached by their vCPUs, not through a bus
                self.place(f"lapic{lapic.apic_id}", "apic", lapic)
        if isinstance(chip, ApicIrqChip) or chip.split:
            window = getattr(chip, "window", chip.ioapic)  # type: ignore[union-attr]  # split: routes follow
            ioapic = slot(L.IOAPIC_ADDRESS, L.IOAPIC_SIZE, "ioapic")
            self.place("ioapic", "ioapic", chip.ioapic, mmio=[ioapic], handlers={"ioapic": window})  # type: ignore[union-attr]

    def attach_rtc(self) -> CmosRtc:
        rtc = CmosRtc(
            irq8=self.sleep.wake_line(self.irqchip.line(L.IRQ_RTC)),
            memory_size=self.memory.size,
            low_ram_limit=L.PCI_HOLE,
        )
        self.timers.add(rtc)
        self.place(
            "rtc",
            "mc146818rtc",
            rtc,
            pio=[slot(L.RTC_PORT, 2, "rtc")],
            irqs=[L.IRQ_RTC],
            handlers={"rtc": Rescheduling(rtc, self.timers)},
        )
        # The index register is write-only and read back only through the data port, whose access
        # exits (and replays the ring first): its writes need no exit of their own (as under QEMU).
        self.coalesce_port(L.RTC_PORT, True)
        return rtc

    def attach_keyboard_controller(self) -> I8042:
        kbc = I8042(
            reset=self.request_reset,
            irq1=self.irqchip.line(L.IRQ_KEYBOARD),
            irq12=self.irqchip.line(L.IRQ_MOUSE),
        )
        ports = [slot(L.I8042_DATA, 1, "data"), slot(L.I8042_CMD, 1, "command", offset=4)]
        self.place("i8042", "i8042", kbc, pio=ports, irqs=[L.IRQ_KEYBOARD, L.IRQ_MOUSE])
        self.place("port92", "port92", PortA20Reset(reset=self.request_reset), pio=[slot(L.PORT_A, 1)])
        return kbc

    def attach_post_port(self) -> PostCodePort:
        def on_code(code: int) -> None:
            self.post_code = code
            if self.config.trace:
                log.info("POST code %#04x", code)

        port = PostCodePort(on_code=on_code)
        self.place("post", "post-codes", port, pio=[slot(L.POST_PORT, 1)])
        # Linux writes port 0x80 between legacy port accesses as an I/O delay: no exit for those.
        self.coalesce_port(L.POST_PORT, True)
        return port

    def attach_fw_cfg(self) -> FwCfg:
        fw = FwCfg(ram_size=self.memory.size, nb_cpus=self.config.cpus, cmdline=self.config.cmdline)
        self.place("fw_cfg", "fw_cfg_io", fw, pio=[slot(L.FW_CFG_PORT, 2)])
        return fw

    def attach_serial(self, port: int = L.COM_PORTS[0], irq: int = L.COM_IRQS[0]) -> Serial16550:
        console = SerialConsole(self.config.serial, self.lock, self.control)
        sink = self.config.serial_out or console.write
        if self.config.max_output:
            sink = OutputLimit(sink, self.config.max_output, self.control).write
        serial = Serial16550(
            irq=self.irqchip.line(irq),
            out=sink,
            on_rx_space=console.rx_space_available,
            on_quiet=functools.partial(self.coalesce_port, port + THR),
        )
        self.coalesce_port(port + THR, serial.ier == 0)  # THR writes of a polling guest: no exit each
        self._uarts.append((port, serial))
        console.bind(serial)
        name = self.devices.unique_name("serial")
        self.place(name, "isa-serial", serial, pio=[slot(port, L.SERIAL_PORT_LEN)], irqs=[irq])
        self.serial, self.console = serial, console
        return serial

    def coalesce_port(self, port: int, on: bool) -> None:
        """Let the guest's writes to ``port`` go to the coalesced ring (on) or exit again (off).

        Only for writes nobody needs to see before the guest's next exit (the
        ring is replayed then, see :mod:`kvmlite.vmm.loop`); where the backend
        has no ring, or under ``--trace`` (the trace shows every access), it
        only records the wish.
        """
        entry = (port, 1)
        if on == (entry in self.coalesced_ports):
            return
        if self.coalesced is not None and not self._every_exit:
            self.vm.coalesce_writes(port, 1, pio=True, deassign=not on)
        if on:
            self.coalesced_ports.append(entry)
        else:
            self.coalesced_ports.remove(entry)

    def _stop_coalescing(self) -> None:
        """An extension wants every exit (a trace, a debugger): every port write exits again."""
        if self.coalesced is not None and not self._every_exit:
            for port, length in self.coalesced_ports:
                self.vm.coalesce_writes(port, length, pio=True, deassign=True)
        self._every_exit = True

    def attach_debug_exit(self, port: int = L.DEBUG_EXIT_PORT) -> DebugExit:
        dev = DebugExit(lambda status: self.control.stop(status, "guest wrote to the debug-exit port"))
        self.place("debug-exit", "isa-debug-exit", dev, pio=[slot(port, 1)])
        return dev

    def attach_pc_testdev(self) -> PcTestdev:
        """QEMU's pc-testdev (kvm-unit-tests): scratch and flush ports, IRQ ports, the iomem window."""
        from kvmlite.devices import pc_testdev as T

        isa_irqs = L.IOAPIC_PINS if self.irqchip.has_ioapic else 16  # the PICs' 16 lines
        dev = T.PcTestdev([self.irqchip.line(i) for i in range(isa_irqs)], T.host_page_flusher(self.memory))
        ports = slot(L.PC_TESTDEV_PORT, T.IOPORT_LEN)
        irqs = slot(L.PC_TESTDEV_IRQ_PORT, T.IRQ_LINES, "irq", offset=T.IRQ_OFFSET)
        iomem = slot(L.PC_TESTDEV_IOMEM, T.IOMEM_LEN, "iomem")
        handlers: dict[str, Device] = {"iomem": dev.iomem}
        self.place("pc-testdev", "pc-testdev", dev, pio=[ports, irqs], mmio=[iomem], handlers=handlers)
        return dev

    def load(self) -> LoadResult:
        cfg = self.config
        if "acpi-pm" in self.devices:
            self.write_acpi_tables()
        extra = list(self.cmdline_extra)
        if self.mmio_announcements and not self._mmio_from_acpi():
            extra += self.mmio_announcements
        cmdline = " ".join([cfg.cmdline, *extra]).strip()
        workarounds = cfg.workarounds() & {"clearcpuid", "boot-speed", "pvh-entry"}
        unpack = None
        kernel_data = None
        if self.caps.rescue_emulation and workarounds:
            from kvmlite.vmm import host_quirks as Q

            cmdline = Q.linux_cmdline(cfg.kernel, cmdline, self.vm.new_vm, workarounds)
            if "boot-speed" in workarounds and cfg.initrds:
                unpack = Q.initramfs_unpacker(self.vm.new_vm, self.memory.size)
            if "pvh-entry" in workarounds:
                kernel_data = Q.pvh_kernel_from_bzimage(cfg.kernel, self.vm.new_vm)
        load = functools.partial(load_kernel, self.memory, cfg.kernel, cmdline, cfg.initrds, rsdp=self.rsdp,
                                 initramfs=unpack)  # fmt: skip
        try:
            self.load_result = load(data=kernel_data)
        except LoaderError as err:
            if kernel_data is None:
                raise
            log.warning("the bzImage's vmlinux does not load through PVH (%s): booting the bzImage", err)
            self.load_result = load()
        log.info("loaded %s (%s), entry %#x", cfg.kernel, self.load_result.format, self.load_result.entry)
        for note in self.load_result.notes:
            log.warning("%s", note)
        return self.load_result

    def _mmio_from_acpi(self) -> bool:
        """Whether a Linux guest finds the virtio-mmio devices in the DSDT rather than on its command line.

        With the IOAPIC their GSIs are above 15, which Linux registers only from ACPI (a command-line
        ``virtio_mmio.device=...:16`` fails its probe with -EINVAL); other guests read the command line.
        """
        if not self.irqchip.has_ioapic or "acpi-pm" not in self.devices:
            return False
        from kvmlite.loaders import kernel_format
        from kvmlite.vmm.host_quirks import LINUX_FORMATS

        return kernel_format(self.config.kernel) in LINUX_FORMATS

    def create_vcpus(self, count: int = 1) -> None:
        """vCPU 0 starts at the loaded image; APs (1..count-1) keep KVM's reset state until INIT/SIPI.

        With the in-kernel irqchip KVM creates every vCPU but the BSP in
        KVM_MP_STATE_UNINITIALIZED: KVM_RUN blocks in the kernel until the
        LAPIC receives INIT and a startup IPI, which reset the registers and
        start it at the SIPI vector, so nothing here must touch their state.
        """
        assert self.load_result is not None, "load() first"
        caps, vm = self.caps, self.vm
        supported = vm.supported_cpuid() if caps.host_cpuid else []
        if supported and self.config.cpu_features:
            supported = apply_features(supported, self.config.cpu_features)
        workarounds = self.config.workarounds()
        if supported and "hypercalls" in workarounds and not host_completes_hypercalls(vm.new_vm):
            supported = without_hypercall_features(supported)
        msrs = boot_msrs(set(vm.msr_index_list()))  # the emulator keeps what it is given
        fix_syscalls = (
            caps.msr_filter and self.config.syscall_fix == "auto" and SyscallRepair.trap_lstar_writes(vm)
        )
        keeper = ExtendedStateKeeper(vm.new_vm) if caps.rescue_emulation and "xstate" in workarounds else None
        #: Host probes a vCPU would run on first need (a probe VM): run before the threads confine
        #: themselves with seccomp, whose vCPU list opens no device (kvmlite.vmm.seccomp).
        self._lazy_probes = [host_drops_syscall_privilege] if fix_syscalls else []
        self._lazy_probes += [ring3_extra_xcr0] if keeper is not None else []
        for i in range(count):
            vcpu = vm.create_vcpu(i)
            if supported:
                vcpu.set_cpuid(guest_cpuid(supported, i, count))
            if msrs:
                vcpu.set_msrs(msrs)  # after the CPUID: KVM checks some MSRs against it
            if i == 0:
                regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
                setup_cpu(regs, sregs, self.memory, self.load_result)
                vcpu.set_sregs(sregs)
                vcpu.set_regs(regs)
            if i == 0 and caps.coalesced_pio:
                self.coalesced = vm.coalesced_ring(self.pio.write, self.mmio.write)
                for port, length in self.coalesced_ports if self.coalesced and not self._every_exit else ():
                    vm.coalesce_writes(port, length, pio=True)
            loop = VcpuLoop(vcpu, self.control, self.pio, self.mmio, timing=self.config.stats)
            loop.coalesced, loop.every_exit_wanted = self.coalesced, self._stop_coalescing
            if i == 0 or self.irqchip.serves_every_vcpu:
                self.irqchip.attach(loop)
            if self.tracer is not None:
                loop.add(ExitHook(self.tracer.hook(vcpu.id), every_exit=True))
            if caps.rescue_emulation:
                loop.add(Rescuer(loop, self.memory, keeper))
            if fix_syscalls:
                loop.add(SyscallRepair(loop, self.memory, vm))
            self.loops.append(loop)

    def attach_pc_devices(self) -> None:
        """The standard PC's devices, in the order the registry lists them."""
        self.attach_interrupt_controllers()
        self.attach_rtc()
        self.attach_keyboard_controller()
        self.attach_post_port()
        self.attach_fw_cfg()
        self.attach_serial()
        self.attach_debug_exit()
        self.attach_acpi()
        self.attach_pci()
        if self.config.disks:
            from kvmlite.virtio.blk import DiskSpec

            for disk in self.config.disks:
                self.attach_virtio_blk(DiskSpec.parse(disk))

    def attach_configured_devices(self) -> None:
        """The standard PC's devices and those the configuration asks for (boot and restore alike)."""
        self.attach_pc_devices()
        if "pc-testdev" in self.config.extra_devices:
            self.attach_pc_testdev()
        if "pci-testdev" in self.config.extra_devices:
            from kvmlite.devices.pci_testdev import PciTestdev

            self.attach_pci_device("pci-testdev", "pci-testdev", PciTestdev())
        if "virtio-rng-pci" in self.config.extra_devices:
            self.attach_virtio_rng()
        if self.config.virtio_console:
            self.attach_virtio_console(self.config.virtio_console)
        if self.config.nets:
            from kvmlite.vmm.netdev import NetSpec

            for index, net in enumerate(self.config.nets):
                self.attach_virtio_net(NetSpec.parse(net, index))

    @classmethod
    def build(cls, config: MachineConfig) -> Machine:
        """The standard PC: interrupt controllers, PIT, RTC, i8042, COM1, fw_cfg, debug-exit, ACPI, vCPUs."""
        machine = cls(config)
        try:
            machine.attach_configured_devices()
            machine.load()
            machine.create_vcpus(config.cpus)
        except BaseException:
            machine.close()
            raise
        return machine

    # --- running --------------------------------------------------------------------
    def _host_consoles(self) -> list[SerialConsole]:
        consoles = [self.console] if self.console is not None and self.config.serial_out is None else []
        return consoles + ([self.virtio_console] if self.virtio_console is not None else [])

    def open_consoles(self) -> None:
        """Open the console backends (a ``file:`` or ``unix:`` path, the terminal's raw mode) without
        starting threads: before privileges are dropped (:mod:`kvmlite.vmm.jail`); ``run()`` does it too."""
        for host in self._host_consoles():
            host.open()

    def probe_host(self) -> None:
        """Run now the host probes a vCPU would run at first need (a probe VM opens /dev/kvm, its answer
        goes to a cache file): before the threads confine themselves (kvmlite.vmm.seccomp) or privileges
        are dropped (kvmlite.vmm.jail).  Each runs once per process."""
        for probe in self._lazy_probes:
            probe(self.vm.new_vm)

    def run(self, deadline: float | None = None) -> int:
        """Run until the guest stops; ``deadline`` (a :func:`time.monotonic` instant) overrides the
        config's ``timeout`` (so restarts can share one)."""
        if deadline is None:
            deadline = deadline_after(self.config.timeout)
        for console in self._host_consoles():
            console.start()
        if seccomp.mode() != "off":
            self.probe_host()
        self.timers.start()
        self.iothread.start()
        threads = [
            seccomp.thread("vcpu", loop.run, f"vcpu{loop.vcpu.id}") for loop in self.loops
        ]
        for t in threads:
            t.start()
        for port, uart in self._uarts:  # a restored snapshot's IER decides (restore sets it directly)
            self.coalesce_port(port + THR, uart.ier == 0)
        ring = self.coalesced
        try:
            while any(t.is_alive() for t in threads):
                # With a coalesced ring, writes a guest makes just before a long stretch without exits
                # (serial output, then computing) are replayed from here, at most 50 ms late.
                self.control.stopped.wait(wait_slice(deadline, 0.5 if ring is None else 0.05))
                if ring is not None and ring.words[0] != ring.words[1]:
                    ring.drain()
                stop_if_past(self.control, deadline, self.config.timeout)
                if self.control.stopping:
                    for t in threads:
                        t.join()
        except KeyboardInterrupt:
            self.control.stop(ExitStatus.INTERRUPTED, "interrupted from the host")
            for t in threads:
                t.join(timeout=5)
        finally:
            self.timers.stop()
            self.iothread.stop()
            for host in (self.console, self.virtio_console):
                if host is not None:
                    host.restore_terminal()
        info = self.control.stop_info
        return info.status if info else 0

    @property
    def reset_requested(self) -> bool:
        info = self.control.stop_info
        return bool(info and info.reset)

    def stats(self) -> ExitStats:
        total = ExitStats()
        for loop in self.loops:
            total.merge(loop.stats)
        if self.coalesced is not None:
            total.coalesced.update(self.coalesced.replayed)
        return total

    def close(self) -> None:
        for host in (self.console, self.virtio_console):
            if host is not None:
                host.close()
        self.iothread.close()
        for close in self._closing:
            close()
        if self.tracer is not None:
            self.tracer.close()
        if self.coalesced is not None:
            self.coalesced.close()
        self.vm.close()
        self.memory.close()
