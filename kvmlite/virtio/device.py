"""The virtio device protocol (virtio 1.2, modern only), apart from any transport.

A :class:`VirtioDevice` has device features, a configuration space, queues
and a status; a transport (:mod:`kvmlite.virtio.pci`, :mod:`kvmlite.virtio.mmio`)
maps its registers onto these methods and delivers the device's two kinds of
interrupt (used buffers on a queue, configuration change) through the
callables it sets.  A concrete device (``blk.py``, ``rng.py``, ...) supplies
``device_id``, its features and config bytes, and :meth:`process_queue`.

Status state machine (2.1): the driver sets ACKNOWLEDGE, DRIVER, writes its
features, sets FEATURES_OK (kept only if the features are a subset of what
the device offers), sets up queues and sets DRIVER_OK; only then are queues
processed.  Writing 0 resets the device.  A driver error found while
processing (a malformed descriptor chain) sets ``NEEDS_RESET`` with a
warning and a configuration interrupt; the queue stops until the driver
resets the device.  Nothing a driver writes raises out of this class.

Snapshots: :meth:`VirtioDevice.state` is a :class:`VirtioState` (status,
features, every queue's :class:`~kvmlite.virtio.queue.VirtqueueState`) with
the device's own record from :meth:`~VirtioDevice.device_state` (None for a
device with nothing of its own, such as virtio-blk); the transport saves it
inside its own state and :meth:`~VirtioDevice.load_state` takes it back in
place.  A request is never half done at a snapshot: a device completes what
it pops inside one locked queue run, or keeps the chain (virtio-rng waiting
for tokens, virtio-console's receive buffers) in its own state; what the
driver made available but the device had not popped yet is still in the
ring and :meth:`~VirtioDevice.replay` runs it once the restored RAM is in
place (the notification that announced it died with the old process).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from kvmlite.devices.base import DeviceState, checked_state, warn_once
from kvmlite.errors import DeviceError, GuestMemoryError
from kvmlite.memory.guest import GuestMemory
from kvmlite.virtio.queue import Chain, QueueError, Virtqueue, VirtqueueState

log = logging.getLogger(__name__)

# --- device status (2.1) ----------------------------------------------------------------------
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_NEEDS_RESET = 0x40
STATUS_FAILED = 0x80

# --- feature bits every device may offer (6) -----------------------------------------------------
VIRTIO_RING_F_INDIRECT_DESC = 1 << 28
VIRTIO_RING_F_EVENT_IDX = 1 << 29
VIRTIO_F_VERSION_1 = 1 << 32
VIRTIO_F_ACCESS_PLATFORM = 1 << 33
COMMON_FEATURES = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX


@dataclass
class QueueStats:
    """Per queue: what ``--stats`` shows."""

    notifications: int = 0
    #: Notifications that arrived through an eventfd (KVM_IOEVENTFD): exits the vCPU did not take.
    ioeventfd: int = 0
    requests: int = 0
    bytes: int = 0
    interrupts: int = 0


@dataclass
class VirtioState(DeviceState):
    """A virtio device as its driver left it: status, features, queues, and the device's own record."""

    status: int = 0
    driver_features: int = 0
    config_generation: int = 0
    queues: list[VirtqueueState] = field(default_factory=list)
    #: The concrete device's :meth:`VirtioDevice.device_state` (None: it has nothing of its own).
    device: DeviceState | None = None


@dataclass
class DeviceStats:
    queues: list[QueueStats] = field(default_factory=list)
    errors: int = 0


class VirtioDevice:
    """Base of every virtio device; transports drive it."""

    #: The virtio device ID (5): 1 net, 2 block, 3 console, 4 entropy.
    device_id = 0
    #: The PCI class code its virtio-pci function shows (QEMU's choice for the device).
    pci_class = 0xFF0000

    def __init__(self, memory: GuestMemory, features: int, queue_sizes: list[int], name: str = "") -> None:
        self.memory = memory
        self.name = name or type(self).__name__
        self.device_features = features | VIRTIO_F_VERSION_1
        self.queues = [Virtqueue(size) for size in queue_sizes]
        self.stats = DeviceStats([QueueStats() for _ in queue_sizes])
        #: Set by the transport: raise the used-buffer interrupt of queue n / the config-change interrupt.
        self.interrupt_queue: Callable[[int], None] = lambda n: None
        self.interrupt_config: Callable[[], None] = lambda: None
        #: Set by the machine for devices with deadlines (rate limits): a deadline may have moved.
        self.reschedule: Callable[[], None] = lambda: None
        self._warned: set[str] = set()
        self.status = 0
        self.driver_features = 0
        self.config_generation = 0

    # --- status and features --------------------------------------------------------------------
    def set_status(self, value: int) -> None:
        value &= 0xFF
        if value == 0:
            self.reset()
            return
        if value & STATUS_FEATURES_OK and not self.status & STATUS_FEATURES_OK:
            if self.driver_features & ~self.device_features:
                self._warn("the driver accepted features the device did not offer")
                value &= ~STATUS_FEATURES_OK
            elif not self.driver_features & VIRTIO_F_VERSION_1:
                self._warn("a legacy driver (no VIRTIO_F_VERSION_1) is refused")
                value &= ~STATUS_FEATURES_OK
        if value & STATUS_DRIVER_OK and not self.status & STATUS_DRIVER_OK:
            event_idx = bool(self.driver_features & VIRTIO_RING_F_EVENT_IDX)
            for q in self.queues:
                q.event_idx = event_idx
            self.activate()
        self.status = value | (self.status & STATUS_NEEDS_RESET)

    def write_driver_features(self, select: int, value: int) -> None:
        if self.status & STATUS_FEATURES_OK or select > 1:
            return  # fixed once FEATURES_OK is set
        shift = 32 * select
        kept = self.driver_features & ~(0xFFFF_FFFF << shift)
        self.driver_features = kept | ((value & 0xFFFF_FFFF) << shift)

    def read_device_features(self, select: int) -> int:
        return (self.device_features >> (32 * select)) & 0xFFFF_FFFF if select < 2 else 0

    def reset(self) -> None:
        """Back to the initial state: status 0, no features, every queue unset."""
        self.status = 0
        self.driver_features = 0
        for q in self.queues:
            q.reset()
        self.device_reset()

    # --- queues ------------------------------------------------------------------------------------
    def notify(self, index: int) -> None:
        """The driver notified queue ``index``: process what it made available."""
        if index >= len(self.queues):
            self._warn(f"notification for queue {index}, which does not exist")
            return
        self.stats.queues[index].notifications += 1
        if not self.status & STATUS_DRIVER_OK or self.status & STATUS_NEEDS_RESET:
            return
        queue = self.queues[index]
        if not queue.ready:
            return
        try:
            self.process_queue(index, queue)
        except (QueueError, GuestMemoryError) as err:
            self.needs_reset(f"queue {index}: {err}")

    def format_stats(self) -> list[str]:
        """``--stats`` lines: one per queue."""
        return [
            f"{self.name} queue {i}: {q.notifications} notifications ({q.ioeventfd} without an exit), "
            f"{q.requests} requests, {q.bytes} bytes, {q.interrupts} interrupts"
            for i, q in enumerate(self.stats.queues)
        ] + ([f"{self.name}: {self.stats.errors} driver errors"] if self.stats.errors else [])

    def needs_reset(self, reason: str) -> None:
        """A driver error: stop the device until the driver resets it, and tell the driver."""
        self.stats.errors += 1
        self._warn(f"{reason}; the device needs a reset")
        if not self.status & STATUS_NEEDS_RESET:
            self.status |= STATUS_NEEDS_RESET
            if self.status & STATUS_DRIVER_OK:
                self.config_changed()

    def _warn(self, what: str) -> None:
        """A driver mistake: a warning the first time, DEBUG after (the guest controls how often)."""
        warn_once(log, self._warned, "%s: %s", self.name, what)

    def config_changed(self) -> None:
        self.config_generation = (self.config_generation + 1) & 0xFF
        self.interrupt_config()

    def complete(self, index: int, chain: Chain, written: int) -> None:
        """Hand ``chain`` back on queue ``index``; interrupt the driver if it wants one."""
        self.push_used(index, chain, written)
        self.signal_used(index)

    def push_used(self, index: int, chain: Chain, written: int) -> None:
        """Hand ``chain`` back on queue ``index`` without an interrupt (a batch ends with signal_used)."""
        stats = self.stats.queues[index]
        stats.requests += 1
        stats.bytes += written + chain.readable_len
        self.queues[index].push(self.memory, chain.head, written)

    def signal_used(self, index: int) -> None:
        """Interrupt the driver for what queue ``index`` returned, if it wants one."""
        if self.queues[index].should_notify(self.memory):
            self.stats.queues[index].interrupts += 1
            self.interrupt_queue(index)

    def enable_queue(self, index: int) -> None:
        """The driver enabled queue ``index``: live if its size and rings are valid, else NEEDS_RESET."""
        queue = self.queues[index]
        if queue.ready:
            return
        try:
            queue.check_layout(self.memory)
        except QueueError as err:
            self.needs_reset(f"queue {index} enabled with {err}")
            return
        queue.ready = True

    # --- snapshots -----------------------------------------------------------------------------------
    def state(self) -> VirtioState:
        return VirtioState(
            status=self.status,
            driver_features=self.driver_features,
            config_generation=self.config_generation,
            queues=[q.state() for q in self.queues],
            device=self.device_state(),
        )

    def load_state(self, state: VirtioState) -> None:
        """Take ``state`` in place; a record of another queue count or with bad rings is a DeviceError."""
        st = checked_state(state, VirtioState, self.name)
        if not isinstance(st.queues, list) or len(st.queues) != len(self.queues):
            count = len(st.queues) if isinstance(st.queues, list) else "no"
            raise DeviceError(f"{self.name}: the snapshot has {count} queues, the device {len(self.queues)}")
        if int(st.driver_features) & ~self.device_features:
            raise DeviceError(f"{self.name}: the snapshot's driver features are not all offered here")
        try:
            for queue, saved in zip(self.queues, st.queues, strict=True):
                queue.load_state(saved)
                if queue.ready:
                    queue.check_layout(self.memory)
        except QueueError as err:
            raise DeviceError(f"{self.name}: {err}") from None
        self.status = int(st.status) & 0xFF
        self.driver_features = int(st.driver_features)
        self.config_generation = int(st.config_generation) & 0xFF
        self.load_device_state(st.device)

    def replay(self) -> None:
        """Run what the driver made available on each live queue (after a restore: see the docstring)."""
        for index, queue in enumerate(self.queues):
            if queue.ready and queue.has_available(self.memory):
                self.notify(index)

    def device_state(self) -> DeviceState | None:
        """The device's own snapshot record beyond the common one; None when it has none."""
        return None

    def load_device_state(self, state: DeviceState | None) -> None:
        """Take what :meth:`device_state` returned (in place); the base has nothing to take."""
        if state is not None:
            raise DeviceError(f"{self.name}: the snapshot holds device state this device does not have")

    # --- for devices to implement ---------------------------------------------------------------------
    def read_config(self, offset: int, size: int) -> int:
        """The device-specific configuration space (little-endian)."""
        data = self.config_bytes()
        return int.from_bytes(data[offset : offset + size].ljust(size, b"\0"), "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Most configuration fields are read-only; devices with writable ones override this."""

    def config_bytes(self) -> bytes:
        return b""

    def activate(self) -> None:
        """DRIVER_OK was set: queues are live."""

    def device_reset(self) -> None:
        """The device's own state after a reset."""

    def process_queue(self, index: int, queue: Virtqueue) -> None:
        raise NotImplementedError
