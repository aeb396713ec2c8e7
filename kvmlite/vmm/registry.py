"""The machine's device registry: every device the builder attached, with its bus ranges and IRQs.

:class:`~kvmlite.vmm.machine.Machine` records each ``attach_*`` here, so that
whatever needs the whole machine (the ACPI tables, a debugger's
``info devices``, snapshots, ``--stats``) enumerates one list instead of
knowing the builder's code.  A record names the device (unique, the way
QEMU's ``id=`` does), its QEMU-style type, the object itself, the I/O-port
and MMIO ranges it occupies (each with a name when a device has several
register blocks) and its interrupt lines (GSIs).

Only the builder adds records; it inserts the same ranges on the buses in the
same step (:meth:`kvmlite.vmm.machine.Machine.place`), so the registry and
the buses cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kvmlite.errors import ConfigError
from kvmlite.vmm.layout import Range


@dataclass(frozen=True)
class BusSlot:
    """One range a device occupies on the PIO or MMIO bus.

    ``offset`` is the device offset its first byte maps to (a device split
    over two ranges, such as the i8042 at 0x60 and 0x64, sees its own offsets).
    """

    range: Range
    name: str = ""
    offset: int = 0

    @property
    def base(self) -> int:
        return self.range.base

    @property
    def length(self) -> int:
        return self.range.length


@dataclass
class DeviceRecord:
    """A device the builder attached."""

    name: str
    type: str
    device: Any
    pio: list[BusSlot] = field(default_factory=list)
    mmio: list[BusSlot] = field(default_factory=list)
    irqs: list[int] = field(default_factory=list)
    #: For a PCI function: its devfn on bus 0 (device << 3 | function).
    pci: int | None = None

    def slot(self, name: str) -> BusSlot:
        """The PIO or MMIO range called ``name``."""
        for s in (*self.pio, *self.mmio):
            if s.name == name:
                return s
        raise ConfigError(f"device {self.name} has no range called {name!r}")

    def describe(self) -> str:
        """One line: ``name (type): pio 0x3f8-0x3ff, irq 4``."""
        parts = [f"pio {s.range}" for s in self.pio] + [f"mmio {s.range}" for s in self.mmio]
        parts += [f"irq {irq}" for irq in self.irqs]
        if self.pci is not None:
            parts.insert(0, f"pci 00:{self.pci >> 3:02x}.{self.pci & 7}")
        return f"{self.name} ({self.type})" + (": " + ", ".join(parts) if parts else "")


class DeviceRegistry:
    """The devices of one machine in the order they were attached."""

    def __init__(self) -> None:
        self._records: dict[str, DeviceRecord] = {}

    def add(self, record: DeviceRecord) -> DeviceRecord:
        if record.name in self._records:
            raise ConfigError(f"a device called {record.name!r} is already attached")
        self._records[record.name] = record
        return record

    def remove(self, name: str) -> DeviceRecord:
        return self._records.pop(name)

    def __getitem__(self, name: str) -> DeviceRecord:
        try:
            return self._records[name]
        except KeyError:
            raise ConfigError(f"no device called {name!r} is attached") from None

    def get(self, name: str) -> DeviceRecord | None:
        return self._records.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def __iter__(self) -> Iterator[DeviceRecord]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    def of_type(self, type_: str) -> list[DeviceRecord]:
        return [r for r in self._records.values() if r.type == type_]

    def unique_name(self, prefix: str) -> str:
        """``prefix0``, ``prefix1``, ...: the first not yet taken."""
        i = 0
        while f"{prefix}{i}" in self._records:
            i += 1
        return f"{prefix}{i}"

    def describe(self) -> list[str]:
        return [r.describe() for r in self._records.values()]


def slot(base: int, length: int, name: str = "", offset: int = 0) -> BusSlot:
    """A :class:`BusSlot` of ``length`` ports or bytes at ``base``."""
    return BusSlot(Range(base, length), name, offset)
