"""The split virtqueue (virtio 1.2, 2.7), shared by every device and transport.

Three areas in guest RAM, their addresses set by the driver through the
transport: the descriptor table (16 bytes per entry: addr, len, flags, next),
the available ring (flags, idx, ring[size], used_event) and the used ring
(flags, idx, ring[size] of (id, len), avail_event).

:meth:`Virtqueue.pop` takes the next available chain and validates every
descriptor before a device sees it: each buffer lies wholly in guest RAM,
the chain (direct or through one indirect table) is no longer than the queue
allows and so cannot loop, no device-readable buffer follows a writable one,
an indirect table is not itself marked writable or nested.  Any violation is
a :class:`QueueError`; the device decides whether that fails one request or
marks it ``NEEDS_RESET``.  Nothing here raises anything else for guest-made
data, and every access goes through :class:`~kvmlite.memory.guest.GuestMemory`,
which refuses addresses outside RAM.

Memory ordering: the device reads ``avail.idx`` before the ring entries and
descriptors it covers, and writes a used element before publishing it with
``used.idx``; on x86 (total store order) Python's in-order stores and loads
through the RAM mapping give exactly that order, so no explicit fence is
needed.  With ``VIRTIO_F_EVENT_IDX`` the device writes ``avail_event`` and
asks the driver's ``used_event`` whether an interrupt is wanted.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from typing import Any

from kvmlite.devices.base import DeviceState, checked_state, state_from_attrs
from kvmlite.errors import GuestMemoryError, KvmliteError
from kvmlite.memory.guest import GuestMemory

log = logging.getLogger(__name__)

MAX_QUEUE_SIZE = 1024
DESC_SIZE = 16
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1
#: Largest total of bytes one chain may describe (a device that wants less checks on its own).
MAX_CHAIN_BYTES = 1 << 32

_DESC = struct.Struct("<QIHH")
_USED_ELEM = struct.Struct("<II")


class QueueError(KvmliteError):
    """The driver put something in a virtqueue that the specification forbids."""


@dataclass(frozen=True)
class Buffer:
    """One validated descriptor: ``length`` bytes at ``addr``, all in guest RAM."""

    addr: int
    length: int
    writable: bool


@dataclass
class Chain:
    """A validated descriptor chain: device-readable buffers, then device-writable ones."""

    head: int
    readable: list[Buffer] = field(default_factory=list)
    writable: list[Buffer] = field(default_factory=list)

    @property
    def readable_len(self) -> int:
        return sum(b.length for b in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(b.length for b in self.writable)


def chain_record(chain: Chain) -> list[Any]:
    """A chain the device holds (not yet used) as plain data: ``[head, [[addr, len], ...] x2]``."""
    return [chain.head, *([[b.addr, b.length] for b in side] for side in (chain.readable, chain.writable))]


def chain_from_record(record: Any, memory: GuestMemory) -> Chain:
    """The inverse of :func:`chain_record`; every buffer must again lie in guest RAM."""
    head, readable, writable = record
    chain = Chain(int(head))
    for buffers, into, writes in ((readable, chain.readable, False), (writable, chain.writable, True)):
        for addr, length in buffers:
            addr, length = int(addr), int(length)
            if length < 0 or (length and not memory.is_ram(addr, length)):
                raise QueueError(f"a saved buffer {addr:#x} (+{length:#x}) is outside guest RAM")
            into.append(Buffer(addr, length, writes))
    return chain


@dataclass
class VirtqueueState(DeviceState):
    """What the driver set up and where the device is in the rings (the rings themselves are RAM)."""

    size: int = 0
    ready: bool = False
    desc_addr: int = 0
    avail_addr: int = 0
    used_addr: int = 0
    last_avail: int = 0
    used_idx: int = 0
    signalled_used: int = 0
    event_idx: bool = False


class Virtqueue:
    """One split virtqueue's device side; the transport fills in its addresses and size."""

    def __init__(self, max_size: int = 256) -> None:
        self.max_size = max_size
        self.event_idx = False  # VIRTIO_F_EVENT_IDX negotiated
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.ready = False
        self.desc_addr = self.avail_addr = self.used_addr = 0
        self.last_avail = 0  # next avail.ring slot the device takes
        self.used_idx = 0  # next used.ring slot the device fills
        self.signalled_used = 0  # used_idx when the driver was last interrupted (EVENT_IDX)

    def state(self) -> VirtqueueState:
        return state_from_attrs(self, VirtqueueState)

    def load_state(self, state: VirtqueueState) -> None:
        """Take ``state`` in place (a size past ``max_size`` or an index past 16 bits is refused)."""
        st = checked_state(state, VirtqueueState, "virtqueue")
        if not 0 <= int(st.size) <= self.max_size:
            raise QueueError(f"a saved queue size {st.size} is larger than the queue's {self.max_size}")
        for name in ("last_avail", "used_idx", "signalled_used"):
            if not 0 <= int(getattr(st, name)) <= 0xFFFF:
                raise QueueError(f"a saved {name} {getattr(st, name)} is not a 16-bit index")
        self.size, self.ready = int(st.size), bool(st.ready)
        self.desc_addr, self.avail_addr = int(st.desc_addr), int(st.avail_addr)
        self.used_addr = int(st.used_addr)
        self.last_avail, self.used_idx = int(st.last_avail), int(st.used_idx)
        self.signalled_used, self.event_idx = int(st.signalled_used), bool(st.event_idx)

    # --- validation of what the driver set --------------------------------------------------------
    def check_layout(self, memory: GuestMemory) -> None:
        """Whether size and ring addresses are usable; raises :class:`QueueError` if not."""
        n = self.size
        if not (0 < n <= self.max_size) or n & (n - 1):
            raise QueueError(f"queue size {n} is not a power of 2 up to {self.max_size}")
        areas = (
            ("descriptor table", self.desc_addr, DESC_SIZE * n, 16),
            ("available ring", self.avail_addr, 6 + 2 * n, 2),
            ("used ring", self.used_addr, 6 + 8 * n, 4),
        )
        for what, addr, length, align in areas:
            if addr % align or not memory.is_ram(addr, length):
                raise QueueError(f"the {what} at {addr:#x} (+{length:#x}) is misaligned or outside guest RAM")

    # --- the available ring ---------------------------------------------------------------------
    def avail_idx(self, memory: GuestMemory) -> int:
        return memory.read_u16(self.avail_addr + 2)

    def has_available(self, memory: GuestMemory) -> bool:
        return self.avail_idx(memory) != self.last_avail

    def pop(self, memory: GuestMemory) -> Chain | None:
        """The next available chain, validated; None when the ring is empty."""
        avail = self.avail_idx(memory)
        pending = (avail - self.last_avail) & 0xFFFF
        if pending == 0:
            return None
        if pending > self.size:
            raise QueueError(f"avail.idx {avail} is {pending} entries ahead: more than the queue holds")
        slot = self.last_avail % self.size
        head = memory.read_u16(self.avail_addr + 4 + 2 * slot)
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if self.event_idx:
            memory.write_u16(self.used_addr + 4 + 8 * self.size, self.last_avail)  # avail_event
        return self._walk(memory, head)

    def _walk(self, memory: GuestMemory, head: int) -> Chain:
        chain = Chain(head)
        table, count, index = self.desc_addr, self.size, head
        indirect = False
        seen = 0
        total = 0
        while True:
            if index >= count:
                raise QueueError(f"descriptor index {index} is past the table's {count} entries")
            seen += 1
            if seen > count:
                raise QueueError(f"the chain from head {head} is longer than its table: it loops")
            try:
                addr, length, flags, nxt = _DESC.unpack(memory.read(table + DESC_SIZE * index, DESC_SIZE))
            except GuestMemoryError as err:
                raise QueueError(f"descriptor {index}: {err}") from err
            if flags & VIRTQ_DESC_F_INDIRECT:
                if indirect:
                    raise QueueError("an indirect descriptor inside an indirect table")
                if flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE) or chain.readable or chain.writable:
                    raise QueueError("an indirect descriptor must stand alone and be device-readable")
                if length == 0 or length % DESC_SIZE or length // DESC_SIZE > MAX_QUEUE_SIZE:
                    raise QueueError(f"an indirect table of {length} bytes is not 1-{MAX_QUEUE_SIZE} entries")
                if not memory.is_ram(addr, length):
                    raise QueueError(f"the indirect table at {addr:#x} (+{length:#x}) is outside guest RAM")
                table, count, index, indirect, seen = addr, length // DESC_SIZE, 0, True, 0
                continue
            if length and not memory.is_ram(addr, length):
                raise QueueError(f"descriptor {index}: buffer {addr:#x} (+{length:#x}) is outside guest RAM")
            total += length
            if total > MAX_CHAIN_BYTES:
                raise QueueError(f"the chain from head {head} describes more than 4 GiB")
            if flags & VIRTQ_DESC_F_WRITE:
                chain.writable.append(Buffer(addr, length, True))
            elif chain.writable:
                raise QueueError(f"descriptor {index}: a device-readable buffer after a writable one")
            else:
                chain.readable.append(Buffer(addr, length, False))
            if not flags & VIRTQ_DESC_F_NEXT:
                return chain
            index = nxt

    # --- the used ring ----------------------------------------------------------------------------
    def push(self, memory: GuestMemory, head: int, written: int) -> None:
        """Return chain ``head`` to the driver with ``written`` bytes written into it."""
        slot = self.used_idx % self.size
        memory.write(self.used_addr + 4 + 8 * slot, _USED_ELEM.pack(head, written))
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        memory.write_u16(self.used_addr + 2, self.used_idx)  # publishes the element (x86: stores in order)

    def should_notify(self, memory: GuestMemory) -> bool:
        """Whether the driver wants an interrupt for what was pushed since the last one."""
        if self.event_idx:
            used_event = memory.read_u16(self.avail_addr + 4 + 2 * self.size)
            old, new = self.signalled_used, self.used_idx
            self.signalled_used = new
            # vring_need_event: used_event lies in [old, new)
            return (new - used_event - 1) & 0xFFFF < (new - old) & 0xFFFF
        return not memory.read_u16(self.avail_addr) & VIRTQ_AVAIL_F_NO_INTERRUPT


def read_buffers(memory: GuestMemory, buffers: list[Buffer], limit: int | None = None) -> bytes:
    """The bytes of ``buffers`` in order (at most ``limit``)."""
    out = bytearray()
    for b in buffers:
        n = b.length if limit is None else min(b.length, limit - len(out))
        out += memory.read(b.addr, n)
        if limit is not None and len(out) >= limit:
            break
    return bytes(out)


def write_buffers(memory: GuestMemory, buffers: list[Buffer], data: bytes | bytearray | memoryview) -> int:
    """Scatter ``data`` over ``buffers``; returns how many bytes fitted."""
    done = 0
    for b in buffers:
        if done >= len(data):
            break
        n = min(b.length, len(data) - done)
        memory.write(b.addr, data[done : done + n])
        done += n
    return done
