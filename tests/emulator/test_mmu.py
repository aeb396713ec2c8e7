"""The guest MMU against page tables built in real guest memory, one paging mode at a time.

(Longer than the project's ~600 lines: one test per behaviour, grouped as the file names them.)
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from kvmlite.emulator import mmu as m
from kvmlite.emulator.mmu import (
    Access,
    InvalidPdpte,
    Mmu,
    NonCanonicalAddress,
    PageFault,
    PagingMode,
)
from kvmlite.errors import EmulatorError
from kvmlite.memory import GuestMemory
from tests.emulator.pagetables import LAYOUT, TABLE_POOL, Reads, Tables

MIB = 1 << 20
GIB = 1 << 30
RAM_SIZE = 16 * MIB

P, RW, US, A, D, PS, G, NX = m.PTE_P, m.PTE_RW, m.PTE_US, m.PTE_A, m.PTE_D, m.PTE_PS, m.PTE_G, m.PTE_NX
ALL = P | RW | US

R = Access.READ
W = Access.WRITE
U = Access.USER
X = Access.FETCH

CR0_PG_WP = m.CR0_PG | m.CR0_WP | m.CR0_PE
LONG_CR4 = m.CR4_PAE
LONG_EFER = m.EFER_LME | m.EFER_LMA | m.EFER_NXE

@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    memory = GuestMemory([(0, RAM_SIZE)])
    yield memory
    memory.close()


def make(
    mem: GuestMemory,
    mode: PagingMode,
    *,
    wp: bool = True,
    nxe: bool = True,
    pse: bool = True,
    pge: bool = False,
    cr4_extra: int = 0,
    **kw: object,
) -> tuple[Mmu, Tables, Reads]:
    tables = Tables(mem, mode)
    reads = Reads(mem)
    mmu = Mmu(reads, mem.write, **kw)  # type: ignore[arg-type]
    cr0 = m.CR0_PE | m.CR0_PG | (m.CR0_WP if wp else 0)
    cr4 = cr4_extra | (m.CR4_PSE if pse else 0) | (m.CR4_PGE if pge else 0)
    efer = m.EFER_NXE if nxe else 0
    if mode is not PagingMode.BITS32:
        cr4 |= m.CR4_PAE
    if mode in (PagingMode.LONG4, PagingMode.LONG5):
        efer |= m.EFER_LME | m.EFER_LMA
    if mode is PagingMode.LONG5:
        cr4 |= m.CR4_LA57
    mmu.set_mode(cr0, tables.root, cr4, efer)
    assert mmu.mode is mode
    return mmu, tables, reads


def fault(mmu: Mmu, va: int, access: Access = R) -> PageFault:
    with pytest.raises(PageFault) as info:
        mmu.translate(va, access)
    return info.value


# ----------------------------------------------------------------- paging off
def test_paging_off_is_identity_truncated_to_32_bits(mem: GuestMemory) -> None:
    mmu = Mmu(mem.read, mem.write)
    assert mmu.mode is PagingMode.NONE
    assert mmu.translate(0x1234_5678) == 0x1234_5678
    assert mmu.translate(0x1_0000_1234, W | U | X) == 0x1234
    assert mmu.walk(0x1234) == []


def test_paging_off_keeps_64_bit_addresses_in_long_mode(mem: GuestMemory) -> None:
    mmu = Mmu(mem.read, mem.write)
    mmu.set_mode(m.CR0_PE, 0, 0, m.EFER_LMA)
    assert mmu.translate(0x1_0000_1234) == 0x1_0000_1234


# --------------------------------------------------------- translation, modes
@pytest.mark.parametrize("mode", list(LAYOUT))
def test_4k_page_translates_with_offset(mem: GuestMemory, mode: PagingMode) -> None:
    mmu, t, _ = make(mem, mode)
    t.map(0x40_3000, 0x7000)
    assert mmu.translate(0x40_3ABC) == 0x7ABC
    assert mmu.translate(0x40_3000, W | U) == 0x7000


@pytest.mark.parametrize("mode", list(LAYOUT))
def test_unmapped_page_faults_not_present(mem: GuestMemory, mode: PagingMode) -> None:
    mmu, t, _ = make(mem, mode)
    t.map(0x40_3000, 0x7000)
    exc = fault(mmu, 0x40_4010)
    assert exc.address == 0x40_4010
    assert exc.error_code == 0


def test_32bit_4m_page_with_pse(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.BITS32)
    t.map(0x8040_0000, 0x0080_0000, size=4 * MIB)
    assert mmu.translate(0x8052_3456) == 0x0092_3456
    assert [level for level, _, _ in mmu.walk(0x8052_3456)] == [2]


def test_32bit_ps_bit_is_ignored_without_cr4_pse(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.BITS32, pse=False)
    # A PDE with PS set then points at a page table, at the PDE's address bits.
    table = t.alloc()
    t.write(t.root + (0x8040_0000 >> 22) * 4, table | ALL | PS)
    t.write(table + 5 * 4, 0x0003_3000 | ALL)
    assert mmu.translate(0x8040_5010) == 0x0003_3010


def test_32bit_pse36_high_address_bits(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.BITS32)
    # bits 20:13 of a 4 MiB PDE are physical bits 39:32
    t.write(t.root, 0x00C0_0000 | (0x12 << 13) | ALL | PS)
    assert mmu.translate(0x1234) == 0x12_00C0_1234


def test_32bit_4m_page_reserved_bit_21_faults_rsvd(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.BITS32)
    t.write(t.root, 0x0040_0000 | (1 << 21) | ALL | PS)
    assert fault(mmu, 0x10).error_code == m.PFEC_P | m.PFEC_RSVD


def test_32bit_pse36_bits_above_maxphyaddr_are_reserved(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.BITS32, phys_bits=36)
    t.write(t.root, 0x0040_0000 | (0x10 << 13) | ALL | PS)  # physical bit 36
    assert fault(mmu, 0x10).error_code == m.PFEC_P | m.PFEC_RSVD


def test_32bit_linear_address_wraps_at_4g(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.BITS32)
    t.map(0x3000, 0x9000)
    assert mmu.translate(0x1_0000_3004) == 0x9004


def test_pae_2m_page(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.PAE)
    t.map(0xC020_0000, 0x0060_0000, size=2 * MIB)
    assert mmu.translate(0xC03F_FFFF) == 0x007F_FFFF
    assert [level for level, _, _ in mmu.walk(0xC020_0000)] == [3, 2]


def test_pae_pdpte_not_present_faults(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.PAE)
    t.write(t.root + 8, 0)
    mmu.write_cr3(t.root)
    exc = fault(mmu, 0x4000_0000, W)
    assert exc.error_code == m.PFEC_W


def test_pae_pdptes_are_registers_loaded_at_cr3_load(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.PAE)
    t.map(0x4000_1000, 0x5000)
    # Remove the PDPTE in memory: the CPU keeps using the register copy ...
    t.write(t.root + 8, 0)
    mmu.flush()
    assert mmu.translate(0x4000_1000) == 0x5000
    # ... until CR3 is loaded again.
    mmu.write_cr3(t.root)
    assert fault(mmu, 0x4000_1000).error_code == 0


def test_pae_invalid_pdpte_refuses_the_cr3_load(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.PAE)
    t.map(0x1000, 0x5000)
    bad_root = t.alloc()
    t.write(bad_root + 16, t.alloc() | P | RW)  # R/W is reserved in a PAE PDPTE
    with pytest.raises(InvalidPdpte) as info:
        mmu.set_mode(mmu.cr0, bad_root, mmu.cr4, mmu.efer)
    assert info.value.index == 2
    assert mmu.cr3 == t.root
    assert mmu.translate(0x1000) == 0x5000


def test_pae_high_ignored_bits_are_reserved_but_not_in_long_mode(mem: GuestMemory) -> None:
    pae, t, _ = make(mem, PagingMode.PAE)
    t.map(0x1000, 0x5000, flags=ALL | (1 << 55))
    assert fault(pae, 0x1000).error_code == m.PFEC_P | m.PFEC_RSVD
    long_mmu, lt, _ = make(mem, PagingMode.LONG4)
    lt.map(0x1000, 0x5000, flags=ALL | (1 << 55))
    assert long_mmu.translate(0x1000) == 0x5000


def test_long_mode_2m_and_1g_pages(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0xFFFF_8000_0020_0000, 0x0040_0000, size=2 * MIB)
    t.map(0x0000_7F00_4000_0000, 0x1_C000_0000, size=GIB)
    assert mmu.translate(0xFFFF_8000_0021_2345) == 0x0041_2345
    assert mmu.translate(0x0000_7F00_7654_3210) == 0x1_F654_3210
    assert [level for level, _, _ in mmu.walk(0x0000_7F00_4000_0000)] == [4, 3]


def test_long_mode_1g_page_without_gbpages_is_reserved(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4, gb_pages=False)
    t.map(0x4000_0000, 0x4000_0000, size=GIB)
    assert fault(mmu, 0x4000_0000).error_code == m.PFEC_P | m.PFEC_RSVD


def test_long_mode_1g_page_low_address_bits_are_reserved(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x4000_0000, 0x4000_0000 | (1 << 20), size=GIB)
    assert fault(mmu, 0x4000_0000).error_code == m.PFEC_P | m.PFEC_RSVD


def test_long_mode_ps_in_pml4e_is_reserved(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x1000, 0x5000)
    t.set_entry(0x1000, 4, t.entry(0x1000, 4)[1] | PS)
    exc = fault(mmu, 0x1000, W | U)
    assert exc.error_code == m.PFEC_P | m.PFEC_RSVD | m.PFEC_W | m.PFEC_U


def test_address_bits_above_maxphyaddr_are_reserved(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4, phys_bits=36)
    t.map(0x1000, 1 << 36)
    assert fault(mmu, 0x1000).error_code == m.PFEC_P | m.PFEC_RSVD


def test_non_canonical_address_is_not_a_page_fault(mem: GuestMemory) -> None:
    mmu, _, _ = make(mem, PagingMode.LONG4)
    with pytest.raises(NonCanonicalAddress) as info:
        mmu.translate(0x0000_8000_0000_0000)
    assert info.value.address == 0x0000_8000_0000_0000


def test_five_level_paging(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG5)
    va = 0x00AB_CDEF_1234_5000
    t.map(va, 0x6000)
    assert mmu.translate(va + 0x42) == 0x6042
    assert [level for level, _, _ in mmu.walk(va)] == [5, 4, 3, 2, 1]


def test_long_mode_without_pae_is_rejected(mem: GuestMemory) -> None:
    mmu = Mmu(mem.read, mem.write)
    with pytest.raises(EmulatorError):
        mmu.set_mode(m.CR0_PE | m.CR0_PG, 0x1000, 0, m.EFER_LMA)


def test_page_table_outside_ram_is_an_emulator_error_not_a_fault(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.write(t.root, 0x4000_0000 | ALL)  # PML4E pointing past the 16 MiB of RAM
    with pytest.raises(EmulatorError) as info:
        mmu.translate(0x1000)
    assert not isinstance(info.value, PageFault)
    assert "0x40000000" in str(info.value)


def test_invalid_phys_bits_is_refused(mem: GuestMemory) -> None:
    with pytest.raises(EmulatorError):
        Mmu(mem.read, mem.write, phys_bits=60)


# --------------------------------------------------------- rights and faults
@pytest.mark.parametrize(
    ("flags", "access", "code"),
    [
        (P | RW, U, m.PFEC_P | m.PFEC_U),  # user read of a supervisor page
        (P | US, U | W, m.PFEC_P | m.PFEC_U | m.PFEC_W),  # user write to a read-only page
        (P | US, W, m.PFEC_P | m.PFEC_W),  # supervisor write, read-only, CR0.WP=1
        (P | RW | US | NX, X, m.PFEC_P | m.PFEC_ID),  # fetch from a no-execute page
        (P | RW | US | NX, U | X, m.PFEC_P | m.PFEC_U | m.PFEC_ID),
    ],
)
def test_protection_faults_and_error_codes(mem: GuestMemory, flags: int, access: Access, code: int) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x2000, 0x8000, flags=flags)
    exc = fault(mmu, 0x2008, access)
    assert (exc.address, exc.error_code) == (0x2008, code)


def test_restrictive_upper_level_wins(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x2000, 0x8000, flags=ALL, table_flags=P | US)  # directory read-only
    assert mmu.translate(0x2000, U) == 0x8000
    assert fault(mmu, 0x2000, U | W).error_code == m.PFEC_P | m.PFEC_U | m.PFEC_W


def test_supervisor_directory_hides_a_user_leaf_from_user_mode(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.PAE)
    t.map(0x2000, 0x8000, flags=ALL, table_flags=P | RW)
    assert mmu.translate(0x2000, W) == 0x8000
    assert fault(mmu, 0x2000, U).error_code == m.PFEC_P | m.PFEC_U


def test_nx_in_an_upper_level_forbids_fetch(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x2000, 0x8000, flags=ALL, table_flags=ALL | NX)
    assert mmu.translate(0x2000, U) == 0x8000
    assert fault(mmu, 0x2000, U | X).error_code == m.PFEC_P | m.PFEC_U | m.PFEC_ID


def test_supervisor_may_write_read_only_pages_when_wp_clear(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4, wp=False)
    t.map(0x2000, 0x8000, flags=P)
    t.map(0x3000, 0x9000, flags=P | US)
    assert mmu.translate(0x2000, W) == 0x8000
    assert mmu.translate(0x3000, W) == 0x9000
    # ... but a user write still faults
    assert fault(mmu, 0x3000, U | W).error_code == m.PFEC_P | m.PFEC_U | m.PFEC_W


def test_setting_wp_flushes_cached_write_permission(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4, wp=False)
    t.map(0x2000, 0x8000, flags=P)
    assert mmu.translate(0x2000, W) == 0x8000
    mmu.set_mode(mmu.cr0 | m.CR0_WP, mmu.cr3, mmu.cr4, mmu.efer)
    assert fault(mmu, 0x2000, W).error_code == m.PFEC_P | m.PFEC_W


def test_nx_bit_without_efer_nxe_is_reserved(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4, nxe=False)
    t.map(0x2000, 0x8000, flags=ALL | NX)
    assert fault(mmu, 0x2000).error_code == m.PFEC_P | m.PFEC_RSVD


def test_fetch_fault_sets_id_bit_only_with_nxe_or_smep(mem: GuestMemory) -> None:
    mmu, _, _ = make(mem, PagingMode.LONG4, nxe=False)
    assert fault(mmu, 0x5000, X).error_code == 0
    mmu.set_mode(mmu.cr0, mmu.cr3, mmu.cr4, mmu.efer | m.EFER_NXE)
    assert fault(mmu, 0x5000, X).error_code == m.PFEC_ID
    legacy, _, _ = make(mem, PagingMode.BITS32)  # 32-bit paging has no NX
    assert fault(legacy, 0x5000, X).error_code == 0
    smep, _, _ = make(mem, PagingMode.BITS32, cr4_extra=m.CR4_SMEP)
    assert fault(smep, 0x5000, X).error_code == m.PFEC_ID


def test_nx_ignored_for_data_and_for_32bit_paging(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x2000, 0x8000, flags=ALL | NX)
    assert mmu.translate(0x2000, U | W) == 0x8000
    legacy, lt, _ = make(mem, PagingMode.BITS32)
    lt.map(0x2000, 0x8000)
    assert legacy.translate(0x2000, U | X) == 0x8000


def test_smep_blocks_supervisor_fetch_from_user_pages(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4, cr4_extra=m.CR4_SMEP)
    t.map(0x2000, 0x8000, flags=ALL)
    t.map(0x3000, 0x9000, flags=P | RW)
    assert fault(mmu, 0x2000, X).error_code == m.PFEC_P | m.PFEC_ID
    assert mmu.translate(0x2000, U | X) == 0x8000
    assert mmu.translate(0x2000, R) == 0x8000  # SMEP is about fetches only
    assert mmu.translate(0x3000, X) == 0x9000


def test_smap_blocks_supervisor_data_access_unless_ac(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4, cr4_extra=m.CR4_SMAP)
    t.map(0x2000, 0x8000, flags=ALL)
    assert fault(mmu, 0x2000, R).error_code == m.PFEC_P
    assert fault(mmu, 0x2000, W).error_code == m.PFEC_P | m.PFEC_W
    assert mmu.translate(0x2000, W | Access.AC) == 0x8000
    assert mmu.translate(0x2000, U | W) == 0x8000
    assert mmu.translate(0x2000, X) == 0x8000  # SMAP is about data only


def test_page_fault_message_names_address_bits_and_reason(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x2000, 0x8000, flags=P | RW)
    text = str(fault(mmu, 0x2010, U | W))
    assert "0x2010" in text and "P W U" in text and "supervisor page" in text


def test_invalid_access_kind_is_an_error(mem: GuestMemory) -> None:
    mmu, _, _ = make(mem, PagingMode.LONG4)
    with pytest.raises(EmulatorError):
        mmu.translate(0x1000, 0x40)  # type: ignore[arg-type]


# ----------------------------------------------------- accessed / dirty flags
def test_read_sets_accessed_in_every_level_but_not_dirty(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x2000, 0x8000)
    mmu.translate(0x2000)
    for level in (4, 3, 2, 1):
        assert t.entry(0x2000, level)[1] & A, level
    assert not t.entry(0x2000, 1)[1] & D


def test_write_sets_dirty_only_in_the_leaf(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x2000, 0x8000)
    mmu.translate(0x2000, W)
    assert t.entry(0x2000, 1)[1] & (A | D) == A | D
    assert not t.entry(0x2000, 2)[1] & D


def test_write_after_cached_read_still_sets_dirty(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x2000, 0x8000)
    mmu.translate(0x2000)
    assert not t.entry(0x2000, 1)[1] & D
    mmu.translate(0x2000, W)
    assert t.entry(0x2000, 1)[1] & D


def test_large_page_dirty_lands_in_the_pde(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.PAE)
    t.map(0x0020_0000, 0x0040_0000, size=2 * MIB)
    pdpte_before = mem.read_u64(t.root)
    mmu.translate(0x0020_1000, W)
    assert t.entry(0x0020_0000, 2)[1] & (A | D) == A | D
    assert mem.read_u64(t.root) == pdpte_before  # the CPU never writes PAE PDPTEs


def test_32bit_entries_get_flags_without_touching_neighbours(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.BITS32)
    t.map(0x2000, 0x8000)
    t.map(0x3000, 0x9000)
    mmu.translate(0x2000, W)
    assert t.entry(0x2000, 1)[1] == 0x8000 | ALL | A | D
    assert t.entry(0x3000, 1)[1] == 0x9000 | ALL


def test_faulting_access_sets_no_flags(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x2000, 0x8000, flags=P | RW)
    fault(mmu, 0x2000, U)
    assert not any(t.entry(0x2000, level)[1] & A for level in (4, 3, 2, 1))


def test_walk_and_debug_translate_have_no_side_effects(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x2000, 0x8000, flags=P)
    chain = mmu.walk(0x2000)
    assert [(level, addr) for level, addr, _ in chain] == [
        (lv, t.entry(0x2000, lv)[0]) for lv in (4, 3, 2, 1)
    ]
    assert chain[-1][2] == 0x8000 | P
    assert mmu.debug_translate(0x2123) == 0x8123  # supervisor-only page is still readable for gdb
    assert mmu.debug_translate(0x9000) is None
    assert mmu.debug_translate(0x8000_0000_0000) is None
    assert not t.entry(0x2000, 1)[1] & A
    assert mmu.tlb_size() == 0


def test_walk_stops_at_the_first_missing_entry(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x2000, 0x8000)
    chain = mmu.walk(0x40_0000_0000)  # different PDPT slot, nothing there
    assert [level for level, _, _ in chain] == [4, 3]
    assert chain[-1][2] == 0


# ----------------------------------------------------------------------- TLB
def test_tlb_hit_reads_no_guest_memory(mem: GuestMemory) -> None:
    mmu, t, reads = make(mem, PagingMode.LONG4)
    t.map(0x2000, 0x8000)
    mmu.translate(0x2000, W)
    before = reads.count
    for offset in range(0, 4096, 512):
        assert mmu.translate(0x2000 + offset, W) == 0x8000 + offset
    assert reads.count == before


def test_stale_translation_until_invlpg(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x2000, 0x8000)
    t.map(0x3000, 0x9000)
    assert mmu.translate(0x2000) == 0x8000
    assert mmu.translate(0x3000) == 0x9000
    t.map(0x2000, 0xA000)
    t.map(0x3000, 0xB000)
    assert mmu.translate(0x2000) == 0x8000  # architecturally stale
    mmu.invlpg(0x2FFF)
    assert mmu.translate(0x2000) == 0xA000
    assert mmu.translate(0x3000) == 0x9000  # only one page was invalidated


def test_removed_mapping_stays_usable_until_cr3_reload(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.BITS32)
    t.map(0x2000, 0x8000)
    assert mmu.translate(0x2000) == 0x8000
    t.set_entry(0x2000, 1, 0)
    assert mmu.translate(0x2000) == 0x8000
    mmu.write_cr3(t.root)  # same value: a MOV to CR3 flushes anyway
    assert fault(mmu, 0x2000).error_code == 0


def test_set_mode_with_new_cr3_flushes(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x2000, 0x8000)
    mmu.translate(0x2000)
    other = Tables(mem, PagingMode.LONG4, pool=t.next_free)
    other.map(0x2000, 0xC000)
    mmu.set_mode(mmu.cr0, other.root, mmu.cr4, mmu.efer)
    assert mmu.translate(0x2000) == 0xC000


def test_set_mode_with_same_registers_keeps_the_tlb(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x2000, 0x8000)
    mmu.translate(0x2000)
    mmu.set_mode(mmu.cr0, mmu.cr3, mmu.cr4, mmu.efer)
    assert mmu.tlb_size() == 1


def test_global_pages_survive_cr3_write_only_with_pge(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4, pge=True)
    t.map(0x2000, 0x8000, flags=ALL | G)
    t.map(0x3000, 0x9000, flags=ALL)
    mmu.translate(0x2000)
    mmu.translate(0x3000)
    t.set_entry(0x2000, 1, 0)
    t.set_entry(0x3000, 1, 0)
    mmu.write_cr3(t.root)
    assert mmu.translate(0x2000) == 0x8000  # global: kept
    assert fault(mmu, 0x3000).error_code == 0
    mmu.flush(keep_global=True)
    assert mmu.translate(0x2000) == 0x8000
    mmu.set_mode(mmu.cr0, mmu.cr3, mmu.cr4 & ~m.CR4_PGE, mmu.efer)  # toggling PGE flushes all
    assert fault(mmu, 0x2000).error_code == 0


def test_g_bit_is_not_global_without_pge(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x2000, 0x8000, flags=ALL | G)
    mmu.translate(0x2000)
    t.set_entry(0x2000, 1, 0)
    mmu.write_cr3(t.root)
    assert fault(mmu, 0x2000).error_code == 0
    t.map(0x2000, 0x8000, flags=ALL | G)
    mmu.translate(0x2000)
    mmu.flush(keep_global=True)
    assert mmu.tlb_size() == 0


def test_full_flush_drops_global_pages(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4, pge=True)
    t.map(0x2000, 0x8000, flags=ALL | G)
    mmu.translate(0x2000)
    mmu.flush()
    assert mmu.tlb_size() == 0


def test_invlpg_drops_a_whole_large_page(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x0020_0000, 0x0040_0000, size=2 * MIB)
    t.map(0x4000_0000, 0x8000_0000, size=GIB)
    assert mmu.translate(0x0020_0000) == 0x0040_0000
    assert mmu.translate(0x0030_0000) == 0x0050_0000
    assert mmu.translate(0x4000_0000) == 0x8000_0000
    t.map(0x0020_0000, 0x0080_0000, size=2 * MIB)
    t.map(0x4000_0000, 0xC000_0000, size=GIB)
    mmu.invlpg(0x0035_5000)  # any address inside the large page
    assert mmu.translate(0x0030_0000) == 0x0090_0000
    assert mmu.translate(0x0020_0000) == 0x0080_0000
    assert mmu.translate(0x4000_0000) == 0x8000_0000  # the 1 GiB page is still cached
    mmu.invlpg(0x7FFF_FFFF)
    assert mmu.translate(0x4000_0000) == 0xC000_0000


def test_large_page_bookkeeping_is_bounded(mem: GuestMemory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(m, "TLB_MAX_ENTRIES", 4)
    mmu, t, _ = make(mem, PagingMode.LONG4)
    for i in range(10):
        t.map(i * 2 * MIB, i * 2 * MIB, size=2 * MIB)
        assert mmu.translate(i * 2 * MIB + 8) == i * 2 * MIB + 8
    assert mmu._large_count <= 4


def test_invlpg_of_a_global_page_removes_it(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4, pge=True)
    t.map(0x2000, 0x8000, flags=ALL | G)
    mmu.translate(0x2000)
    t.map(0x2000, 0x9000, flags=ALL | G)
    mmu.invlpg(0x2000)
    assert mmu.translate(0x2000) == 0x9000


def test_paging_mode_change_flushes(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.BITS32)
    t.map(0x2000, 0x8000)
    assert mmu.translate(0x2000) == 0x8000
    mmu.set_mode(m.CR0_PE, mmu.cr3, mmu.cr4, mmu.efer)  # paging off
    assert mmu.translate(0x2000) == 0x2000


def test_pcid_noflush_keeps_entries_for_the_same_pcid_only(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4, cr4_extra=m.CR4_PCIDE)
    t.map(0x2000, 0x8000)
    mmu.translate(0x2000)
    t.set_entry(0x2000, 1, 0)
    mmu.write_cr3(t.root | m.CR3_NOFLUSH)
    assert mmu.cr3 == t.root
    assert mmu.translate(0x2000) == 0x8000
    mmu.write_cr3(t.root | 1 | m.CR3_NOFLUSH)  # another PCID: our untagged TLB must flush
    assert fault(mmu, 0x2000).error_code == 0


def test_tlb_is_bounded(mem: GuestMemory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(m, "TLB_MAX_ENTRIES", 8)
    mmu = Mmu(mem.read, mem.write)
    for page in range(20):
        mmu.translate(page << 12)
    assert 0 < mmu.tlb_size() <= 8


# ----------------------------------------------------------- translate_range
def test_translate_range_splits_at_page_boundaries(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x2000, 0x8000)
    t.map(0x3000, 0x5000)
    t.map(0x4000, 0x6000)
    assert mmu.translate_range(0x2FFE, 4, W) == [(0x8FFE, 2), (0x5000, 2)]
    # physically contiguous pieces are merged
    assert mmu.translate_range(0x3FF0, 0x20) == [(0x5FF0, 0x20)]
    assert mmu.translate_range(0x2000, 0) == []


def test_translate_range_faults_on_second_page_at_its_start(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.LONG4)
    t.map(0x2000, 0x8000)
    with pytest.raises(PageFault) as info:
        mmu.translate_range(0x2FFC, 8, W)
    assert info.value.address == 0x3000
    assert info.value.error_code == m.PFEC_W


def test_translate_range_wraps_at_4g_outside_long_mode(mem: GuestMemory) -> None:
    mmu, t, _ = make(mem, PagingMode.BITS32)
    t.map(0xFFFF_F000, 0x8000)
    t.map(0x0000_0000, 0x3000)
    assert mmu.translate_range(0xFFFF_FFFE, 4) == [(0x8FFE, 2), (0x3000, 2)]


def test_translate_range_rejects_negative_length(mem: GuestMemory) -> None:
    mmu = Mmu(mem.read, mem.write)
    with pytest.raises(EmulatorError):
        mmu.translate_range(0, -1)


# ------------------------------------------------ the real thing: KVM_TRANSLATE
KVM_RAM = 64 * MIB
KVM_QUERIES = 600


def _kvm_cpu_facts(cpuid: list) -> tuple[int, bool]:  # type: ignore[type-arg]
    """(MAXPHYADDR, 1 GiB pages) of the CPUID we give the vCPU, so both walkers agree on reserved bits."""
    phys_bits, gb_pages = 36, False
    for e in cpuid:
        if e.function == 0x8000_0008:
            phys_bits = e.eax & 0xFF
        if e.function == 0x8000_0001:
            gb_pages = bool(e.edx >> 26 & 1)
    return phys_bits, gb_pages


def _random_tables(
    rng: random.Random, mem: GuestMemory, mode: PagingMode, gb_pages: bool, phys_bits: int
) -> tuple[Tables, list[int]]:
    """Random mappings (sizes, rights, A/D, G, NX), then some entries made absent or reserved."""
    t = Tables(mem, mode)
    sizes = {
        PagingMode.BITS32: [m.PAGE_SIZE, 4 * MIB],
        PagingMode.PAE: [m.PAGE_SIZE, 2 * MIB],
        PagingMode.LONG4: [m.PAGE_SIZE, 2 * MIB] + ([GIB] if gb_pages else []),
    }[mode]
    top = 1 << (32 if mode is not PagingMode.LONG4 else 47)
    vas = []
    for _ in range(60):
        size = rng.choice(sizes)
        va = rng.randrange(0, top, size)
        if mode is PagingMode.LONG4 and rng.random() < 0.5:
            va |= 0xFFFF_8000_0000_0000
        pa_limit = 1 << (32 if mode is PagingMode.BITS32 else phys_bits)
        pa = rng.randrange(0, pa_limit, size)
        flags = P | rng.choice((0, RW)) | rng.choice((0, US)) | rng.choice((0, A, A | D)) | rng.choice((0, G))
        if mode is PagingMode.BITS32 and size > m.PAGE_SIZE:
            # PSE-36: physical bits 35:32 in PDE bits 16:13 (KVM caps PSE-36 at 36 bits)
            flags |= rng.randrange(16) << 13
            pa &= 0xFFC0_0000
        elif mode is not PagingMode.BITS32 and rng.random() < 0.2:
            flags |= NX
        try:
            t.map(va, pa, flags=flags, size=size, table_flags=P | RW | US)
        except AssertionError:
            continue
        vas.append(va)
    # Spoil some entries on the way: clear P or set a bit both walkers must call reserved.
    rsvd_bits = {
        PagingMode.BITS32: [],
        PagingMode.PAE: [phys_bits, 62],
        PagingMode.LONG4: [phys_bits, 51],
    }[mode]
    for va in rng.sample(vas, len(vas) // 4):
        level = rng.randrange(1, len(t.shifts) + 1)
        if mode is PagingMode.PAE and level == 3:
            continue  # PDPTEs are checked at CR3 load instead
        try:
            addr, value = t.entry(va, level)
        except AssertionError:
            continue
        if not value & P:
            continue
        if rsvd_bits and rng.random() < 0.5:
            t.write(addr, value | 1 << rng.choice(rsvd_bits))
        elif mode is PagingMode.BITS32 and level == 2 and value & PS:
            t.write(addr, value | 1 << 21)
        else:
            t.write(addr, value & ~P)
    return t, vas


@pytest.mark.kvm
@pytest.mark.parametrize("mode", [PagingMode.BITS32, PagingMode.PAE, PagingMode.LONG4])
@pytest.mark.parametrize("nxe", [False, True])
def test_translations_agree_with_kvm_translate(mode: PagingMode, nxe: bool) -> None:
    """KVM's own guest page walker (KVM_TRANSLATE: a supervisor read) is the reference.

    Skipped for modes the host's KVM cannot page in (kvm-pvm keeps CR0.PG clear
    outside long mode), which is where the emulator's walker is the only one.
    """
    from tests.conftest import KVM_OK, KVM_REASON

    if not KVM_OK:
        pytest.skip(f"needs a usable /dev/kvm: {KVM_REASON}")
    from kvmlite.kvm.system import Kvm

    rng = random.Random(f"{mode.name}-{nxe}")
    mem = GuestMemory([(0, KVM_RAM)])
    kvm = Kvm()
    vm = kvm.create_vm()
    try:
        vm.register_memory(mem)
        vcpu = vm.create_vcpu(0)
        cpuid = kvm.supported_cpuid()
        vcpu.set_cpuid(cpuid)
        phys_bits, gb_pages = _kvm_cpu_facts(cpuid)
        t, vas = _random_tables(rng, mem, mode, gb_pages, phys_bits)
        cr0 = m.CR0_PE | m.CR0_PG | m.CR0_WP
        cr4 = m.CR4_PSE | (m.CR4_PAE if mode is not PagingMode.BITS32 else 0)
        efer = m.EFER_NXE if nxe else 0
        if mode is PagingMode.LONG4:
            efer |= m.EFER_LME | m.EFER_LMA
        sregs = vcpu.get_sregs()
        sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = cr0, t.root, cr4, efer
        sregs.cs.l = 1 if mode is PagingMode.LONG4 else 0
        sregs.cs.db = 0 if mode is PagingMode.LONG4 else 1
        vcpu.set_sregs(sregs)
        if not vcpu.get_sregs().cr0 & m.CR0_PG:
            # kvm-pvm (this project's development host) pages only in long mode.
            pytest.skip(f"this KVM refuses CR0.PG in {mode.name} paging")
        # Our walker works on a copy of the tables, so the Accessed flags each sets can be compared.
        ours_mem = GuestMemory([(0, KVM_RAM)])
        pool = t.next_free - TABLE_POOL
        mem_before = mem.read(TABLE_POOL, pool)
        ours_mem.write(TABLE_POOL, mem_before)
        mmu = Mmu(ours_mem.read, ours_mem.write, phys_bits=phys_bits, gb_pages=gb_pages)
        mmu.set_mode(cr0, t.root, cr4, efer)
        queries = [va + rng.randrange(m.PAGE_SIZE) for va in vas]
        queries += [rng.randrange(1 << 32) for _ in range(KVM_QUERIES - len(queries))]
        checked = agreed_valid = 0
        for va in queries:
            tr = vcpu.translate(va)
            try:
                ours: int | None = mmu.translate(va)
            except PageFault:
                ours = None
            theirs = tr.physical_address if tr.valid else None
            assert ours == theirs, f"{mode.name} va {va:#x}: ours {ours}, KVM {theirs}: {mmu.walk(va)}"
            checked += 1
            agreed_valid += ours is not None
        assert checked == len(queries) and agreed_valid > len(vas) // 3
        theirs_tables = mem.read(TABLE_POOL, pool)
        ours_tables = ours_mem.read(TABLE_POOL, pool)
        differ = [hex(TABLE_POOL + i) for i in range(pool) if theirs_tables[i] != ours_tables[i]]
        assert not differ, f"Accessed flags differ from KVM's at {differ[:8]}"
        assert ours_tables != mem_before, "the walks set no Accessed flag at all"
        ours_mem.close()
    finally:
        vm.close()
        kvm.close()
        mem.close()
