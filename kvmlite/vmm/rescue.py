"""Rescue of KVM emulation failures: emulate in Python what the host KVM could not.

When KVM_RUN ends with KVM_EXIT_INTERNAL_ERROR / KVM_INTERNAL_ERROR_EMULATION,
the host's instruction emulator gave up (on this project's nested hosts it
does for a 32-bit IRET at CPL 0, ``int3`` at CPL 0, ``lock cmpxchg16b``,
...).  :class:`Rescuer`, a loop extension, takes that exit over: it reads
the vCPU's state (registers, system registers and the MSRs the SYSCALL and
SYSENTER paths use), runs the failing instruction on kvmlite's emulator
against guest memory through the guest MMU, with ports and MMIO reaching the
machine's buses directly, writes the state back and lets KVM resume.  Each
rescue is counted per mnemonic (``--stats``).  An instruction the emulator
cannot do either stops the VM with the decoded instruction and a register
dump.

One emulator (state, decode cache) is kept per vCPU and reloaded in place
for every rescue.  It is built at the first failure: a guest that never
needs rescuing never pays for importing the emulator (a third of kvmlite's
start-up otherwise).
"""

from __future__ import annotations

import ctypes
import logging
from typing import TYPE_CHECKING, Any

from kvmlite.errors import KvmIoctlError
from kvmlite.kvm import exits as E
from kvmlite.kvm.constants import InternalError
from kvmlite.memory.guest import GuestMemory
from kvmlite.vmm.loop import LoopExtension, VcpuLoop
from kvmlite.x86 import Msr

if TYPE_CHECKING:
    from kvmlite.memory.bus import Bus

log = logging.getLogger(__name__)



class Rescuer(LoopExtension):
    """The loop extension that emulates an instruction KVM failed on (see the module docstring)."""

    exits = (E.InternalErrorExit,)

    def __init__(self, loop: VcpuLoop, memory: GuestMemory, xstate: Any = None) -> None:
        self.loop = loop
        self.vcpu = loop.vcpu
        self.memory = memory
        self.executor: Any = None
        self.insn: Any = None  # the instruction being rescued, decoded (None if it does not decode)
        self._xsave: Any = None  # the kvm_xsave of the rescue, written back if the instruction changed it
        #: A :class:`kvmlite.vmm.xstate_quirk.ExtendedStateKeeper` (shared by the VM's vCPUs), or None.
        self.xstate = xstate

    def _build(self) -> None:
        from kvmlite.emulator.cpu import CpuState
        from kvmlite.emulator.executor import Executor

        self.ops = _vcpu_ops(self.memory, self.loop.pio, self.loop.mmio, self.vcpu)
        self.cpu = CpuState()
        self.executor = Executor(self.cpu, self.ops)

    def on_exit(self, loop: VcpuLoop, ex: E.InternalErrorExit) -> bool:
        if ex.suberror != InternalError.EMULATION:
            return False
        from kvmlite.emulator.cpu import CpuState
        from kvmlite.emulator.faults import TripleFault
        from kvmlite.emulator.handlers.privileged import LOCAL_MSRS
        from kvmlite.errors import EmulatorError

        if self.executor is None:
            self._build()
        vcpu, cpu = self.vcpu, self.cpu
        state = CpuState.from_kvm(vcpu.get_regs(), vcpu.get_sregs())
        cpu.assign(state)
        cpu.msrs.clear()
        # the MSRs the executor keeps in its own state: loaded from KVM first, written back after
        # (in index order: TSC_AUX, which a host may not save, last, since KVM stops at the first refusal)
        cpu.msrs.update(vcpu.get_msrs(sorted(LOCAL_MSRS)))
        msrs_before = dict(cpu.msrs)
        cpu.halted = cpu.interrupt_shadow = False
        xsave_before = self._load_fpu_state()
        self.ops.paging_changed(cpu.cr0, cpu.cr3, cpu.cr4, cpu.efer)
        self.ops.cr3_written(cpu.cr3)
        what = self._describe()
        after_step = self.xstate.before_step(self, what) if self.xstate is not None else None
        try:
            self.executor.step()
        except TripleFault as err:
            self.loop.crash(f"triple fault while emulating `{what}` for KVM: {err}")
            return True
        except EmulatorError as err:
            self.loop.crash(f"the host KVM failed to emulate `{what}` and kvmlite cannot either: {err}")
            return True
        if after_step is not None:
            after_step()
        regs, sregs = cpu.to_kvm()
        vcpu.set_sregs(sregs)
        vcpu.set_regs(regs)
        changed = {k: v for k, v in cpu.msrs.items() if msrs_before.get(k) != v and k in LOCAL_MSRS}
        if changed:
            vcpu.set_msrs(changed)
        area = cpu.xsave_area
        if xsave_before is not None and area is not None and bytes(area) != xsave_before:
            xsave = self._xsave  # the structure KVM_GET_XSAVE filled, refilled in place
            ctypes.memmove(ctypes.addressof(xsave), bytes(area), ctypes.sizeof(xsave))
            vcpu.set_xsave(xsave)
        mnemonic = what.split()[0] if what else "?"
        self.loop.stats.rescues[mnemonic] += 1
        log.debug("vcpu %d: rescued `%s` for KVM", vcpu.id, what)
        if cpu.halted:  # an emulated HLT: handle it as KVM's HLT exit
            self.loop.handle(E.Hlt())
        return True

    def _load_fpu_state(self) -> bytes | None:
        """The vCPU's x87/SSE/AVX state (KVM_GET_XSAVE) and XCR0 into the emulator; the area as loaded."""
        vcpu, cpu = self.vcpu, self.cpu
        try:
            self._xsave = vcpu.get_xsave()
            area = bytes(self._xsave)
            xcrs = vcpu.get_xcrs()
        except KvmIoctlError as err:  # a host without XSAVE support: the emulator keeps its own image
            log.debug("vcpu %d: no XSAVE state from KVM (%s)", vcpu.id, err)
            return None
        cpu.xsave_area = bytearray(area)
        cpu.xcr0 = next((x.value for x in xcrs.xcrs[: xcrs.nr_xcrs] if x.xcr == 0), 1)
        return area

    def _describe(self) -> str:
        """The failing instruction in Intel syntax (or its bytes when it does not decode)."""
        from kvmlite.emulator import decoder as D
        from kvmlite.emulator.cpu import CS
        from kvmlite.emulator.instruction import MAX_INSN_LENGTH
        from kvmlite.emulator.ops import ACCESS_FETCH
        from kvmlite.errors import EmulatorError

        cpu = self.cpu
        mode = cpu.code_bits
        lin = cpu.rip if mode == 64 else (cpu.segs[CS].base + cpu.rip) & 0xFFFF_FFFF
        self.insn = None
        try:
            code = self.ops.read_linear(lin, MAX_INSN_LENGTH, ACCESS_FETCH)
        except Exception:  # only for the message; the step itself reports the real fault
            return "instruction at an unreadable address"
        try:
            self.insn = D.decode(code, mode)
            return str(self.insn.format(cpu.rip))
        except EmulatorError:
            return f"bytes {code.hex(' ')}"


def _vcpu_ops(memory: GuestMemory, pio: Bus, mmio: Bus, vcpu: Any) -> Any:
    """The emulator's ops for a rescue (defined here so the emulator is imported only when needed)."""
    from kvmlite.emulator.faults import GP, GuestFault
    from kvmlite.emulator.mmu import Mmu
    from kvmlite.emulator.ops import PagedOps
    from kvmlite.errors import KvmIoctlError

    class VcpuOps(PagedOps):
        """Guest RAM through the MMU; ports and MMIO straight to the buses; MSRs, CPUID and TSC from KVM."""

        def __init__(self, memory: GuestMemory, pio: Bus, mmio: Bus, vcpu: Any) -> None:
            self.memory = memory
            self.pio = pio
            self.mmio = mmio
            self.vcpu = vcpu
            self._cpuid: dict[tuple[int, int], tuple[int, int, int, int]] | None = None
            super().__init__(self._read_phys, self._write_phys, Mmu(memory.read, memory.write))

        def _read_phys(self, gpa: int, size: int) -> bytes:
            if self.memory.is_ram(gpa, size):
                return self.memory.read(gpa, size)
            return self.mmio.read(gpa, size).to_bytes(size, "little")

        def _write_phys(self, gpa: int, data: bytes) -> None:
            if self.memory.is_ram(gpa, len(data)):
                self.memory.write(gpa, data)
            else:
                self.mmio.write(gpa, len(data), int.from_bytes(data, "little"))

        def io_in(self, port: int, size: int) -> int:
            return self.pio.read(port, size)

        def io_out(self, port: int, size: int, value: int) -> None:
            self.pio.write(port, size, value)

        def read_msr(self, index: int) -> int:
            got = self.vcpu.get_msrs([index])
            if index not in got:
                raise GuestFault(GP, 0, reason=f"RDMSR of MSR {index:#x} KVM does not know")
            return int(got[index])

        def write_msr(self, index: int, value: int) -> None:
            try:
                self.vcpu.set_msrs({index: value})
            except KvmIoctlError as err:
                raise GuestFault(GP, 0, reason=f"WRMSR {index:#x} refused by KVM") from err

        def cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
            if self._cpuid is None:
                self._cpuid = {
                    (e.function, e.index): (e.eax, e.ebx, e.ecx, e.edx) for e in self.vcpu.get_cpuid()
                }
            entry = self._cpuid.get((leaf, subleaf)) or self._cpuid.get((leaf, 0))
            return entry if entry is not None else (0, 0, 0, 0)

        def rdtsc(self) -> int:
            return int(self.vcpu.get_msrs([Msr.TSC]).get(Msr.TSC, 0))

    return VcpuOps(memory, pio, mmio, vcpu)
