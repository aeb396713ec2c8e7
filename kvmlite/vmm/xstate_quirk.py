"""Keep the vector state a guest kernel does not save, on hosts whose ring 3 runs with the host's XCR0.

On some nested hosts (this project's kvm-pvm machines, docs/platform-notes.md)
guest code at CPL 3 runs natively with the *host's* XCR0 (AVX and AVX-512
state enabled) and sees the host's CPUID, whatever XCR0 the guest kernel set.
A kernel that runs with XCR0 = x87|SSE (Linux booted with ``clearcpuid=avx``,
which that host needs, because it turns VEX instructions at CPL 0 into #UD)
then saves only x87/SSE state at a context switch, while its processes use
AVX2/AVX-512 (glibc's ``memcpy``): one process resumes with another's upper
YMM halves, ZMM16-31 and mask registers, and crashes.

On those hosts the guest kernel's ``XSAVE*``/``XRSTOR*`` at CPL 0 all end in
an emulation failure that :class:`~kvmlite.vmm.rescue.Rescuer` completes in
kvmlite's emulator on the vCPU's full state (KVM_GET_XSAVE).  The
:class:`ExtendedStateKeeper` rides on those rescues, transparently to the guest:

* at an XSAVE of the x87/SSE state, it keeps the components ring 3 has but the
  guest's XCR0 leaves out (the *extended* ones) in a side table keyed by the
  guest-physical address of the save area, with the x87/SSE register image the
  XSAVE wrote;
* at an XRSTOR of the x87/SSE state from an area, it loads those components
  from the table if the area still holds exactly the register image that XSAVE
  wrote, and their initial state otherwise (an area copied, reused or
  reinitialised by the kernel: a task never gets another task's registers);
* the table is one per VM (tasks move between vCPUs) and bounded
  (:data:`MAX_AREAS`, least recently saved dropped first).

It acts only where :func:`ring3_extra_xcr0` finds the quirk, with a tiny VM
that sets XCR0 = x87|SSE and reads XCR0 with XGETBV at CPL 3, once per
process, at the first rescued XSAVE/XRSTOR.  On a normal host a guest's XSAVE
never needs a rescue and ring 3 sees the guest's XCR0: nothing here runs.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from kvmlite.errors import KvmliteError
from kvmlite.vmm.host_probe import PORT, HostProbe, NewVm, long_mode_vm, reported, run_to_exit
from kvmlite.x86 import Cr4, Xcr0

log = logging.getLogger(__name__)

SAVES = frozenset({"xsave", "xsave64", "xsaveopt", "xsaveopt64", "xsavec", "xsavec64", "xsaves", "xsaves64"})
RESTORES = frozenset({"xrstor", "xrstor64", "xrstors", "xrstors64"})
#: The part of a save area that identifies the state an XSAVE wrote: the x87 and SSE registers and
#: MXCSR (bytes 464-511 are software's, and Linux edits XSTATE_BV of a signal frame after saving it).
FINGERPRINT_SIZE = 464
#: Areas remembered per VM: one per guest task, plus signal frames (about 2.3 KB each with AVX-512).
MAX_AREAS = 4096
XCR0_X87_SSE = int(Xcr0.X87 | Xcr0.SSE)
XCR0_SSE = int(Xcr0.SSE)  # a plain int: this runs at every rescued XSAVE/XRSTOR
#: The emulator's numbers of FS and GS: the only segment registers with a base in 64-bit mode.
FS_GS = (4, 5)
MASK64 = (1 << 64) - 1
STATS_KEPT = "xrstor: extended state kept by kvmlite"
STATS_INIT = "xrstor: extended state reset by kvmlite"

def _probe(new_vm: NewVm) -> int:
    """Ring-3 XGETBV in a long-mode VM whose XCR0 is x87|SSE; the value read, through an OUT."""
    from kvmlite.vmm.cpu_setup import guest_cpuid

    code = bytes.fromhex("31c9 0f01d0 e7") + bytes([PORT]) + b"\xf4"  # xor ecx,ecx; xgetbv; out PORT,eax; hlt
    with long_mode_vm(new_vm, code, ring3=True) as (vm, vcpu, _, regs, sregs):
        vcpu.set_cpuid(guest_cpuid(vm.supported_cpuid(), 0))
        sregs.cr4 |= Cr4.OSXSAVE
        vcpu.set_sregs(sregs)
        vcpu.set_regs(regs)
        xcrs = vcpu.get_xcrs()
        xcrs.nr_xcrs, xcrs.xcrs[0].xcr, xcrs.xcrs[0].value = 1, 0, XCR0_X87_SSE
        vcpu.set_xcrs(xcrs)
        seen = reported(run_to_exit(vcpu))
    extra = (seen if seen is not None else XCR0_X87_SSE) & ~XCR0_X87_SSE
    if extra:
        log.info(
            "this host runs guest ring 3 with its own XCR0 (state %#x beyond the guest's): kvmlite keeps "
            "that state across the guest kernel's XSAVE/XRSTOR",
            extra,
        )
    return extra


#: The XCR0 bits guest ring 3 has beyond x87|SSE when the guest's XCR0 is x87|SSE (0: a correct host).
ring3_extra_xcr0: HostProbe[int] = HostProbe("XCR0 at CPL 3", _probe, 0)


class _Saved:
    __slots__ = ("bv", "data", "fingerprint")

    def __init__(self, fingerprint: bytes, bv: int, data: bytes) -> None:
        self.fingerprint = fingerprint
        self.bv = bv  # XSTATE_BV bits of the kept components
        self.data = data  # the kept components, in layout order, at their standard sizes


class ExtendedStateKeeper:
    """Per VM: the components the guest's XSAVE leaves out, kept per save area (see the module docstring)."""

    def __init__(self, new_vm: Callable[[], Any] | None, max_areas: int = MAX_AREAS) -> None:
        self.new_vm = new_vm  # for the probe
        self.max_areas = max_areas
        self._areas: OrderedDict[int, _Saved] = OrderedDict()
        self._lock = threading.Lock()
        self._extra: int | None = None  # from the probe, at the first XSAVE/XRSTOR rescued
        self._layouts: dict[int, list[Any]] = {}  # the kept components by XCR0 bits (CPUID 0xD)

    def before_step(self, rescuer: Any, what: str) -> Callable[[], None] | None:
        """Called by the rescuer before it emulates ``what``; returns what to do once it has, if anything."""
        mnemonic = rescuer.insn.mnemonic if rescuer.insn is not None else what
        save = mnemonic in SAVES
        if not save and mnemonic not in RESTORES:
            return None
        if self._extra is None:
            self._extra = ring3_extra_xcr0(self.new_vm) if self.new_vm is not None else 0
        cpu = rescuer.cpu
        extra = self._extra & ~cpu.xcr0
        rfbm = ((cpu.gpr[2] & 0xFFFF_FFFF) << 32 | (cpu.gpr[0] & 0xFFFF_FFFF)) & cpu.xcr0
        if not extra or not rfbm & XCR0_SSE:
            return None
        located = _area_address(rescuer, save)
        if located is None:
            return None  # the step raises the fault the guest must see
        linear, physical, next_rip, access = located
        components = self._layouts.get(extra)
        if components is None:
            from kvmlite.emulator import xstate

            components = self._layouts[extra] = xstate.layout(rescuer.ops.cpuid, extra)

        def after() -> None:
            if cpu.rip != next_rip:
                return  # the instruction faulted: nothing was saved or restored
            image = rescuer.ops.read_linear(linear, FINGERPRINT_SIZE, access)  # translated already
            if save:
                self._keep(physical, image, cpu.xsave_area, components)
            else:
                kept = self._restore(physical, image, cpu.xsave_area, components)
                rescuer.loop.stats.rescues[STATS_KEPT if kept else STATS_INIT] += 1

        return after

    def _keep(self, physical: int, image: bytes, area: bytearray, components: list[Any]) -> None:
        from kvmlite.emulator import xstate

        in_use = xstate.xstate_bv(area)
        bv = sum(1 << c.index for c in components if in_use >> c.index & 1)
        data = b"".join(bytes(area[c.offset : c.offset + c.size]) for c in components)
        with self._lock:
            self._areas[physical] = _Saved(image, bv, data)
            self._areas.move_to_end(physical)
            while len(self._areas) > self.max_areas:
                self._areas.popitem(last=False)

    def _restore(self, physical: int, image: bytes, area: bytearray, components: list[Any]) -> bool:
        """Load the kept components (True), or their initial state where the area is not what was saved."""
        from kvmlite.emulator import xstate

        with self._lock:
            saved = self._areas.get(physical)
        kept = saved is not None and saved.fingerprint == image
        mask = sum(1 << c.index for c in components)
        bv = xstate.xstate_bv(area) & ~mask
        pos = 0
        for c in components:
            area[c.offset : c.offset + c.size] = saved.data[pos : pos + c.size] if kept else bytes(c.size)  # type: ignore[union-attr]
            pos += c.size
        if kept:
            bv |= saved.bv  # type: ignore[union-attr]
        area[xstate.HEADER_OFFSET : xstate.HEADER_OFFSET + 8] = bv.to_bytes(8, "little")
        return kept

    def __len__(self) -> int:
        return len(self._areas)


def _area_address(rescuer: Any, write: bool) -> tuple[int, int, int, int] | None:
    """(linear, guest-physical address, RIP after it, access kind) of the rescued instruction's save area.

    Translated as the instruction itself will access it, so that the step finds the translation in the
    emulator's TLB (a page walk is a good part of a rescue).
    """
    from kvmlite.errors import EmulatorError

    cpu, executor, insn = rescuer.cpu, rescuer.executor, rescuer.insn
    if cpu.code_bits != 64 or insn is None:
        return None  # Linux's context switch is 64-bit code; others are left as they were
    try:
        op = insn.operands[0]
        next_rip = cpu.rip + insn.length
        executor.next_rip = next_rip  # for a RIP-relative operand; the step sets it again
        linear = (executor.ea(op) + (cpu.segs[op.seg].base if op.seg in FS_GS else 0)) & MASK64
        executor.refresh_mode()  # the step does it again: the access kind for this CPL
        access = executor.data_access(write)
        return linear, rescuer.ops.mmu.translate(linear, access), next_rip, access
    except (EmulatorError, KvmliteError):
        return None
