"""What a PCI function is to the bus: a configuration space, devices behind its BARs, an INTx line.

A function sees configuration accesses by offset (:meth:`PciFunction.config_read`,
:meth:`PciFunction.config_write`); subclasses override them where a register
has side effects (MSI-X enable, a virtio capability window) and call the
base for the rest.  Each BAR is served by an ordinary bus device (``read``/
``write`` by offset from the BAR's base) returned by :meth:`bar_device`; the
bus (:mod:`kvmlite.pci.bus`), not the function, decides where it is mapped.
"""

from __future__ import annotations

from kvmlite.devices.base import Device, IrqLine, no_irq
from kvmlite.pci.config import ConfigSpace


class PciFunction:
    """A PCI function: override :meth:`bar_device` and, where needed, the config accessors."""

    def __init__(self, config: ConfigSpace) -> None:
        self.config = config
        #: The INTx line (INTA#) the bus wired; level-triggered, shared with nothing.
        self.intx: IrqLine = no_irq

    def config_read(self, offset: int, size: int) -> int:
        return self.config.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        self.config.write(offset, size, value)

    def bar_device(self, index: int) -> Device:
        """The device serving BAR ``index`` (offsets from the BAR's base)."""
        raise NotImplementedError(f"{type(self).__name__} has no BAR {index}")


class HostBridge(PciFunction):
    """Device 00.0: the host bridge, a header with no BARs (QEMU's Q35 MCH IDs, which own an ECAM)."""

    VENDOR_INTEL = 0x8086
    DEVICE_Q35_MCH = 0x29C0
    CLASS_HOST_BRIDGE = 0x060000
    SUBSYSTEM_QEMU = (0x1AF4, 0x1100)

    def __init__(self) -> None:
        super().__init__(
            ConfigSpace(
                self.VENDOR_INTEL,
                self.DEVICE_Q35_MCH,
                self.CLASS_HOST_BRIDGE,
                subsystem_vendor_id=self.SUBSYSTEM_QEMU[0],
                subsystem_id=self.SUBSYSTEM_QEMU[1],
            )
        )
