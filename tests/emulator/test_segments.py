"""Segment descriptors, segment-register loads and per-access checks, against hand-built tables."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kvmlite.emulator import segments as sg
from kvmlite.emulator.mmu import Access
from kvmlite.emulator.segments import (
    Descriptor,
    Gate,
    Segment,
    SegmentFault,
    SegReg,
    TableRegister,
    descriptor_address,
    linear64,
    load_segment,
    read_descriptor,
    read_idt_gate,
)
from kvmlite.errors import EmulatorError
from kvmlite.x86 import SysType, Vector

FLAT_CODE32 = 0x00CF_9A00_0000_FFFF  # the classic flat ring-0 code descriptor
FLAT_DATA32 = 0x00CF_9200_0000_FFFF
CODE64 = 0x00AF_9B00_0000_FFFF
GDT_BASE = 0x1000
LDT_BASE = 0x2000

R, W, X = Access.READ, Access.WRITE, Access.FETCH


class Memory:
    """A flat linear address space in a bytearray, recording writes."""

    def __init__(self, size: int = 0x4000) -> None:
        self.buf = bytearray(size)
        self.writes: list[tuple[int, bytes]] = []

    def read(self, addr: int, size: int) -> bytes:
        return bytes(self.buf[addr : addr + size])

    def write(self, addr: int, data: bytes) -> None:
        self.writes.append((addr, bytes(data)))
        self.buf[addr : addr + len(data)] = data

    def put(self, addr: int, raw: bytes | int) -> None:
        if isinstance(raw, int):
            raw = raw.to_bytes(8, "little")
        self.buf[addr : addr + len(raw)] = raw


def desc(type_: int, dpl: int = 0, *, present: bool = True, s: bool = True, limit: int = 0xF_FFFF) -> bytes:
    return Descriptor(0x10_0000, limit, type_, s, dpl, present, db=True, g=True).to_bytes()


def fault_of(fn: object, *args: object, **kw: object) -> SegmentFault:
    with pytest.raises(SegmentFault) as info:
        fn(*args, **kw)  # type: ignore[operator]
    return info.value


# ----------------------------------------------------------------- parsing
def test_flat_code_descriptor_parses() -> None:
    d = Descriptor.from_bytes(FLAT_CODE32.to_bytes(8, "little"))
    assert (d.base, d.limit, d.type, d.dpl) == (0, 0xF_FFFF, 0xA, 0)
    assert d.s and d.present and d.db and d.g and not d.l
    assert d.is_code and not d.is_data and not d.is_system
    assert d.byte_limit == 0xFFFF_FFFF


def test_64bit_code_descriptor_has_l_not_d() -> None:
    d = Descriptor.from_bytes(CODE64.to_bytes(8, "little"))
    assert d.l and not d.db and d.type == 0xB


def test_scattered_base_and_limit_fields_reassemble() -> None:
    raw = Descriptor(0x89AB_CDEF, 0x5_4321, 0x3, True, 3, True, avl=True).to_bytes()
    assert raw == bytes((0x21, 0x43, 0xEF, 0xCD, 0xAB, 0xF3, 0x15, 0x89))
    d = Descriptor.from_bytes(raw)
    assert (d.base, d.limit, d.byte_limit, d.dpl, d.avl) == (0x89AB_CDEF, 0x5_4321, 0x5_4321, 3, True)


def test_wide_system_descriptor_carries_upper_base() -> None:
    tss = Descriptor(0xFFFF_8000_1234_5678, 0x67, SysType.TSS_AVAIL, False, 0, True)
    d = Descriptor.from_bytes(tss.to_bytes(wide=True))
    assert d == tss and d.is_system


def test_descriptor_of_wrong_length_is_refused() -> None:
    with pytest.raises(EmulatorError):
        Descriptor.from_bytes(bytes(7))
    with pytest.raises(EmulatorError):
        Descriptor(0, 0x10_0000, 0, True, 0, True).to_bytes()


def test_64bit_interrupt_gate_parses_offset_and_ist() -> None:
    raw = bytearray(16)
    raw[0:2] = (0x5678).to_bytes(2, "little")
    raw[2:4] = (0x10).to_bytes(2, "little")
    raw[4] = 2  # IST 2
    raw[5] = 0x80 | (3 << 5) | SysType.INT_GATE
    raw[6:8] = (0x1234).to_bytes(2, "little")
    raw[8:12] = (0xFFFF_FFFF).to_bytes(4, "little")
    g = Gate.from_bytes(bytes(raw))
    assert (g.selector, g.offset, g.type, g.dpl, g.ist) == (
        0x10,
        0xFFFF_FFFF_1234_5678,
        SysType.INT_GATE,
        3,
        2,
    )
    assert g.present


def test_call_gate_param_count_and_16bit_gate_offset() -> None:
    raw = bytearray(8)
    raw[0:2] = (0x5678).to_bytes(2, "little")
    raw[2:4] = (0x08).to_bytes(2, "little")
    raw[4] = 5
    raw[5] = 0x80 | SysType.CALL_GATE
    raw[6:8] = (0x1234).to_bytes(2, "little")
    call = Gate.from_bytes(bytes(raw))
    assert (call.offset, call.param_count) == (0x1234_5678, 5)
    raw[5] = 0x80 | SysType.CALL_GATE16
    assert Gate.from_bytes(bytes(raw)).offset == 0x5678


def test_segment_descriptor_is_not_a_gate() -> None:
    with pytest.raises(EmulatorError):
        Gate.from_bytes(FLAT_CODE32.to_bytes(8, "little"))


# ----------------------------------------------------------- access checks
def test_linear_adds_base_and_wraps_at_4g() -> None:
    seg = Segment(0x10, 0xFFFF_F000, 0xFFFF_FFFF, sg.TYPE_DATA_RW_ACCESSED, db=True, g=True)
    assert seg.linear(0x10, 4) == 0xFFFF_F010
    assert seg.linear(0x2000, 4, W) == 0x1000


def test_expand_up_limit_covers_every_byte() -> None:
    seg = Segment(0x10, 0x1000, 0xFF, sg.TYPE_DATA_RW_ACCESSED)
    assert seg.linear(0xFC, 4) == 0x10FC
    exc = fault_of(seg.linear, 0xFD, 4)
    assert (exc.vector, exc.error_code) == (Vector.GP, 0)


def test_stack_access_beyond_limit_is_ss_fault() -> None:
    seg = Segment(0x10, 0, 0xFF, sg.TYPE_DATA_RW_ACCESSED)
    assert fault_of(seg.linear, 0x100, 2, W, stack=True).vector == Vector.SS


@pytest.mark.parametrize(
    ("type_", "access"),
    [
        (sg.TYPE_ACCESSED, W),  # read-only data
        (sg.TYPE_CODE_RX_ACCESSED, W),  # code is never writable
        (sg.TYPE_CODE | sg.TYPE_ACCESSED, R),  # execute-only code
        (sg.TYPE_DATA_RW_ACCESSED, X),  # data is never executable
    ],
)
def test_type_forbids_access(type_: int, access: Access) -> None:
    seg = Segment(0x10, 0, 0xFFFF, type_)
    exc = fault_of(seg.linear, 0, 1, access)
    assert (exc.vector, exc.error_code) == (Vector.GP, 0)


def test_type_allows_access() -> None:
    code = Segment(0x8, 0, 0xFFFF, sg.TYPE_CODE_RX_ACCESSED)
    assert code.linear(0x10, 1, X) == 0x10
    assert code.linear(0x10, 4, R) == 0x10
    assert Segment(0x10, 0, 0xFFFF, sg.TYPE_ACCESSED).linear(0, 2) == 0
    # USER and AC bits make no difference to segmentation
    assert Segment(0x10, 0, 0xFFFF).linear(0, 1, W | Access.USER | Access.AC) == 0


def test_expand_down_segment_valid_above_limit() -> None:
    seg = Segment(0x10, 0, 0x0FFF, sg.TYPE_DATA_RW_ACCESSED | sg.TYPE_EXPAND_DOWN)
    assert seg.linear(0x1000, 2) == 0x1000
    assert seg.linear(0xFFFE, 2) == 0xFFFE
    fault_of(seg.linear, 0x0FFF, 1)
    fault_of(seg.linear, 0xFFFF, 2)  # runs past the 16-bit upper bound
    big = Segment(0x10, 0, 0x0FFF, sg.TYPE_DATA_RW_ACCESSED | sg.TYPE_EXPAND_DOWN, db=True)
    assert big.linear(0xFFFF_0000, 4) == 0xFFFF_0000


def test_null_segment_faults_on_any_access() -> None:
    seg = Segment.null(0x3)
    exc = fault_of(seg.linear, 0, 1)
    assert (exc.vector, exc.error_code) == (Vector.GP, 0)
    assert "null" in exc.reason


def test_real_mode_checks_limit_but_not_type() -> None:
    cs = Segment.real_mode(0xF000, code=True)
    assert cs.base == 0xF_0000
    assert cs.linear_real(0xFFF0, 2) == 0xF_FFF0
    fault_of(cs.linear_real, 0xFFFF, 2)
    with pytest.raises(SegmentFault):
        cs.linear(0, 1, W)  # protected-mode rules would refuse a write to code


def test_linear64_checks_canonical_bytes() -> None:
    assert linear64(0xFFFF_8000_0000_0000, 0x10, 8) == 0xFFFF_8000_0000_0010
    assert linear64(0, 0x7FFF_FFFF_FFF8, 8) == 0x7FFF_FFFF_FFF8
    exc = fault_of(linear64, 0, 0x7FFF_FFFF_FFFC, 8)  # last bytes cross into the hole
    assert (exc.vector, exc.error_code) == (Vector.GP, 0)
    assert fault_of(linear64, 0, 0x8000_0000_0000, 1, stack=True).vector == Vector.SS


def test_kvm_segment_round_trip() -> None:
    fields = dict(
        selector=0x10,
        base=0x1000,
        limit=0xFFFF_FFFF,
        type=3,
        present=1,
        dpl=0,
        db=1,
        s=1,
        l=0,
        g=1,
        avl=0,
        unusable=0,
    )
    seg = Segment.from_kvm(SimpleNamespace(**fields))
    assert seg.linear(4, 4) == 0x1004
    out = seg.to_kvm(SimpleNamespace())
    assert vars(out) == fields
    assert Segment.from_kvm(out) == seg
    assert seg.as_dict() == fields


# -------------------------------------------------------- descriptor tables
@pytest.fixture
def mem() -> Memory:
    m = Memory()
    m.put(GDT_BASE + 0x08, FLAT_CODE32)
    m.put(GDT_BASE + 0x10, FLAT_DATA32)
    return m


GDTR = TableRegister(GDT_BASE, 0x1F)  # four entries


def test_descriptor_address_in_gdt_and_ldt() -> None:
    ldtr = Segment(0, LDT_BASE, 0xF, SysType.LDT, s=False)
    assert descriptor_address(0x10, GDTR, None) == GDT_BASE + 0x10
    assert descriptor_address(0x0F, GDTR, ldtr) == LDT_BASE + 8


def test_selector_beyond_gdt_limit_is_gp_with_selector() -> None:
    exc = fault_of(descriptor_address, 0x23, GDTR, None)
    assert (exc.vector, exc.error_code) == (Vector.GP, 0x20)


def test_ldt_selector_without_ldt_is_gp() -> None:
    exc = fault_of(descriptor_address, 0x0C, GDTR, None)
    assert (exc.vector, exc.error_code) == (Vector.GP, 0x0C)
    stale = Segment(0, LDT_BASE, 0xFFFF, SysType.LDT, s=False, unusable=True)  # LDTR loaded with null
    assert fault_of(descriptor_address, 0x0C, GDTR, stale).error_code == 0x0C


def test_wide_descriptor_must_fit_entirely() -> None:
    with pytest.raises(SegmentFault):
        descriptor_address(0x18, GDTR, None, size=16)


def test_read_descriptor(mem: Memory) -> None:
    addr, d = read_descriptor(mem.read, 0x08, GDTR)
    assert addr == GDT_BASE + 8 and d.is_code and d.byte_limit == 0xFFFF_FFFF


def test_load_ds_returns_flat_segment_and_sets_accessed(mem: Memory) -> None:
    seg = load_segment(mem.read, mem.write, SegReg.DS, 0x10, 0, GDTR)
    assert (seg.selector, seg.base, seg.limit, seg.type) == (0x10, 0, 0xFFFF_FFFF, 0x3)
    assert mem.writes == [(GDT_BASE + 0x10 + 5, b"\x93")]
    load_segment(mem.read, mem.write, SegReg.DS, 0x10, 0, GDTR)
    assert len(mem.writes) == 1  # already accessed: no second write


def test_load_accepts_plain_int_register_numbers(mem: Memory) -> None:
    assert load_segment(mem.read, None, 3, 0x10, 0, GDTR).base == 0  # type: ignore[arg-type]
    with pytest.raises(EmulatorError):
        load_segment(mem.read, None, 9, 0x10, 0, GDTR)  # type: ignore[arg-type]


def test_null_selector_makes_data_register_unusable(mem: Memory) -> None:
    seg = load_segment(mem.read, mem.write, SegReg.ES, 0x3, 3, GDTR)
    assert seg.unusable and seg.selector == 0x3


@pytest.mark.parametrize(
    ("reg", "mode64", "cpl"), [(SegReg.CS, False, 0), (SegReg.SS, False, 0), (SegReg.SS, True, 3)]
)
def test_null_selector_into_cs_or_ss_is_gp0(mem: Memory, reg: SegReg, mode64: bool, cpl: int) -> None:
    exc = fault_of(load_segment, mem.read, mem.write, reg, cpl, cpl, GDTR, mode64=mode64)
    assert (exc.vector, exc.error_code) == (Vector.GP, 0)


def test_null_ss_allowed_in_64bit_mode_below_ring3(mem: Memory) -> None:
    seg = load_segment(mem.read, mem.write, SegReg.SS, 0, 0, GDTR, mode64=True)
    assert seg.unusable


@pytest.mark.parametrize(
    ("descriptor", "selector", "cpl", "vector"),
    [
        (desc(0x3, dpl=0), 0x18, 0, None),
        (desc(0x3, dpl=0), 0x1B, 0, Vector.GP),  # RPL != CPL
        (desc(0x3, dpl=3), 0x18, 0, Vector.GP),  # DPL != CPL
        (desc(0x1, dpl=0), 0x18, 0, Vector.GP),  # read-only data
        (desc(0xB, dpl=0), 0x18, 0, Vector.GP),  # code
        (desc(0x3, dpl=0, present=False), 0x18, 0, Vector.SS),
    ],
)
def test_ss_load_rules(mem: Memory, descriptor: bytes, selector: int, cpl: int, vector: int | None) -> None:
    mem.put(GDT_BASE + 0x18, descriptor)
    if vector is None:
        assert load_segment(mem.read, mem.write, SegReg.SS, selector, cpl, GDTR).selector == selector
    else:
        exc = fault_of(load_segment, mem.read, mem.write, SegReg.SS, selector, cpl, GDTR)
        assert (exc.vector, exc.error_code) == (vector, 0x18)


@pytest.mark.parametrize(
    ("descriptor", "selector", "cpl", "vector"),
    [
        (desc(0x3, dpl=3), 0x1B, 3, None),
        (desc(0x3, dpl=0), 0x18, 3, Vector.GP),  # CPL > DPL
        (desc(0x3, dpl=0), 0x1B, 0, Vector.GP),  # RPL > DPL
        (desc(0xF, dpl=0), 0x1B, 3, None),  # conforming readable code: no privilege check
        (desc(0xB, dpl=0), 0x1B, 3, Vector.GP),  # non-conforming code is checked
        (desc(0x9, dpl=3), 0x1B, 3, Vector.GP),  # execute-only code
        (desc(SysType.LDT, s=False), 0x18, 0, Vector.GP),  # system descriptor
        (desc(0x3, dpl=3, present=False), 0x1B, 3, Vector.NP),
    ],
)
def test_data_register_load_rules(
    mem: Memory, descriptor: bytes, selector: int, cpl: int, vector: int | None
) -> None:
    mem.put(GDT_BASE + 0x18, descriptor)
    if vector is None:
        assert not load_segment(mem.read, mem.write, SegReg.FS, selector, cpl, GDTR).unusable
    else:
        exc = fault_of(load_segment, mem.read, mem.write, SegReg.FS, selector, cpl, GDTR)
        assert (exc.vector, exc.error_code) == (vector, 0x18)


@pytest.mark.parametrize(
    ("descriptor", "selector", "cpl", "vector"),
    [
        (desc(0xB, dpl=0), 0x18, 0, None),
        (desc(0xB, dpl=0), 0x18, 3, Vector.GP),  # non-conforming: DPL must equal CPL
        (desc(0xB, dpl=3), 0x1B, 0, Vector.GP),
        (desc(0xB, dpl=0), 0x1B, 0, Vector.GP),  # non-conforming: RPL must not exceed CPL
        (desc(0xF, dpl=0), 0x18, 3, None),  # conforming: DPL <= CPL
        (desc(0xF, dpl=3), 0x18, 0, Vector.GP),
        (desc(0x3, dpl=0), 0x18, 0, Vector.GP),  # data
        (desc(0xB, dpl=0, present=False), 0x18, 0, Vector.NP),
    ],
)
def test_code_segment_load_rules(
    mem: Memory, descriptor: bytes, selector: int, cpl: int, vector: int | None
) -> None:
    mem.put(GDT_BASE + 0x18, descriptor)
    if vector is None:
        seg = load_segment(mem.read, mem.write, SegReg.CS, selector, cpl, GDTR)
        assert seg.selector == (selector & ~3) | cpl  # CS.RPL becomes CPL
    else:
        exc = fault_of(load_segment, mem.read, mem.write, SegReg.CS, selector, cpl, GDTR)
        assert (exc.vector, exc.error_code) == (vector, 0x18)


def test_code_with_l_and_d_is_refused_in_long_mode(mem: Memory) -> None:
    mem.put(GDT_BASE + 0x18, Descriptor(0, 0xF_FFFF, 0xB, True, 0, True, l=True, db=True, g=True).to_bytes())
    assert load_segment(mem.read, None, SegReg.CS, 0x18, 0, GDTR).l
    exc = fault_of(load_segment, mem.read, None, SegReg.CS, 0x18, 0, GDTR, long_mode=True)
    assert exc.vector == Vector.GP


def test_load_from_ldt(mem: Memory) -> None:
    mem.put(LDT_BASE + 8, desc(0x3, dpl=3))
    ldtr = Segment(0, LDT_BASE, 0xF, SysType.LDT, s=False)
    seg = load_segment(mem.read, mem.write, SegReg.DS, 0x0F, 3, GDTR, ldtr)
    assert seg.base == 0x10_0000 and seg.dpl == 3


# --------------------------------------------------------------------- IDT
def test_idt_gate_read_and_limit() -> None:
    mem = Memory()
    raw = bytearray(16)
    raw[2:4] = (0x8).to_bytes(2, "little")
    raw[5] = 0x80 | SysType.INT_GATE
    mem.put(0x3000 + 14 * 16, bytes(raw))
    idtr = TableRegister(0x3000, 16 * 32 - 1)
    gate = read_idt_gate(mem.read, idtr, 14, long_mode=True, external=False)
    assert gate.selector == 0x8 and gate.type == SysType.INT_GATE
    exc = fault_of(read_idt_gate, mem.read, idtr, 32, long_mode=True, external=True)
    assert (exc.vector, exc.error_code) == (Vector.GP, (32 << 3) | 2 | 1)


def test_idt_entry_that_is_not_a_gate_is_gp() -> None:
    mem = Memory()
    mem.put(0x3000 + 3 * 8, FLAT_CODE32)
    idtr = TableRegister(0x3000, 0x7FF)
    exc = fault_of(read_idt_gate, mem.read, idtr, 3, long_mode=False, external=False)
    assert (exc.vector, exc.error_code) == (Vector.GP, (3 << 3) | 2)
