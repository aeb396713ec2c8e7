"""Guest memory and the PIO/MMIO buses."""

from kvmlite.memory.bus import Bus
from kvmlite.memory.guest import GuestAddress, GuestMemory, GuestRegion

__all__ = ["Bus", "GuestAddress", "GuestMemory", "GuestRegion"]
