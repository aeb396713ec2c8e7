"""QEMU's ``pc-testdev``: the ISA test device kvm-unit-tests' x86 tests talk to.

QEMU defines it in ``hw/misc/pc-testdev.c``; ``-device pc-testdev`` puts these
register blocks on the machine (kvm-unit-tests' ``x86/run`` always asks for it):

=================  =========  ====================================================
where              width      what
=================  =========  ====================================================
PIO 0xe0-0xe3      1, 2, 4    a 32-bit scratch register: an access of n bytes at
                              0xe0+k reads or writes bytes k..k+n-1 of it (the
                              ``emulator`` and ``realmode`` tests check ``in``/``out``
                              and string I/O against it)
PIO 0xe4-0xe7      4          write a guest-physical address: the host drops its
                              mapping of that page (QEMU: ``mprotect`` to none and
                              back), so the guest's next access faults into KVM;
                              reads give 0
PIO 0xe8-0xeb      1, 2, 4    the same scratch register, handled a byte at a time
PIO 0x2000-0x2017  1          byte n sets ISA interrupt line n to (value != 0);
                              reads give 0 (the ``ioapic`` test drives IRQs this way);
                              a wider write is split into bytes, as QEMU does
MMIO 0xff000000    1..8       64 KiB of plain memory behind MMIO exits ("iomem")
=================  =========  ====================================================

The device owns no host resource: the page flush and the interrupt lines are
injected callables (:func:`host_page_flusher` makes the flush for a
:class:`~kvmlite.memory.guest.GuestMemory`).  kvmlite attaches it only when
asked (``kvmlite qemu -device pc-testdev``), as QEMU does: its ports and its
MMIO window would otherwise sit where PCI BARs may be placed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kvmlite.devices.base import DeviceState, IrqLine, checked_state, warn_once
from kvmlite.memory.guest import PAGE_SIZE, GuestMemory

log = logging.getLogger(__name__)

# Sizes (kvmlite.vmm.layout says where the machine puts them: QEMU's addresses)
IOPORT_LEN = 12  # scratch register (+0), flush page (+4), byte-wise scratch register (+8)
IRQ_LINES = 24  # IRQ ports, one per ISA/IOAPIC line
IOMEM_LEN = 0x1_0000

# Offsets the device sees on its PIO range (the IRQ ports are inserted at IRQ_OFFSET)
REG_DATA = 0x0
REG_FLUSH = 0x4
REG_DATA_BYTE = 0x8
IRQ_OFFSET = 0x100

PAGE_MASK = ~(PAGE_SIZE - 1)


@dataclass
class PcTestdevState(DeviceState):
    data: int = 0  # the scratch register
    iomem: bytes = b""  # the MMIO window's contents (empty: all zero)


class PcTestdev:
    """The PIO side: scratch register, page flush, IRQ lines.  The MMIO window is :attr:`iomem`."""

    def __init__(
        self,
        irq_lines: Sequence[IrqLine] = (),
        flush_page: Callable[[int], None] = lambda gpa: None,
    ) -> None:
        #: ISA lines 0..len-1 (QEMU has 24; a userspace PIC gives 16), indexed by IRQ number.
        self.irq_lines = list(irq_lines)
        self.flush_page = flush_page
        self.data = 0
        self.iomem = PcTestdevIomem()
        self._warned: set[str] = set()

    def read(self, offset: int, size: int) -> int:
        if offset >= IRQ_OFFSET or REG_FLUSH <= offset < REG_DATA_BYTE:
            return 0
        shift = (offset & 3) * 8
        return (self.data >> shift) & _mask(size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= IRQ_OFFSET:
            self._set_irq(offset - IRQ_OFFSET, size, value)
        elif REG_FLUSH <= offset < REG_DATA_BYTE:
            if size == 4 and offset == REG_FLUSH:
                self.flush_page(value & PAGE_MASK)
            else:
                warn_once(log, self._warned, "pc-testdev: %d-byte flush write at +%d ignored", size, offset)
        else:
            shift = (offset & 3) * 8
            mask = _mask(size) << shift
            self.data = ((self.data & ~mask) | ((value << shift) & mask)) & 0xFFFF_FFFF

    def _set_irq(self, line: int, size: int, value: int) -> None:
        # QEMU splits a wider access into byte accesses to consecutive ports (the region's
        # maximum access size is 1): ``outl`` to 0x200b sets line 11 from the low byte and
        # lines 12-14 from the others; kvm-unit-tests' realmode test relies on it.
        for n in range(line, min(line + size, IRQ_LINES)):
            if n < len(self.irq_lines):
                self.irq_lines[n](value & 0xFF != 0)
            else:
                warn_once(log, self._warned, "pc-testdev: IRQ line %d is not wired on this machine", n)
            value >>= 8

    def state(self) -> PcTestdevState:
        return PcTestdevState(data=self.data, iomem=bytes(self.iomem.buf))

    @classmethod
    def from_state(cls, state: PcTestdevState, /, **injected: Any) -> PcTestdev:
        """Rebuild from :meth:`state`; ``irq_lines`` and ``flush_page`` come in ``injected``."""
        checked_state(state, PcTestdevState, "pc-testdev")
        dev = cls(**injected)
        dev.data = state.data & 0xFFFF_FFFF
        dev.iomem.buf[: len(state.iomem)] = state.iomem[:IOMEM_LEN]
        return dev


class PcTestdevIomem:
    """64 KiB of memory the guest reaches only through MMIO exits (QEMU's "pc-testdev-iomem").

    Its contents are part of :class:`PcTestdevState`."""

    def __init__(self) -> None:
        self.buf = bytearray(IOMEM_LEN)

    def read(self, offset: int, size: int) -> int:
        size = min(size, IOMEM_LEN - offset)
        return int.from_bytes(self.buf[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        size = min(size, IOMEM_LEN - offset)
        self.buf[offset : offset + size] = (value & _mask(size)).to_bytes(size, "little")

def _mask(size: int) -> int:
    return (1 << (8 * size)) - 1


PROT_NONE, PROT_READ_WRITE = 0, mmap.PROT_READ | mmap.PROT_WRITE


def host_page_flusher(memory: GuestMemory) -> Callable[[int], None]:
    """The flush-page action for ``memory``: protect the page's host mapping to nothing and back.

    Changing the protection makes the host kernel drop KVM's mapping of the
    page (the MMU notifier), so the guest's next access to it faults into KVM
    again; this is what QEMU does and what kvm-unit-tests' ``eventinj`` relies
    on.  Addresses outside RAM are ignored, as QEMU ignores them.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    mprotect = libc.mprotect
    mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

    def flush(gpa: int) -> None:
        region = memory.find_region(gpa)
        if region is None or region.readonly:
            return
        host = region.host_addr + (gpa - region.start)
        for prot in (PROT_NONE, PROT_READ_WRITE):
            if mprotect(host, PAGE_SIZE, prot) != 0:
                log.warning("pc-testdev: mprotect of page %#x failed (errno %d)", gpa, ctypes.get_errno())
                return

    return flush
