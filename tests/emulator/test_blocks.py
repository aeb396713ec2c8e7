"""Translation blocks and lazy flags (kvmlite.emulator.tb, .fastops) at the executor's level: the cases
the guests and the differential tests reach only by chance, placed exactly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvmlite.emulator.backend import BackendOps
from kvmlite.emulator.cpu import FLAG_ZF
from kvmlite.emulator.executor import Executor
from kvmlite.emulator.mmu import PagingMode
from kvmlite.memory import GuestMemory
from tests.emulator.fakes import make_cpu
from tests.emulator.pagetables import Tables

RAX, RCX, RBX = 0, 1, 3
HLT = b"\xf4"


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    memory = GuestMemory([(0, 4 << 20)])
    yield memory
    memory.close()


def machine(mem: GuestMemory, code_at: int, code: bytes) -> Executor:
    """A 64-bit CPU over identity-mapped RAM (the software backend's ops), RIP at ``code_at``."""
    t = Tables(mem, PagingMode.LONG4, pool=0x30_0000)
    for page in range(0, 0x30_0000, 0x1000):
        t.map(page, page)
    mem.write(code_at, code)
    cpu = make_cpu(64, rip=code_at, rsp=0x8_0000)
    cpu.cr3 = t.root
    return Executor(cpu, BackendOps(mem, cpu, {}))


def test_flags_made_in_a_block_reach_an_instruction_that_straddles_the_page(mem: GuestMemory) -> None:
    # cmp rax, rbx ends the block at 0x2ffe; jz rel32 crosses into the next page and runs through
    # step(), which must see the CMP's flags although the block only recorded them lazily
    start = 0x2FFB
    code = bytes.fromhex("4839d8") + bytes.fromhex("0f84") + (6).to_bytes(4, "little")
    code += bytes.fromhex("b901000000") + HLT + bytes.fromhex("b902000000") + HLT
    ex = machine(mem, start, code)
    ex.cpu.gpr[RAX] = ex.cpu.gpr[RBX] = 7
    ex.run_blocks(20)
    assert ex.cpu.halted
    assert ex.cpu.gpr[RCX] == 2  # taken: ZF from the CMP
    assert ex.cpu.rflags & FLAG_ZF and ex.lazy is None


def test_a_store_into_the_next_instruction_of_the_same_block_runs_the_new_bytes(mem: GuestMemory) -> None:
    # mov byte [rip + 1], 7 ; add eax, 1 (its immediate is the byte written) ; hlt
    code = bytes.fromhex("c60502000000" + "07") + bytes.fromhex("83c001") + HLT
    ex = machine(mem, 0x1000, code)
    ex.run_blocks(10)  # translated once before the store ...
    assert ex.cpu.halted and ex.cpu.gpr[RAX] == 7
    ex.cpu.halted = False
    ex.cpu.rip = 0x1000
    mem.write(0x1000 + 9, b"\x01")  # ... and a write from outside the CPU, seen at the next epoch
    ex.blocks.epoch += 1
    ex.run_blocks(10)
    assert ex.cpu.gpr[RAX] == 14  # the store patched it to 7 again before it ran


def test_a_loop_block_runs_again_without_a_lookup_and_stops_at_the_budget(mem: GuestMemory) -> None:
    # 1: dec rcx ; jnz 1b ; hlt
    ex = machine(mem, 0x1000, bytes.fromhex("48ffc9" + "75fb") + HLT)
    ex.cpu.gpr[RCX] = 1000
    ran = ex.run_blocks(100)
    assert 100 <= ran < 110 and not ex.cpu.halted and ex.cpu.rip == 0x1000
    ex.run_blocks(5000)
    assert ex.cpu.halted and ex.cpu.gpr[RCX] == 0
    assert ex.blocks.translated == 2  # the loop and the HLT, each decoded once


def test_instructions_straddling_a_page_are_not_confused_by_their_first_bytes(mem: GuestMemory) -> None:
    # Two instructions that cross a page end after the same first byte (0f): a 3-byte NOP and a
    # 6-byte JZ.  The decode cache used to key both by that one byte and ran the JZ as the NOP.
    ex = machine(mem, 0x1FFF, bytes.fromhex("0f1f00") + HLT)
    mem.write(0x2FFF, bytes.fromhex("0f84") + (0x10).to_bytes(4, "little") + HLT)
    ex.step()
    assert ex.cpu.rip == 0x2002
    ex.cpu.rip = 0x2FFF
    ex.cpu.rflags |= FLAG_ZF
    ex.step()
    assert ex.cpu.rip == 0x3005 + 0x10
