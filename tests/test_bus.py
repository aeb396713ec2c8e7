import logging

import pytest

from kvmlite.errors import BusError
from kvmlite.memory import Bus


class Recorder:
    def __init__(self) -> None:
        self.log: list[tuple] = []

    def read(self, offset: int, size: int) -> int:
        self.log.append(("r", offset, size))
        return 0x40 + offset

    def write(self, offset: int, size: int, value: int) -> None:
        self.log.append(("w", offset, size, value))


def test_dispatch_passes_offsets_not_addresses():
    bus, dev = Bus("pio"), Recorder()
    bus.insert(dev, 0x3F8, 8)
    bus.write(0x3FB, 1, 0x80)
    assert bus.read(0x3FD, 1) == 0x45
    assert dev.log == [("w", 3, 1, 0x80), ("r", 5, 1)]


def test_overlapping_insert_is_refused_with_both_names():
    bus = Bus("pio")
    bus.insert(Recorder(), 0x60, 5, name="i8042")
    with pytest.raises(BusError, match="overlaps i8042"):
        bus.insert(Recorder(), 0x64, 1, name="other")
    bus.insert(Recorder(), 0x65, 1)  # adjacent is fine
    with pytest.raises(BusError):
        bus.insert(Recorder(), 0x10, 0)


def test_unclaimed_reads_float_high_and_writes_are_dropped(caplog):
    bus = Bus("mmio")
    with caplog.at_level(logging.WARNING):
        assert bus.read(0xD000_0000, 4) == 0xFFFF_FFFF
        assert bus.read(0xD000_0000, 1) == 0xFF
        bus.write(0xD000_0000, 8, 1)
    assert bus.unclaimed[("read", 0xD000_0000)] == 2
    assert bus.unclaimed[("write", 0xD000_0000)] == 1
    # logged once per address and direction, not per access
    assert len([r for r in caplog.records if "claimed by no device" in r.message]) == 2


def test_remove_frees_the_range():
    bus, dev = Bus("pio"), Recorder()
    bus.insert(dev, 0x70, 2)
    assert bus.read(0x71, 1) == 0x41
    assert bus.remove(0x70) is dev
    assert bus.read(0x71, 1) == 0xFF


def test_a_device_split_across_ranges_sees_its_own_offsets():
    bus, dev = Bus("pio"), Recorder()
    bus.insert(dev, 0x60, 1, name="i8042 data")
    bus.insert(Recorder(), 0x61, 1, name="port 0x61")
    bus.insert(dev, 0x64, 1, name="i8042 command", offset=4)
    bus.write(0x64, 1, 0xAA)
    bus.read(0x60, 1)
    assert dev.log == [("w", 4, 1, 0xAA), ("r", 0, 1)]


def test_an_address_space_scan_keeps_the_bus_bounded(caplog):
    """A guest touching 131072 distinct unclaimed pages (and every address of a big
    claimed window) grows neither the counters, the caches nor the log without bound."""
    bus = Bus("mmio")
    bus.insert(Recorder(), 0x1000_0000, 0x100_0000, name="window")
    with caplog.at_level(logging.DEBUG, logger="kvmlite.memory.bus"):
        for i in range(1 << 17):
            bus.read(0xE000_0000 + i * 8, 4)
            bus.write(0xF000_0000 + i * 4096, 4, i)
            bus.read(0x1000_0000 + (i * 16 % 0x100_0000), 4)
    assert len(bus.unclaimed) <= 5000  # MAX_UNCLAIMED_PLACES, and the overflow buckets
    assert sum(bus.unclaimed.values()) == 2 << 17  # every access still counted
    assert bus.unclaimed[("read", 0xE000_0000)] == 512  # per page: 512 reads 8 bytes apart
    assert max(len(bus._cache), len(bus._readers), len(bus._writers)) <= 5000
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) <= 20
    assert len(caplog.records) <= 5000


def test_unclaimed_ports_are_counted_per_port():
    bus = Bus("pio")
    bus.read(0x81, 1)
    bus.read(0x82, 1)
    assert bus.unclaimed[("read", 0x81)] == bus.unclaimed[("read", 0x82)] == 1


class Hooked(Recorder):
    """A device with its own accessor for register 5 (as the UART has for LSR)."""

    def register_reader(self, offset: int, size: int):
        return (lambda: 0x77) if (offset, size) == (5, 1) else None

    def register_writer(self, offset: int, size: int):
        return None


def test_accessor_is_the_register_of_the_device_at_that_address():
    bus, plain, hooked = Bus("pio"), Recorder(), Hooked()
    bus.insert(plain, 0x3F8, 8)
    bus.insert(hooked, 0x2F8, 8)
    assert bus.accessor(0x3FD, 1, write=False)() == 0x45  # read(5, 1)
    bus.accessor(0x3FB, 1, write=True)(0x80)
    assert plain.log == [("r", 5, 1), ("w", 3, 1, 0x80)]
    assert bus.accessor(0x2FD, 1, write=False)() == 0x77  # the device's own accessor
    assert bus.accessor(0x2FC, 1, write=False)() == 0x44  # no hook for that one: read(4, 1)
    bus.accessor(0x2FD, 1, write=True)(9)  # the writer hook declined: write(5, 1, 9)
    assert hooked.log == [("r", 4, 1), ("w", 5, 1, 9)]
    assert bus.accessor(0x80, 1, write=False) is None  # nobody there


def test_cached_accessors_are_dropped_when_the_map_changes():
    bus = Bus("pio")
    bus.insert(Recorder(), 0x3F8, 8)
    bus.accessors["key"] = "cached"
    bus.insert(Recorder(), 0x2F8, 8)
    assert bus.accessors == {}
    bus.accessors["key"] = "cached"
    bus.remove(0x2F8)
    assert bus.accessors == {}
