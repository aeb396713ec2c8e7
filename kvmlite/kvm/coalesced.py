"""The coalesced MMIO/PIO ring: guest writes KVM records instead of exiting.

A zone registered with ``KVM_REGISTER_COALESCED_MMIO`` (``pio=1`` for ports,
``KVM_CAP_COALESCED_PIO``) makes KVM append each guest write into it to a
ring and go back to the guest at once; the VMM replays the writes later.
That suits write-only registers whose writes no one needs to see at once
(the POST/IO-delay port 0x80 that Linux writes between legacy port accesses).
The ring is one page of every vCPU's ``kvm_run`` mapping, at page
``check_extension(KVM_CAP_COALESCED_MMIO)`` (1 on x86); it is the same page
for all vCPUs of a VM.  Layout (``linux/kvm.h``)::

    struct kvm_coalesced_mmio_ring { u32 first, last; struct kvm_coalesced_mmio entries[]; };
    struct kvm_coalesced_mmio { u64 phys_addr; u32 len; u32 pio; u8 data[8]; };   # 24 bytes

KVM appends at ``last``; the VMM consumes from ``first``; KVM falls back to
an ordinary exit when the ring is full.  :class:`CoalescedRing` drains it into
the buses: the vCPU loop calls :meth:`CoalescedRing.drain` before handling
any exit (so a replayed write is never seen after a later access of the same
guest) and when it stops.
"""

from __future__ import annotations

import mmap
import struct
import threading
from collections import Counter
from collections.abc import Callable

PAGE_SIZE = 4096
_HEADER = struct.Struct("<II")
_ENTRY = struct.Struct("<QII8s")
#: Entries in the ring page (KVM_COALESCED_MMIO_MAX).
RING_ENTRIES = (PAGE_SIZE - _HEADER.size) // _ENTRY.size

Writer = Callable[[int, int, int], None]  # (address or port, size, value)


class CoalescedRing:
    """The VM's coalesced-write ring inside a vCPU's ``kvm_run`` mapping (see the module docstring)."""

    def __init__(self, run_mapping: mmap.mmap, page: int, pio: Writer, mmio: Writer) -> None:
        self._mv = memoryview(run_mapping)[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
        #: ``words[0] != words[1]``: writes are waiting (the loop's one test per exit).
        self.words = self._mv[: _HEADER.size].cast("I")
        self._pio, self._mmio = pio, mmio
        self._lock = threading.Lock()  # one ring for every vCPU of the VM
        #: Writes replayed so far, per ("pio" or "mmio", port or address) (``--stats`` shows them).
        self.replayed: Counter[tuple[str, int]] = Counter()

    def drain(self) -> int:
        """Replay every waiting write into the buses, oldest first; how many."""
        words, mv, n, replayed = self.words, self._mv, 0, self.replayed
        with self._lock:
            first = words[0]
            while first != words[1]:
                addr, length, pio, data = _ENTRY.unpack_from(mv, _HEADER.size + first * _ENTRY.size)
                length = min(length, 8)
                value = int.from_bytes(data[:length], "little")
                (self._pio if pio else self._mmio)(addr, length, value)
                replayed["pio" if pio else "mmio", addr] += 1
                first = (first + 1) % RING_ENTRIES
                words[0] = first  # give the slot back to KVM only once it is replayed
                n += 1
        return n

    def close(self) -> None:
        self.words.release()
        self._mv.release()
