"""virtio-rng (virtio 1.2, 5.4): the guest's entropy from the host's ``getrandom``, rate-limited.

One queue of device-writable buffers; each is filled with random bytes and
returned.  A token bucket (``rate`` bytes per second, ``burst`` at most) keeps a
guest from draining the host's entropy pool at will: a buffer that finds the
bucket empty waits, and the machine's timer service (:meth:`next_deadline`,
:meth:`tick`) serves it once tokens are back.  A buffer may be filled only in
part, which the specification allows.  A device-readable buffer in a request
is a driver error (NEEDS_RESET).
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field
from typing import Any

from kvmlite.devices.base import Clock, DeviceState, checked_state, monotonic_ns
from kvmlite.memory.guest import GuestMemory
from kvmlite.virtio.device import COMMON_FEATURES, VirtioDevice
from kvmlite.virtio.queue import (
    Chain,
    QueueError,
    Virtqueue,
    chain_from_record,
    chain_record,
    write_buffers,
)

VIRTIO_ID_ENTROPY = 4
QUEUE_SIZE = 8  # as QEMU
#: Default limit: plenty for a guest seeding its pool, far from draining the host's.
RATE_BYTES_PER_S = 1 << 20
BURST_BYTES = 64 << 10
NS_PER_S = 1_000_000_000


@dataclass
class VirtioRngState(DeviceState):
    """The requests waiting for tokens (``chain_record`` each); the bucket is the host's, not saved."""

    pending: list[Any] = field(default_factory=list)


class VirtioRng(VirtioDevice):
    device_id = VIRTIO_ID_ENTROPY
    pci_class = 0x00FF00  # PCI_CLASS_OTHERS (0x00ff) as QEMU's virtio-rng-pci shows it

    def __init__(
        self,
        memory: GuestMemory,
        rate: int = RATE_BYTES_PER_S,
        burst: int = BURST_BYTES,
        clock: Clock = monotonic_ns,
        name: str = "",
    ) -> None:
        super().__init__(memory, COMMON_FEATURES, [QUEUE_SIZE], name or "virtio-rng")
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self._refilled = clock()
        self.pending: collections.deque[Chain] = collections.deque()

    def process_queue(self, index: int, queue: Virtqueue) -> None:
        while (chain := queue.pop(self.memory)) is not None:
            if chain.readable or not chain.writable:
                raise QueueError(f"chain {chain.head}: an entropy request takes device-writable buffers only")
            self.pending.append(chain)
        self.tick(self.clock())
        if self.pending:
            self.reschedule()

    def device_reset(self) -> None:
        self.pending.clear()

    def device_state(self) -> VirtioRngState:
        return VirtioRngState(pending=[chain_record(chain) for chain in self.pending])

    def load_device_state(self, state: DeviceState | None) -> None:
        st = checked_state(state, VirtioRngState, self.name)
        self.pending = collections.deque(chain_from_record(r, self.memory) for r in st.pending)
        if self.pending:
            self.reschedule()

    # --- the token bucket, driven by the timer service --------------------------------------------
    def tick(self, now: int) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self._refilled) * self.rate / NS_PER_S)
        self._refilled = now
        while self.pending and self.tokens >= 1:
            chain = self.pending.popleft()
            n = min(chain.writable_len, int(self.tokens))
            written = write_buffers(self.memory, chain.writable, os.getrandom(n))
            self.tokens -= written
            self.complete(0, chain, written)

    def next_deadline(self) -> int | None:
        if not self.pending:
            return None
        return self._refilled + int(max(0.0, 1 - self.tokens) * NS_PER_S / self.rate) + 1
