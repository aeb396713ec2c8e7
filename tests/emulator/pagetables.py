"""Page tables built in guest memory the way a guest kernel builds them, for the MMU tests."""

from __future__ import annotations

from kvmlite.emulator import mmu as m
from kvmlite.emulator.mmu import PagingMode
from kvmlite.memory import GuestMemory

P, RW, US, PS = m.PTE_P, m.PTE_RW, m.PTE_US, m.PTE_PS
ALL = P | RW | US
TABLE_POOL = 0x10_0000  # page tables are allocated from 1 MiB up

# (shifts, entry size) of the tables below CR3 for each mode; PAE's PDPT is special.
LAYOUT = {
    PagingMode.BITS32: ((22, 12), 4),
    PagingMode.PAE: ((30, 21, 12), 8),
    PagingMode.LONG4: ((39, 30, 21, 12), 8),
    PagingMode.LONG5: ((48, 39, 30, 21, 12), 8),
}


class Tables:
    """Builds x86 page tables in guest memory, the way a guest kernel would."""

    def __init__(self, mem: GuestMemory, mode: PagingMode, pool: int = TABLE_POOL) -> None:
        self.mem = mem
        self.mode = mode
        self.shifts, self.esize = LAYOUT[mode]
        self.next_free = pool
        self.root = self.alloc()
        if mode is PagingMode.PAE:
            # The CPU loads the four PDPTEs at CR3 load, so (like Linux) fill them all up front.
            for i in range(m.PAE_PDPTE_COUNT):
                self.write(self.root + i * 8, self.alloc() | P)

    def alloc(self) -> int:
        addr = self.next_free
        self.next_free += m.PAGE_SIZE
        self.mem.fill(addr, m.PAGE_SIZE)
        return addr

    def read(self, addr: int) -> int:
        return self.mem.read_u32(addr) if self.esize == 4 else self.mem.read_u64(addr)

    def write(self, addr: int, value: int) -> None:
        if self.esize == 4:
            self.mem.write_u32(addr, value)
        else:
            self.mem.write_u64(addr, value)

    def entry_addr(self, table: int, va: int, shift: int) -> int:
        if self.mode is PagingMode.PAE and shift == 30:
            return table + ((va >> 30) & 3) * 8
        bits = 10 if self.esize == 4 else 9
        return table + ((va >> shift) & ((1 << bits) - 1)) * self.esize

    def map(
        self, va: int, pa: int, flags: int = ALL, size: int = m.PAGE_SIZE, table_flags: int = ALL
    ) -> None:
        """Map ``va`` to ``pa``; ``size`` larger than 4 KiB makes a large-page leaf."""
        table = self.root
        for shift in self.shifts:
            addr = self.entry_addr(table, va, shift)
            if 1 << shift == size:
                extra = PS if size > m.PAGE_SIZE else 0
                self.write(addr, pa | flags | extra)
                return
            entry = self.read(addr)
            if entry & P and entry & PS and not (self.mode is PagingMode.PAE and shift == 30):
                raise AssertionError(f"{va:#x} lies in a large page already")
            if not entry & P:
                entry = self.alloc()
                # PAE PDPTEs have no R/W or U/S: those bits are reserved there.
                pdpte = self.mode is PagingMode.PAE and shift == 30
                self.write(addr, entry | (P if pdpte else table_flags))
            table = self.read(addr) & 0x000F_FFFF_FFFF_F000
        raise AssertionError(f"no level maps {size:#x}-byte pages")

    def entry(self, va: int, level: int) -> tuple[int, int]:
        """(address, value) of the level-``level`` entry for ``va`` (1 = page table)."""
        table = self.root
        for shift in self.shifts:
            addr = self.entry_addr(table, va, shift)
            value = self.read(addr)
            if len(self.shifts) - self.shifts.index(shift) == level:
                return addr, value
            if not value & P or (value & PS and not (self.mode is PagingMode.PAE and shift == 30)):
                raise AssertionError(f"no level-{level} entry for {va:#x}")
            table = value & 0x000F_FFFF_FFFF_F000
        raise AssertionError("no such level")

    def set_entry(self, va: int, level: int, value: int) -> None:
        self.write(self.entry(va, level)[0], value)


class Reads:
    """read_phys that counts how often the MMU touches guest memory."""

    def __init__(self, mem: GuestMemory) -> None:
        self.mem = mem
        self.count = 0

    def __call__(self, gpa: int, size: int) -> bytes:
        self.count += 1
        return self.mem.read(gpa, size)
