"""The machine's PCI bus and virtio devices: BARs, INTx lines, MSI-X, ioeventfds (part of the builder).

:class:`PciWiring` is the half of :class:`kvmlite.vmm.machine.Machine` that puts functions on the
PCI bus as firmware would leave them (BARs from the layout's windows, decoding on, INTx on a GSI)
and virtio devices on their transport (virtio-pci, or virtio-mmio announced on the command line):
queue notifications through KVM_IOEVENTFD into the I/O thread, interrupts through irqfds on MSI
routes or resampled level lines where KVM has them, else through the irqchip.  It is a mixin, not a
component, so that the builder keeps one set of ``attach_*`` methods (``machine.attach_virtio_blk``);
the attributes below are the machine's, set by its constructor.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from kvmlite.devices.base import IrqLine
from kvmlite.errors import ConfigError, KvmliteError
from kvmlite.pci.bus import ConfigData, Ecam, PciBus, devfn
from kvmlite.pci.config import COMMAND, COMMAND_IO, COMMAND_MEMORY, INTERRUPT_LINE, INTERRUPT_PIN, BarKind
from kvmlite.pci.device import HostBridge, PciFunction
from kvmlite.vmm import layout as L
from kvmlite.vmm.console import SerialConsole
from kvmlite.vmm.irqchip import KernelIrqChip, UserspaceIrqChip
from kvmlite.vmm.irqroute import GsiRouter, MsiVectors, ResampledLine
from kvmlite.vmm.registry import DeviceRecord, DeviceRegistry, slot

if TYPE_CHECKING:  # imported where used: a run imports only what its configuration attaches
    import threading

    from kvmlite.backend import BackendCaps, VmBackend
    from kvmlite.memory.bus import Bus
    from kvmlite.memory.guest import GuestMemory
    from kvmlite.virtio.blk import BlockImage, DiskSpec, VirtioBlk
    from kvmlite.virtio.console import VirtioConsole
    from kvmlite.virtio.device import VirtioDevice
    from kvmlite.virtio.mmio import VirtioMmio
    from kvmlite.virtio.net import VirtioNet
    from kvmlite.virtio.pci import VirtioPciFunction
    from kvmlite.virtio.rng import VirtioRng
    from kvmlite.vmm.iothread import IoThread
    from kvmlite.vmm.layout import SystemAllocator
    from kvmlite.vmm.loop import VmControl
    from kvmlite.vmm.machine import MachineConfig
    from kvmlite.vmm.netdev import NetSpec
    from kvmlite.vmm.timers import TimerService


class PciWiring:
    """PCI and virtio attachment for :class:`~kvmlite.vmm.machine.Machine` (see the module docstring)."""

    # the machine's, set by Machine.__init__
    config: MachineConfig
    control: VmControl
    lock: threading.RLock
    pio: Bus
    mmio: Bus
    memory: GuestMemory
    vm: VmBackend
    caps: BackendCaps
    timers: TimerService
    iothread: IoThread
    irqchip: UserspaceIrqChip | KernelIrqChip
    gsi_router: GsiRouter | None
    devices: DeviceRegistry
    allocator: SystemAllocator
    pci: PciBus | None
    virtio_console: SerialConsole | None
    disk_images: list[BlockImage]
    lock_disks: bool
    mmio_announcements: list[str]
    _pci_names: dict[int, str]
    _closing: list[Callable[[], None]]

    place: Callable[..., DeviceRecord]  # Machine.place

    def attach_pci(self) -> PciBus:
        """The PCI host bridge at 00.0 with configuration mechanism #1 (0xCF8/0xCFC) and the ECAM window."""
        bus = PciBus(self.pio, self.mmio)
        bridge = HostBridge()
        bus.add(bridge, 0)
        address = bus.config_address
        self.place(
            "pcihost",
            "pci-host-bridge",
            bus,
            pio=[slot(L.PCI_CONFIG_ADDRESS, 1, "config_address"), slot(L.PCI_CONFIG_DATA, 4, "config_data")],
            mmio=[slot(L.ECAM_BASE, L.ECAM_BUS_SIZE, "ecam")],
            handlers={"config_address": address, "config_data": ConfigData(bus, address), "ecam": Ecam(bus)},
        )
        bus.listeners.append(self._bar_moved)
        self.pci = bus
        return bus

    def attach_pci_device(
        self, name: str, type_: str, function: PciFunction, device: int | None = None
    ) -> int:
        """Put ``function`` on the PCI bus as firmware would leave it: BARs assigned, decoding on, INTx wired.

        BARs come from the layout's PCI windows (I/O BARs from the PCI I/O
        ports), the INTx line from the GSI allocator; the interrupt line
        register holds that GSI.  Returns the function's devfn.
        """
        if self.pci is None:
            raise ConfigError(f"{name}: attach_pci() first")
        config = function.config
        irqs: list[int] = []
        if config.get(INTERRUPT_PIN, 1):
            gsi = self.allocator.gsi.allocate(name)
            function.intx = self.level_line(gsi)
            config.set(INTERRUPT_LINE, 1, gsi)
            irqs.append(gsi)
        command = 0
        for index, spec in sorted(config.bars.items(), key=lambda bar: -bar[1].size):  # largest first: packs
            window = self.allocator.pio if spec.kind is BarKind.IO else self.allocator.pci_mmio
            config.set_bar_address(index, window.allocate(spec.size, f"{name} BAR{index}").base)
            command |= COMMAND_IO if spec.kind is BarKind.IO else COMMAND_MEMORY
        config.set(COMMAND, 2, command)
        where = devfn(self.pci.free_device() if device is None else device)
        self.place(name, type_, function, irqs=irqs).pci = where
        self._pci_names[where] = name
        try:
            return self.pci.add(function, where >> 3)
        except KvmliteError:
            self.devices.remove(name)
            del self._pci_names[where]
            raise

    def attach_virtio_blk(self, spec: DiskSpec) -> VirtioBlk:
        """A virtio-blk-pci disk over a raw image (locked while the machine lives)."""
        from kvmlite.virtio.blk import BlockImage, VirtioBlk

        image = BlockImage(spec, lock=self.lock_disks)
        self._closing.append(image.close)
        self.disk_images.append(image)
        name = self.devices.unique_name("virtio-blk")
        blk = VirtioBlk(self.memory, image, spec.serial, name)
        self.attach_virtio(name, "virtio-blk", blk)
        return blk

    def attach_virtio_console(self, spec: str) -> VirtioConsole:
        """A virtio console (hvc0) on a console backend: a raw tty with Ctrl-A x, a file, a socket."""
        from kvmlite.virtio.console import VirtioConsole

        host = SerialConsole(spec, self.lock, self.control)
        name = self.devices.unique_name("virtio-console")
        console = VirtioConsole(self.memory, host.write, host.rx_space_available, name)
        host.bind(console)
        self.attach_virtio(name, "virtio-serial", console)
        self.virtio_console = host
        return console

    def attach_virtio_net(self, spec: NetSpec) -> VirtioNet:
        """A virtio-net NIC on a host backend (TAP, passt, stream socket) served by the I/O thread."""
        from kvmlite.virtio.net import VirtioNet
        from kvmlite.vmm.netdev import NetHost
        from kvmlite.vmm.netdev import open_backend as open_netdev

        host = NetHost(open_netdev(spec), self.iothread)
        self._closing.append(host.close)
        name = self.devices.unique_name("virtio-net")
        net = VirtioNet(self.memory, spec.mac, host.backend, name)
        self.attach_virtio(name, "virtio-net", net)
        host.bind(net)
        return net

    def attach_virtio_rng(self) -> VirtioRng:
        """A virtio-rng-pci entropy device over the host's getrandom, rate-limited by the timer service."""
        from kvmlite.virtio.rng import VirtioRng

        name = self.devices.unique_name("virtio-rng")
        rng = VirtioRng(self.memory, name=name)
        rng.reschedule = self.timers.poke
        self.timers.add(rng)
        self.attach_virtio(name, "virtio-rng", rng)
        return rng

    def attach_virtio(self, name: str, type_: str, device: VirtioDevice) -> None:
        """``device`` on the configured transport: QEMU's ``<type>-pci`` or ``<type>-device`` (MMIO)."""
        if self.config.virtio_transport == "mmio":
            self.attach_virtio_mmio(name, f"{type_}-device", device)
        else:
            self.attach_virtio_pci(name, f"{type_}-pci", device)

    def attach_virtio_mmio(self, name: str, type_: str, device: VirtioDevice) -> VirtioMmio:
        """``device`` behind a virtio-mmio register block in the platform window, announced to the guest."""
        from kvmlite.virtio import mmio as VM
        from kvmlite.virtio.mmio import VirtioMmio

        window = self.allocator.platform_mmio.allocate(VM.REGION_SIZE, name)
        gsi = self.allocator.gsi.allocate(name)
        transport = VirtioMmio(device, self.level_line(gsi))
        self.place(name, type_, transport, mmio=[slot(window.base, window.length)], irqs=[gsi])
        self.mmio_announcements.append(VirtioMmio.cmdline(window.base, gsi))
        if self.caps.ioeventfd:
            notify = window.base + VM.QUEUE_NOTIFY
            self._notify_through_eventfds(device, lambda queue: notify, datamatch=True)
        return transport

    def attach_virtio_pci(self, name: str, type_: str, device: VirtioDevice) -> VirtioPciFunction:
        """A virtio device on PCI; with KVM its queue notifications go through ioeventfds."""
        from kvmlite.virtio import pci as VP
        from kvmlite.virtio.pci import VirtioPciFunction

        function = VirtioPciFunction(device, self._msi_delivery(name, VP.msix_vectors(device)))
        where = self.attach_pci_device(name, type_, function)
        if self.caps.ioeventfd:
            pci = self.pci
            assert pci is not None

            def notify_address(queue: int) -> int | None:
                base = pci.mapped(where, VP.BAR_INDEX)
                return None if base is None else base + function.notify_offset(queue)

            follow = self._notify_through_eventfds(device, notify_address)

            def moved(devfn_: int, index: int, kind: str, base: int | None) -> None:
                if devfn_ == where and index == VP.BAR_INDEX:
                    follow()

            pci.listeners.append(moved)
        return function

    def _notify_through_eventfds(
        self, device: VirtioDevice, address: Callable[[int], int | None], datamatch: bool = False
    ) -> Callable[[], None]:
        """KVM_IOEVENTFD on each queue's notify address, into the I/O thread.

        A notification then costs the vCPU no exit at all: KVM signals the
        eventfd and goes on running the guest; the I/O thread runs the queue.
        ``address(queue)`` says where queue's notification is written now
        (None: nowhere); the returned callable re-reads it after the transport
        moved (a PCI BAR the guest reprogrammed).  With ``datamatch`` the
        queues share one address and the written value (the queue index)
        tells them apart, as virtio-mmio's QueueNotify does.
        """
        from kvmlite.virtio import mmio as VM
        from kvmlite.virtio import pci as VP

        vm = self.vm
        width = VM.NOTIFY_WIDTH if datamatch else VP.NOTIFY_WIDTH
        fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in device.queues]
        assigned: list[tuple[int, int, int]] = []  # (fd, address, queue) registered with KVM now

        def on_eventfd(fd: int, queue: int) -> None:
            try:
                count = os.eventfd_read(fd)
            except BlockingIOError:
                return
            device.stats.queues[queue].ioeventfd += count
            if not self.control.stopping:  # a VM that stopped (or migrated away) takes no more requests
                device.notify(queue)

        def follow() -> None:
            for fd, addr, queue in assigned:
                match = queue if datamatch else None
                vm.ioeventfd(fd, addr, width, pio=False, datamatch=match, deassign=True)
            assigned.clear()
            for queue, fd in enumerate(fds):
                notify_addr = address(queue)
                if notify_addr is not None:
                    vm.ioeventfd(fd, notify_addr, width, pio=False, datamatch=queue if datamatch else None)
                    assigned.append((fd, notify_addr, queue))

        for queue, fd in enumerate(fds):
            self.iothread.watch(fd, functools.partial(on_eventfd, fd, queue))
            self._closing.append(functools.partial(os.close, fd))
        follow()
        return follow

    def level_line(self, gsi: int) -> IrqLine:
        """A level-triggered device line (PCI INTx, virtio-mmio): an irqfd with resampling where KVM has
        it (kvmlite.vmm.irqroute: no ioctl per interrupt), else the irqchip's line."""
        if self.gsi_router is not None and self.caps.irqfd_resample:
            return ResampledLine(self.vm, gsi, self.iothread, self._closing)
        return self.irqchip.line(gsi)

    def _msi_delivery(self, name: str, vectors: int) -> Callable[[int, int, int], None] | None:
        """How ``name``'s MSI-X vectors reach the guest: irqfds on MSI routes, else KVM_SIGNAL_MSI;
        None with the userspace irqchip (the PIC has no MSI: the function uses INTx)."""
        if self.gsi_router is not None:
            return MsiVectors(self.gsi_router, name, vectors, self._closing)
        if isinstance(self.irqchip, KernelIrqChip):
            vm = self.vm

            def signal(vector: int, address: int, data: int) -> None:
                vm.signal_msi(address, data)

            return signal
        return None

    def device_stats(self) -> list[str]:
        """``--stats`` lines of the devices that keep statistics (virtio: per queue)."""
        lines: list[str] = []
        for record in self.devices:
            format_stats = getattr(getattr(record.device, "device", None), "format_stats", None)
            if format_stats is not None:  # a virtio transport's device: per-queue statistics
                lines += format_stats()
        return lines

    def _bar_moved(self, devfn_: int, index: int, kind: str, base: int | None) -> None:
        """Keep the registry's record of a PCI function's BARs where the bus mapped them."""
        assert self.pci is not None
        record = self.devices.get(self._pci_names.get(devfn_, ""))
        if record is None:
            return
        slots = record.pio if kind == "pio" else record.mmio
        label = f"BAR{index}"
        slots[:] = [s for s in slots if s.name != label]
        if base is not None:
            size = self.pci.functions[devfn_].config.bars[index].size
            slots.append(slot(base, size, label))
