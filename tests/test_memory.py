import ctypes

import pytest

from kvmlite.errors import GuestMemoryError
from kvmlite.memory import GuestAddress, GuestMemory


def test_write_then_read_round_trips():
    mem = GuestMemory([(0, 0x10000)])
    mem.write(0x1234, b"hello")
    assert mem.read(0x1234, 5) == b"hello"


def test_access_crossing_adjacent_regions_is_split():
    mem = GuestMemory([(0, 0x1000), (0x1000, 0x1000)])
    mem.write(0xFFE, b"abcd")
    assert mem.regions[0].view[0xFFE:0x1000].tobytes() == b"ab"
    assert mem.regions[1].view[0:2].tobytes() == b"cd"
    assert mem.read(0xFFE, 4) == b"abcd"


def test_access_into_a_gap_names_the_first_bad_address():
    mem = GuestMemory([(0, 0x1000), (0x3000, 0x1000)])
    with pytest.raises(GuestMemoryError, match="touches 0x1000"):
        mem.read(0xFF0, 0x20)
    with pytest.raises(GuestMemoryError, match="outside guest RAM"):
        mem.write(0x5000, b"x")


def test_failed_write_leaves_memory_untouched():
    mem = GuestMemory([(0, 0x1000)])
    with pytest.raises(GuestMemoryError):
        mem.write(0xFFC, b"12345678")
    assert mem.read(0xFFC, 4) == bytes(4)


def test_typed_integer_and_struct_access():
    class Pair(ctypes.Structure):
        _fields_ = [("a", ctypes.c_uint32), ("b", ctypes.c_uint16)]

    mem = GuestMemory([(0, 0x2000)])
    mem.write_u64(0x10, 0x1122334455667788)
    assert mem.read_u32(0x10) == 0x55667788
    assert mem.read_u16(0x16) == 0x1122
    mem.write_obj(0x100, Pair(7, 9))
    got = mem.read_obj(0x100, Pair)
    assert (got.a, got.b) == (7, 9)


def test_overlapping_regions_are_refused():
    mem = GuestMemory([(0x1000, 0x2000)])
    with pytest.raises(GuestMemoryError, match="overlaps"):
        mem.add_region(0x2000, 0x1000)
    with pytest.raises(GuestMemoryError, match="page aligned"):
        mem.add_region(0x8000, 100)


def test_pc_layout_splits_around_the_pci_hole():
    mem = GuestMemory.for_pc(4 << 30)
    assert [(int(r.start), r.size) for r in mem] == [(0, 0xC000_0000), (1 << 32, 0x4000_0000)]
    assert not mem.is_ram(0xD000_0000)
    assert mem.is_ram((1 << 32) + 5)


def test_view_is_zero_copy_and_refuses_crossing():
    mem = GuestMemory([(0, 0x1000), (0x1000, 0x1000)])
    v = mem.view(0x10, 4)
    v[:] = b"wxyz"
    assert mem.read(0x10, 4) == b"wxyz"
    with pytest.raises(GuestMemoryError, match="crosses"):
        mem.view(0xFFE, 4)


def test_guest_address_stays_typed_and_prints_hex():
    a = GuestAddress(0x1000) + 0x10
    assert isinstance(a, GuestAddress)
    assert repr(a) == "GuestAddress(0x1010)"
    assert GuestAddress(0x1001).align_up(0x1000) == 0x2000


def test_read_cstr_stops_at_nul_and_limit():
    mem = GuestMemory([(0, 0x1000)])
    mem.write(0, b"abc\0def")
    assert mem.read_cstr(0) == b"abc"
    assert mem.read_cstr(4, limit=2) == b"de"
