"""The virtio-mmio transport, version 2 (virtio 1.2, 4.2): a register block in the platform MMIO window.

For microVM-style guests without PCI.  Linux learns where each device is from
its command line (``virtio_mmio.device=<size>@<base>:<irq>``, which
:meth:`VirtioMmio.cmdline` gives); the register block is 0x200 bytes with the
device's configuration from 0x100.  The interrupt is a level line, high while
InterruptStatus has a bit set, lowered when the driver acknowledges it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from kvmlite.devices.base import DeviceState, IrqLine, checked_state, no_irq, warn_once
from kvmlite.virtio.device import VirtioDevice, VirtioState
from kvmlite.virtio.queue import Virtqueue

log = logging.getLogger(__name__)

MAGIC = 0x7472_6976  # "virt"
VERSION = 2
VENDOR_ID = 0x554D_4551  # "QEMU", as QEMU's virtio-mmio devices report it
REGION_SIZE = 0x200

MAGIC_VALUE, VERSION_REG, DEVICE_ID, VENDOR_ID_REG = 0x000, 0x004, 0x008, 0x00C
DEVICE_FEATURES, DEVICE_FEATURES_SEL = 0x010, 0x014
DRIVER_FEATURES, DRIVER_FEATURES_SEL = 0x020, 0x024
QUEUE_SEL, QUEUE_NUM_MAX, QUEUE_NUM, QUEUE_READY = 0x030, 0x034, 0x038, 0x044
QUEUE_NOTIFY = 0x050
INTERRUPT_STATUS, INTERRUPT_ACK = 0x060, 0x064
STATUS = 0x070
QUEUE_DESC_LOW, QUEUE_DRIVER_LOW, QUEUE_DEVICE_LOW = 0x080, 0x090, 0x0A0
CONFIG_GENERATION = 0x0FC
CONFIG = 0x100

#: The width of a QueueNotify write, what KVM_IOEVENTFD matches (with the queue index as data).
NOTIFY_WIDTH = 4
INT_USED_BUFFER = 1
INT_CONFIG_CHANGE = 2

#: The 64-bit queue address register pairs (low word offset) and the Virtqueue attributes they set.
QUEUE_ADDRESSES = (
    (QUEUE_DESC_LOW, "desc_addr"),
    (QUEUE_DRIVER_LOW, "avail_addr"),
    (QUEUE_DEVICE_LOW, "used_addr"),
)


@dataclass
class VirtioMmioState(DeviceState):
    """The register block's selectors and interrupt status, and the device."""

    features_sel: int = 0
    driver_features_sel: int = 0
    queue_sel: int = 0
    interrupt_status: int = 0
    device: VirtioState = field(default_factory=VirtioState)


class VirtioMmio:
    """A virtio device behind the version-2 MMIO register block."""

    def __init__(self, device: VirtioDevice, irq: IrqLine = no_irq) -> None:
        self.device = device
        self.irq = irq
        self.interrupt_status = 0
        self.features_sel = 0
        self.driver_features_sel = 0
        self.queue_sel = 0
        self._warned: set[str] = set()
        device.interrupt_queue = lambda index: self._raise(INT_USED_BUFFER)
        device.interrupt_config = lambda: self._raise(INT_CONFIG_CHANGE)

    # --- snapshots ----------------------------------------------------------------------------------
    def state(self) -> VirtioMmioState:
        return VirtioMmioState(
            features_sel=self.features_sel,
            driver_features_sel=self.driver_features_sel,
            queue_sel=self.queue_sel,
            interrupt_status=self.interrupt_status,
            device=self.device.state(),
        )

    def load_state(self, state: VirtioMmioState) -> None:
        """Take ``state`` in place and drive the interrupt line as InterruptStatus says."""
        st = checked_state(state, VirtioMmioState, self.device.name)
        self.device.load_state(st.device)
        self.features_sel = int(st.features_sel)
        self.driver_features_sel = int(st.driver_features_sel)
        self.queue_sel = int(st.queue_sel)
        self.interrupt_status = int(st.interrupt_status) & (INT_USED_BUFFER | INT_CONFIG_CHANGE)
        self.irq(bool(self.interrupt_status))

    @classmethod
    def from_state(cls, state: VirtioMmioState, /, **injected: Any) -> VirtioMmio:
        """A register block around ``injected["device"]`` (and ``irq``) in ``state``."""
        transport = cls(injected["device"], injected.get("irq", no_irq))
        transport.load_state(state)
        return transport

    @staticmethod
    def cmdline(base: int, irq: int) -> str:
        """How Linux is told about the device: ``virtio_mmio.device=512@0xd0000000:16``."""
        return f"virtio_mmio.device={REGION_SIZE}@{base:#x}:{irq}"

    def _odd_width(self, size: int) -> None:
        what = "%s: a %d-byte register access (virtio-mmio registers are 32-bit) is ignored"
        warn_once(log, self._warned, what, self.device.name, size)

    def _raise(self, bit: int) -> None:
        self.interrupt_status |= bit
        self.irq(True)

    def _queue(self) -> Virtqueue | None:
        queues = self.device.queues
        return queues[self.queue_sel] if self.queue_sel < len(queues) else None

    # --- bus interface --------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        dev = self.device
        if offset >= CONFIG:
            return dev.read_config(offset - CONFIG, size)
        if size != 4:
            self._odd_width(size)
            return 0
        q = self._queue()
        if offset == MAGIC_VALUE:
            return MAGIC
        if offset == VERSION_REG:
            return VERSION
        if offset == DEVICE_ID:
            return dev.device_id
        if offset == VENDOR_ID_REG:
            return VENDOR_ID
        if offset == DEVICE_FEATURES:
            return dev.read_device_features(self.features_sel)
        if offset == QUEUE_NUM_MAX:
            return q.max_size if q is not None else 0
        if offset == QUEUE_READY:
            return int(q.ready) if q is not None else 0
        if offset == INTERRUPT_STATUS:
            return self.interrupt_status
        if offset == STATUS:
            return dev.status
        if offset == CONFIG_GENERATION:
            return dev.config_generation
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        dev = self.device
        if offset >= CONFIG:
            dev.write_config(offset - CONFIG, size, value)
            return
        if size != 4:
            self._odd_width(size)
            return
        if offset == DEVICE_FEATURES_SEL:
            self.features_sel = value
        elif offset == DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == DRIVER_FEATURES:
            dev.write_driver_features(self.driver_features_sel, value)
        elif offset == QUEUE_SEL:
            self.queue_sel = value
        elif offset == QUEUE_NOTIFY:
            dev.notify(value & 0xFFFF)
        elif offset == INTERRUPT_ACK:
            self.interrupt_status &= ~value
            if not self.interrupt_status:
                self.irq(False)
        elif offset == STATUS:
            dev.set_status(value)
            if value == 0:
                self.queue_sel = 0
                self.interrupt_status = 0
                self.irq(False)
        else:
            self._queue_write(offset, value)

    def _queue_write(self, offset: int, value: int) -> None:
        q = self._queue()
        if q is None:
            return
        if q.ready and offset != QUEUE_READY:
            what = "%s: queue register %#x written while the queue is ready"
            warn_once(log, self._warned, what, self.device.name, offset)
            return
        if offset == QUEUE_NUM:
            q.size = value & 0xFFFF
        elif offset == QUEUE_READY:
            if value & 1:
                self.device.enable_queue(self.queue_sel)
            else:
                q.ready = False
        else:
            for low, attr in QUEUE_ADDRESSES:
                if offset in (low, low + 4):
                    shift = 32 * (offset - low) // 4
                    setattr(q, attr, (getattr(q, attr) & ~(0xFFFF_FFFF << shift)) | (value << shift))
