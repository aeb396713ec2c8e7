"""MSI-X (PCI 3.0, 6.8.2): the capability, the vector table and the pending-bit array in a BAR.

:class:`Msix` adds the capability to a function's configuration space and
serves the table and PBA as one bus device (:meth:`Msix.read`/:meth:`Msix.write`,
offsets from the BAR's base: the table at 0, the PBA at :data:`PBA_OFFSET`,
where QEMU puts them).  A device raises vector n with :meth:`notify`; the
message goes out through the injected ``deliver(vector, address, data)``
(with KVM: an irqfd whose GSI routes to that message, see
:mod:`kvmlite.vmm.irqroute`, or KVM_SIGNAL_MSI) unless MSI-X is off, the
function is masked or the vector is masked, in which case its pending bit
is set and the message goes out when it is unmasked, as the specification
asks.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from kvmlite.devices.base import DeviceState, checked_state
from kvmlite.errors import DeviceError
from kvmlite.pci.config import CAP_ID_MSIX, ConfigSpace, touches

ENTRY_SIZE = 16
PBA_OFFSET = 0x800
MAX_VECTORS = PBA_OFFSET // ENTRY_SIZE
CONTROL_ENABLE = 1 << 15
CONTROL_FUNCTION_MASK = 1 << 14
VECTOR_MASKED = 1
_ENTRY = struct.Struct("<IIII")  # address low, address high, data, vector control


@dataclass
class MsixState(DeviceState):
    """The vector table and pending bits (the capability's control word is configuration space)."""

    table: bytes = b""
    pending: int = 0


class Msix:
    """The MSI-X capability and its table; ``bar`` is the BAR (index) holding table and PBA."""

    def __init__(
        self, config: ConfigSpace, vectors: int, bar: int, deliver: Callable[[int, int, int], None]
    ) -> None:
        if not 1 <= vectors <= MAX_VECTORS:
            raise DeviceError(f"MSI-X: {vectors} vectors do not fit one table page")
        self.config, self.vectors, self.deliver = config, vectors, deliver
        body = struct.pack("<HII", vectors - 1, bar, PBA_OFFSET | bar)
        # only Enable and Function Mask (the top two bits of Message Control) are the driver's
        self.cap = config.add_capability(CAP_ID_MSIX, body, wmask=b"\x00\xc0")
        self.table = bytearray(ENTRY_SIZE * vectors)
        for n in range(vectors):
            self.table[ENTRY_SIZE * n + 12] = VECTOR_MASKED  # every vector starts masked
        self.pending = 0  # bit n: vector n fired while masked

    # --- state the driver set ----------------------------------------------------------------------
    @property
    def control(self) -> int:
        return self.config.get(self.cap + 2, 2)

    @property
    def enabled(self) -> bool:
        return bool(self.control & CONTROL_ENABLE)

    def _masked(self, vector: int) -> bool:
        entry_masked = self.table[ENTRY_SIZE * vector + 12] & VECTOR_MASKED
        return bool(self.control & CONTROL_FUNCTION_MASK or entry_masked)

    # --- the device side -----------------------------------------------------------------------------
    def notify(self, vector: int) -> bool:
        """Raise ``vector``; False when it does not exist (the caller may fall back to INTx)."""
        if not 0 <= vector < self.vectors:
            return False
        if self._masked(vector):
            self.pending |= 1 << vector
        else:
            self._send(vector)
        return True

    def _send(self, vector: int) -> None:
        lo, hi, data, _ = _ENTRY.unpack_from(self.table, ENTRY_SIZE * vector)
        self.deliver(vector, lo | hi << 32, data)

    def _flush_pending(self) -> None:
        if not self.enabled:
            return
        for vector in range(self.vectors):
            if self.pending >> vector & 1 and not self._masked(vector):
                self.pending &= ~(1 << vector)
                self._send(vector)

    def config_written(self, offset: int, size: int) -> None:
        """After a configuration write: unmasking the function sends what is pending."""
        if touches(offset, size, self.cap + 2, 2):
            self._flush_pending()

    # --- snapshots ------------------------------------------------------------------------------------
    def state(self) -> MsixState:
        return MsixState(table=bytes(self.table), pending=self.pending)

    def load_state(self, state: MsixState) -> None:
        st = checked_state(state, MsixState, "MSI-X")
        if not isinstance(st.table, bytes) or len(st.table) != len(self.table):
            raise DeviceError(f"MSI-X: the snapshot's table does not have {self.vectors} vectors")
        self.table[:] = st.table
        self.pending = int(st.pending) & ((1 << self.vectors) - 1)

    # --- the BAR: table and PBA ------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset >= PBA_OFFSET:
            return (self.pending >> (8 * (offset - PBA_OFFSET))) & ((1 << (8 * size)) - 1)
        if offset + size > len(self.table):
            return 0
        return int.from_bytes(self.table[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= PBA_OFFSET or offset + size > len(self.table):
            return  # the PBA is read-only; past the table is nothing
        self.table[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        if touches(offset % ENTRY_SIZE, size, 12, 4):  # a vector control word: maybe unmasked
            self._flush_pending()
