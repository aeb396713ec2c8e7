"""x86 segmentation: descriptors, segment-register loads and per-access checks.

Three jobs, following the Intel SDM volume 3, chapters 3 and 5:

* **Parsing** the 8-byte code/data/system descriptors and 16-byte long-mode
  system descriptors of the GDT and LDT (:class:`Descriptor`), and gates of
  the IDT or call gates (:class:`Gate`).
* **Loading** a segment register (MOV/POP to a segment register, LDS and
  friends, far JMP/CALL to a code segment): the null-selector, type,
  privilege and presence checks, each raising the architectural fault and
  error code, and the Accessed flag written back to the descriptor as the CPU
  does (:func:`load_segment`).
* **Checking** every memory access against the hidden part of the segment
  register (:class:`Segment`): type (write to code or read-only data, read of
  execute-only code) and limit, with expand-down data segments, giving #GP(0)
  or #SS(0) for stack accesses.  In 64-bit mode only canonicality is checked
  (:func:`linear64`).

:class:`Segment` carries the same fields as KVM's ``struct kvm_segment``
(``limit`` is the byte-granular limit after applying G), so the emulator and
the KVM backend exchange segment state field by field.  The valid offset
range and the allowed access kinds are computed once per load, which keeps
the per-access check to a few comparisons: the executor reads ``lo``, ``hi``
and ``rights`` inline on its hot path and calls :meth:`Segment.linear` only
to raise the fault.  This is the emulator's one segmentation implementation:
the segment handlers (:mod:`.handlers.segment`), far transfers and event
delivery load and check segments through it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

from kvmlite.emulator.faults import GuestFault
from kvmlite.emulator.mmu import Access
from kvmlite.errors import EmulatorError, UnsupportedInstruction
from kvmlite.kvm.structs import kvm_segment
from kvmlite.x86 import SEG_TYPE_CODE_RX_ACCESSED as TYPE_CODE_RX_ACCESSED
from kvmlite.x86 import SEG_TYPE_DATA_RW_ACCESSED as TYPE_DATA_RW_ACCESSED
from kvmlite.x86 import SegType, Selector, SysType, Vector

log = logging.getLogger(__name__)

# Plain-int aliases of kvmlite.x86's descriptor bits (compared on every segment load).
TYPE_ACCESSED, TYPE_CODE = int(SegType.ACCESSED), int(SegType.CODE)
TYPE_WRITABLE = TYPE_READABLE = int(SegType.WRITABLE)  # data: writable; code: readable
TYPE_EXPAND_DOWN = TYPE_CONFORMING = int(SegType.EXPAND_DOWN)  # data: expand-down; code: conforming

SEL_RPL_MASK = int(Selector.RPL)
SEL_TI = int(Selector.TI)
SEL_INDEX_SHIFT = 3
#: Selector bits that go into a fault's error code (index and TI; RPL replaced by EXT/IDT).
SEL_ERROR_MASK = 0xFFFC
#: Error-code bits of a fault about an IDT entry (SDM 6.13).
ERR_EXT = 0x1
ERR_IDT = 0x2

DESC_SIZE = 8
DESC_SIZE_WIDE = 16
DESC_ACCESS_BYTE = 5  # type, S, DPL, P
DESC_FLAGS_BYTE = 6  # limit 19:16, AVL, L, D/B, G

_T = SysType
GATE_TYPES = frozenset(
    (_T.CALL_GATE16, _T.TASK_GATE, _T.INT_GATE16, _T.TRAP_GATE16, _T.CALL_GATE, _T.INT_GATE, _T.TRAP_GATE)
)
#: Gates whose offset is only 16 bits wide.
GATE16_TYPES = frozenset((SysType.CALL_GATE16, SysType.INT_GATE16, SysType.TRAP_GATE16))
#: What an IDT entry may hold in protected mode, and in long mode.
IDT_GATE_TYPES = frozenset(
    (SysType.TASK_GATE, SysType.INT_GATE16, SysType.TRAP_GATE16, SysType.INT_GATE, SysType.TRAP_GATE)
)
IDT_GATE_TYPES_LONG = frozenset((SysType.INT_GATE, SysType.TRAP_GATE))
#: System descriptors a far JMP/CALL may name (a gate or a TSS: task switches and call gates).
FAR_TRANSFER_SYSTEM_TYPES = GATE_TYPES | {SysType.TSS16_AVAIL, SysType.TSS_AVAIL}

LIMIT_LOW_MASK = 0xFFFF
LIMIT_HIGH_MASK = 0xF
PAGE_GRANULE_BITS = 12
MASK16 = 0xFFFF
MASK32 = 0xFFFF_FFFF
MASK64 = 0xFFFF_FFFF_FFFF_FFFF
REAL_MODE_LIMIT = 0xFFFF
REAL_MODE_SHIFT = 4
CANONICAL_BITS = 48


class SegReg(IntEnum):
    """Segment registers in ModRM ``reg`` order (the decoder uses the same numbers)."""

    ES, CS, SS, DS, FS, GS = range(6)


class SegmentFault(GuestFault):
    """A segmentation check failed: the guest gets exception ``vector`` with ``error_code``."""

    def __init__(self, vector: int, error_code: int, reason: str) -> None:
        self.reason = reason
        super().__init__(vector, error_code, reason=reason)


@dataclass
class TableRegister:
    """GDTR or IDTR: a linear base and a byte limit (the last valid offset)."""

    base: int = 0
    limit: int = 0xFFFF


@dataclass(frozen=True)
class Descriptor:
    """One segment or system descriptor, as it sits in the GDT or LDT.

    ``limit`` is the raw 20-bit field; :attr:`byte_limit` applies G.
    ``base`` has 64 bits only for 16-byte long-mode system descriptors.
    """

    base: int
    limit: int
    type: int
    s: bool
    dpl: int
    present: bool
    avl: bool = False
    l: bool = False  # noqa: E741 - the SDM's name for the 64-bit code flag
    db: bool = False
    g: bool = False

    @classmethod
    def from_bytes(cls, raw: bytes) -> Descriptor:
        """Parse 8 bytes, or 16 for a long-mode system descriptor (upper base in bytes 8..11)."""
        if len(raw) not in (DESC_SIZE, DESC_SIZE_WIDE):
            raise EmulatorError(f"a descriptor is 8 or 16 bytes, not {len(raw)}")
        low = int.from_bytes(raw[:DESC_SIZE], "little")
        access = raw[DESC_ACCESS_BYTE]
        flags = raw[DESC_FLAGS_BYTE]
        base = (low >> 16) & 0xFF_FFFF | (raw[7] << 24)
        if len(raw) == DESC_SIZE_WIDE:
            base |= int.from_bytes(raw[8:12], "little") << 32
        return cls(
            base=base,
            limit=(low & LIMIT_LOW_MASK) | ((flags & LIMIT_HIGH_MASK) << 16),
            type=access & 0xF,
            s=bool(access & 0x10),
            dpl=(access >> 5) & 3,
            present=bool(access & 0x80),
            avl=bool(flags & 0x10),
            l=bool(flags & 0x20),
            db=bool(flags & 0x40),
            g=bool(flags & 0x80),
        )

    def to_bytes(self, wide: bool = False) -> bytes:
        """Encode back to 8 bytes (16 with ``wide``): for tests and for building guest GDTs."""
        if not 0 <= self.limit <= 0xF_FFFF or not 0 <= self.type <= 0xF or not 0 <= self.dpl <= 3:
            raise EmulatorError(f"descriptor field out of range: {self}")
        access = self.type | self.s << 4 | self.dpl << 5 | self.present << 7
        flags = (self.limit >> 16) | self.avl << 4 | self.l << 5 | self.db << 6 | self.g << 7
        raw = bytes(
            (
                self.limit & 0xFF,
                (self.limit >> 8) & 0xFF,
                self.base & 0xFF,
                (self.base >> 8) & 0xFF,
                (self.base >> 16) & 0xFF,
                access,
                flags,
                (self.base >> 24) & 0xFF,
            )
        )
        if wide:
            raw += ((self.base >> 32) & MASK32).to_bytes(4, "little") + bytes(4)
        return raw

    @property
    def byte_limit(self) -> int:
        """The limit in bytes: with G the 20-bit field counts 4 KiB units, low 12 bits all ones."""
        if self.g:
            return (self.limit << PAGE_GRANULE_BITS) | ((1 << PAGE_GRANULE_BITS) - 1)
        return self.limit

    @property
    def is_code(self) -> bool:
        return self.s and bool(self.type & TYPE_CODE)

    @property
    def is_data(self) -> bool:
        return self.s and not self.type & TYPE_CODE

    @property
    def is_system(self) -> bool:
        return not self.s


@dataclass(frozen=True)
class Gate:
    """A call, interrupt, trap or task gate (IDT entry or call gate in the GDT/LDT)."""

    selector: int
    offset: int
    type: int
    dpl: int
    present: bool
    param_count: int = 0  # call gates: dwords copied to the new stack
    ist: int = 0  # 64-bit interrupt/trap gates: interrupt stack table index

    @classmethod
    def from_bytes(cls, raw: bytes) -> Gate:
        """Parse an 8-byte legacy gate or a 16-byte long-mode gate."""
        if len(raw) not in (DESC_SIZE, DESC_SIZE_WIDE):
            raise EmulatorError(f"a gate is 8 or 16 bytes, not {len(raw)}")
        access = raw[DESC_ACCESS_BYTE]
        gate_type = access & 0xF
        if access & 0x10 or gate_type not in GATE_TYPES:
            raise EmulatorError(f"descriptor type {access & 0x1F:#x} is not a gate")
        offset = int.from_bytes(raw[0:2], "little")
        if gate_type not in GATE16_TYPES:
            offset |= int.from_bytes(raw[6:8], "little") << 16
        wide = len(raw) == DESC_SIZE_WIDE
        if wide:
            offset |= int.from_bytes(raw[8:12], "little") << 32
        return cls(
            selector=int.from_bytes(raw[2:4], "little"),
            offset=offset,
            type=gate_type,
            dpl=(access >> 5) & 3,
            present=bool(access & 0x80),
            param_count=0 if wide else raw[4] & 0x1F,
            ist=raw[4] & 0x7 if wide else 0,
        )


class Segment:
    """The hidden (cached) part of a segment register, with its access checks.

    Field names and meanings follow ``struct kvm_segment``: ``limit`` is in
    bytes, ``unusable`` marks a register loaded with a null selector.
    """

    __slots__ = (
        "avl", "base", "db", "dpl", "g", "hi", "l", "limit", "lo", "present", "rights", "s", "selector",
        "type", "unusable",
    )  # fmt: skip

    def __init__(
        self,
        selector: int = 0,
        base: int = 0,
        limit: int = REAL_MODE_LIMIT,
        type: int = TYPE_DATA_RW_ACCESSED,
        *,
        s: bool = True,
        dpl: int = 0,
        present: bool = True,
        db: bool = False,
        l: bool = False,  # noqa: E741
        g: bool = False,
        avl: bool = False,
        unusable: bool = False,
    ) -> None:
        self.selector = selector & MASK16
        self.base = base & MASK64
        self.limit = limit & MASK32
        self.type = type & 0xF
        self.s, self.dpl, self.present = s, dpl & 3, present
        self.db, self.l, self.g, self.avl, self.unusable = db, l, g, avl, unusable
        self.lo, self.hi, self.rights = self._derive()

    def _derive(self) -> tuple[int, int, int]:
        """Valid offsets [lo, hi] and a bit set of the allowed Access kinds (bit 0 read)."""
        if self.type & TYPE_CODE or not self.type & TYPE_EXPAND_DOWN or not self.s:
            lo, hi = 0, self.limit
        else:  # expand-down data: offsets above the limit are valid
            lo, hi = self.limit + 1, MASK32 if self.db else MASK16
        if not self.s:
            ok = 0
        elif self.type & TYPE_CODE:
            ok = RIGHT_FETCH | (RIGHT_READ if self.type & TYPE_READABLE else 0)
        else:
            ok = RIGHT_READ | (RIGHT_WRITE if self.type & TYPE_WRITABLE else 0)
        return lo, hi, ok

    @classmethod
    def from_descriptor(cls, selector: int, desc: Descriptor) -> Segment:
        return cls(
            selector,
            desc.base,
            desc.byte_limit,
            desc.type,
            s=desc.s,
            dpl=desc.dpl,
            present=desc.present,
            db=desc.db,
            l=desc.l,
            g=desc.g,
            avl=desc.avl,
        )

    @classmethod
    def real_mode(cls, selector: int, code: bool = False) -> Segment:
        """What a real-mode (or virtual-8086) load gives: base = selector * 16, 64 KiB limit."""
        kind = TYPE_CODE_RX_ACCESSED if code else TYPE_DATA_RW_ACCESSED
        return cls(selector, (selector & MASK16) << REAL_MODE_SHIFT, REAL_MODE_LIMIT, kind)

    @classmethod
    def null(cls, selector: int = 0, dpl: int = 0, db: bool = False) -> Segment:
        """A register loaded with a null selector: any access through it faults outside 64-bit mode.

        The hidden part keeps a plain data type (as KVM reports such registers);
        ``unusable`` is what makes accesses fault.  ``dpl``/``db`` matter for a
        null SS in 64-bit mode, whose DPL is the CPL it was loaded at.
        """
        return cls(selector, 0, REAL_MODE_LIMIT, s=True, dpl=dpl, present=False, db=db, unusable=True)

    @classmethod
    def from_kvm(cls, seg: Any) -> Segment:
        """From a ``kvm_segment`` (or anything with the same attribute names)."""
        return cls(
            seg.selector,
            seg.base,
            seg.limit,
            seg.type,
            s=bool(seg.s),
            dpl=seg.dpl,
            present=bool(seg.present),
            db=bool(seg.db),
            l=bool(seg.l),
            g=bool(seg.g),
            avl=bool(seg.avl),
            unusable=bool(seg.unusable),
        )

    def to_kvm(self, seg: Any = None) -> Any:
        """Fill a ``kvm_segment`` (a new one by default, or any object with those attributes)."""
        if seg is None:
            seg = kvm_segment()
        seg.selector, seg.base, seg.limit, seg.type = self.selector, self.base, self.limit, self.type
        seg.s, seg.dpl, seg.present, seg.db = int(self.s), self.dpl, int(self.present), int(self.db)
        seg.l, seg.g, seg.avl, seg.unusable = int(self.l), int(self.g), int(self.avl), int(self.unusable)
        return seg

    def copy(self, **changes: int) -> Segment:
        """A copy, with the ``kvm_segment`` fields named in ``changes`` replaced."""
        fields = {name: getattr(self, name) for name in _PUBLIC_FIELDS}
        fields.update(changes)
        head = (fields.pop("selector"), fields.pop("base"), fields.pop("limit"), fields.pop("type"))
        return Segment(*head, **fields)

    def as_dict(self) -> dict[str, int]:
        """The ``kvm_segment`` fields as ints, e.g. ``cpu.Segment(**seg.as_dict())``."""
        return {name: int(getattr(self, name)) for name in _PUBLIC_FIELDS}

    def __repr__(self) -> str:
        state = " unusable" if self.unusable else ""
        return (
            f"Segment(sel={self.selector:#06x} base={self.base:#x} limit={self.limit:#x} "
            f"type={self.type:#x} s={int(self.s)} dpl={self.dpl} p={int(self.present)} "
            f"db={int(self.db)} l={int(self.l)} g={int(self.g)}{state})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Segment):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in _PUBLIC_FIELDS)

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------------ access checks
    def linear(self, offset: int, size: int, access: Access = Access.READ, stack: bool = False) -> int:
        """Check an access of ``size`` bytes at ``offset`` and return its linear address.

        Protected-mode (and compatibility-mode) rules: the register must be
        usable, the type must allow the access, and every byte must lie within
        the limit.  Faults are #SS(0) for ``stack`` accesses and #GP(0)
        otherwise.  ``offset`` is already truncated to the address size.
        """
        if (
            self.rights & _ACCESS_NEED[access]
            and self.lo <= offset
            and offset + size - 1 <= self.hi
            and not self.unusable
        ):
            return (self.base + offset) & MASK32
        return self._fail(offset, size, access, stack, check_type=True)

    def linear_real(self, offset: int, size: int, stack: bool = False) -> int:
        """Real and virtual-8086 mode: only the (cached) limit is checked, never the type."""
        if self.lo <= offset and offset + size - 1 <= self.hi:
            return (self.base + offset) & MASK32
        return self._fail(offset, size, Access.READ, stack, check_type=False)

    def _fail(self, offset: int, size: int, access: int, stack: bool, check_type: bool) -> int:
        vector = Vector.SS if stack else Vector.GP
        if check_type:
            if self.unusable:
                raise SegmentFault(vector, 0, f"access through a null segment (selector {self.selector:#x})")
            if not self.rights & _ACCESS_NEED[access]:
                kind = _KIND_NAMES[_ACCESS_NEED[access]]
                raise SegmentFault(vector, 0, f"{kind} not allowed by segment type {self.type:#x}")
        raise SegmentFault(
            vector,
            0,
            f"{size}-byte access at offset {offset:#x} outside segment limits [{self.lo:#x}, {self.hi:#x}]",
        )


_PUBLIC_FIELDS = (
    "selector", "base", "limit", "type", "s", "dpl", "present", "db", "l", "g", "avl", "unusable",
)  # fmt: skip
#: Bits of :attr:`Segment.rights`: the kinds of access the segment's type allows.
RIGHT_READ = 1
RIGHT_WRITE = 2
RIGHT_FETCH = 4
# The right each Access value needs, indexed by the value itself (an IntFlag
# indexes a tuple at C speed, whereas ``access & mask`` builds a new flag).
_ACCESS_NEED = tuple(
    RIGHT_FETCH if a & Access.FETCH else RIGHT_WRITE if a & Access.WRITE else RIGHT_READ for a in range(16)
)
_KIND_NAMES = {RIGHT_READ: "read", RIGHT_WRITE: "write", RIGHT_FETCH: "instruction fetch"}


def linear64(base: int, offset: int, size: int, stack: bool = False) -> int:
    """A 64-bit-mode linear address: no limit or type checks, but every byte must be canonical.

    ``base`` is the FS or GS base for those segments and 0 for the others.
    """
    first = (base + offset) & MASK64
    last = (first + size - 1) & MASK64
    for addr in (first, last):
        top = addr >> (CANONICAL_BITS - 1)
        if top and top != MASK64 >> (CANONICAL_BITS - 1):
            raise SegmentFault(Vector.SS if stack else Vector.GP, 0, f"non-canonical address {addr:#x}")
    return first


# --------------------------------------------------------------- descriptor tables
def descriptor_address(
    selector: int, gdtr: TableRegister, ldtr: Segment | None, size: int = DESC_SIZE
) -> int:
    """Linear address of ``selector``'s descriptor, or #GP(selector) if outside its table.

    Selectors with TI=1 use the LDT, which must be loaded (``ldtr`` usable).
    """
    err = selector & SEL_ERROR_MASK
    offset = (selector >> SEL_INDEX_SHIFT) << SEL_INDEX_SHIFT
    if selector & SEL_TI:
        if ldtr is None or ldtr.unusable:
            raise SegmentFault(Vector.GP, err, f"selector {selector:#x} refers to the LDT but none is loaded")
        base, limit = ldtr.base, ldtr.limit
    else:
        base, limit = gdtr.base, gdtr.limit
    if offset + size - 1 > limit:
        table = "LDT" if selector & SEL_TI else "GDT"
        raise SegmentFault(Vector.GP, err, f"selector {selector:#x} lies beyond the {table} limit {limit:#x}")
    return base + offset


def read_descriptor(
    read_linear: Callable[[int, int], bytes],
    selector: int,
    gdtr: TableRegister,
    ldtr: Segment | None = None,
    *,
    wide: bool = False,
) -> tuple[int, Descriptor]:
    """(linear address, descriptor) of ``selector``; 16 bytes with ``wide`` (long-mode system)."""
    size = DESC_SIZE_WIDE if wide else DESC_SIZE
    addr = descriptor_address(selector, gdtr, ldtr, size)
    return addr, Descriptor.from_bytes(read_linear(addr, size))


def read_idt_gate(
    read_linear: Callable[[int, int], bytes],
    idtr: TableRegister,
    vector: int,
    *,
    long_mode: bool,
    external: bool,
) -> Gate:
    """The IDT gate for ``vector``; #GP(vector*8+2[+1]) if it lies beyond the IDT limit or is no gate.

    ``external`` sets the EXT bit, which the CPU sets for events not caused
    by the instruction itself (hardware interrupts, nested exceptions).
    """
    size = DESC_SIZE_WIDE if long_mode else DESC_SIZE
    err = (vector << SEL_INDEX_SHIFT) | ERR_IDT | (ERR_EXT if external else 0)
    offset = vector * size
    if not 0 <= vector <= 0xFF or offset + size - 1 > idtr.limit:
        raise SegmentFault(Vector.GP, err, f"vector {vector:#x} lies beyond the IDT limit {idtr.limit:#x}")
    raw = read_linear(idtr.base + offset, size)
    try:
        gate = Gate.from_bytes(raw)
    except EmulatorError as exc:
        raise SegmentFault(Vector.GP, err, f"IDT entry {vector:#x}: {exc}") from exc
    if gate.type not in (IDT_GATE_TYPES_LONG if long_mode else IDT_GATE_TYPES):
        raise SegmentFault(Vector.GP, err, f"IDT entry {vector:#x} has gate type {gate.type:#x}")
    return gate


def load_segment(
    read_linear: Callable[[int, int], bytes],
    write_linear: Callable[[int, bytes], None] | None,
    reg: SegReg,
    selector: int,
    cpl: int,
    gdtr: TableRegister,
    ldtr: Segment | None = None,
    *,
    long_mode: bool = False,
    mode64: bool = False,
) -> Segment:
    """Load ``selector`` into ``reg`` in protected mode, with the SDM's checks.

    Covers MOV/POP to DS, ES, FS, GS and SS (and LDS-style loads), and CS for
    a direct far JMP/CALL to a code segment (gates and task switches are the
    executor's business: it reads the gate with :func:`read_descriptor`).
    ``long_mode`` is EFER.LMA; ``mode64`` says the current code runs in
    64-bit mode (where SS may be null at CPL < 3).  The descriptor's Accessed
    flag is set in memory when clear, as the CPU does.  Returns the new hidden
    state; raises :class:`SegmentFault` with the architectural vector.
    """
    try:
        reg = SegReg(reg)
    except ValueError:
        raise EmulatorError(f"no segment register number {reg}") from None
    selector &= MASK16
    rpl = selector & SEL_RPL_MASK
    err = selector & SEL_ERROR_MASK
    name = reg.name
    if not selector & ~SEL_RPL_MASK:  # null selector: index 0 in the GDT
        if reg is SegReg.CS:
            raise SegmentFault(Vector.GP, 0, "null selector loaded into CS")
        if reg is SegReg.SS and not (mode64 and cpl != 3 and rpl == cpl):
            raise SegmentFault(Vector.GP, 0, "null selector loaded into SS")
        stack = reg is SegReg.SS
        return Segment.null(selector, dpl=cpl if stack else 0, db=stack and mode64)
    addr, desc = read_descriptor(read_linear, selector, gdtr, ldtr)
    if not desc.s:
        if reg is SegReg.CS and desc.type in FAR_TRANSFER_SYSTEM_TYPES:
            raise UnsupportedInstruction(f"far transfer through system descriptor {selector:#x} (gate/TSS)")
        raise SegmentFault(Vector.GP, err, f"{name} loaded with system descriptor type {desc.type:#x}")
    code = bool(desc.type & TYPE_CODE)
    if reg is SegReg.SS:
        if rpl != cpl or desc.dpl != cpl:
            raise SegmentFault(
                Vector.GP, err, f"SS selector {selector:#x}: RPL {rpl}, DPL {desc.dpl}, CPL {cpl}"
            )
        if code or not desc.type & TYPE_WRITABLE:
            raise SegmentFault(Vector.GP, err, f"SS selector {selector:#x} is not a writable data segment")
        if not desc.present:
            raise SegmentFault(Vector.SS, err, f"SS segment {selector:#x} not present")
    elif reg is SegReg.CS:
        if not code:
            raise SegmentFault(Vector.GP, err, f"CS selector {selector:#x} is not a code segment")
        if desc.type & TYPE_CONFORMING:
            if desc.dpl > cpl:
                raise SegmentFault(Vector.GP, err, f"conforming {selector:#x}: DPL {desc.dpl} > CPL {cpl}")
        elif rpl > cpl or desc.dpl != cpl:
            raise SegmentFault(Vector.GP, err, f"code {selector:#x}: RPL {rpl}, DPL {desc.dpl}, CPL {cpl}")
        if long_mode and desc.l and desc.db:
            raise SegmentFault(Vector.GP, err, f"code {selector:#x} has both L and D set")
        if not desc.present:
            raise SegmentFault(Vector.NP, err, f"code segment {selector:#x} not present")
        selector = (selector & ~SEL_RPL_MASK) | cpl  # CS.RPL always equals CPL
    else:
        if code and not desc.type & TYPE_READABLE:
            raise SegmentFault(Vector.GP, err, f"{name} loaded with execute-only code {selector:#x}")
        if (not code or not desc.type & TYPE_CONFORMING) and max(rpl, cpl) > desc.dpl:
            raise SegmentFault(
                Vector.GP, err, f"{name} selector {selector:#x}: RPL {rpl}, CPL {cpl} > DPL {desc.dpl}"
            )
        if not desc.present:
            raise SegmentFault(Vector.NP, err, f"{name} segment {selector:#x} not present")
    desc = mark_accessed(write_linear, addr, desc)
    log.debug("%s <- %#x: base %#x limit %#x type %#x", name, selector, desc.base, desc.byte_limit, desc.type)
    return Segment.from_descriptor(selector, desc)


def mark_accessed(
    write_linear: Callable[[int, bytes], None] | None, addr: int, desc: Descriptor
) -> Descriptor:
    """Set the Accessed flag of the descriptor at ``addr`` in memory (when clear), as a segment load does."""
    if desc.type & TYPE_ACCESSED:
        return desc
    desc = replace(desc, type=desc.type | TYPE_ACCESSED)
    if write_linear is not None:
        write_linear(addr + DESC_ACCESS_BYTE, desc.to_bytes()[DESC_ACCESS_BYTE : DESC_ACCESS_BYTE + 1])
    return desc
