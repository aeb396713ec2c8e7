"""The shadow MMU: translations kept per address space and dropped exactly when the guest writes the
page-table entries they came from (kvmlite.emulator.shadow), and the executor's host views with it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvmlite.emulator import mmu as m
from kvmlite.emulator import shadow
from kvmlite.emulator.backend import BackendOps
from kvmlite.emulator.cpu import DS
from kvmlite.emulator.executor import Executor
from kvmlite.emulator.mmu import Access, PageFault, PagingMode
from kvmlite.emulator.shadow import ShadowMmu
from kvmlite.memory import GuestMemory
from tests.emulator.fakes import make_cpu
from tests.emulator.pagetables import ALL, Reads, Tables

RAM_SIZE = 16 << 20
LONG = (m.CR0_PE | m.CR0_PG | m.CR0_WP, m.CR4_PAE, m.EFER_LME | m.EFER_LMA | m.EFER_NXE)


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    memory = GuestMemory([(0, RAM_SIZE)])
    yield memory
    memory.close()


class Cpu:
    """Guest writes as the software backend makes them: memory, then the tracked-page check."""

    def __init__(self, mem: GuestMemory, mmu: ShadowMmu) -> None:
        self.mem, self.mmu = mem, mmu

    def write_u64(self, gpa: int, value: int) -> None:
        self.mem.write_u64(gpa, value)
        if gpa >> 12 in self.mmu.pt_pages:
            self.mmu.written(gpa, 8)


def make(mem: GuestMemory, mode: PagingMode = PagingMode.LONG4) -> tuple[ShadowMmu, Tables, Reads, Cpu]:
    tables = Tables(mem, mode)
    reads = Reads(mem)
    mmu = ShadowMmu(reads, mem.write)
    cr0, cr4, efer = LONG
    if mode is PagingMode.PAE:
        efer = m.EFER_NXE
    mmu.set_mode(cr0, tables.root, cr4, efer)
    assert mmu.mode is mode
    return mmu, tables, reads, Cpu(mem, mmu)


def test_a_cr3_switch_keeps_both_address_spaces(mem: GuestMemory) -> None:
    mmu, a, reads, _ = make(mem)
    b = Tables(mem, PagingMode.LONG4, pool=a.next_free + 0x10000)
    a.map(0x2000, 0x8000)
    b.map(0x2000, 0x9000)
    assert mmu.translate(0x2000) == 0x8000
    mmu.write_cr3(b.root)
    assert mmu.translate(0x2000) == 0x9000
    walked = reads.count
    for _ in range(3):
        mmu.write_cr3(a.root)
        assert mmu.translate(0x2000) == 0x8000
        mmu.write_cr3(b.root)
        assert mmu.translate(0x2000) == 0x9000
    assert reads.count == walked  # no walk after the first in each space
    assert mmu.context_count() == 2


def test_a_pte_write_drops_exactly_the_translation_it_made(mem: GuestMemory) -> None:
    mmu, t, reads, cpu = make(mem)
    t.map(0x2000, 0x8000)
    t.map(0x3000, 0x9000)
    assert mmu.translate(0x2000) == 0x8000
    assert mmu.translate(0x3000) == 0x9000
    pte, _ = t.entry(0x2000, 1)
    cpu.write_u64(pte, 0xA000 | ALL)  # no INVLPG: the write itself is seen
    walked = reads.count
    assert mmu.translate(0x3000) == 0x9000
    assert reads.count == walked  # the neighbour was not derived from that entry: still cached
    assert mmu.translate(0x2000) == 0xA000
    assert reads.count == walked + 4  # one walk, four levels


def test_a_directory_write_drops_everything_below_it(mem: GuestMemory) -> None:
    mmu, t, _, cpu = make(mem)
    for page in range(4):
        t.map(0x20_0000 + page * 0x1000, 0x40_0000 + page * 0x1000)
        assert mmu.translate(0x20_0000 + page * 0x1000) == 0x40_0000 + page * 0x1000
    pde, _ = t.entry(0x20_0000, 2)
    cpu.write_u64(pde, 0)  # the whole page table goes away
    for page in range(4):
        with pytest.raises(PageFault):
            mmu.translate(0x20_0000 + page * 0x1000)


def test_clearing_the_accessed_flag_makes_the_next_access_set_it_again(mem: GuestMemory) -> None:
    mmu, t, _, cpu = make(mem)
    t.map(0x2000, 0x8000)
    mmu.translate(0x2000, Access.WRITE)
    pte, value = t.entry(0x2000, 1)
    assert value & (m.PTE_A | m.PTE_D) == m.PTE_A | m.PTE_D
    cpu.write_u64(pte, value & ~(m.PTE_A | m.PTE_D))
    mmu.translate(0x2000, Access.WRITE)
    assert t.entry(0x2000, 1)[1] & (m.PTE_A | m.PTE_D) == m.PTE_A | m.PTE_D


def test_a_paging_mode_change_drops_every_context(mem: GuestMemory) -> None:
    mmu, t, reads, _ = make(mem)
    t.map(0x2000, 0x8000)
    mmu.translate(0x2000)
    cr0, cr4, efer = LONG
    mmu.set_mode(cr0 & ~m.CR0_WP, t.root, cr4, efer)  # WP decides supervisor write rights
    walked = reads.count
    mmu.translate(0x2000)
    assert reads.count == walked + 4
    assert mmu.context_count() == 1


def test_pae_contexts_follow_the_pdpte_registers(mem: GuestMemory) -> None:
    mmu, t, _, cpu = make(mem, PagingMode.PAE)
    t.map(0x2000, 0x8000)
    assert mmu.translate(0x2000) == 0x8000
    other = Tables(mem, PagingMode.PAE, pool=t.next_free + 0x10000)
    other.map(0x2000, 0x9000)
    pdpte = other.read(other.root)
    cpu.write_u64(t.root, pdpte)  # a PDPTE is not an entry the walk reads: nothing is dropped ...
    assert mmu.translate(0x2000) == 0x8000
    mmu.write_cr3(t.root)  # ... until CR3 is loaded again, which reloads the registers
    assert mmu.translate(0x2000) == 0x9000


def test_contexts_are_bounded(mem: GuestMemory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shadow, "MAX_CONTEXTS", 3)
    mmu, t, _, _ = make(mem)
    t.map(0x2000, 0x8000)
    for i in range(10):
        mmu.write_cr3(0x80_0000 + (i << 12))  # ten address spaces (empty ones)
        assert mmu.context_count() <= 3
    mmu.write_cr3(t.root)
    assert mmu.translate(0x2000) == 0x8000


def test_the_executor_sees_a_pte_rewritten_by_the_guest_without_invlpg(mem: GuestMemory) -> None:
    """Through the software backend's ops: host views, the rmap and the write check together."""
    t = Tables(mem, PagingMode.LONG4)
    for page in range(0, 0x20_0000, 0x1000):  # the tables themselves, identity mapped
        t.map(page, page)
    t.map(0x40_0000, 0x50_0000)
    mem.write_u64(0x50_0000, 0x1111)
    mem.write_u64(0x60_0000, 0x2222)
    cpu = make_cpu(64)
    cpu.cr3 = t.root
    ops = BackendOps(mem, cpu, {})
    ex = Executor(cpu, ops)
    assert ex.read(DS, 0x40_0000, 8) == 0x1111
    assert ex.read(DS, 0x40_0000, 8) == 0x1111  # through the host view now
    pte, value = t.entry(0x40_0000, 1)
    ex.write(DS, pte, 8, (value & ~0xFFF_FFFF_F000) | 0x60_0000)
    assert ex.read(DS, 0x40_0000, 8) == 0x2222
    ex.write(DS, 0x40_0000, 8, 0x3333)
    assert mem.read_u64(0x60_0000) == 0x3333
    assert isinstance(ops.mmu, ShadowMmu) and ops.mmu.zaps >= 1


def test_with_smp_a_cr3_load_sees_a_pte_another_vcpu_rewrote(mem: GuestMemory) -> None:
    """Another vCPU's page-table writes do not reach this MMU's rmap: with ``flush_on_cr3`` (every
    vCPU of an SMP software-backend VM) the context a CR3 load enters starts empty, as a TLB flush."""
    mmu, a, _, _ = make(mem)
    a.map(0x2000, 0x8000)
    assert mmu.translate(0x2000) == 0x8000
    a.map(0x2000, 0x9000)  # written from elsewhere: this MMU's rmap does not see it
    mmu.write_cr3(a.root)
    assert mmu.translate(0x2000) == 0x8000  # the uniprocessor rule: nothing to flush
    mmu.flush_on_cr3 = True
    mmu.write_cr3(a.root)
    assert mmu.translate(0x2000) == 0x9000


def test_the_software_backend_sets_flush_on_cr3_for_smp_only(mem: GuestMemory) -> None:
    from kvmlite.emulator.backend import EmuVm

    vm = EmuVm()
    vm.register_memory(mem)
    first = vm.create_vcpu(0)
    assert not first.ops.mmu.flush_on_cr3  # type: ignore[attr-defined]
    second = vm.create_vcpu(1)
    assert first.ops.mmu.flush_on_cr3 and second.ops.mmu.flush_on_cr3  # type: ignore[attr-defined]
