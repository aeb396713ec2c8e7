"""Guest-physical memory: mmap-backed regions behind one bounds-checked object.

Everything that touches guest RAM (loaders, devices doing DMA, virtqueues,
the emulator, dumps) goes through :class:`GuestMemory`; nothing keeps raw
host pointers.  Accesses that cross from one region into an adjacent one are
split; any byte outside every region raises :class:`GuestMemoryError` naming
the address, so a bad descriptor or a bad load address is a clear error and
never a host crash or a silent write somewhere else.

Writes made through this object (device DMA: virtqueue rings, virtio-blk
reads into guest buffers, the loaders, a debugger) do not pass through the
vCPU's page tables, so KVM's dirty log never sees them.  While
:meth:`GuestMemory.track_writes` is on, every such write records its pages,
and :meth:`GuestMemory.take_written` hands them to whoever merges them with
KVM's log (snapshots, migration, reset-to-snapshot).  Zero-copy writers
(``os.preadv`` into :meth:`GuestMemory.views`) call :meth:`GuestMemory.mark_written`.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from kvmlite.errors import GuestMemoryError

PAGE_SIZE = 4096

T = TypeVar("T", bound=ctypes.Structure)

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GuestAddress(int):
    """A guest-physical address: an int that prints in hex and stays typed under +/-."""

    __slots__ = ()

    def __add__(self, other: int) -> GuestAddress:
        return GuestAddress(int(self) + int(other))

    def __sub__(self, other: int) -> GuestAddress:
        return GuestAddress(int(self) - int(other))

    def __repr__(self) -> str:
        return f"GuestAddress({int(self):#x})"

    __str__ = __repr__

    def align_up(self, align: int) -> GuestAddress:
        return GuestAddress((int(self) + align - 1) & ~(align - 1))


@dataclass(eq=False)
class GuestRegion:
    """One contiguous range of guest RAM backed by an anonymous host mapping."""

    start: GuestAddress
    size: int
    readonly: bool = False
    mm: mmap.mmap = field(init=False, repr=False)
    view: memoryview = field(init=False, repr=False)
    host_addr: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.size <= 0 or self.size % PAGE_SIZE or self.start % PAGE_SIZE:
            raise GuestMemoryError(
                f"region at {int(self.start):#x} of {self.size:#x} bytes is not page aligned and non-empty"
            )
        self.start = GuestAddress(self.start)
        try:
            self.mm = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError as err:
            available = _host_available_bytes()
            host = f" (the host has {available >> 20} MiB available)" if available is not None else ""
            raise GuestMemoryError(
                f"cannot map {self.size >> 20} MiB of guest RAM at {int(self.start):#x}: {err.strerror}{host}"
            ) from None
        self.view = memoryview(self.mm)
        self.host_addr = ctypes.addressof(ctypes.c_char.from_buffer(self.mm))

    @property
    def end(self) -> int:
        """First address past the region."""
        return int(self.start) + self.size

    def contains(self, gpa: int) -> bool:
        return self.start <= gpa < self.end


def _host_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, for messages; None where there is no such file."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class GuestMemory:
    """The guest-physical address space: sorted, non-overlapping RAM regions."""

    def __init__(self, regions: list[tuple[int, int]] | None = None) -> None:
        self.regions: list[GuestRegion] = []
        self._starts: list[int] = []
        self._ends: list[int] = []  # region.end of each region, kept beside _starts for the hot paths
        self._written: set[int] | None = None  # guest page numbers written through this object
        for start, size in regions or []:
            self.add_region(start, size)

    @classmethod
    def for_pc(cls, size: int, pci_hole_start: int = 0xC000_0000) -> GuestMemory:
        """RAM laid out as on a PC: below the PCI hole, the rest from 4 GiB up."""
        if size <= 0 or size % PAGE_SIZE:
            raise GuestMemoryError(f"memory size {size:#x} must be a positive multiple of {PAGE_SIZE}")
        if size <= pci_hole_start:
            return cls([(0, size)])
        return cls([(0, pci_hole_start), (0x1_0000_0000, size - pci_hole_start)])

    def add_region(self, start: int, size: int) -> GuestRegion:
        region = GuestRegion(GuestAddress(start), size)
        i = bisect.bisect_left(self._starts, region.start)
        before = self.regions[i - 1] if i else None
        after = self.regions[i] if i < len(self.regions) else None
        if (before and before.end > region.start) or (after and region.end > after.start):
            region.view.release()
            region.mm.close()
            raise GuestMemoryError(f"region {int(start):#x}+{size:#x} overlaps an existing region")
        self.regions.insert(i, region)
        self._starts.insert(i, int(region.start))
        self._ends.insert(i, region.end)
        return region

    @property
    def size(self) -> int:
        """Total bytes of RAM."""
        return sum(r.size for r in self.regions)

    def ram_end(self) -> int:
        """First address past the highest region."""
        return self.regions[-1].end if self.regions else 0

    def __iter__(self) -> Iterator[GuestRegion]:
        return iter(self.regions)

    def find_region(self, gpa: int) -> GuestRegion | None:
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i >= 0 and gpa < self._ends[i]:
            return self.regions[i]
        return None

    def _within(self, gpa: int, length: int) -> tuple[GuestRegion, int] | None:
        """(region, offset) when [gpa, gpa+length) lies inside one region: the common, fast case."""
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i >= 0 and 0 <= length and gpa + length <= self._ends[i]:
            return self.regions[i], gpa - self._starts[i]
        return None

    def is_ram(self, gpa: int, length: int = 1) -> bool:
        if self._within(gpa, length) is not None:
            return True
        try:
            self._chunks(gpa, length)
        except GuestMemoryError:
            return False
        return True

    def _chunks(self, gpa: int, length: int) -> list[tuple[GuestRegion, int, int]]:
        """Split [gpa, gpa+length) into (region, offset, n) pieces or raise."""
        if gpa < 0 or length < 0:
            raise GuestMemoryError(f"invalid guest access at {gpa:#x} of {length} bytes")
        out = []
        addr, left = gpa, length
        while left:
            region = self.find_region(addr)
            if region is None:
                raise GuestMemoryError(
                    f"guest-physical access {gpa:#x}..{gpa + length - 1:#x} touches {addr:#x}, "
                    "which is outside guest RAM"
                )
            off = addr - region.start
            n = min(left, region.size - off)
            out.append((region, off, n))
            addr += n
            left -= n
        return out

    # --- tracking writes that KVM's dirty log does not see -----------------------------------------
    def track_writes(self, on: bool) -> None:
        """Start (clean) or stop recording the pages written through this object."""
        self._written = set() if on else None

    @property
    def tracking_writes(self) -> bool:
        return self._written is not None

    def mark_written(self, gpa: int, length: int) -> None:
        """Record [gpa, gpa+length) as written (for writes made through a view)."""
        written = self._written
        if written is not None and length > 0:  # one C call under the GIL: atomic against take_written
            written.update(range(gpa >> 12, ((gpa + length - 1) >> 12) + 1))

    def take_written(self) -> list[tuple[int, int]]:
        """The pages written since the last call, as (region index, offset in the region); clears them."""
        written = self._written
        if not written:
            return []
        pages = set(written)  # a copy, then exactly those removed: a page added meanwhile stays
        written.difference_update(pages)
        out = []
        for page in sorted(pages):
            gpa = page << 12
            i = bisect.bisect_right(self._starts, gpa) - 1
            if i >= 0 and gpa < self.regions[i].end:
                out.append((i, gpa - int(self.regions[i].start)))
        return out

    def view(self, gpa: int, length: int) -> memoryview:
        """A zero-copy writable view of [gpa, gpa+length), which must lie in one region."""
        region = self.find_region(gpa)
        if region is None or gpa + length > region.end or length < 0:
            self._chunks(gpa, length)  # raises with the precise address if outside RAM
            raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} crosses a region boundary")
        off = gpa - region.start
        return region.view[off : off + length]

    def views(self, gpa: int, length: int) -> list[memoryview]:
        """Zero-copy writable views covering [gpa, gpa+length), one per region it touches."""
        one = self._within(gpa, length)
        if one is not None and length:
            return [one[0].view[one[1] : one[1] + length]]
        return [r.view[o : o + n] for r, o, n in self._chunks(gpa, length)]

    def read(self, gpa: int, length: int) -> bytes:
        one = self._within(gpa, length)
        if one is not None:
            return bytes(one[0].view[one[1] : one[1] + length])
        return b"".join(bytes(r.view[o : o + n]) for r, o, n in self._chunks(gpa, length))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        one = self._within(gpa, len(data))
        if one is not None and isinstance(data, bytes | bytearray):
            one[0].view[one[1] : one[1] + len(data)] = data
            if self._written is not None:
                self.mark_written(gpa, len(data))
            return
        data = memoryview(data).cast("B")
        pos = 0
        for region, off, n in self._chunks(gpa, len(data)):
            region.view[off : off + n] = data[pos : pos + n]
            pos += n
        if self._written is not None:  # after the write: a page taken meanwhile is taken again
            self.mark_written(gpa, len(data))

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        for region, off, n in self._chunks(gpa, length):
            region.view[off : off + n] = bytes([byte]) * n
        if self._written is not None:
            self.mark_written(gpa, length)

    def read_obj(self, gpa: int, cls: type[T]) -> T:
        """Read a ctypes structure (a copy, not a view)."""
        return cls.from_buffer_copy(self.read(gpa, ctypes.sizeof(cls)))

    def write_obj(self, gpa: int, obj: ctypes.Structure | ctypes.Array) -> None:  # type: ignore[type-arg]
        self.write(gpa, bytes(obj))

    def read_u8(self, gpa: int) -> int:
        return self.read(gpa, 1)[0]

    def read_u16(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 2), "little")

    def read_u32(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 4), "little")

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    def write_u8(self, gpa: int, value: int) -> None:
        self.write(gpa, bytes((value & 0xFF,)))

    def write_u16(self, gpa: int, value: int) -> None:
        self.write(gpa, _U16.pack(value & 0xFFFF))

    def write_u32(self, gpa: int, value: int) -> None:
        self.write(gpa, _U32.pack(value & 0xFFFF_FFFF))

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, _U64.pack(value & 0xFFFF_FFFF_FFFF_FFFF))

    def read_cstr(self, gpa: int, limit: int = 4096) -> bytes:
        """Bytes up to (not including) a NUL, at most ``limit`` bytes."""
        out = bytearray()
        while len(out) < limit:
            b = self.read_u8(gpa + len(out))
            if b == 0:
                break
            out.append(b)
        return bytes(out)

    def close(self) -> None:
        for region in self.regions:
            region.view.release()
        # the mmap stays mapped while KVM may still reference it; the process exit frees it
