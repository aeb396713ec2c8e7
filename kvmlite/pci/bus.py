"""The PCI bus: functions by device/function number, configuration access, BAR mapping.

Configuration reaches :meth:`PciBus.config_read`/:meth:`PciBus.config_write`
two ways, both served here as ordinary bus devices:

* mechanism #1 (:class:`ConfigAddress` at 0xCF8, a dword register holding
  enable, bus, device, function and register; :class:`ConfigData` at
  0xCFC-0xCFF), the way every PC firmware and most bare-metal code talks;
* ECAM (:class:`Ecam`, memory-mapped, 4 KiB per function, 1 MiB per bus),
  which ACPI's MCFG table announces and Linux prefers.

Only bus 0 exists.  A function that is absent reads all ones, as on hardware.

BARs are mapped by the bus, not by devices (cloud-hypervisor's shape): after
each configuration write that touches a function's command register or BARs
the bus compares what the function should decode (memory/I/O space enabled in
the command register, a non-zero address) with what is mapped and moves the
BAR's device on the machine's PIO or MMIO bus.  The move happens inside the
configuration access, which the machine's device lock serialises with every
other device access (:class:`kvmlite.memory.bus.Bus` looks devices up under
that lock), so no vCPU sees a half-moved BAR.  A BAR the guest puts on top of
another device stays unmapped, with a warning, instead of breaking the bus.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvmlite.devices.base import DeviceState, checked_state, warn_once
from kvmlite.errors import BusError, DeviceError
from kvmlite.memory.bus import Bus
from kvmlite.pci.config import (
    BAR0,
    BAR_COUNT,
    COMMAND,
    COMMAND_IO,
    COMMAND_MEMORY,
    CONFIG_SIZE,
    BarKind,
    touches,
)
from kvmlite.pci.device import PciFunction

log = logging.getLogger(__name__)

DEVICES_PER_BUS = 32
FUNCTIONS_PER_DEVICE = 8
ECAM_FUNCTION_SIZE = 4096
CONFIG_ENABLE = 1 << 31

#: Called when a BAR is mapped or unmapped: (devfn, BAR index, "pio"/"mmio", base or None when unmapped).
MapListener = Callable[[int, int, str, int | None], None]


def devfn(device: int, function: int = 0) -> int:
    return (device << 3) | function


def bdf(devfn_: int) -> str:
    """``00:03.0``-style name of a function on bus 0."""
    return f"00:{devfn_ >> 3:02x}.{devfn_ & 7}"


@dataclass
class PciBusState(DeviceState):
    """Mechanism #1's address register and every function's 256 configuration bytes (by devfn).

    The configuration spaces are the bus's to save: a function's BARs and
    command register decide where the bus maps it, so the bus loads them
    and moves the BARs in one step.  What a function keeps beyond its
    configuration space (MSI-X tables, virtio registers) is in its own state.
    """

    config_address: int = 0
    functions: dict[str, bytes] = field(default_factory=dict)


class PciBus:
    """Bus 0: up to 32 devices of 8 functions, BARs mapped on the machine's buses."""

    def __init__(self, pio: Bus, mmio: Bus) -> None:
        self.pio, self.mmio = pio, mmio
        #: Port 0xCF8 (mechanism #1's CONFIG_ADDRESS), which :class:`ConfigData` reads.
        self.config_address = ConfigAddress()
        self.functions: dict[int, PciFunction] = {}
        self._mapped: dict[tuple[int, int], tuple[Bus, int]] = {}  # (devfn, bar) -> (bus, base)
        self.listeners: list[MapListener] = []
        self._warned: set[str] = set()

    # --- the machine side ----------------------------------------------------------------------
    def add(self, function: PciFunction, device: int | None = None, fn: int = 0) -> int:
        """Put ``function`` at ``device``.``fn`` (the first free device when None); returns its devfn."""
        if device is None:
            device = self.free_device()
        if not (0 <= device < DEVICES_PER_BUS and 0 <= fn < FUNCTIONS_PER_DEVICE):
            raise DeviceError(f"PCI device {device}.{fn} does not exist on a bus")
        where = devfn(device, fn)
        if where in self.functions:
            raise DeviceError(f"PCI slot {bdf(where)} is taken")
        self.functions[where] = function
        self.update_bars(where)
        return where

    def free_device(self) -> int:
        """The lowest device number with nothing in it."""
        for d in range(DEVICES_PER_BUS):
            if devfn(d) not in self.functions:
                return d
        raise DeviceError("the PCI bus is full (32 devices)")

    # --- snapshots ----------------------------------------------------------------------------------
    def state(self) -> PciBusState:
        configs = {str(where): bytes(fn.config.data) for where, fn in sorted(self.functions.items())}
        return PciBusState(config_address=self.config_address.value, functions=configs)

    def load_state(self, state: PciBusState) -> None:
        """Take ``state`` in place: configuration bytes back, BARs mapped where they say."""
        st = checked_state(state, PciBusState, "PCI bus")
        saved = {int(k): v for k, v in st.functions.items()}
        if set(saved) != set(self.functions):
            have, want = sorted(map(bdf, self.functions)), sorted(map(bdf, saved))
            raise DeviceError(f"PCI bus: the snapshot has functions {want}, this machine {have}")
        for where, data in saved.items():
            config = self.functions[where].config
            if not isinstance(data, bytes) or len(data) != CONFIG_SIZE or data[:4] != config.data[:4]:
                raise DeviceError(f"PCI {bdf(where)}: the snapshot holds another function's configuration")
        self.config_address.write(0, 4, int(st.config_address))
        for where, data in saved.items():
            self.functions[where].config.data[:] = data
            self.update_bars(where)

    @classmethod
    def from_state(cls, state: PciBusState, /, **injected: Any) -> PciBus:
        """A bus with ``injected``'s ``pio``, ``mmio`` and ``functions`` ({devfn: function}) in ``state``."""
        bus = cls(injected["pio"], injected["mmio"])
        for where, function in injected.get("functions", {}).items():
            bus.add(function, where >> 3, where & 7)
        bus.load_state(state)
        return bus

    # --- configuration access ------------------------------------------------------------------
    def config_read(self, bus: int, devfn_: int, offset: int, size: int) -> int:
        function = self.functions.get(devfn_) if bus == 0 else None
        if function is None:
            return (1 << (8 * size)) - 1
        return function.config_read(offset, size)

    def config_write(self, bus: int, devfn_: int, offset: int, size: int, value: int) -> None:
        function = self.functions.get(devfn_) if bus == 0 else None
        if function is None:
            return
        function.config_write(offset, size, value)
        if touches(offset, size, COMMAND, 2) or touches(offset, size, BAR0, 4 * BAR_COUNT):
            self.update_bars(devfn_)

    # --- BAR mapping --------------------------------------------------------------------------------
    def update_bars(self, devfn_: int) -> None:
        """Map each BAR of the function where its registers and command bits say, and nowhere else."""
        function = self.functions[devfn_]
        config = function.config
        command = config.command
        for index, spec in config.bars.items():
            is_io = spec.kind is BarKind.IO
            bus = self.pio if is_io else self.mmio
            address = config.bar_address(index)
            decoding = command & (COMMAND_IO if is_io else COMMAND_MEMORY)
            wanted = (bus, address) if decoding and address else None
            current = self._mapped.get((devfn_, index))
            if wanted == current:
                continue
            if current is not None:
                current[0].remove(current[1])
                del self._mapped[(devfn_, index)]
                self._notify(devfn_, index, bus.kind, None)
            if wanted is None:
                continue
            try:
                bus.insert(function.bar_device(index), address, spec.size, f"{bdf(devfn_)} BAR{index}")
            except BusError as err:
                warn_once(log, self._warned, "PCI %s BAR%d left unmapped: %s", bdf(devfn_), index, err)
                continue
            self._mapped[(devfn_, index)] = wanted
            self._notify(devfn_, index, bus.kind, address)

    def mapped(self, devfn_: int, index: int) -> int | None:
        """Where BAR ``index`` of the function is mapped now, or None."""
        entry = self._mapped.get((devfn_, index))
        return entry[1] if entry else None

    def _notify(self, devfn_: int, index: int, kind: str, base: int | None) -> None:
        for listener in self.listeners:
            listener(devfn_, index, kind, base)


class ConfigAddress:
    """Port 0xCF8: the dword CONFIG_ADDRESS register of mechanism #1 (byte accesses are not it)."""

    def __init__(self) -> None:
        self.value = 0

    def read(self, offset: int, size: int) -> int:
        return self.value if offset == 0 and size == 4 else (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            # QEMU keeps the two low bits and ORs them into the register offset (pci_host.c);
            # kvm-unit-tests' config reads rely on it (CONFIG_ADDRESS | reg, then inw(0xCFC))
            self.value = value & (CONFIG_ENABLE | 0x00FF_FFFF)


class ConfigData:
    """Ports 0xCFC-0xCFF: the configuration register CONFIG_ADDRESS selects, at the byte offset used."""

    def __init__(self, bus: PciBus, address: ConfigAddress) -> None:
        self.bus, self.address = bus, address

    def _target(self, offset: int) -> tuple[int, int, int] | None:
        value = self.address.value
        if not value & CONFIG_ENABLE:
            return None
        return (value >> 16) & 0xFF, (value >> 8) & 0xFF, (value & 0xFF) | offset

    def read(self, offset: int, size: int) -> int:
        target = self._target(offset)
        if target is None:
            return (1 << (8 * size)) - 1
        return self.bus.config_read(*target, size)

    def write(self, offset: int, size: int, value: int) -> None:
        target = self._target(offset)
        if target is not None:
            self.bus.config_write(*target, size, value)


class Ecam:
    """The memory-mapped configuration window: offset = bus << 20 | devfn << 12 | register."""

    def __init__(self, bus: PciBus) -> None:
        self.bus = bus

    def read(self, offset: int, size: int) -> int:
        return self.bus.config_read(offset >> 20, (offset >> 12) & 0xFF, offset & 0xFFF, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.bus.config_write(offset >> 20, (offset >> 12) & 0xFF, offset & 0xFFF, size, value)
