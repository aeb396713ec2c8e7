"""A fake :class:`EmulatorOps` for executor tests: flat memory, recorded ports and MSRs.

Linear addresses map one-to-one onto a bytearray (no paging) unless a test
wraps the executor in :class:`~kvmlite.emulator.ops.PagedOps` instead.
Addresses outside the array raise a #PF-like :class:`PageFault`, so a test
can also provoke page faults.
"""

from __future__ import annotations

from kvmlite.emulator.cpu import CS, DS, ES, FS, GS, SS, CpuState
from kvmlite.emulator.executor import Executor
from kvmlite.emulator.mmu import PageFault
from kvmlite.emulator.ops import EmulatorOps
from kvmlite.emulator.segments import Segment

MEM_SIZE = 1 << 21
PF_WRITE = 2


class FakeOps(EmulatorOps):
    """Flat guest memory, a port log and canned port/MSR/CPUID answers."""

    def __init__(self, size: int = MEM_SIZE) -> None:
        self.mem = bytearray(size)
        self.port_writes: list[tuple[int, int, int]] = []
        self.port_values: dict[int, int] = {}
        self.msrs: dict[int, int] = {}
        self.halts = 0
        self.tsc = 1000
        self.invalidated: list[int] = []
        self.paging_calls = 0

    def read_linear(self, addr: int, size: int, access: int) -> bytes:
        if addr + size > len(self.mem):
            raise PageFault(
                addr, access & 0x7 and ((access & 1) << 1 | (access & 2) << 1 | (access & 4) << 2)
            )
        return bytes(self.mem[addr : addr + size])

    def write_linear(self, addr: int, data: bytes, access: int) -> None:
        if addr + len(data) > len(self.mem):
            raise PageFault(addr, PF_WRITE)
        self.mem[addr : addr + len(data)] = data

    def io_in(self, port: int, size: int) -> int:
        return self.port_values.get(port, 0xFFFFFFFF) & ((1 << (8 * size)) - 1)

    def io_out(self, port: int, size: int, value: int) -> None:
        self.port_writes.append((port, size, value))

    def read_msr(self, index: int) -> int:
        if index in self.msrs:
            return self.msrs[index]
        return super().read_msr(index)

    def write_msr(self, index: int, value: int) -> None:
        self.msrs[index] = value

    def rdtsc(self) -> int:
        self.tsc += 100
        return self.tsc

    def halt(self) -> None:
        self.halts += 1

    def invlpg(self, addr: int) -> None:
        self.invalidated.append(addr)

    def paging_changed(self, cr0: int, cr3: int, cr4: int, efer: int) -> None:
        self.paging_calls += 1

    # helpers for tests
    def load(self, addr: int, code: bytes) -> None:
        self.mem[addr : addr + len(code)] = code

    def u(self, addr: int, size: int) -> int:
        return int.from_bytes(self.mem[addr : addr + size], "little")

    def put(self, addr: int, size: int, value: int) -> None:
        self.mem[addr : addr + size] = value.to_bytes(size, "little")


def flat_segment(selector: int, code: bool, bits: int, dpl: int = 0) -> Segment:
    return Segment(
        selector=selector,
        base=0,
        limit=0xFFFFFFFF,
        type=0xB if code else 0x3,
        s=1,
        dpl=dpl,
        present=1,
        db=1 if bits == 32 or (not code) else 0,
        l=1 if code and bits == 64 else 0,
        g=1,
    )


def make_cpu(bits: int, rip: int = 0x1000, rsp: int = 0x8000) -> CpuState:
    """A CPU in flat 16-bit real mode, 32-bit protected mode or 64-bit long mode (no paging)."""
    cpu = CpuState()
    cpu.rip = rip
    cpu.gpr[4] = rsp
    if bits == 16:
        cpu.segs = [Segment(type=0xB if i == CS else 0x3) for i in range(6)]
        return cpu
    cpu.cr0 = 0x11  # PE, ET
    if bits == 64:
        cpu.cr0 |= 1 << 31
        cpu.cr4 = 1 << 5
        cpu.efer = (1 << 8) | (1 << 10) | 1
    for seg in (ES, DS, FS, GS, SS):
        cpu.segs[seg] = flat_segment(0x10, False, bits)
    cpu.segs[CS] = flat_segment(0x08, True, bits)
    return cpu


def make(bits: int, code: bytes = b"", rip: int = 0x1000, rsp: int = 0x8000) -> tuple[Executor, FakeOps]:
    ops = FakeOps()
    ops.load(rip, code)
    cpu = make_cpu(bits, rip, rsp)
    return Executor(cpu, ops), ops
