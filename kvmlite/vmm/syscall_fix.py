"""Finish the SYSCALLs a host KVM leaves half done.

On some nested hosts (this project's kvm-pvm machines, docs/platform-notes.md)
guest ring-3 code runs natively and a ``SYSCALL`` from it arrives at LSTAR
with RCX and R11 set but the privilege level still 3.  An unmodified kernel
then faults on its own entry code (its text is supervisor-only) and kills
the process: Linux boots to its first user instruction and panics when init
makes its first system call.

kvmlite repairs this from outside, without changing the guest:

* :class:`SyscallRepair` traps the kernel's WRMSR to LSTAR (an MSR filter);
  at the first such write :func:`host_drops_syscall_privilege` detects the
  quirk, once per process, with a tiny VM that executes ``SYSCALL`` at CPL 3;
* where the host has it, kvmlite then (Linux sets LSTAR after its IDT is in
  place) sets a hardware breakpoint (KVM_SET_GUEST_DEBUG) on the guest's page-fault
  handler, read from its IDT.  A page
  fault whose exception frame says "user mode, RIP = LSTAR" is a SYSCALL
  that never reached ring 0: the frame is dropped and the vCPU continues at
  LSTAR the way ``SYSCALL`` defines it (CS and SS from STAR, RFLAGS masked
  by SFMASK, the user's RSP kept).  Every other page fault goes on to the
  handler: kvmlite steps over the breakpointed first instruction itself
  (RFLAGS.RF is not honoured by a host that emulates ring 0).

Each repaired call costs one exit.  On a host without the quirk nothing is
attached and nothing costs anything.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from kvmlite.backend import VmBackend
from kvmlite.errors import KvmIoctlError, KvmliteError
from kvmlite.kvm import exits as E
from kvmlite.kvm.constants import MsrFilterFlag
from kvmlite.memory.guest import GuestMemory
from kvmlite.vmm.debug import HwBreakpoint
from kvmlite.vmm.host_probe import CODE, PORT, HostProbe, NewVm, long_mode_vm, reported, run_to_exit
from kvmlite.vmm.loop import LoopExtension, VcpuLoop
from kvmlite.vmm.vmem import read_virtual
from kvmlite.x86 import Efer, Msr, Rflags, Vector

log = logging.getLogger(__name__)

STATS_LABEL = "syscall (CPL 3)"
DEBUG_USER = "syscall-fix"  # its name in the vCPU's guest-debug settings
RFLAGS_DF, RFLAGS_AC = int(Rflags.DF), int(Rflags.AC)  # plain ints: `~` of an IntFlag keeps only named bits
#: Instructions the breakpoint can be stepped over by hand: RFLAGS bits (cleared, set) besides RIP.
STEP_OVER = {
    "nop": (0, 0),
    "endbr64": (0, 0),
    "clac": (RFLAGS_AC, 0),
    "stac": (0, RFLAGS_AC),
    "cld": (RFLAGS_DF, 0),
}
_FRAME = struct.Struct("<6Q")  # error code, RIP, CS, RFLAGS, RSP, SS (a long-mode #PF frame)

def _probe(new_vm: NewVm) -> bool:
    """A long-mode VM whose ring-3 code executes SYSCALL; the LSTAR code reports its CPL with an OUT."""
    handler = CODE + 0x100
    with long_mode_vm(new_vm, b"\x0f\x05\xf4", ring3=True) as (_, vcpu, memory, regs, sregs):  # syscall; hlt
        memory.write(handler, bytes([0xE6, PORT, 0xF4]))  # out PORT, al; hlt
        sregs.efer |= Efer.SCE
        vcpu.set_sregs(sregs)
        vcpu.set_regs(regs)
        # SYSRET selectors 0x10 (+16 = 0x20 user code), SYSCALL selectors 0x08 (kernel code, +8 data)
        vcpu.set_msrs({Msr.STAR: (0x10 << 48) | (0x08 << 32), Msr.LSTAR: handler, Msr.SFMASK: 0})
        quirk = reported(run_to_exit(vcpu)) is not None and vcpu.get_sregs().cs.dpl == 3
    if quirk:
        log.info("this host's KVM leaves SYSCALL from ring 3 at CPL 3: kvmlite completes them")
    return quirk


#: True if SYSCALL from CPL 3 reaches LSTAR still at CPL 3 on this host (probed once per process).
host_drops_syscall_privilege: HostProbe[bool] = HostProbe("SYSCALL", _probe, False)


class SyscallRepair(LoopExtension):
    """Per vCPU: breakpoint the guest's #PF handler and turn faults at LSTAR from ring 3 into SYSCALLs."""

    exits = (E.Debug, E.WrMsr)

    def __init__(self, loop: VcpuLoop, memory: GuestMemory, vm: VmBackend) -> None:
        self.loop = loop
        self.vcpu = loop.vcpu
        self.memory = memory
        self.vm = vm
        self.handler: int | None = None
        self.lstar = 0  # as the guest last wrote it
        self._stepping = False
        self._syscall: tuple[Any, Any] | None = None  # the emulator's CPU state and executor, built once

    def on_exit(self, loop: VcpuLoop, ex: E.Exit) -> bool:
        if isinstance(ex, E.WrMsr):
            return self._on_wrmsr(ex)
        return self._on_debug(ex)

    @staticmethod
    def trap_lstar_writes(vm: VmBackend) -> bool:
        """Make the guest's WRMSR to LSTAR exit to kvmlite (once per VM, before any vCPU runs).

        False where KVM has no MSR filters (before Linux 5.10): no repair is possible there, and the
        hosts with the quirk have them.
        """
        try:
            vm.set_msr_filter({Msr.LSTAR: MsrFilterFlag.WRITE})
        except KvmIoctlError as err:
            log.debug("no MSR filter (%s): SYSCALLs are left to the host", err)
            return False
        return True

    # --- arming: find the #PF handler when the kernel sets up system calls ---------------------
    def _on_wrmsr(self, ex: E.Exit) -> bool:
        """The kernel writes LSTAR (trapped by the VM's MSR filter): apply it, then arm if this host needs it.

        The probe runs here, at the first LSTAR write of the process, so guests
        that never set up SYSCALL (and every run on a correct host but this
        one exit per vCPU) cost nothing at start-up.
        """
        assert isinstance(ex, E.WrMsr)
        if ex.index != Msr.LSTAR:
            return False
        try:
            self.vcpu.set_msrs({Msr.LSTAR: ex.value})
        except KvmIoctlError:  # e.g. a non-canonical address: the #GP the CPU would raise
            ex.fail()
            return True
        self.lstar = ex.value
        if not host_drops_syscall_privilege(self.vm.new_vm):
            return True
        try:
            self._try_arm()
        except KvmliteError as err:
            log.warning("vcpu %d: cannot complete SYSCALLs for this guest: %s", self.vcpu.id, err)
        return True

    def state_loaded(self, loop: VcpuLoop) -> None:
        """A restored guest set LSTAR in another process: arm from the restored LSTAR and IDT."""
        try:
            lstar = self.vcpu.get_msrs([Msr.LSTAR]).get(Msr.LSTAR, 0)
        except KvmIoctlError:
            return
        self.lstar = lstar
        if not lstar or not host_drops_syscall_privilege(self.vm.new_vm):
            return
        try:
            self._try_arm()
        except KvmliteError as err:
            log.warning("vcpu %d: cannot complete SYSCALLs for this guest: %s", self.vcpu.id, err)

    def _try_arm(self) -> None:
        sregs = self.vcpu.get_sregs()
        if sregs.idt.limit < Vector.PF * 16 + 15:
            raise KvmliteError("its IDT has no page-fault gate yet when it sets LSTAR")
        gate = read_virtual(self.vcpu, self.memory, sregs.idt.base + Vector.PF * 16, 16)
        low, mid, high = struct.unpack_from("<HxxxxHI", gate)
        handler = low | (mid << 16) | (high << 32)
        self._watch(handler)
        self.handler = handler
        log.info("vcpu %d: SYSCALL repair armed on the #PF handler at %#x", self.vcpu.id, handler)

    def _watch(self, handler: int) -> None:
        self.loop.debug.request(DEBUG_USER, hw=[HwBreakpoint(handler)])

    # --- the repair ------------------------------------------------------------------------------
    def _on_debug(self, ex: E.Exit) -> bool:
        assert isinstance(ex, E.Debug)
        if self._stepping:  # the handler's first instruction ran: put the breakpoint back
            self._stepping = False
            assert self.handler is not None
            self._watch(self.handler)
            return True
        if self.handler is None or ex.pc != self.handler:
            return False
        regs = self.vcpu.get_regs()
        frame = read_virtual(self.vcpu, self.memory, regs.rsp, _FRAME.size)
        _, rip, cs, _, rsp, _ = _FRAME.unpack(frame)
        if rip == self.lstar and cs & 3 == 3:
            regs = self._enter_kernel(regs, rsp)
            self.loop.stats.rescues[STATS_LABEL] += 1
        else:
            self._step_over_breakpoint(regs)  # a real page fault: let the handler run
        self.vcpu.set_regs(regs)
        return True

    def _step_over_breakpoint(self, regs: Any) -> None:
        """Execute the handler's first instruction here, so resuming does not hit the breakpoint again.

        RFLAGS.RF would do this on hardware, but a host that emulates ring 0
        may ignore it.  Handlers begin with instructions that only move RIP
        or change a flag (NOP padding, ENDBR64, CLAC/STAC, CLD); anything
        else is single-stepped by KVM, with the breakpoint lifted for it.
        """
        from kvmlite.emulator.decoder import MODE_64, decode

        insn = decode(read_virtual(self.vcpu, self.memory, regs.rip, 16), MODE_64)
        effect = STEP_OVER.get(insn.mnemonic)
        if effect is None:
            self._single_step()
            return
        clear, set_ = effect
        regs.rip += insn.length
        regs.rflags = (regs.rflags & ~clear) | set_

    def _single_step(self) -> None:
        self.loop.debug.request(DEBUG_USER, single_step=True)
        self._stepping = True

    def _enter_kernel(self, regs: Any, rsp: int) -> Any:
        """Do the SYSCALL the host left half done, with the emulator's SYSCALL; the registers after it.

        The emulator executes a ``syscall`` from the state the guest would have
        had: the user's RSP (from the fault frame), the RFLAGS the host saved
        in R11, RIP such that the return address is the RCX the host saved.
        It loads CS and SS from STAR, masks RFLAGS with SFMASK and jumps to
        LSTAR; the segment registers are written here, the rest is returned.
        """
        from kvmlite.emulator.cpu import CpuState

        if self._syscall is None:
            self._syscall = _syscall_executor()
        cpu, executor = self._syscall
        cpu.assign(CpuState.from_kvm(regs, self.vcpu.get_sregs()))
        cpu.msrs.update(self.vcpu.get_msrs([Msr.STAR, Msr.SFMASK]))
        cpu.msrs[Msr.LSTAR] = self.lstar
        cpu.rip, cpu.rflags = regs.rcx - len(SYSCALL), regs.r11
        cpu.gpr[_RSP] = rsp
        executor.step()
        if cpu.rip != self.lstar:
            raise KvmliteError(f"the emulated SYSCALL did not reach LSTAR (RIP {cpu.rip:#x})")
        regs, sregs = cpu.to_kvm()
        self.vcpu.set_sregs(sregs)
        return regs


SYSCALL = b"\x0f\x05"
_RSP = 4


def _syscall_executor() -> tuple[Any, Any]:
    """An emulator whose only instruction is SYSCALL: every fetch reads it, nothing else is reachable."""
    from kvmlite.emulator.cpu import CpuState
    from kvmlite.emulator.executor import Executor
    from kvmlite.emulator.ops import ACCESS_FETCH, EmulatorOps

    class SyscallOnly(EmulatorOps):
        def read_linear(self, addr: int, size: int, access: int) -> bytes:
            if not access & ACCESS_FETCH:
                raise KvmliteError(f"the SYSCALL repair's emulator read guest memory at {addr:#x}")
            return (SYSCALL + bytes(size))[:size]

    cpu = CpuState.reset()
    return cpu, Executor(cpu, SyscallOnly())
