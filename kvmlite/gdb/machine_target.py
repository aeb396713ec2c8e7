"""The gdb stub's target over a running :class:`~kvmlite.vmm.machine.Machine`, on either backend.

Run control is the machine's pause (:class:`~kvmlite.vmm.loop.VmControl`):
the VM is paused while gdb looks at it, and every register, memory and
guest-debug change is made while paused.  A stop comes from a vCPU's exit
hook: it records the :class:`StopEvent` and pauses the VM from the vCPU's
thread (the vCPU parks when its hook returns).

* Software breakpoints (``Z0``) are ``int3`` bytes patched into guest memory
  and restored on removal; gdb's memory reads see the original bytes.  The
  vCPUs run with ``KVM_GUESTDBG_USE_SW_BP`` while one is set, so the ``int3``
  exits instead of reaching the guest.  A host KVM that fails to emulate
  ``int3`` at CPL 0 instead (this project's hosts, docs/platform-notes.md)
  ends in an emulation failure at the breakpoint: that is recognised as the
  breakpoint too, before the rescue would emulate it.
* Hardware breakpoints and watchpoints (``Z1``-``Z4``) go to DR0-3 through
  each loop's guest-debug owner (:mod:`kvmlite.vmm.debug`), shared with the
  SYSCALL repair.
* A step is ``KVM_GUESTDBG_SINGLESTEP``, except at CPL 3 on KVM where this
  project's hosts shut the vCPU down instead: there the one instruction is
  emulated by kvmlite's emulator, as the rescue does
  (:class:`~kvmlite.vmm.rescue.Rescuer`).  While one vCPU steps the others
  run too (gdb is told only of the step, as with QEMU).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kvmlite.errors import KvmliteError
from kvmlite.gdb import registers as R
from kvmlite.gdb.target import SIGINT, SIGTRAP, BreakKind, StopEvent, StopQueue, TargetError
from kvmlite.kvm import exits as E
from kvmlite.kvm.constants import InternalError
from kvmlite.vmm import vmem
from kvmlite.vmm.debug import BreakKind as DrKind
from kvmlite.vmm.debug import HwBreakpoint
from kvmlite.vmm.dump import format_state
from kvmlite.x86 import Dr6, Efer, Vector

log = logging.getLogger(__name__)

USER = "gdb"
INT3 = b"\xcc"
_DR_KIND = {BreakKind.HARDWARE: DrKind.EXEC, BreakKind.WRITE: DrKind.WRITE, BreakKind.ACCESS: DrKind.ACCESS,
            BreakKind.READ: DrKind.ACCESS}  # fmt: skip  # x86 has no read-only data breakpoint
_WATCH_REASON = {DrKind.WRITE: "watch", DrKind.ACCESS: "awatch"}


def linear_pc(regs: Any, sregs: Any) -> int:
    """RIP as a linear address: CS's base added outside 64-bit code."""
    if sregs.efer & Efer.LMA and sregs.cs.l:
        return int(regs.rip)
    return (sregs.cs.base + regs.rip) & 0xFFFF_FFFF


class MachineTarget:
    """A :class:`~kvmlite.gdb.target.Target` over ``machine`` (see the module docstring)."""

    def __init__(self, machine: Any, monitor: Callable[[str], str] | None = None) -> None:
        self.machine = machine
        self.control = machine.control
        self.loops = machine.loops
        self.memory = machine.memory
        #: KVM (whose emulation the rescue backs up) shuts a vCPU down on a single-step at CPL 3 here.
        self.emulate_user_steps = machine.caps.rescue_emulation
        self.fpu = machine.caps.fpu_state
        self._monitor = monitor
        self._lock = threading.Lock()
        self._events = StopQueue()
        self._paused = False  # gdb holds one pause of the VM
        self._running = False  # resumed by gdb, no stop reported yet
        self._stepping: set[int] = set()
        self.sw: dict[int, tuple[int, bytes]] = {}  # linear address -> (physical address, original byte)
        self.hw: dict[tuple[BreakKind, int, int], HwBreakpoint] = {}
        self._rescuers: dict[int, Any] = {}
        self._exit_reported = False
        self._arch = R.ARCH_64
        for loop in self.loops:
            loop.intercept(E.Debug, self._debug_hook(loop))
            loop.intercept(E.InternalErrorExit, self._internal_error_hook(loop))
        self.control.on_stop.append(self._vm_stopped)

    # --- start-up ------------------------------------------------------------------------
    def hold_at_start(self) -> None:
        """``--gdb-wait``: pause before the first instruction until gdb continues."""
        with self._lock:
            self.control.pause(timeout=0)
            self._paused = True
            self._events.put(StopEvent(0, SIGTRAP))

    # --- Target: description ---------------------------------------------------------------
    def arch(self) -> str:
        """vCPU 0's mode when gdb connects decides, for the whole session (as with QEMU)."""
        sregs = self._run_paused(lambda: self.loops[0].vcpu.get_sregs())
        self._arch = R.ARCH_64 if sregs.efer & Efer.LMA else R.ARCH_32
        return self._arch

    def cpus(self) -> list[int]:
        return list(range(len(self.loops)))

    def _vcpu(self, cpu: int) -> Any:
        if not 0 <= cpu < len(self.loops):
            raise TargetError(f"no vCPU {cpu}", 22)
        return self.loops[cpu].vcpu

    def _run_paused(self, fn: Callable[[], Any]) -> Any:
        """``fn`` with the VM paused (gdb normally holds it paused already)."""
        if self._paused or self.control.stopping:
            return fn()
        return self.control.run_paused(fn)

    # --- registers and memory -----------------------------------------------------------------
    def read_registers(self, cpu: int) -> dict[str, int]:
        vcpu = self._vcpu(cpu)

        def read() -> dict[str, int]:
            fpu = vcpu.get_fpu() if self.fpu else None
            return R.from_kvm(self._arch, vcpu.get_regs(), vcpu.get_sregs(), fpu)

        return dict(self._run_paused(read))

    def write_registers(self, cpu: int, values: dict[str, int]) -> None:
        vcpu = self._vcpu(cpu)

        def write() -> None:
            regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
            regs_changed, sregs_changed = R.to_kvm(self._arch, values, regs, sregs)
            if sregs_changed:
                vcpu.set_sregs(sregs)
            if regs_changed:
                vcpu.set_regs(regs)

        self._run_paused(write)

    def read_memory(self, cpu: int, addr: int, length: int) -> bytes:
        vcpu = self._vcpu(cpu)
        try:
            data = bytearray(self._run_paused(lambda: vmem.read_virtual(vcpu, self.memory, addr, length)))
        except KvmliteError as err:
            raise TargetError(str(err)) from err
        for bp_addr, (_, original) in self.sw.items():  # gdb sees the bytes under its breakpoints
            if addr <= bp_addr < addr + length:
                data[bp_addr - addr] = original[0]
        return bytes(data)

    def write_memory(self, cpu: int, addr: int, data: bytes) -> None:
        vcpu = self._vcpu(cpu)
        buf = bytearray(data)
        for bp_addr, (phys, _) in list(self.sw.items()):  # a write under a breakpoint updates the saved byte
            if addr <= bp_addr < addr + len(buf):
                self.sw[bp_addr] = (phys, bytes((buf[bp_addr - addr],)))
                buf[bp_addr - addr] = INT3[0]
        try:
            self._run_paused(lambda: vmem.write_virtual(vcpu, self.memory, addr, bytes(buf)))
        except KvmliteError as err:
            raise TargetError(str(err)) from err

    # --- breakpoints --------------------------------------------------------------------------
    def add_breakpoint(self, kind: BreakKind, addr: int, length: int) -> None:
        if kind == BreakKind.SOFTWARE:
            if addr in self.sw:
                return
            vcpu = self.loops[0].vcpu

            def plant() -> None:
                phys = vmem.translate(vcpu, addr)
                original = self.memory.read(phys, 1)
                self.memory.write(phys, INT3)
                self.sw[addr] = (phys, original)

            try:
                self._run_paused(plant)
            except KvmliteError as err:
                raise TargetError(str(err)) from err
        else:
            try:
                bp = HwBreakpoint(addr, _DR_KIND[kind], 1 if kind == BreakKind.HARDWARE else length)
            except KvmliteError as err:
                raise TargetError(str(err), 22) from err
            self.hw[(kind, addr, length)] = bp
        self._apply_all(undo=(kind, addr, length))

    def remove_breakpoint(self, kind: BreakKind, addr: int, length: int) -> None:
        if kind == BreakKind.SOFTWARE:
            entry = self.sw.pop(addr, None)
            if entry is not None:
                self._run_paused(lambda: self.memory.write(entry[0], entry[1]))
        else:
            self.hw.pop((kind, addr, length), None)
        self._apply_all()

    def _apply_all(self, undo: tuple[BreakKind, int, int] | None = None) -> None:
        """Every vCPU's guest-debug request from the breakpoints and steps now wanted."""
        try:
            self._run_paused(self._apply_each)
        except KvmliteError as err:
            if undo is not None:
                self.hw.pop(undo, None)
                self._run_paused(self._apply_each)
            raise TargetError(str(err), 28) from err  # ENOSPC: no free debug register

    def _apply_each(self) -> None:
        for loop in self.loops:
            self._apply(loop)

    def _apply(self, loop: Any) -> None:
        step = loop.vcpu.id in self._stepping
        if not (step or self.sw or self.hw):
            loop.debug.release(USER)
        else:
            loop.debug.request(
                USER, single_step=step, sw_breakpoints=bool(self.sw), hw=list(self.hw.values())
            )

    # --- run control ------------------------------------------------------------------------------
    def resume(self, actions: dict[int, str]) -> None:
        while self._events.get(0) is not None:
            pass  # a stop gdb already saw (or was never told of) is stale now
        steps = {cpu for cpu, a in actions.items() if a == "s"}
        for cpu in steps:
            if self.emulate_user_steps and self._cpl(cpu) == 3:
                self._emulate_step(cpu)  # the host shuts the vCPU down on a KVM single-step at CPL 3
                return
        self._stepping = steps
        self._apply_all()
        with self._lock:
            self._running = True
            if self._paused:
                self._paused = False
                self.control.resume()

    def _cpl(self, cpu: int) -> int:
        return int(self._run_paused(lambda: self.loops[cpu].vcpu.get_sregs().cs.dpl))

    def _emulate_step(self, cpu: int) -> None:
        from kvmlite.vmm.rescue import Rescuer

        loop = self.loops[cpu]
        rescuer = self._rescuers.get(cpu)
        if rescuer is None:
            rescuer = self._rescuers[cpu] = Rescuer(loop, self.memory)
        failure = E.InternalErrorExit(int(InternalError.EMULATION), (), b"")
        self._run_paused(lambda: rescuer.on_exit(loop, failure))
        self._events.put(StopEvent(cpu, SIGTRAP))

    def stop_fd(self) -> int:
        return self._events.fileno()

    def wait(self, timeout: float) -> StopEvent | None:
        event = self._events.get(timeout)
        if event is None:
            return None
        if event.exit_status is None and not self.control.stopping:
            # the vCPU that stopped paused without waiting: wait here until every vCPU is parked
            self.control.run_paused(lambda: None)
        return event

    def interrupt(self) -> None:
        with self._lock:
            if self._paused or self.control.stopping:
                if self._events.empty() and not self.control.stopping:
                    self._events.put(StopEvent(0, SIGINT))
                return
            self._paused = True
            self._running = False
        self.control.pause()
        self._stepping.clear()
        self._apply_all()
        self._events.put(StopEvent(0, SIGINT))

    def _stop(self, event: StopEvent) -> bool:
        """From a vCPU thread: report ``event`` and pause the VM, unless a stop was reported already."""
        with self._lock:
            if not self._running:
                return False
            self._running = False
            self._paused = True
        self._stepping.clear()
        self._events.put(event)
        self.control.pause(timeout=0)  # the other vCPUs park; this one does when its hook returns
        return True

    def _vm_stopped(self) -> None:
        """The VM ended (the guest exited, crashed or was killed): gdb hears the exit status."""
        with self._lock:
            if self._exit_reported:
                return
            self._exit_reported = True
            self._running = False
        info = self.control.stop_info
        self._events.put(StopEvent(exit_status=info.status if info else 0))

    def detach(self) -> None:
        for addr in list(self.sw):
            self.remove_breakpoint(BreakKind.SOFTWARE, addr, 1)
        self.hw.clear()
        self._stepping.clear()
        self._run_paused(self._release_each)
        with self._lock:
            self._running = False
            if self._paused:
                self._paused = False
                self.control.resume()

    def _release_each(self) -> None:
        for loop in self.loops:
            loop.debug.release(USER)

    def kill(self) -> None:
        from kvmlite.status import ExitStatus

        self.control.stop(ExitStatus.OK, "killed from gdb")

    def close(self) -> None:
        self._events.close()

    def monitor(self, command: str) -> str:
        if command in ("info registers", "info registers -a"):

            def dump() -> str:
                return "\n".join(
                    f"vCPU {loop.vcpu.id}:\n{format_state(loop.vcpu.get_regs(), loop.vcpu.get_sregs())}"
                    for loop in self.loops
                )

            return str(self._run_paused(dump))
        if self._monitor is not None:
            return self._monitor(command)
        return f"unknown monitor command {command!r}; try: info registers, info devices"

    # --- the vCPU side ----------------------------------------------------------------------------
    def _debug_hook(self, loop: Any) -> Callable[[Any], bool]:
        cpu = loop.vcpu.id

        def on_debug(ex: E.Debug) -> bool:
            if ex.exception == Vector.BP:
                if ex.pc not in self.sw:
                    return False
                return self._stop(StopEvent(cpu, SIGTRAP, "swbreak")) or True
            slots = [bp for i, bp in enumerate(self._slots(loop)) if ex.dr6 >> i & 1]
            ours = [bp for bp in slots if bp in self.hw.values()]
            if ours:
                bp = ours[0]
                if bp.kind == DrKind.EXEC:
                    return self._stop(StopEvent(cpu, SIGTRAP, "hwbreak")) or True
                return self._stop(StopEvent(cpu, SIGTRAP, _WATCH_REASON[bp.kind], bp.addr)) or True
            if ex.dr6 & Dr6.BS and cpu in self._stepping:
                return self._stop(StopEvent(cpu, SIGTRAP)) or True
            return False

        return on_debug

    @staticmethod
    def _slots(loop: Any) -> list[HwBreakpoint]:
        """The breakpoints in DR0-3 in order, as the guest-debug owner merged them."""
        slots: list[HwBreakpoint] = []
        for req in loop.debug.requests.values():
            slots += [bp for bp in req.hw if bp not in slots]
        return slots

    def _internal_error_hook(self, loop: Any) -> Callable[[Any], bool]:
        cpu = loop.vcpu.id

        def on_internal_error(ex: E.InternalErrorExit) -> bool:
            if ex.suberror != InternalError.EMULATION or not (self.sw or cpu in self._stepping):
                return False
            vcpu = loop.vcpu
            pc = linear_pc(vcpu.get_regs(), vcpu.get_sregs())
            if pc in self.sw:  # the host could not emulate our int3: it is the breakpoint
                return self._stop(StopEvent(cpu, SIGTRAP, "swbreak")) or True
            if cpu in self._stepping:  # the host's step failed: emulate the instruction, report the step
                rescuer = self._rescuers.get(cpu)
                if rescuer is None:
                    from kvmlite.vmm.rescue import Rescuer

                    rescuer = self._rescuers[cpu] = Rescuer(loop, self.memory)
                rescuer.on_exit(loop, ex)
                return self._stop(StopEvent(cpu, SIGTRAP)) or True
            return False

        return on_internal_error
