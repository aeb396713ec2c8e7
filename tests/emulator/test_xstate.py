"""The XSAVE family over the emulator's XSAVE area, in both formats, and against the real CPU."""

from __future__ import annotations

import pytest

from kvmlite.emulator import xstate as X

# A CPUID leaf 0xD as an AVX-512 machine reports it (size, standard offset, compacted alignment)
LEAF_D = {2: (256, 576, 0), 5: (64, 1088, 2), 6: (512, 1152, 2), 7: (1024, 1664, 0)}


def cpuid(leaf: int, sub: int) -> tuple[int, int, int, int]:
    assert leaf == 0xD
    size, off, ecx = LEAF_D.get(sub, (0, 0, 0))
    return size, off, ecx, 0


ALL = 0xE7


def area_with_patterns() -> bytearray:
    area = X.init_area()
    area[32:160] = bytes(range(128))  # ST registers
    area[160:416] = bytes((i * 7) & 0xFF for i in range(256))  # XMM
    area[24:28] = (0x1F80 | 0x40).to_bytes(4, "little")
    for i, (size, off, _) in LEAF_D.items():
        area[off : off + size] = bytes([i]) * size
    area[512:520] = ALL.to_bytes(8, "little")
    return area


class Memory:
    def __init__(self, size: int = 4096) -> None:
        self.data = bytearray(size)

    def read(self, off: int, n: int) -> bytes:
        return bytes(self.data[off : off + n])

    def write(self, off: int, data: bytes) -> None:
        self.data[off : off + len(data)] = data


@pytest.mark.parametrize("compacted", [False, True])
def test_save_then_restore_round_trips_every_component(compacted: bool) -> None:
    src = area_with_patterns()
    mem = Memory()
    comps = X.layout(cpuid, ALL)
    X.save(src, comps, ALL, compacted, mem.read, mem.write)
    dst = X.init_area()
    X.restore(dst, comps, ALL, mem.read, compacted_only=compacted)
    assert dst[:416] == src[:416] and dst[24:28] == src[24:28]
    for size, off, _ in LEAF_D.values():
        assert dst[off : off + size] == src[off : off + size]
    assert X.xstate_bv(dst) == ALL


def test_compacted_layout_packs_components_with_alignment() -> None:
    comps = X.layout(cpuid, ALL)
    offsets = X.compacted_offsets(comps, ALL)
    # AVX right after the header; opmask 64-aligned after it; ZMM_Hi256 aligned; Hi16_ZMM packed
    assert offsets == {2: 576, 5: 832, 6: 896, 7: 1408}
    mem = Memory()
    X.save(area_with_patterns(), comps, ALL, True, mem.read, mem.write)
    assert int.from_bytes(mem.data[520:528], "little") == ALL | X.COMPACTED
    assert mem.data[832:896] == bytes([5]) * 64


def test_restore_of_a_component_not_in_xstate_bv_initialises_it() -> None:
    comps = X.layout(cpuid, ALL)
    mem = Memory()
    X.save(area_with_patterns(), comps, ALL, False, mem.read, mem.write)
    mem.data[512:520] = (0x3).to_bytes(8, "little")  # only x87 and SSE are "in use" in the image
    dst = area_with_patterns()
    X.restore(dst, comps, ALL, mem.read, compacted_only=False)
    assert dst[576 : 576 + 256] == bytes(256)  # AVX upper halves reset
    assert X.xstate_bv(dst) == 0x3


def test_restore_leaves_components_outside_rfbm_alone() -> None:
    comps = X.layout(cpuid, ALL)
    mem = Memory()  # an all-zero standard image: XSTATE_BV 0
    dst = area_with_patterns()
    X.restore(dst, comps, 0x3, mem.read, compacted_only=False)  # RFBM: x87 + SSE only
    assert dst[576 : 576 + 256] == bytes([2]) * 256  # AVX untouched
    assert dst[0:2] == (0x037F).to_bytes(2, "little")  # x87 initialised


@pytest.mark.parametrize(
    ("header", "compacted_only", "message"),
    [
        ((0).to_bytes(8, "little") + (1).to_bytes(8, "little"), False, "standard image"),
        ((0).to_bytes(8, "little") + (0).to_bytes(8, "little"), True, "XRSTORS of a standard"),
        ((0x7).to_bytes(8, "little") + (X.COMPACTED | 0x3).to_bytes(8, "little"), False, "outside XCOMP_BV"),
    ],
)
def test_malformed_headers_are_refused(header: bytes, compacted_only: bool, message: str) -> None:
    mem = Memory()
    mem.data[512 : 512 + len(header)] = header
    with pytest.raises(X.XstateError, match=message):
        X.restore(X.init_area(), X.layout(cpuid, ALL), ALL, mem.read, compacted_only)
