"""One bus class for PIO and MMIO: devices at ranges, dispatch by offset.

``insert(device, base, length)`` refuses overlaps.  An access no device
claims is never fatal: reads return all ones (what an empty ISA bus floats
to), writes are dropped.  What a guest can make the bus remember is bounded:
unclaimed accesses are counted per port (PIO) or per 4 KiB page (MMIO) for at
most :data:`MAX_UNCLAIMED_PLACES` places (the rest in one ``None`` bucket), only
the first :data:`MAX_UNCLAIMED_LOGGED` places are logged as warnings, and the
dispatch caches are emptied when they pass :data:`MAX_CACHED_ADDRESSES`.  A
guest scanning all of its address space costs time, not memory.

Register accessors (:meth:`Bus.accessor`) are the vCPU loop's shortcut for an
access it sees again and again (a driver polling a status register): the
device's own function for that one register, found once, called under
:attr:`Bus.lock` without the bus's lookup.  A device may offer a cheaper one
for some registers through the optional ``register_reader(offset, size)`` and
``register_writer(offset, size)`` methods (None: use ``read``/``write``).
Whoever caches accessors keeps them in :attr:`Bus.accessors`, which the bus
empties whenever its map changes.
"""

from __future__ import annotations

import bisect
import functools
import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kvmlite.devices.base import Device
from kvmlite.errors import BusError

log = logging.getLogger(__name__)

#: Distinct unclaimed places (direction and port or page) counted one by one.
MAX_UNCLAIMED_PLACES = 4096
#: Unclaimed places logged as a warning; later ones are logged at DEBUG.
MAX_UNCLAIMED_LOGGED = 16
#: Addresses remembered by the dispatch caches before they start again.
MAX_CACHED_ADDRESSES = 4096
MMIO_GRANULE = 4096


_V = TypeVar("_V")


@dataclass(frozen=True)
class BusRange:
    base: int
    length: int
    device: Device
    name: str
    offset: int = 0  # added to (addr - base): a device split across ranges sees its own offsets

    @property
    def end(self) -> int:
        return self.base + self.length


class Bus:
    """Address ranges mapped to devices; ``kind`` is "pio" or "mmio" (used in messages)."""

    def __init__(self, kind: str, lock: threading.RLock | None = None) -> None:
        self.kind = kind
        #: Held around every device access: devices are also touched by timer and console threads.
        self.lock = lock or threading.RLock()
        self._acquire, self._release = self.lock.acquire, self.lock.release
        self._ranges: list[BusRange] = []
        self._bases: list[int] = []
        #: Accesses nobody claimed, per (direction, port or page); (direction, None) past the cap.
        self.unclaimed: Counter[tuple[str, int | None]] = Counter()
        self._granule_mask = ~(MMIO_GRANULE - 1) if kind == "mmio" else -1
        # addr -> BusRange (or None) for find(), and addr -> (bound read/write, base) for dispatch;
        # both filled on first use, cleared when the map changes
        self._cache: dict[int, BusRange | None] = {}
        self._readers: dict[int, tuple[object, int]] = {}
        self._writers: dict[int, tuple[object, int]] = {}
        #: Accessors (:meth:`accessor`) cached by their user under keys of its choosing (the vCPU loop:
        #: the raw exit header); emptied when the map changes.  Read and fill it holding :attr:`lock`.
        self.accessors: dict[Any, Any] = {}

    def insert(
        self, device: Device, base: int, length: int, name: str | None = None, offset: int = 0
    ) -> None:
        """Put ``device`` at [base, base+length); it sees offsets from ``offset`` up."""
        if length <= 0 or base < 0:
            raise BusError(f"{self.kind}: invalid range {base:#x}+{length:#x}")
        new = BusRange(base, length, device, name or type(device).__name__, offset)
        i = bisect.bisect_left(self._bases, base)
        for neighbour in self._ranges[max(0, i - 1) : i + 1]:
            if neighbour.base < new.end and new.base < neighbour.end:
                raise BusError(
                    f"{self.kind}: {new.name} at {base:#x}..{new.end - 1:#x} overlaps "
                    f"{neighbour.name} at {neighbour.base:#x}..{neighbour.end - 1:#x}"
                )
        self._ranges.insert(i, new)
        self._bases.insert(i, base)
        self._forget()

    def remove(self, base: int) -> Device:
        i = bisect.bisect_left(self._bases, base)
        if i == len(self._bases) or self._bases[i] != base:
            raise BusError(f"{self.kind}: no device at {base:#x}")
        self._bases.pop(i)
        self._forget()
        return self._ranges.pop(i).device

    def _forget(self) -> None:
        self._cache.clear()
        self._readers.clear()
        self._writers.clear()
        self.accessors.clear()

    def accessor(self, addr: int, size: int, write: bool) -> Callable[..., Any] | None:
        """The register at ``addr`` as one callable: ``fn()`` reads it (``size`` bytes), ``fn(value)``
        writes it.  Call it holding :attr:`lock`, and drop it when :attr:`accessors` is emptied (the
        device may have moved).  None where no device claims ``addr`` (:meth:`read`/:meth:`write` then
        answer and count the access)."""
        r = self.find(addr)
        if r is None:
            return None
        offset = addr - r.base + r.offset
        hook = getattr(r.device, "register_writer" if write else "register_reader", None)
        fn = hook(offset, size) if hook is not None else None
        if fn is None:
            fn = functools.partial(r.device.write if write else r.device.read, offset, size)
        return fn

    def find(self, addr: int) -> BusRange | None:
        try:
            return self._cache[addr]
        except KeyError:
            pass
        i = bisect.bisect_right(self._bases, addr) - 1
        found = self._ranges[i] if i >= 0 and addr < self._ranges[i].end else None
        if found is not None:  # a miss is not remembered: a guest can make endless different ones
            self._remember(self._cache, addr, found)
        return found

    @staticmethod
    def _remember(cache: dict[int, _V], addr: int, value: _V) -> _V:
        if len(cache) >= MAX_CACHED_ADDRESSES:
            cache.clear()
        cache[addr] = value
        return value

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._ranges)

    # The lookup happens under the lock too: a device that moves (a PCI BAR the guest reprograms)
    # is moved by another device access holding the same lock, so no access sees it half-moved.
    def read(self, addr: int, size: int) -> int:
        # acquire()/release() rather than ``with``: half the cost (75 ns here) on every exit's path
        self._acquire()
        try:
            try:
                read, base = self._readers[addr]
            except KeyError:
                r = self.find(addr)
                if r is None:
                    self._unclaimed("read", addr, size)
                    return (1 << (8 * size)) - 1
                read, base = self._remember(self._readers, addr, (r.device.read, r.base - r.offset))
            return read(addr - base, size)  # type: ignore[operator,no-any-return]
        finally:
            self._release()

    def write(self, addr: int, size: int, value: int) -> None:
        self._acquire()
        try:
            try:
                write, base = self._writers[addr]
            except KeyError:
                r = self.find(addr)
                if r is None:
                    self._unclaimed("write", addr, size, value)
                    return
                write, base = self._remember(self._writers, addr, (r.device.write, r.base - r.offset))
            write(addr - base, size, value)  # type: ignore[operator]
        finally:
            self._release()

    def _unclaimed(self, direction: str, addr: int, size: int, value: int | None = None) -> None:
        place = addr & self._granule_mask
        key: tuple[str, int | None] = (direction, place)
        if key not in self.unclaimed and len(self.unclaimed) >= MAX_UNCLAIMED_PLACES:
            key = (direction, None)
        self.unclaimed[key] += 1
        if self.unclaimed[key] == 1:
            logged = len(self.unclaimed)
            if logged == MAX_UNCLAIMED_LOGGED + 1:
                log.warning("%s: more unclaimed places; further ones are logged at DEBUG", self.kind)
            what = f" value {value:#x}" if value is not None else ""
            log.log(
                logging.WARNING if logged <= MAX_UNCLAIMED_LOGGED else logging.DEBUG,
                "%s %s at %#x (%d bytes%s) claimed by no device: %s",
                self.kind,
                direction,
                addr,
                size,
                what,
                "returning all ones" if direction == "read" else "ignored",
            )
