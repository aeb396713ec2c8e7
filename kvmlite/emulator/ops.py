"""The emulator's window on the world outside the CPU (Linux's ``x86_emulate_ops``).

The executor never touches guest RAM, devices or host facilities directly: it
calls an :class:`EmulatorOps`.  Tests give it a fake; the software backend
gives it :class:`PagedOps` over guest memory and an MMIO/PIO bus; the KVM
backend can give it one built on the vCPU it is rescuing.

Division of labour (chosen so that the slow, mode-dependent part stays in one
place): the **executor** applies segmentation (base, limit, canonical checks,
which need the descriptor caches it already owns) and hands **linear**
addresses to ops; **ops** does paging (through :class:`~kvmlite.emulator.mmu.Mmu`)
and the physical access, raising :class:`~kvmlite.emulator.mmu.PageFault` when
a translation fails.  ``access`` is the MMU's :class:`~kvmlite.emulator.mmu.Access`
bit set as a plain int (WRITE=1, USER=2, FETCH=4, AC=8).

The register file is the :class:`~kvmlite.emulator.cpu.CpuState` passed to
the executor beside the ops: registers are read and written many times per
instruction, so they are a plain object rather than calls through this
interface.  When paging-relevant registers change the executor tells ops
with :meth:`EmulatorOps.paging_changed`, :meth:`EmulatorOps.cr3_written` and
:meth:`EmulatorOps.invlpg`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from kvmlite.emulator.faults import GP, GuestFault, NonCanonicalAddress, PageFault
from kvmlite.emulator.mmu import Access, Mmu
from kvmlite.emulator.shadow import ShadowMmu

log = logging.getLogger(__name__)

# Plain-int aliases of mmu.Access for the executor's per-access paths.
ACCESS_READ, ACCESS_WRITE, ACCESS_USER = int(Access.READ), int(Access.WRITE), int(Access.USER)
ACCESS_FETCH, ACCESS_AC = int(Access.FETCH), int(Access.AC)

PAGE_SIZE = 4096

# CPUID answers of the built-in default: a plain x86-64 CPU with the features of the instructions
# the executor runs that an opcode row gates on CPUID (see Row.cpuid): MOVBE, POPCNT, RDRAND, RDSEED,
# FSGSBASE, RDPID, RDTSCP.  XSAVE, SMAP and MONITOR are not advertised: their instructions #UD.
_VENDOR = (0x756E6547, 0x6C65746E, 0x49656E69)  # "GenuineIntel" is EBX "Genu", EDX "ineI", ECX "ntel"
DEFAULT_CPUID: dict[tuple[int, int], tuple[int, int, int, int]] = {
    (0, 0): (0x15, _VENDOR[0], _VENDOR[1], _VENDOR[2]),
    # family 6: FPU TSC MSR PAE CX8 APIC SEP PGE CMOV FXSR SSE SSE2 ... ; ECX: SSE3 CX16 MOVBE POPCNT RDRAND
    (1, 0): (0x000306A9, 0x00000800, 0x40C02001, 0x078BFBFF),
    (7, 0): (0, 0x00040001, 0x00400000, 0),  # EBX: FSGSBASE RDSEED; ECX: RDPID
    # TSC and core crystal clock: the TSC (``rdtsc``, host nanoseconds) runs at 1 GHz, and so does the
    # LAPIC timer's bus clock (kvmlite.devices.lapic); Linux takes both from here instead of calibrating
    # them against the PIT, which an emulated CPU reads too slowly to calibrate anything.
    (0x15, 0): (1, 1, 1_000_000_000, 0),
    (0x80000000, 0): (0x80000008, 0, 0, 0),
    (0x80000001, 0): (0, 0, 0x1, 0x28100800),  # LAHF-LM; SYSCALL, NX, RDTSCP, LM
    (0x80000008, 0): (0x00003028, 0, 0, 0),  # 40 physical, 48 linear address bits
}


class EmulatorOps:
    """Everything the executor needs from outside the CPU.

    The base class is usable as is for a machine with no devices: port reads
    return all ones, port writes and unknown MSR writes are logged, unknown MSR
    reads raise #GP as the CPU does.  Memory methods must be provided by a
    subclass (see :class:`PagedOps` and the test fake).
    """

    # --- memory (linear addresses; paging is done here) -------------------------------
    def read_linear(self, addr: int, size: int, access: int) -> bytes:
        raise NotImplementedError

    def write_linear(self, addr: int, data: bytes, access: int) -> None:
        raise NotImplementedError

    # --- translation blocks (kvmlite.emulator.tb) ---------------------------------------
    def code_page(self, addr: int, access: int) -> tuple[int, memoryview] | None:
        """(physical address, bytes from there to the end of its page) of code at linear ``addr``.

        None when the code is not in guest RAM (or the ops cannot say): the
        executor then runs it instruction by instruction.  Raises the MMU's
        faults like a fetch.
        """
        return None

    def ram_page(self, gpa: int) -> memoryview | None:
        """Guest RAM from ``gpa`` to the end of its page, or None outside RAM."""
        return None

    def watch_code(
        self,
        pages: Mapping[int, object],
        written: Callable[[int], None],
        tlb_flushed: Callable[[], None],
        tracked: Callable[[], None],
    ) -> None:
        """Call ``written(page number)`` when the CPU writes a page in ``pages`` (which holds decoded
        code), ``tlb_flushed()`` when cached translations are dropped and ``tracked()`` when a
        page-table page starts being watched."""

    def page_view(self, addr: int, access: int) -> memoryview | None:
        """The guest RAM page holding linear ``addr`` for direct access, or None (not RAM, or a
        write to a page whose writes must be seen).  Translates like an access (faults included)."""
        return None

    def phys_page(self, addr: int) -> int | None:
        """The guest-physical page of linear ``addr`` as already translated (for aliasing checks)."""
        return None

    def reset_translations(self) -> None:
        """Forget every cached translation (a CPU state was loaded from outside)."""

    # --- paging notifications ---------------------------------------------------------
    def paging_changed(self, cr0: int, cr3: int, cr4: int, efer: int) -> None:
        """CR0, CR4 or EFER changed (or the state was loaded): re-read the paging mode."""

    def cr3_written(self, value: int) -> None:
        """A MOV to CR3 (flushes non-global translations even if unchanged)."""

    def invlpg(self, addr: int) -> None:
        """INVLPG: forget the translation of one linear page."""

    # --- ports ------------------------------------------------------------------------
    def io_in(self, port: int, size: int) -> int:
        log.debug("unhandled port read %#x/%d", port, size)
        return (1 << (8 * size)) - 1

    def io_out(self, port: int, size: int, value: int) -> None:
        log.debug("unhandled port write %#x/%d = %#x", port, size, value)

    # --- MSRs, CPUID, time, halt ------------------------------------------------------
    def read_msr(self, index: int) -> int:
        """Value of an MSR the executor does not implement itself; #GP if unknown."""
        raise GuestFault(GP, 0, reason=f"RDMSR of unknown MSR {index:#x}")

    def write_msr(self, index: int, value: int) -> None:
        log.warning("WRMSR %#x = %#x ignored (unknown MSR)", index, value)

    def cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        """EAX, EBX, ECX, EDX for CPUID(leaf, subleaf)."""
        entry = DEFAULT_CPUID.get((leaf, subleaf)) or DEFAULT_CPUID.get((leaf, 0))
        return entry if entry is not None else (0, 0, 0, 0)

    def rdtsc(self) -> int:
        return time.monotonic_ns()

    def halt(self) -> None:
        """HLT executed with interrupts as they are; the run loop decides what to wait for."""


class PagedOps(EmulatorOps):
    """Ops over guest-physical accessors, with paging through an :class:`Mmu`.

    ``read_phys(gpa, size) -> bytes`` and ``write_phys(gpa, data)`` reach RAM
    and MMIO alike (the software backend routes them to GuestMemory or the
    MMIO bus).  Accesses that cross a page are split after translating every
    page first, so a fault in the second page leaves the first unwritten.
    """

    def __init__(
        self,
        read_phys: Callable[[int, int], bytes],
        write_phys: Callable[[int, bytes], None],
        mmu: Mmu | None = None,
    ) -> None:
        self.read_phys = read_phys
        self.write_phys = write_phys
        self.mmu = mmu if mmu is not None else Mmu(read_phys, write_phys)
        self.code_pages: Mapping[int, object] = {}
        self.code_written: Callable[[int], None] = lambda ppn: None
        #: page-table frames the shadow MMU tracks (empty with a plain MMU): writes to them are seen
        self.pt_pages: dict[int, int] = self.mmu.pt_pages if isinstance(self.mmu, ShadowMmu) else {}

    def watch_code(
        self,
        pages: Mapping[int, object],
        written: Callable[[int], None],
        tlb_flushed: Callable[[], None],
        tracked: Callable[[], None],
    ) -> None:
        self.code_pages, self.code_written = pages, written
        self.mmu.on_flush = tlb_flushed
        if isinstance(self.mmu, ShadowMmu):
            self.mmu.on_track = tracked

    def check_write(self, gpa: int, size: int) -> None:
        """A CPU write to [gpa, gpa+size): drop the translation blocks of the pages it touches and
        the shadow MMU's translations derived from the page-table entries it changes."""
        pages = self.code_pages
        first, last = gpa >> 12, (gpa + size - 1) >> 12
        if first in pages:
            self.code_written(first)
        if last != first and last in pages:
            self.code_written(last)
        pt = self.pt_pages
        if first in pt or last in pt:
            self.mmu.written(gpa, size)  # type: ignore[attr-defined]

    def page_view(self, addr: int, access: int) -> memoryview | None:
        gpa = self.mmu.translate(addr, access)  # type: ignore[arg-type]
        ppn = gpa >> 12
        if access & ACCESS_WRITE and (ppn in self.code_pages or ppn in self.pt_pages):
            return None
        return self.ram_page(gpa & ~(PAGE_SIZE - 1))

    def phys_page(self, addr: int) -> int | None:
        try:
            return self.mmu.translate(addr, Access.READ) >> 12
        except (PageFault, NonCanonicalAddress):
            return None

    def reset_translations(self) -> None:
        if isinstance(self.mmu, ShadowMmu):
            self.mmu.drop_all()
        else:
            self.mmu.flush()

    def code_page(self, addr: int, access: int) -> tuple[int, memoryview] | None:
        gpa = self.mmu.translate(addr, access)  # type: ignore[arg-type]
        view = self.ram_page(gpa)
        return None if view is None else (gpa, view)

    def read_linear(self, addr: int, size: int, access: int) -> bytes:
        if (addr & (PAGE_SIZE - 1)) + size <= PAGE_SIZE:
            return self.read_phys(self.mmu.translate(addr, access), size)  # type: ignore[arg-type]
        pieces = self.mmu.translate_range(addr, size, access)  # type: ignore[arg-type]
        return b"".join(self.read_phys(gpa, n) for gpa, n in pieces)

    def write_linear(self, addr: int, data: bytes, access: int) -> None:
        size = len(data)
        if (addr & (PAGE_SIZE - 1)) + size <= PAGE_SIZE:
            self.write_phys(self.mmu.translate(addr, access), data)  # type: ignore[arg-type]
            return
        pos = 0
        for gpa, n in self.mmu.translate_range(addr, size, access):  # type: ignore[arg-type]
            self.write_phys(gpa, data[pos : pos + n])
            pos += n

    def paging_changed(self, cr0: int, cr3: int, cr4: int, efer: int) -> None:
        self.mmu.set_mode(cr0, cr3, cr4, efer)

    def cr3_written(self, value: int) -> None:
        self.mmu.write_cr3(value)

    def invlpg(self, addr: int) -> None:
        self.mmu.invlpg(addr)
