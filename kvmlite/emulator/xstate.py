"""XSAVE-managed state: the area the CPU keeps it in, and what the XSAVE family does with it.

The emulator keeps x87, SSE, AVX and later state as one *standard-format*
XSAVE area, exactly the 4096-byte ``kvm_xsave`` region KVM_GET_XSAVE returns:
the 512-byte legacy region (x87 and SSE, as FXSAVE lays them out), the 64-byte
header (XSTATE_BV at 512: which components are not in their initial state),
then each extended component at the offset CPUID leaf 0xD gives.  That way a
rescue loads the vCPU's real state, runs XRSTOR or XSAVE on it, and hands it
back to KVM unchanged in meaning.

:func:`save` and :func:`restore` implement the memory side (SDM vol. 1 ch. 13):
the standard form (XSAVE, XSAVEOPT, XRSTOR) and the compacted form (XSAVEC,
XSAVES, XRSTORS, and XRSTOR of a compacted image).  Memory is reached
through callables taking offsets into the guest's save area.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

AREA_SIZE = 4096
LEGACY_SIZE = 512
HEADER_OFFSET = 512
HEADER_SIZE = 64
EXTENDED_OFFSET = LEGACY_SIZE + HEADER_SIZE
COMPACTED = 1 << 63

X87, SSE, AVX = 0, 1, 2
X87_BYTES = ((0, 24), (32, 160))  # FCW..FDP, then ST0-ST7
SSE_BYTES = ((160, 416),)  # XMM0-XMM15
MXCSR_OFFSET, MXCSR_BYTES = 24, 8  # MXCSR and MXCSR_MASK
DEFAULT_FCW = 0x037F
DEFAULT_MXCSR = 0x1F80
DEFAULT_MXCSR_MASK = 0xFFFF
MAX_COMPONENT = 62

ReadMem = Callable[[int, int], bytes]  # (offset in the save area, size) -> bytes
WriteMem = Callable[[int, bytes], None]  # (offset in the save area, data)


class XstateError(Exception):
    """The image in memory is not one XRSTOR accepts: the caller raises #GP(0)."""


@dataclass(frozen=True)
class Component:
    index: int
    size: int
    offset: int  # in the standard format
    align64: bool  # in the compacted format


def layout(cpuid: Callable[[int, int], tuple[int, int, int, int]], mask: int) -> list[Component]:
    """The extended components (2 and up) present in ``mask``, from CPUID leaf 0xD."""
    out = []
    for i in range(AVX, MAX_COMPONENT + 1):
        if mask >> i & 1:
            eax, ebx, ecx, _ = cpuid(0xD, i)
            if eax:
                out.append(Component(i, eax, ebx, bool(ecx & 2)))
    return out


def compacted_offsets(components: list[Component], xcomp_bv: int) -> dict[int, int]:
    offsets = {}
    pos = EXTENDED_OFFSET
    for comp in components:
        if xcomp_bv >> comp.index & 1:
            if comp.align64:
                pos = (pos + 63) & ~63
            offsets[comp.index] = pos
            pos += comp.size
    return offsets


def init_area() -> bytearray:
    """An area with every component in its initial state (what RESET leaves)."""
    area = bytearray(AREA_SIZE)
    init_legacy(area, x87=True, sse=True)
    return area


def init_legacy(area: bytearray, x87: bool, sse: bool) -> None:
    if x87:
        for start, end in X87_BYTES:
            area[start:end] = bytes(end - start)
        area[0:2] = DEFAULT_FCW.to_bytes(2, "little")
    if sse:
        for start, end in SSE_BYTES:
            area[start:end] = bytes(end - start)


def xstate_bv(area: bytearray) -> int:
    return int.from_bytes(area[HEADER_OFFSET : HEADER_OFFSET + 8], "little")


def _set_xstate_bv(area: bytearray, value: int) -> None:
    area[HEADER_OFFSET : HEADER_OFFSET + 8] = value.to_bytes(8, "little")


def save(
    area: bytearray, components: list[Component], rfbm: int, compacted: bool, read: ReadMem, write: WriteMem
) -> None:
    """XSAVE/XSAVEOPT (standard) or XSAVEC/XSAVES (compacted) of the components in ``rfbm``."""
    in_use = xstate_bv(area)
    if rfbm & (1 << X87):
        for start, end in X87_BYTES:
            write(start, bytes(area[start:end]))
    if rfbm & ((1 << SSE) | (1 << AVX)):
        write(MXCSR_OFFSET, bytes(area[MXCSR_OFFSET : MXCSR_OFFSET + MXCSR_BYTES]))
    if rfbm & (1 << SSE):
        for start, end in SSE_BYTES:
            write(start, bytes(area[start:end]))
    if compacted:
        header = ((in_use & rfbm).to_bytes(8, "little") + (rfbm | COMPACTED).to_bytes(8, "little")).ljust(
            HEADER_SIZE, b"\0"
        )
        write(HEADER_OFFSET, header)
        offsets = compacted_offsets(components, rfbm)
        for comp in components:
            if rfbm >> comp.index & 1 and in_use >> comp.index & 1:
                write(offsets[comp.index], bytes(area[comp.offset : comp.offset + comp.size]))
        return
    old = int.from_bytes(read(HEADER_OFFSET, 8), "little")
    write(HEADER_OFFSET, ((old & ~rfbm) | (in_use & rfbm)).to_bytes(8, "little"))
    for comp in components:
        if rfbm >> comp.index & 1:
            write(comp.offset, bytes(area[comp.offset : comp.offset + comp.size]))


def restore(
    area: bytearray, components: list[Component], rfbm: int, read: ReadMem, compacted_only: bool
) -> None:
    """XRSTOR (either form) or XRSTORS (``compacted_only``) of the components in ``rfbm``."""
    header = read(HEADER_OFFSET, HEADER_SIZE)
    bv = int.from_bytes(header[0:8], "little")
    xcomp = int.from_bytes(header[8:16], "little")
    compacted = bool(xcomp & COMPACTED)
    if compacted_only and not compacted:
        raise XstateError("XRSTORS of a standard-format image")
    if compacted:
        if bv & ~xcomp or any(header[16:]):
            raise XstateError("compacted image: XSTATE_BV outside XCOMP_BV or reserved header bytes set")
        offsets = compacted_offsets(components, xcomp)
    else:
        if any(header[8:24]):
            raise XstateError("standard image: XCOMP_BV or reserved header bytes set")
        offsets = {comp.index: comp.offset for comp in components}
    take = bv & rfbm
    if rfbm & (1 << X87):
        if take & (1 << X87):
            for start, end in X87_BYTES:
                area[start:end] = read(start, end - start)
        else:
            init_legacy(area, x87=True, sse=False)
    if rfbm & (1 << SSE):
        if take & (1 << SSE):
            for start, end in SSE_BYTES:
                area[start:end] = read(start, end - start)
        else:
            init_legacy(area, x87=False, sse=True)
    if rfbm & ((1 << SSE) | (1 << AVX)):
        if not compacted or take & ((1 << SSE) | (1 << AVX)):
            mxcsr = read(MXCSR_OFFSET, 4)
            if int.from_bytes(mxcsr, "little") & ~DEFAULT_MXCSR_MASK:
                raise XstateError("reserved MXCSR bits set")
            area[MXCSR_OFFSET : MXCSR_OFFSET + 4] = mxcsr
        else:
            area[MXCSR_OFFSET : MXCSR_OFFSET + 4] = DEFAULT_MXCSR.to_bytes(4, "little")
    for comp in components:
        if not rfbm >> comp.index & 1:
            continue
        if take >> comp.index & 1 and comp.index in offsets:
            area[comp.offset : comp.offset + comp.size] = read(offsets[comp.index], comp.size)
        else:
            area[comp.offset : comp.offset + comp.size] = bytes(comp.size)
    _set_xstate_bv(area, (xstate_bv(area) & ~rfbm) | take)
