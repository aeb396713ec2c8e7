"""QEMU's ``pci-testdev``: the PCI test device of kvm-unit-tests (``hw/misc/pci-testdev.c``).

A PCI function (vendor 0x1b36 Red Hat, device 0x0005, class "other") with a
4 KiB memory BAR (BAR0) and a 256-port I/O BAR (BAR1).  Each BAR holds
three tests, chosen by writing the test's number to offset 0: "no-eventfd",
"wildcard-eventfd" and "datamatch-eventfd" (prefixed "mmio-" or "portio-").
The selected test's header is readable from offset 0::

    +0 test   +1 width   +4 offset (u32)   +8 data   +12 count (u32)   +16 name, NUL-terminated

and each write of ``width`` bytes at ``offset`` (with ``data``, for the
datamatch test) adds one to ``count``.  QEMU serves the two eventfd tests
through ioeventfds, so their count stays 0; kvmlite counts every test in
userspace, which kvm-unit-tests accepts as well (it checks for 0 or for the
number of writes).  As in QEMU the registers are byte-wide: wider accesses
are split into bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from kvmlite.devices.base import Device, DeviceState, checked_state
from kvmlite.pci.config import BarKind, BarSpec, ConfigSpace
from kvmlite.pci.device import PciFunction

VENDOR_REDHAT, DEVICE_TEST = 0x1B36, 0x0005
CLASS_OTHERS = 0xFF0000
MEM_BAR, IO_BAR = 0, 1
MEM_SIZE, IO_SIZE = 4096, 256
TESTS = ("no-eventfd", "wildcard-eventfd", "datamatch-eventfd")
KINDS = ("mmio", "portio")  # BAR0, BAR1
DATAMATCH, NOMATCH = 0xFA, 0xCE
ACCESS_WIDTH = 1
REG_TEST = 0
_HEADER = struct.Struct("<BB2xIB3xI")  # test, width, offset, data, count; the name follows


@dataclass
class PciTestdevState(DeviceState):
    """The selected test (-1: none) and every test's count; the configuration space is the bus's."""

    current: int = -1
    counts: list[int] = field(default_factory=list)


class IoTest:
    """One test: its header bytes and the write it counts."""

    def __init__(self, number: int) -> None:
        kind, test = KINDS[number // len(TESTS)], TESTS[number % len(TESTS)]
        self.name = f"{kind}-{test}"
        self.match_data = test != "wildcard-eventfd"
        self.data = DATAMATCH if self.match_data else NOMATCH
        self.offset = (MEM_SIZE if kind == "mmio" else IO_SIZE) // 2 + number * ACCESS_WIDTH
        self.number = number
        self.count = 0

    def header(self) -> bytes:
        fixed = _HEADER.pack(self.number, ACCESS_WIDTH, self.offset, self.data, self.count & 0xFFFF_FFFF)
        return fixed + self.name.encode() + b"\0"


class PciTestdev(PciFunction):
    """The function; :meth:`bar_device` gives the MMIO (BAR0) and port (BAR1) register blocks."""

    def __init__(self) -> None:
        super().__init__(ConfigSpace(VENDOR_REDHAT, DEVICE_TEST, CLASS_OTHERS))
        self.config.add_bar(BarSpec(MEM_BAR, MEM_SIZE, BarKind.MEM32))
        self.config.add_bar(BarSpec(IO_BAR, IO_SIZE, BarKind.IO))
        self.tests = [IoTest(i) for i in range(len(TESTS) * len(KINDS))]
        self.current: IoTest | None = None
        self._blocks = [PciTestdevBlock(self, kind) for kind in range(len(KINDS))]

    def state(self) -> PciTestdevState:
        current = -1 if self.current is None else self.current.number
        return PciTestdevState(current=current, counts=[t.count for t in self.tests])

    @classmethod
    def from_state(cls, state: PciTestdevState, /, **injected: Any) -> PciTestdev:
        checked_state(state, PciTestdevState, "pci-testdev")
        dev = cls(**injected)
        for test, count in zip(dev.tests, state.counts, strict=False):
            test.count = count
        dev.current = dev.tests[state.current] if 0 <= state.current < len(dev.tests) else None
        return dev

    def bar_device(self, index: int) -> Device:
        if index not in (MEM_BAR, IO_BAR):
            return super().bar_device(index)
        return self._blocks[index]

    def read_byte(self, offset: int) -> int:
        if self.current is None:
            return 0
        header = self.current.header()
        return header[offset] if offset + 1 < len(header) else 0

    def write_byte(self, kind: int, offset: int, value: int) -> None:
        if offset == REG_TEST:
            self.current = None
            if value < len(TESTS):
                self.current = self.tests[kind * len(TESTS) + value]
                self.current.count = 0
            return
        test = self.current
        if test is None or offset != test.offset or (test.match_data and value != test.data):
            return
        test.count += 1


class PciTestdevBlock:
    """One BAR's registers, byte-wide as in QEMU: wider accesses become byte accesses."""

    def __init__(self, dev: PciTestdev, kind: int) -> None:
        self.dev = dev
        self.kind = kind

    def read(self, offset: int, size: int) -> int:
        return sum(self.dev.read_byte(offset + i) << (8 * i) for i in range(size))

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            self.dev.write_byte(self.kind, offset + i, (value >> (8 * i)) & 0xFF)
