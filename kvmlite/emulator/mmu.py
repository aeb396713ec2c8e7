"""The guest MMU: x86 page-table walks, permission checks and a software TLB.

(Longer than the project's ~600 lines: the walker, its permission rules and the TLB that caches
their results change together; the shadow page tables are :mod:`kvmlite.emulator.shadow`.)

The emulator turns every guest-linear address into a guest-physical one
through :meth:`Mmu.translate`.  The walker follows the Intel SDM, volume 3,
chapter 4 ("Paging") for the four paging modes a guest can select:

===============  ==========================  =====================================
mode             selected by                 page sizes
===============  ==========================  =====================================
none             CR0.PG = 0                  identity (32-bit wrap unless EFER.LMA)
32-bit           CR0.PG, CR4.PAE = 0         4 KiB, 4 MiB with CR4.PSE (PSE-36)
PAE              CR0.PG, CR4.PAE, !EFER.LMA  4 KiB, 2 MiB; four PDPTE registers
4-level (5)      CR0.PG, CR4.PAE, EFER.LMA   4 KiB, 2 MiB, 1 GiB (CR4.LA57: 5-level)
===============  ==========================  =====================================

A walk either yields a physical page or a :class:`PageFault` carrying the
linear address (for CR2) and the error code the CPU would push.  Accessed
flags are set in every entry used and the Dirty flag in the leaf on a write,
by writing the entry's low byte back into guest memory, as the hardware's
locked update would.  Like KVM's shadow-paging walker (``paging_tmpl.h``),
the flags are written only when the access is allowed, so a faulting access
leaves the tables untouched.

The software TLB caches successful translations per 4 KiB virtual page and
per kind of access (read/write, user/supervisor, fetch): one dict per
:class:`Access` value, so a hit costs a list index and a ``dict.get``.  An
entry is created only by a walk that already set the A (and, for writes, D)
flags, so a cached write never skips the Dirty update.  The TLB is
deliberately *not* coherent with guest memory: a page-table edit stays
invisible until INVLPG, a CR3 load or a paging-mode change, exactly as on
hardware, which guests rely on (and which tests can observe).  There are no
paging-structure caches: every miss walks from CR3 (or, in PAE mode, from the
PDPTE registers loaded at the last CR3 load, as the SDM specifies).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from kvmlite.emulator.faults import InvalidPdpte, NonCanonicalAddress, PageFault
from kvmlite.errors import EmulatorError, KvmliteError
from kvmlite.x86 import Cr0, Cr4, Efer, PfErr, Pte

log = logging.getLogger(__name__)

# --- control-register, EFER, entry and error-code bits, as plain ints for the walker ---
CR0_PE, CR0_WP, CR0_PG = int(Cr0.PE), int(Cr0.WP), int(Cr0.PG)
CR4_PSE, CR4_PAE, CR4_PGE, CR4_LA57 = int(Cr4.PSE), int(Cr4.PAE), int(Cr4.PGE), int(Cr4.LA57)
CR4_PCIDE, CR4_SMEP, CR4_SMAP = int(Cr4.PCIDE), int(Cr4.SMEP), int(Cr4.SMAP)
EFER_LME, EFER_LMA, EFER_NXE = int(Efer.LME), int(Efer.LMA), int(Efer.NXE)

#: MOV to CR3 with CR4.PCIDE=1: bit 63 of the source asks to keep the TLB.
CR3_NOFLUSH = 1 << 63
CR3_PCID_MASK = 0xFFF

PTE_P, PTE_RW, PTE_US, PTE_PWT, PTE_PCD = int(Pte.P), int(Pte.RW), int(Pte.US), int(Pte.PWT), int(Pte.PCD)
PTE_A, PTE_D, PTE_PS, PTE_G, PTE_NX = int(Pte.A), int(Pte.D), int(Pte.PS), int(Pte.G), int(Pte.NX)
PFEC_P, PFEC_W, PFEC_U = int(PfErr.P), int(PfErr.W), int(PfErr.U)
PFEC_RSVD, PFEC_ID = int(PfErr.RSVD), int(PfErr.ID)

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_OFFSET_MASK = PAGE_SIZE - 1
MASK32 = 0xFFFF_FFFF
MASK64 = 0xFFFF_FFFF_FFFF_FFFF

#: MAXPHYADDR assumed unless the caller says otherwise (QEMU's default for TCG).
DEFAULT_PHYS_BITS = 40
#: Architectural ceiling of MAXPHYADDR; bits 51:M of entries are reserved.
MAX_PHYS_BITS = 52
#: 32-bit paging's 4 MiB PDEs carry physical bits 39:32 at most (PSE-36).
PSE36_MAX_PHYS_BITS = 40

#: Entries a single per-access TLB dict may hold before it is emptied: a
#: guest that sweeps gigabytes must not grow the host process without bound.
TLB_MAX_ENTRIES = 16384

#: Where the PAE PDPT sits: CR3 bits 31:5.
PAE_PDPT_MASK = 0xFFFF_FFE0
#: 32-bit paging's page directory: CR3 bits 31:12.
PD32_MASK = 0xFFFF_F000
PAE_PDPTE_COUNT = 4

# Reserved bits of fixed position (the MAXPHYADDR-dependent ones are computed).
RSVD_PAE_PDPTE_LOW = 0b1_1110_0110  # bits 8:5 and 2:1
RSVD_LARGE_2M = 0x001F_E000  # bits 20:13 of a 2 MiB leaf
RSVD_LARGE_1G = 0x3FFF_E000  # bits 29:13 of a 1 GiB leaf
PSE36_HIGH_SHIFT = 13  # bits 20:13 of a 4 MiB PDE hold physical bits 39:32
PSE36_TOP_BIT = 21  # bit 21 of a 4 MiB PDE is always reserved
PDE_4M_ADDR_MASK = 0xFFC0_0000


class Access(IntFlag):
    """What kind of access is being translated.

    ``USER`` means the access is made at CPL 3 (not an implicit supervisor
    access such as a descriptor-table read).  ``AC`` says EFLAGS.AC=1 for an
    *explicit* supervisor-mode data access, which suspends SMAP (``stac``);
    the executor must pass it or a kernel's ``copy_from_user`` faults under
    CR4.SMAP.  ``READ`` (no flag) is a supervisor data read.
    """

    READ = 0
    WRITE = 1
    USER = 2
    FETCH = 4
    AC = 8


#: The flags as plain ints for the miss path, whose ``access`` is an int: ``int & IntFlag`` goes through
#: the enum's reflected operator (microseconds each, a dozen per miss).
_WRITE, _USER, _FETCH, _AC = int(Access.WRITE), int(Access.USER), int(Access.FETCH), int(Access.AC)

#: Number of distinct Access values: one TLB dict each.
_ACCESS_KINDS = 16


class PagingMode(IntEnum):
    """The paging mode the control registers select."""

    NONE = 0
    BITS32 = 2
    PAE = 3
    LONG4 = 4
    LONG5 = 5


@dataclass(frozen=True)
class _Level:
    """One level of a paging structure, as the walker needs it."""

    number: int  # 1 = page table ... 5 = PML5, as in Linux and KVM
    shift: int  # lowest linear-address bit this level's index covers
    rsvd: int  # reserved bits in an entry that references another table
    leaf_rsvd: int  # reserved bits in a large-page leaf (only if large_ok)
    large_ok: bool  # PS=1 maps a page here


@dataclass
class _WalkResult:
    """What one walk found: the entries read, and either a page or a fault."""

    entries: list[tuple[int, int, int]]
    fault: int | None = None  # None on success, else the walk's error-code bits (0: not present)
    page_base: int = 0  # guest-physical base of the 4 KiB page holding the address
    page_shift: int = PAGE_SHIFT
    global_page: bool = False
    writable: bool = True
    user: bool = True
    nx: bool = False


class Mmu:
    """Translate guest-linear to guest-physical addresses for one vCPU.

    The executor calls :meth:`set_mode` whenever CR0, CR3, CR4 or EFER
    change (it flushes exactly what the architecture flushes), or
    :meth:`write_cr3` for a MOV to CR3, which flushes even when the value is
    unchanged.  ``phys_bits`` is the guest's MAXPHYADDR (it decides which
    entry bits are reserved); ``gb_pages`` says whether 1 GiB pages exist.
    """

    def __init__(
        self,
        read_phys: Callable[[int, int], bytes],
        write_phys: Callable[[int, bytes], None],
        *,
        phys_bits: int = DEFAULT_PHYS_BITS,
        gb_pages: bool = True,
    ) -> None:
        if not 32 <= phys_bits <= MAX_PHYS_BITS:
            raise EmulatorError(f"MAXPHYADDR {phys_bits} is outside 32..{MAX_PHYS_BITS}")
        self._read_phys = read_phys
        self._write_phys = write_phys
        self.phys_bits = phys_bits
        self.gb_pages = gb_pages
        self.cr0 = 0
        self.cr3 = 0
        self.cr4 = 0
        self.efer = 0
        self.mode = PagingMode.NONE
        self._va_mask = MASK32
        self._pdptes: tuple[int, ...] = (0,) * PAE_PDPTE_COUNT
        self._levels: tuple[_Level, ...] = ()
        self._entry_size = 8
        self._index_mask = 0x1FF
        self._addr_mask = ((1 << phys_bits) - 1) & ~PAGE_OFFSET_MASK
        self._canonical_bits = 0
        # One dict per Access value: virtual page number -> physical page base.
        self._tlb: list[dict[int, int]] = [{} for _ in range(_ACCESS_KINDS)]
        self._global_vpns: set[int] = set()
        # Large pages cached in the TLB, so INVLPG can drop all of one:
        # pages per large page -> {first vpn: global}.
        self._large: dict[int, dict[int, bool]] = {}
        self._large_count = 0
        #: Called whenever cached translations are dropped (the executor's jump cache follows the TLB).
        self.on_flush: Callable[[], None] | None = None
        self._configure()

    # ------------------------------------------------------------------ modes
    def set_mode(self, cr0: int, cr3: int, cr4: int, efer: int) -> None:
        """Adopt new control registers, flushing what the architecture flushes.

        A change of CR0.PG/WP, CR4.PSE/PAE/PGE/SMEP/SMAP/LA57/PCIDE or
        EFER.NXE/LMA flushes the whole TLB, global pages included (our TLB
        caches permission decisions, so every bit that changes them counts).
        A different CR3 alone flushes all but global pages.  In PAE mode the
        PDPTEs are (re)loaded; if one is invalid :class:`InvalidPdpte` is
        raised and nothing changes, as the faulting MOV changes nothing.
        """
        mode_changed, cr3_changed = self._adopt(cr0, cr3, cr4, efer)
        if mode_changed:
            self._configure()
            self.flush()
        elif cr3_changed:
            self.flush(keep_global=bool(self.cr4 & CR4_PGE))

    def _adopt(self, cr0: int, cr3: int, cr4: int, efer: int) -> tuple[bool, bool]:
        """Take the registers (reloading the PAE PDPTEs if needed): (mode changed, CR3 changed)."""
        old_key = self._mode_key()
        saved = (self.cr0, self.cr3, self.cr4, self.efer)
        self.cr0, self.cr3, self.cr4, self.efer = cr0 & MASK64, cr3 & MASK64, cr4 & MASK64, efer & MASK64
        mode_changed = self._mode_key() != old_key
        cr3_changed = self.cr3 != saved[1]
        try:
            if mode_changed or cr3_changed:
                self._load_pdptes()
        except KvmliteError:
            self.cr0, self.cr3, self.cr4, self.efer = saved
            raise
        return mode_changed, cr3_changed

    def write_cr3(self, value: int) -> None:
        """A MOV to CR3: always flushes non-global entries (unless PCID no-flush applies).

        With CR4.PCIDE, bit 63 of ``value`` asks to keep the current PCID's
        entries; our TLB is untagged, so that is honoured only when the PCID
        stays the same and otherwise flushed (flushing more is always allowed).
        """
        value &= MASK64
        keep = False
        if self.cr4 & CR4_PCIDE and value & CR3_NOFLUSH:
            value &= ~CR3_NOFLUSH
            keep = (value & CR3_PCID_MASK) == (self.cr3 & CR3_PCID_MASK)
        self._load_cr3(value)
        if not keep:
            self.flush(keep_global=bool(self.cr4 & CR4_PGE))

    def _load_cr3(self, value: int) -> None:
        """Take a CR3 value (and in PAE mode its PDPTEs); an invalid PDPTE changes nothing."""
        old = self.cr3
        self.cr3 = value
        try:
            self._load_pdptes()
        except KvmliteError:
            self.cr3 = old
            raise

    def _mode_key(self) -> tuple[int, int, int]:
        cr0_bits = self.cr0 & (CR0_PG | CR0_WP)
        cr4_bits = self.cr4 & (CR4_PSE | CR4_PAE | CR4_PGE | CR4_SMEP | CR4_SMAP | CR4_LA57 | CR4_PCIDE)
        return cr0_bits, cr4_bits, self.efer & (EFER_NXE | EFER_LMA)

    def _select_mode(self) -> PagingMode:
        if not self.cr0 & CR0_PG:
            return PagingMode.NONE
        if self.efer & EFER_LMA:
            if not self.cr4 & CR4_PAE:
                raise EmulatorError("EFER.LMA with paging on but CR4.PAE clear is not a valid CPU state")
            return PagingMode.LONG5 if self.cr4 & CR4_LA57 else PagingMode.LONG4
        return PagingMode.PAE if self.cr4 & CR4_PAE else PagingMode.BITS32

    def _configure(self) -> None:
        """Precompute the level table and masks of the current paging mode."""
        self.mode = self._select_mode()
        nxe = bool(self.efer & EFER_NXE)
        nx_rsvd = 0 if nxe else PTE_NX
        low_phys = (1 << self.phys_bits) - 1
        self._canonical_bits = 0
        if self.mode is PagingMode.NONE:
            self._levels = ()
            self._va_mask = MASK64 if self.efer & EFER_LMA else MASK32
        elif self.mode is PagingMode.BITS32:
            self._va_mask = MASK32
            self._entry_size, self._index_mask = 4, 0x3FF
            pse_bits = min(self.phys_bits, PSE36_MAX_PHYS_BITS) - 32
            rsvd_4m = ((1 << (PSE36_TOP_BIT + 1)) - 1) & ~((1 << (PSE36_HIGH_SHIFT + pse_bits)) - 1)
            self._levels = (
                _Level(2, 22, 0, rsvd_4m, bool(self.cr4 & CR4_PSE)),
                _Level(1, 12, 0, 0, False),
            )
        else:
            self._entry_size, self._index_mask = 8, 0x1FF
            if self.mode is PagingMode.PAE:
                self._va_mask = MASK32
                high = ((1 << 63) - 1) & ~low_phys  # PAE: bits 62:M are reserved
            else:
                self._canonical_bits = 57 if self.mode is PagingMode.LONG5 else 48
                self._va_mask = MASK64
                high = ((1 << MAX_PHYS_BITS) - 1) & ~low_phys  # bits 62:52 are ignored
            base = high | nx_rsvd
            levels = [
                _Level(2, 21, base, base | RSVD_LARGE_2M, True),
                _Level(1, 12, base, base, False),
            ]
            if self.mode is not PagingMode.PAE:
                if self.gb_pages:
                    levels.insert(0, _Level(3, 30, base, base | RSVD_LARGE_1G, True))
                else:  # without 1 GiB pages, PS in a PDPTE is a reserved bit
                    levels.insert(0, _Level(3, 30, base | PTE_PS, 0, False))
                levels.insert(0, _Level(4, 39, base | PTE_PS, 0, False))
                if self.mode is PagingMode.LONG5:
                    levels.insert(0, _Level(5, 48, base | PTE_PS, 0, False))
            self._levels = tuple(levels)
        log.debug("paging mode %s (cr0=%#x cr4=%#x efer=%#x)", self.mode.name, self.cr0, self.cr4, self.efer)

    def _load_pdptes(self) -> None:
        """Load the four PAE PDPTE registers from CR3, as MOV CR3/CR0/CR4 do."""
        if self._select_mode() is not PagingMode.PAE:
            return
        base = self.cr3 & PAE_PDPT_MASK
        raw = self._read(base, 8 * PAE_PDPTE_COUNT, 3)
        low_phys = (1 << self.phys_bits) - 1
        rsvd = (MASK64 & ~low_phys) | RSVD_PAE_PDPTE_LOW
        pdptes = tuple(int.from_bytes(raw[i * 8 : i * 8 + 8], "little") for i in range(PAE_PDPTE_COUNT))
        for i, e in enumerate(pdptes):
            if e & PTE_P and e & rsvd:
                raise InvalidPdpte(i, e)
        self._pdptes = pdptes

    # ------------------------------------------------------------------ TLB
    def flush(self, keep_global: bool = False) -> None:
        """Drop cached translations; with ``keep_global``, keep those of global pages."""
        if self.on_flush is not None:
            self.on_flush()
        if keep_global and self._global_vpns:
            glob = self._global_vpns
            for d in self._tlb:
                kept = {vpn: page for vpn, page in d.items() if vpn in glob}
                d.clear()
                d.update(kept)
            self._large = {n: {b: g for b, g in bases.items() if g} for n, bases in self._large.items()}
            self._large_count = sum(len(bases) for bases in self._large.values())
        else:
            for d in self._tlb:
                d.clear()
            self._global_vpns.clear()
            self._large.clear()
            self._large_count = 0

    def invlpg(self, gva: int) -> None:
        """Invalidate the translation of the page holding ``gva`` (the whole page if large)."""
        if self.on_flush is not None:
            self.on_flush()
        vpn = (gva & self._va_mask) >> PAGE_SHIFT
        for d in self._tlb:
            d.pop(vpn, None)
        self._global_vpns.discard(vpn)
        for count, bases in self._large.items():
            first = vpn & ~(count - 1)
            if bases.pop(first, None) is None:
                continue
            end = first + count
            for d in self._tlb:
                for key in [k for k in d if first <= k < end]:
                    del d[key]
            self._global_vpns.difference_update([v for v in self._global_vpns if first <= v < end])

    def tlb_size(self) -> int:
        """Number of cached (page, access kind) translations, for statistics and tests."""
        return sum(len(d) for d in self._tlb)

    # ------------------------------------------------------------ translation
    def translate(self, gva: int, access: Access = Access.READ) -> int:
        """The guest-physical address of ``gva`` for ``access``, or raise :class:`PageFault`.

        A TLB hit is one list index and one ``dict.get``; everything else is
        in :meth:`_translate_miss`.
        """
        try:
            page = self._tlb[access].get(gva >> PAGE_SHIFT)
        except IndexError:  # free in 3.11 unless raised
            raise EmulatorError(f"invalid access kind {int(access):#x}") from None
        if page is not None:
            return page | (gva & PAGE_OFFSET_MASK)
        return self._translate_miss(gva, access)

    def translate_range(self, gva: int, length: int, access: Access = Access.READ) -> list[tuple[int, int]]:
        """``[gva, gva+length)`` as (gpa, n) pieces split at page boundaries.

        Every page is translated before anything is returned, so a fault in
        the second page of a straddling write leaves the first one unwritten;
        the fault's address is the first byte of the faulting page.  Linear
        addresses wrap at 4 GiB outside long mode.
        """
        if length < 0:
            raise EmulatorError(f"negative access length {length} at {gva:#x}")
        out: list[tuple[int, int]] = []
        mask = self._va_mask
        addr = gva & mask
        while length:
            n = min(length, PAGE_SIZE - (addr & PAGE_OFFSET_MASK))
            gpa = self.translate(addr, access)
            if out and out[-1][0] + out[-1][1] == gpa:
                out[-1] = (out[-1][0], out[-1][1] + n)
            else:
                out.append((gpa, n))
            addr = (addr + n) & mask
            length -= n
        return out

    def _translate_miss(self, gva: int, access: int) -> int:
        access = int(access)
        if not 0 <= access < _ACCESS_KINDS:
            raise EmulatorError(f"invalid access kind {access:#x}")
        va = gva & self._va_mask
        if va != gva:
            # Outside long mode the linear address wraps; the TLB is keyed by the wrapped address.
            page = self._tlb[access].get(va >> PAGE_SHIFT)
            if page is not None:
                return page | (va & PAGE_OFFSET_MASK)
        if self.mode is PagingMode.NONE:
            self._insert(va >> PAGE_SHIFT, access, va & ~PAGE_OFFSET_MASK, False, 0)
            return va
        res = self._walk(va)
        if res.fault is not None:
            raise PageFault(va, res.fault | self._access_code(access), self._fault_reason(res))
        self._check_rights(va, access, res)
        self._set_accessed_dirty(res, access & _WRITE)
        vpn = va >> PAGE_SHIFT
        self._walked(vpn, res.entries)
        self._insert(vpn, access, res.page_base, res.global_page, res.page_shift - PAGE_SHIFT)
        return res.page_base | (va & PAGE_OFFSET_MASK)

    def _walked(self, vpn: int, entries: list[tuple[int, int, int]]) -> None:
        """A walk for ``vpn`` succeeded through ``entries`` (the shadow MMU keeps its reverse map)."""

    def _insert(self, vpn: int, access: int, page: int, global_page: bool, large_order: int) -> None:
        """Cache one translation; ``large_order`` is log2 of the 4 KiB pages in its page."""
        d = self._tlb[access]
        if len(d) >= TLB_MAX_ENTRIES:
            d.clear()
        d[vpn] = page
        if global_page:
            self._global_vpns.add(vpn)
        if large_order:
            count = 1 << large_order
            bases = self._large.setdefault(count, {})
            first = vpn & ~(count - 1)
            if first not in bases:
                if self._large_count >= TLB_MAX_ENTRIES:
                    self.flush()  # bound the bookkeeping; d[vpn] is refilled on the next miss
                    bases = self._large.setdefault(count, {})
                self._large_count += 1
            bases[first] = bases.get(first, False) or global_page

    def _access_code(self, access: int) -> int:
        code = 0
        if access & _WRITE:
            code |= PFEC_W
        if access & _USER:
            code |= PFEC_U
        if access & _FETCH and (
            self.cr4 & CR4_SMEP or (self.mode is not PagingMode.BITS32 and self.efer & EFER_NXE)
        ):
            code |= PFEC_ID
        return code

    @staticmethod
    def _fault_reason(res: _WalkResult) -> str:
        level = res.entries[-1][0] if res.entries else 3
        if res.fault and res.fault & PFEC_RSVD:
            return f"reserved bit set in level-{level} entry"
        return f"level-{level} entry not present"

    def _check_rights(self, va: int, access: int, res: _WalkResult) -> None:
        """Raise the protection #PF the access deserves, if any (SDM 4.6)."""
        why = ""
        if access & _USER:
            if not res.user:
                why = "user access to a supervisor page"
            elif access & _WRITE and not res.writable:
                why = "user write to a read-only page"
        else:
            if access & _WRITE and not res.writable and self.cr0 & CR0_WP:
                why = "supervisor write to a read-only page with CR0.WP=1"
            elif res.user and access & _FETCH and self.cr4 & CR4_SMEP:
                why = "supervisor fetch from a user page with CR4.SMEP=1"
            elif res.user and not access & _FETCH and self.cr4 & CR4_SMAP and not access & _AC:
                why = "supervisor data access to a user page with CR4.SMAP=1"
        if not why and access & _FETCH and res.nx:
            why = "fetch from a no-execute page"
        if why:
            raise PageFault(va, PFEC_P | self._access_code(access), why)

    def _set_accessed_dirty(self, res: _WalkResult, write: int) -> None:
        """Set A in every entry used and D in the leaf of a write, touching only byte 0."""
        last = len(res.entries) - 1
        for i, (level, addr, value) in enumerate(res.entries):
            if self.mode is PagingMode.PAE and level == 3:
                continue  # PAE PDPTEs are registers; the CPU never writes them back
            want = PTE_A | (PTE_D if write and i == last else 0)
            if value & want != want:
                self._write(addr, bytes(((value | want) & 0xFF,)))

    # ------------------------------------------------------------------ walk
    def _check_canonical(self, va: int) -> None:
        bits = self._canonical_bits
        if bits:
            top = va >> (bits - 1)
            if top and top != (MASK64 >> (bits - 1)):
                raise NonCanonicalAddress(va)

    def _walk(self, va: int) -> _WalkResult:
        """Read the paging structures for ``va`` without side effects."""
        res = _WalkResult(entries=[])
        entries = res.entries
        self._check_canonical(va)
        if self.mode is PagingMode.PAE:
            idx = (va >> 30) & 3
            e = self._pdptes[idx]
            entries.append((3, (self.cr3 & PAE_PDPT_MASK) + idx * 8, e))
            if not e & PTE_P:
                res.fault = 0  # not present: error code P=0
                return res
            table = e & self._addr_mask
        elif self.mode is PagingMode.BITS32:
            table = self.cr3 & PD32_MASK
        else:
            table = self.cr3 & self._addr_mask
        size = self._entry_size
        index_mask = self._index_mask
        writable = user = True
        nx = False
        addr_mask = self._addr_mask
        for lvl in self._levels:
            addr = table + ((va >> lvl.shift) & index_mask) * size
            e = int.from_bytes(self._read(addr, size, lvl.number), "little")
            entries.append((lvl.number, addr, e))
            if not e & PTE_P:
                res.fault = 0
                return res
            leaf = lvl.shift == PAGE_SHIFT or (lvl.large_ok and bool(e & PTE_PS))
            rsvd = lvl.leaf_rsvd if leaf and lvl.shift != PAGE_SHIFT else lvl.rsvd
            if e & rsvd:
                res.fault = PFEC_P | PFEC_RSVD
                return res
            writable = writable and bool(e & PTE_RW)
            user = user and bool(e & PTE_US)
            nx = nx or bool(e & PTE_NX)
            if leaf:
                res.page_shift = lvl.shift
                res.global_page = bool(e & PTE_G) and bool(self.cr4 & CR4_PGE)
                page_mask = (1 << lvl.shift) - 1
                if size == 4 and lvl.shift == 22:
                    frame = (e & PDE_4M_ADDR_MASK) | (((e >> PSE36_HIGH_SHIFT) & 0xFF) << 32)
                else:
                    frame = e & addr_mask & ~page_mask
                res.page_base = frame | (va & page_mask & ~PAGE_OFFSET_MASK)
                break
            table = e & addr_mask if size == 8 else e & PD32_MASK
        res.writable, res.user = writable, user
        res.nx = nx and bool(self.efer & EFER_NXE) and size == 8
        return res

    def walk(self, gva: int) -> list[tuple[int, int, int]]:
        """The (level, entry address, entry value) chain for ``gva``, for dumps and gdb.

        Levels count from 1 (page table) up to 4 (PML4) or 5; the PAE PDPTE
        is level 3 and shows the register value loaded at the last CR3 load.
        The chain ends at the leaf or at the first entry that is not present
        or has reserved bits.  Empty with paging off.  No flags are set.
        """
        if self.mode is PagingMode.NONE:
            return []
        return self._walk(gva & self._va_mask).entries

    def debug_translate(self, gva: int) -> int | None:
        """The guest-physical address of ``gva`` ignoring rights and the TLB, or None.

        For a debugger reading guest memory: sets no A/D flags, raises no #PF.
        """
        va = gva & self._va_mask
        if self.mode is PagingMode.NONE:
            return va
        try:
            res = self._walk(va)
        except NonCanonicalAddress:
            return None
        if res.fault is not None:
            return None
        return res.page_base | (va & PAGE_OFFSET_MASK)

    # --------------------------------------------------------- memory access
    def _read(self, gpa: int, size: int, level: int) -> bytes:
        """Read a paging-structure entry (or the PAE PDPT, level 3) from guest memory."""
        try:
            data = self._read_phys(gpa, size)
        except KvmliteError as err:
            raise EmulatorError(
                f"level-{level} paging entry at guest-physical {gpa:#x} is not in guest RAM"
            ) from err
        if len(data) != size:
            raise EmulatorError(
                f"level-{level} paging entry at {gpa:#x}: read {len(data)} bytes, wanted {size}"
            )
        return data

    def _write(self, gpa: int, data: bytes) -> None:
        try:
            self._write_phys(gpa, data)
        except KvmliteError as err:
            raise EmulatorError(f"cannot set A/D flags at guest-physical {gpa:#x}") from err
