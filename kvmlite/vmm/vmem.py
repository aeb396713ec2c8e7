"""Guest-virtual memory, read and written the one way: the backend's translation, then guest memory.

``vcpu.translate(linear)`` is KVM_TRANSLATE on the KVM backend and a walk of
the emulator's MMU (no access rights checked, no accessed/dirty bits set, no
fault raised) on the software backend; both return a ``kvm_translation``.
The helpers here split an access at page boundaries, translate every page
first (so a hole in the second page leaves the first untouched), then reach
RAM through :class:`~kvmlite.memory.guest.GuestMemory`.  Writes ignore the
page's write permission, as a debugger planting a breakpoint in kernel text
needs.  Like every vCPU ioctl, call them from the vCPU's thread or while the
VM is paused.
"""

from __future__ import annotations

from typing import Any

from kvmlite.errors import GuestMemoryError
from kvmlite.memory.guest import GuestMemory

PAGE_SIZE = 0x1000


def translate(vcpu: Any, addr: int) -> int:
    """The guest-physical address of linear ``addr`` in ``vcpu``'s current address space."""
    tr = vcpu.translate(addr)
    if not tr.valid:
        raise GuestMemoryError(f"guest virtual address {addr:#x} is not mapped")
    return int(tr.physical_address)


def _pieces(vcpu: Any, addr: int, size: int) -> list[tuple[int, int]]:
    out = []
    while size > 0:
        chunk = min(size, PAGE_SIZE - (addr & (PAGE_SIZE - 1)))
        out.append((translate(vcpu, addr), chunk))
        addr, size = addr + chunk, size - chunk
    return out


def read_virtual(vcpu: Any, memory: GuestMemory, addr: int, size: int) -> bytes:
    """``size`` bytes at guest-virtual ``addr``."""
    return b"".join(memory.read(gpa, n) for gpa, n in _pieces(vcpu, addr, size))


def write_virtual(vcpu: Any, memory: GuestMemory, addr: int, data: bytes) -> None:
    """Write ``data`` at guest-virtual ``addr`` (every page is translated before any is written)."""
    pos = 0
    for gpa, n in _pieces(vcpu, addr, len(data)):
        memory.write(gpa, data[pos : pos + n])
        pos += n
