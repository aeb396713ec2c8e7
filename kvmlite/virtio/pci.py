"""The virtio-pci transport, modern only (virtio 1.2, 4.1): a PCI function with virtio capabilities.

Vendor 0x1AF4, device 0x1040 + the virtio device ID, revision 1 (as QEMU's
``disable-legacy=on`` devices), subsystem 0x1AF4:0x1100.  One 64-bit
prefetchable memory BAR (BAR 4, 16 KiB) holds the four structures at the
offsets QEMU uses, each announced by a vendor-specific capability::

    0x0000  common configuration   (VIRTIO_PCI_CAP_COMMON_CFG)
    0x1000  ISR status             (VIRTIO_PCI_CAP_ISR_CFG)
    0x2000  device configuration   (VIRTIO_PCI_CAP_DEVICE_CFG)
    0x3000  notifications          (VIRTIO_PCI_CAP_NOTIFY_CFG, 4 bytes per queue)

plus the VIRTIO_PCI_CAP_PCI_CFG window that reaches the BAR through
configuration space.  Interrupts are MSI-X where the machine can deliver
messages (BAR 1: table and PBA; one vector per queue plus one for
configuration changes, chosen by the driver), else INTx (level, dropped when
the driver reads the ISR) and the vector registers read NO_VECTOR.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvmlite.devices.base import DeviceState, checked_state, warn_once
from kvmlite.errors import DeviceError
from kvmlite.pci import config as C
from kvmlite.pci.device import PciFunction
from kvmlite.pci.msix import Msix, MsixState
from kvmlite.virtio.device import VirtioDevice, VirtioState
from kvmlite.virtio.queue import Virtqueue

log = logging.getLogger(__name__)

VENDOR_REDHAT_QUMRANET = 0x1AF4
DEVICE_ID_MODERN_BASE = 0x1040
SUBSYSTEM_ID_QEMU = 0x1100
REVISION_MODERN = 1

BAR_INDEX = 4
BAR_SIZE = 0x4000
MSIX_BAR_INDEX = 1  # the MSI-X table and PBA, as QEMU places them
MSIX_BAR_SIZE = 0x1000
COMMON_OFFSET, ISR_OFFSET, DEVICE_OFFSET, NOTIFY_OFFSET = 0x0000, 0x1000, 0x2000, 0x3000
REGION_SIZE = 0x1000
NOTIFY_MULTIPLIER = 4

# cfg_type of the virtio capabilities
CAP_COMMON_CFG, CAP_NOTIFY_CFG, CAP_ISR_CFG, CAP_DEVICE_CFG, CAP_PCI_CFG = 1, 2, 3, 4, 5

# common configuration structure offsets
DEVICE_FEATURE_SELECT, DEVICE_FEATURE = 0x00, 0x04
DRIVER_FEATURE_SELECT, DRIVER_FEATURE = 0x08, 0x0C
CONFIG_MSIX_VECTOR, NUM_QUEUES = 0x10, 0x12
DEVICE_STATUS, CONFIG_GENERATION = 0x14, 0x15
QUEUE_SELECT, QUEUE_SIZE, QUEUE_MSIX_VECTOR, QUEUE_ENABLE, QUEUE_NOTIFY_OFF = 0x16, 0x18, 0x1A, 0x1C, 0x1E
QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE = 0x20, 0x28, 0x30
COMMON_CFG_LEN = 0x38
#: The 64-bit queue address registers and the Virtqueue attributes they set.
QUEUE_ADDRESSES = ((QUEUE_DESC, "desc_addr"), (QUEUE_DRIVER, "avail_addr"), (QUEUE_DEVICE, "used_addr"))
NO_VECTOR = 0xFFFF

ISR_QUEUE = 1
ISR_CONFIG = 2


def msix_vectors(device: VirtioDevice) -> int:
    """The MSI-X table size of ``device``'s function: one vector per queue and one for the configuration."""
    return len(device.queues) + 1
@dataclass
class VirtioPciState(DeviceState):
    """The transport's registers, MSI-X and the device (configuration space: the bus's state)."""

    features_select: int = 0
    driver_features_select: int = 0
    queue_select: int = 0
    config_vector: int = NO_VECTOR
    queue_vectors: list[int] = field(default_factory=list)
    isr: int = 0
    msix: MsixState | None = None
    device: VirtioState = field(default_factory=VirtioState)


class VirtioPciFunction(PciFunction):
    """A virtio device on PCI."""

    def __init__(
        self, device: VirtioDevice, deliver_msi: Callable[[int, int, int], None] | None = None
    ) -> None:
        super().__init__(
            C.ConfigSpace(
                VENDOR_REDHAT_QUMRANET,
                DEVICE_ID_MODERN_BASE + device.device_id,
                device.pci_class,
                revision=REVISION_MODERN,
                subsystem_vendor_id=VENDOR_REDHAT_QUMRANET,
                subsystem_id=SUBSYSTEM_ID_QEMU,
                interrupt_pin=C.INTERRUPT_PIN_INTA,
            )
        )
        self.device = device
        self.config.add_bar(C.BarSpec(BAR_INDEX, BAR_SIZE, C.BarKind.MEM64, prefetchable=True))
        self._add_cap(CAP_COMMON_CFG, COMMON_OFFSET, REGION_SIZE)  # region sizes as QEMU announces them
        self._add_cap(CAP_ISR_CFG, ISR_OFFSET, REGION_SIZE)
        self._add_cap(CAP_DEVICE_CFG, DEVICE_OFFSET, REGION_SIZE)
        self._add_cap(CAP_NOTIFY_CFG, NOTIFY_OFFSET, REGION_SIZE, NOTIFY_MULTIPLIER.to_bytes(4, "little"))
        # the PCI_CFG window: bar, offset, length and the 4 data bytes are the driver's to write
        window_mask = b"\x00\x00\xff\x00\x00\x00" + b"\xff" * 12
        self.pci_cfg = self._add_cap(CAP_PCI_CFG, 0, 0, bytes(4), wmask=window_mask)
        self.bar = VirtioPciBar(self)
        #: MSI-X (one vector per queue and one for configuration changes) where messages can be delivered.
        self.msix: Msix | None = None
        if deliver_msi is not None:
            self.config.add_bar(C.BarSpec(MSIX_BAR_INDEX, MSIX_BAR_SIZE))
            self.msix = Msix(self.config, msix_vectors(device), MSIX_BAR_INDEX, deliver_msi)
        self.config_vector = NO_VECTOR
        self.queue_vectors = [NO_VECTOR] * len(device.queues)
        self.isr = 0
        self.features_select = 0
        self.driver_features_select = 0
        self.queue_select = 0
        self._warned: set[str] = set()
        device.interrupt_queue = self._interrupt_queue
        device.interrupt_config = self._interrupt_config

    def _add_cap(
        self, cfg_type: int, offset: int, length: int, extra: bytes = b"", wmask: bytes = b""
    ) -> int:
        cap_len = 16 + len(extra)
        body = bytes([cap_len, cfg_type, BAR_INDEX, 0, 0, 0]) + offset.to_bytes(4, "little")
        body += length.to_bytes(4, "little") + extra
        return self.config.add_capability(C.CAP_ID_VENDOR, body, wmask)

    @staticmethod
    def notify_offset(queue: int) -> int:
        """Where in the BAR the driver notifies ``queue`` (queue_notify_off is the queue's index)."""
        return NOTIFY_OFFSET + queue * NOTIFY_MULTIPLIER

    def bar_device(self, index: int) -> VirtioPciBar | Msix:
        if index == MSIX_BAR_INDEX and self.msix is not None:
            return self.msix
        return self.bar

    # --- snapshots ---------------------------------------------------------------------------------------
    def state(self) -> VirtioPciState:
        return VirtioPciState(
            features_select=self.features_select,
            driver_features_select=self.driver_features_select,
            queue_select=self.queue_select,
            config_vector=self.config_vector,
            queue_vectors=list(self.queue_vectors),
            isr=self.isr,
            msix=None if self.msix is None else self.msix.state(),
            device=self.device.state(),
        )

    def load_state(self, state: VirtioPciState) -> None:
        """Take ``state`` in place and drive INTx as the ISR says (the bus loaded the configuration)."""
        st = checked_state(state, VirtioPciState, self.device.name)
        if (st.msix is None) != (self.msix is None):
            raise DeviceError(f"{self.device.name}: the snapshot's interrupts (MSI-X or INTx) differ")
        if len(st.queue_vectors) != len(self.queue_vectors):
            raise DeviceError(f"{self.device.name}: the snapshot has another number of queues")
        self.device.load_state(st.device)
        if self.msix is not None and st.msix is not None:
            self.msix.load_state(st.msix)
        self.features_select = int(st.features_select)
        self.driver_features_select = int(st.driver_features_select)
        self.queue_select = int(st.queue_select) & 0xFFFF
        self.config_vector = self._vector(int(st.config_vector))
        self.queue_vectors = [self._vector(int(v)) for v in st.queue_vectors]
        self.isr = int(st.isr) & (ISR_QUEUE | ISR_CONFIG)
        self.intx(bool(self.isr) and not self.config.command & C.COMMAND_INTX_DISABLE)

    @classmethod
    def from_state(cls, state: VirtioPciState, /, **injected: Any) -> VirtioPciFunction:
        """A function around ``injected["device"]`` (and ``deliver_msi``) in ``state``."""
        function = cls(injected["device"], injected.get("deliver_msi"))
        function.load_state(state)
        return function

    # --- the PCI_CFG window ---------------------------------------------------------------------------
    def _window(self) -> tuple[int, int] | None:
        cap = self.pci_cfg
        bar, offset = self.config.get(cap + 4, 1), self.config.get(cap + 8, 4)
        length = self.config.get(cap + 12, 4)
        if bar != BAR_INDEX or length not in (1, 2, 4) or offset + length > BAR_SIZE:
            return None
        return offset, length

    def config_read(self, offset: int, size: int) -> int:
        data = self.pci_cfg + 16
        if C.touches(offset, size, data, 4) and (window := self._window()) is not None:
            self.config.set(data, window[1], self.bar.read(*window))
        return super().config_read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        super().config_write(offset, size, value)
        if self.msix is not None:
            self.msix.config_written(offset, size)
        data = self.pci_cfg + 16
        if C.touches(offset, size, data, 4) and (window := self._window()) is not None:
            self.bar.write(window[0], window[1], self.config.get(data, window[1]))

    # --- interrupts (INTx) ------------------------------------------------------------------------------
    def _interrupt_queue(self, index: int) -> None:
        if not self._msi(self.queue_vectors[index]):
            self._raise(ISR_QUEUE)

    def _interrupt_config(self) -> None:
        if not self._msi(self.config_vector):
            self._raise(ISR_CONFIG)

    def _msi(self, vector: int) -> bool:
        """With MSI-X enabled the vector's message replaces INTx (NO_VECTOR: no interrupt at all)."""
        if self.msix is None or not self.msix.enabled:
            return False
        if vector != NO_VECTOR:
            self.msix.notify(vector)
        return True

    def _raise(self, bit: int) -> None:
        self.isr |= bit
        if not self.config.command & C.COMMAND_INTX_DISABLE:
            self.config.set(C.STATUS, 2, self.config.get(C.STATUS, 2) | C.STATUS_INTERRUPT)
            self.intx(True)

    def read_isr(self) -> int:
        value, self.isr = self.isr, 0
        self.config.set(C.STATUS, 2, self.config.get(C.STATUS, 2) & ~C.STATUS_INTERRUPT)
        self.intx(False)
        return value

    # --- the common configuration structure -------------------------------------------------------------
    def common_read(self, offset: int, size: int) -> int:
        dev = self.device
        q = dev.queues[self.queue_select] if self.queue_select < len(dev.queues) else None
        if offset == DEVICE_FEATURE_SELECT:
            return self.features_select
        if offset == DEVICE_FEATURE:
            return dev.read_device_features(self.features_select)
        if offset == DRIVER_FEATURE_SELECT:
            return self.driver_features_select
        if offset == DRIVER_FEATURE:
            return (dev.driver_features >> (32 * self.driver_features_select)) & 0xFFFF_FFFF
        if offset == CONFIG_MSIX_VECTOR:
            return self.config_vector
        if offset == NUM_QUEUES:
            return len(dev.queues)
        if offset == DEVICE_STATUS:
            return dev.status
        if offset == CONFIG_GENERATION:
            return dev.config_generation
        if offset == QUEUE_SELECT:
            return self.queue_select
        if q is None:
            return 0
        if offset == QUEUE_SIZE:
            return q.size
        if offset == QUEUE_ENABLE:
            return int(q.ready)
        if offset == QUEUE_NOTIFY_OFF:
            return self.queue_select
        if offset == QUEUE_MSIX_VECTOR:
            return self.queue_vectors[self.queue_select]
        for base, attr in QUEUE_ADDRESSES:
            if base <= offset < base + 8:
                return int(getattr(q, attr)) >> (8 * (offset - base)) & ((1 << (8 * size)) - 1)
        return 0

    def common_write(self, offset: int, size: int, value: int) -> None:
        dev = self.device
        if offset == DEVICE_FEATURE_SELECT:
            self.features_select = value
        elif offset == DRIVER_FEATURE_SELECT:
            self.driver_features_select = value
        elif offset == DRIVER_FEATURE:
            dev.write_driver_features(self.driver_features_select, value)
        elif offset == DEVICE_STATUS:
            dev.set_status(value)
            if value == 0:
                self.queue_select = 0
                self.config_vector = NO_VECTOR
                self.queue_vectors = [NO_VECTOR] * len(dev.queues)
                self.read_isr()
        elif offset == CONFIG_MSIX_VECTOR:
            self.config_vector = self._vector(value)
        elif offset == QUEUE_MSIX_VECTOR:
            if self.queue_select < len(dev.queues):
                self.queue_vectors[self.queue_select] = self._vector(value)
        elif offset == QUEUE_SELECT:
            self.queue_select = value
        elif self.queue_select < len(dev.queues):
            self._queue_write(dev.queues[self.queue_select], offset, size, value)

    def _vector(self, value: int) -> int:
        """The vector the driver asked for, or NO_VECTOR where the device cannot map it (4.1.5.1.2)."""
        value &= 0xFFFF
        return value if self.msix is not None and value < self.msix.vectors else NO_VECTOR

    def _queue_write(self, q: Virtqueue, offset: int, size: int, value: int) -> None:
        if q.ready and offset != QUEUE_ENABLE:
            what = "%s: queue register %#x written while the queue is enabled"
            warn_once(log, self._warned, what, self.device.name, offset)
            return
        if offset == QUEUE_SIZE:
            q.size = value & 0xFFFF
        elif offset == QUEUE_ENABLE:
            if value == 1:
                self.device.enable_queue(self.queue_select)
        else:
            for base, attr in QUEUE_ADDRESSES:
                if base <= offset < base + 8:
                    shift = 8 * (offset - base)
                    mask = ((1 << (8 * size)) - 1) << shift
                    setattr(q, attr, (getattr(q, attr) & ~mask) | ((value << shift) & mask))


class VirtioPciBar:
    """BAR 4: the four structures, dispatched by offset."""

    def __init__(self, function: VirtioPciFunction) -> None:
        self.function = function

    def read(self, offset: int, size: int) -> int:
        fn = self.function
        if offset < COMMON_OFFSET + COMMON_CFG_LEN:
            return fn.common_read(offset, size)
        if ISR_OFFSET <= offset < ISR_OFFSET + REGION_SIZE:
            return fn.read_isr() if offset == ISR_OFFSET else 0
        if DEVICE_OFFSET <= offset < DEVICE_OFFSET + REGION_SIZE:
            return fn.device.read_config(offset - DEVICE_OFFSET, size)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        fn = self.function
        if offset < COMMON_OFFSET + COMMON_CFG_LEN:
            fn.common_write(offset, size, value)
        elif DEVICE_OFFSET <= offset < DEVICE_OFFSET + REGION_SIZE:
            fn.device.write_config(offset - DEVICE_OFFSET, size, value)
        elif NOTIFY_OFFSET <= offset < NOTIFY_OFFSET + REGION_SIZE:
            fn.device.notify((offset - NOTIFY_OFFSET) // NOTIFY_MULTIPLIER)

#: The width of a notification write (the 16-bit queue index), what KVM_IOEVENTFD matches.
NOTIFY_WIDTH = 2
