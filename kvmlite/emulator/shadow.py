"""A shadow MMU for the software backend: translations kept per address space, with a reverse map.

:class:`~kvmlite.emulator.mmu.Mmu` models a hardware TLB: it caches what it
walked and forgets everything non-global at each CR3 load, so a guest that
switches between processes walks their page tables again after every switch.
KVM's shadow MMU (``arch/x86/kvm/mmu/mmu.c``) keeps the translations of each
address space instead and stays correct by *write-protecting* the guest's
page-table pages: a write to one is intercepted and drops exactly the shadow
entries derived from the guest entry written, found through a reverse map
(``rmap``).  :class:`ShadowMmu` is that design over the emulator's software
TLB, with the kernel's names:

* a **shadow context** per address space: the per-access-kind dictionaries
  (virtual page number -> guest-physical page) of one root, keyed by the
  root's frame (CR3 without its PCID and flag bits; in PAE mode with the four
  PDPTE registers, which are loaded from memory only at a CR3 load).  A CR3
  load *switches* context instead of flushing, so a process switch keeps
  both processes' translations; a change of CR0.PG/WP, CR4.PSE/PAE/PGE/SMEP/
  SMAP/LA57/PCIDE or EFER.NXE/LMA drops every context (permissions differ);
* **tracked page-table pages** (``pt_pages``: frame -> number of tracked
  entries in it), which the backend's physical-write path checks, the way
  KVM write-protects them (``kvm_mmu_slot_gfn_write_protect``);
* the **rmap**: guest entry address -> the (context, page) pairs whose walk
  read that entry.  A write to a tracked page drops exactly those pairs
  (``kvm_mmu_pte_write``); nothing is ever left *unsync* (KVM lets leaf
  entries go out of sync until the next INVLPG or CR3 load; here every
  write is seen at once, so the cache is always what a fresh walk would
  give).

Because the cache is coherent with guest memory, it is always a valid TLB
state: the SDM lets a processor drop (and re-walk) any translation at any
time, so keeping them across a CR3 load is indistinguishable from a TLB that
was flushed and refilled.  INVLPG drops the page in the current context
(nothing can be stale, but the instruction is honoured); global pages and
PCIDs need nothing beyond that (every context is walked from its own tables).
A and D flags are set by the walk that creates an entry, as before: a write
clearing A or D is a write to a tracked page and drops the entry, so the next
access walks and sets the flag again.

Only writes made by the CPU are seen.  The VMM writes page tables before the
guest runs and DMA never targets live page tables, but a state load
(KVM_SET_SREGS: a restore or reset) drops everything anyway (:meth:`drop_all`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kvmlite.emulator.mmu import (
    CR3_NOFLUSH,
    CR4_PCIDE,
    MASK64,
    PAGE_SHIFT,
    Mmu,
    PagingMode,
)

log = logging.getLogger(__name__)

#: Address spaces kept before all are dropped (a guest forking endlessly must not grow us).
MAX_CONTEXTS = 64
#: Reverse-map entries kept before everything is dropped.
MAX_RMAP = 1 << 18
_ACCESS_KINDS = 16
_ROOT_MASK = MASK64 & ~0xFFF & ~CR3_NOFLUSH

Context = list[dict[int, int]]


class ShadowMmu(Mmu):
    """:class:`Mmu` with per-address-space contexts and a reverse map; see the module docstring."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self._contexts: dict[tuple[int, tuple[int, ...]], Context] = {}
        self._rmap: dict[int, set[tuple[tuple[int, tuple[int, ...]], int]]] = {}
        #: guest page-table frames holding tracked entries -> how many (checked on every CPU write)
        self.pt_pages: dict[int, int] = {}
        #: called when a frame starts being tracked (the executor stops writing it directly)
        self.on_track: Callable[[], None] | None = None
        self._key: tuple[int, tuple[int, ...]] = (0, ())
        #: Empty the context a CR3 load switches to, as a TLB would.  Set for SMP guests: another vCPU's
        #: writes to page tables are not tracked by this one's rmap, and an OS flushes remote TLBs
        #: (an IPI, then a CR3 load or INVLPG) after changing entries that were in use.
        self.flush_on_cr3 = False
        self.switches = 0
        self.zaps = 0
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._switch()

    # ------------------------------------------------------------------ contexts
    def _switch(self) -> None:
        """Make the context of the current root the TLB (created empty if new)."""
        pdptes = self._pdptes if self.mode is PagingMode.PAE else ()
        key = (self.cr3 & _ROOT_MASK, pdptes)
        ctx = self._contexts.get(key)
        if ctx is None:
            if len(self._contexts) >= MAX_CONTEXTS:
                self._forget()
            ctx = self._contexts[key] = [{} for _ in range(_ACCESS_KINDS)]
        self._key = key
        self._tlb = ctx
        self.switches += 1

    def _forget(self) -> None:
        self._contexts.clear()
        self._rmap.clear()
        self.pt_pages.clear()
        self._global_vpns.clear()
        self._large.clear()
        self._large_count = 0

    def drop_all(self) -> None:
        """Forget every context and the reverse map (a state load, a mode change, a bound hit)."""
        self._forget()
        self._switch()
        if self.on_flush is not None:
            self.on_flush()

    def set_mode(self, cr0: int, cr3: int, cr4: int, efer: int) -> None:
        mode_changed, cr3_changed = self._adopt(cr0, cr3, cr4, efer)
        if mode_changed:
            self._configure()
            self.drop_all()
        elif cr3_changed:
            self._switch()
            if self.on_flush is not None:
                self.on_flush()

    def write_cr3(self, value: int) -> None:
        """A MOV to CR3: switch to that root's context (kept coherent, so nothing to flush)."""
        value &= MASK64
        if self.cr4 & CR4_PCIDE:
            value &= ~CR3_NOFLUSH
        self._load_cr3(value)
        self._switch()
        if self.flush_on_cr3:
            for d in self._tlb:
                d.clear()
        if self.on_flush is not None:
            self.on_flush()

    def flush(self, keep_global: bool = False) -> None:
        """Dropping more than asked is always allowed: every context goes."""
        self.drop_all()

    def invlpg(self, gva: int) -> None:
        vpn = (gva & self._va_mask) >> PAGE_SHIFT
        for d in self._tlb:
            d.pop(vpn, None)
        if self.on_flush is not None:
            self.on_flush()

    def context_count(self) -> int:
        return len(self._contexts)

    # ------------------------------------------------------------------ rmap
    def _walked(self, vpn: int, entries: list[tuple[int, int, int]]) -> None:
        pair = (self._key, vpn)
        rmap = self._rmap
        if len(rmap) >= MAX_RMAP:
            self.drop_all()
            rmap = self._rmap
            pair = (self._key, vpn)
        pae = self.mode is PagingMode.PAE
        new_frame = False
        for level, addr, _value in entries:
            if pae and level == 3:
                continue  # PDPTE registers: part of the context's key, not of memory
            users = rmap.get(addr)
            if users is None:
                users = rmap[addr] = set()
                frame = addr >> PAGE_SHIFT
                count = self.pt_pages.get(frame, 0)
                if not count:
                    new_frame = True
                self.pt_pages[frame] = count + 1
            users.add(pair)
        if new_frame and self.on_track is not None:
            self.on_track()

    def written(self, gpa: int, size: int) -> None:
        """The CPU wrote [gpa, gpa+size) in a tracked frame: drop what was derived from those entries."""
        rmap, contexts, pt_pages = self._rmap, self._contexts, self.pt_pages
        dropped = False
        for addr in range(gpa & ~3, gpa + size, 4):  # entries are 4 (32-bit paging) or 8 bytes
            users = rmap.pop(addr, None)
            if users is None:
                continue
            frame = addr >> PAGE_SHIFT
            left = pt_pages.get(frame, 1) - 1
            if left > 0:
                pt_pages[frame] = left
            else:
                pt_pages.pop(frame, None)
            for key, vpn in users:
                ctx = contexts.get(key)
                if ctx is not None:
                    for d in ctx:
                        d.pop(vpn, None)
            dropped = True
        if dropped:
            self.zaps += 1
            if self.on_flush is not None:
                self.on_flush()
