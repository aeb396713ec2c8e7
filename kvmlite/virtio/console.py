"""virtio-console (virtio 1.2, 5.3), one port: the guest's ``hvc0``.

Queue 0 (receiveq) holds buffers the driver gives for input; queue 1
(transmitq) carries the guest's output.  The host side is the same
:class:`~kvmlite.vmm.console.SerialConsole` the UART uses (stdio in raw mode
with Ctrl-A x, a file, a Unix socket), bound through the two calls it makes
on its device: :meth:`enqueue_input` (returns how much fitted in the buffers
the guest gave) and :meth:`set_tx_busy` (the host cannot take output now:
transmit buffers wait in the ring until it can, so nothing is dropped).  No
multiport, no size reporting: what a driver without those features sees.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvmlite.devices.base import DeviceState, checked_state
from kvmlite.memory.guest import GuestMemory
from kvmlite.virtio.device import COMMON_FEATURES, VirtioDevice
from kvmlite.virtio.queue import (
    Chain,
    QueueError,
    Virtqueue,
    chain_from_record,
    chain_record,
    read_buffers,
    write_buffers,
)

VIRTIO_ID_CONSOLE = 3
QUEUE_SIZE = 128  # as QEMU's virtio-serial
RECEIVEQ, TRANSMITQ = 0, 1


@dataclass
class VirtioConsoleState(DeviceState):
    """The receive buffers the guest gave and the device holds (``chain_record`` each)."""

    rx_buffers: list[Any] = field(default_factory=list)


class VirtioConsole(VirtioDevice):
    device_id = VIRTIO_ID_CONSOLE
    pci_class = 0x078000  # communication, other: what QEMU's virtio-serial-pci shows

    def __init__(
        self,
        memory: GuestMemory,
        out: Callable[[bytes], None],
        on_rx_space: Callable[[], None] = lambda: None,
        name: str = "",
    ) -> None:
        super().__init__(memory, COMMON_FEATURES, [QUEUE_SIZE, QUEUE_SIZE], name or "virtio-console")
        self.out = out
        self.on_rx_space = on_rx_space
        self.rx_buffers: collections.deque[Chain] = collections.deque()
        self.tx_busy = False

    def process_queue(self, index: int, queue: Virtqueue) -> None:
        if index == RECEIVEQ:
            while (chain := queue.pop(self.memory)) is not None:
                if chain.readable or not chain.writable:
                    raise QueueError(f"chain {chain.head}: a receive buffer must be device-writable only")
                self.rx_buffers.append(chain)
            self.on_rx_space()
            return
        while not self.tx_busy and (chain := queue.pop(self.memory)) is not None:
            if chain.writable:
                raise QueueError(f"chain {chain.head}: a transmit buffer must be device-readable only")
            self.out(read_buffers(self.memory, chain.readable))
            self.complete(TRANSMITQ, chain, 0)

    def device_reset(self) -> None:
        self.rx_buffers.clear()
        self.tx_busy = False

    def device_state(self) -> VirtioConsoleState:
        return VirtioConsoleState(rx_buffers=[chain_record(chain) for chain in self.rx_buffers])

    def load_device_state(self, state: DeviceState | None) -> None:
        st = checked_state(state, VirtioConsoleState, self.name)
        self.rx_buffers = collections.deque(chain_from_record(r, self.memory) for r in st.rx_buffers)
        self.on_rx_space()

    # --- what the host console calls ------------------------------------------------------------
    def rx_space(self) -> int:
        """Bytes :meth:`enqueue_input` would accept now: the room in the receive buffers the guest gave."""
        return sum(chain.writable_len for chain in self.rx_buffers)

    def enqueue_input(self, data: bytes) -> int:
        """Put ``data`` in the receive buffers the guest gave; returns how many bytes fitted."""
        taken = 0
        while taken < len(data) and self.rx_buffers:
            chain = self.rx_buffers.popleft()
            written = write_buffers(self.memory, chain.writable, data[taken:])
            taken += written
            self.complete(RECEIVEQ, chain, written)
        return taken

    def set_tx_busy(self, busy: bool) -> None:
        was_busy, self.tx_busy = self.tx_busy, busy
        if was_busy and not busy:
            self.notify(TRANSMITQ)  # take the output that waited
