"""Data breakpoints (DR0-3 with R/W = write or read/write) for the software backend.

:meth:`EmuVcpu.set_guest_debug <kvmlite.emulator.backend.EmuVcpu.set_guest_debug>`
does single-step, execution breakpoints and ``int3``; this is the rest of
KVM_SET_GUEST_DEBUG: a data breakpoint stops *after* the instruction that
touched its range, with its DR6.Bn bit set, as the CPU's data breakpoints
do.  Data accesses are seen by wrapping the ops' linear accessors, only while
a data breakpoint is set: a guest without one pays nothing.  Instruction
fetches are not data accesses.
"""

from __future__ import annotations

from typing import Any

from kvmlite.emulator.ops import ACCESS_FETCH
from kvmlite.x86 import DrRw, dr7_fields


class DataBreakpoints:
    """The data breakpoints of one vCPU and the DR6 bits the current instruction hit."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int, int, int]] = []  # (DR index, start, end, R/W)
        self.hits = 0

    def configure(self, ops: Any, addrs: list[int], dr7: int) -> None:
        """Take DR0-3 and DR7; wrap or unwrap ``ops``' linear accessors to match."""
        self.ranges = []
        for i, addr in enumerate(addrs[:4]):
            enabled, rw, length = dr7_fields(dr7, i)
            if enabled and rw in (DrRw.WRITE, DrRw.ACCESS):
                self.ranges.append((i, addr, addr + length, rw))
        self.hits = 0
        for name in ("read_linear", "write_linear"):
            ops.__dict__.pop(name, None)
        if not self.ranges:
            return
        read, write = ops.read_linear, ops.write_linear

        def read_linear(addr: int, size: int, access: int) -> bytes:
            if not access & ACCESS_FETCH:
                self._touch(addr, size, write=False)
            return read(addr, size, access)

        def write_linear(addr: int, data: bytes, access: int) -> None:
            write(addr, data, access)
            self._touch(addr, len(data), write=True)

        ops.read_linear, ops.write_linear = read_linear, write_linear

    def _touch(self, addr: int, size: int, write: bool) -> None:
        for i, start, end, rw in self.ranges:
            if addr < end and start < addr + size and (write or rw == DrRw.ACCESS):
                self.hits |= 1 << i

    def take(self) -> int:
        """The DR6 Bn bits hit since the last call (an instruction that did not complete hit nothing)."""
        hits, self.hits = self.hits, 0
        return hits
