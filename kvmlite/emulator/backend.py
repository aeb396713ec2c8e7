"""The software backend: a ``Vm``/``Vcpu`` pair with KVM's interface, running guests on the emulator.

(Longer than the project's ~600 lines: the vCPU's KVM-like face, the ops' replay of answered device
accesses and their routing of the LAPIC's page and MSRs are one mechanism; splitting them would
export the replay's private records across modules.)

``--backend emu`` (and ``--backend auto`` where /dev/kvm does not open) runs
the same machine, the same devices and the same vCPU loop as the KVM backend:
:meth:`EmuVcpu.run` returns the same typed exits (:mod:`kvmlite.kvm.exits`).

How an exit is made.  The executor reaches ports and MMIO only through its
ops (:class:`BackendOps`).  When an instruction touches a port or an address
outside guest RAM, the ops raise :class:`_DeviceAccess` out of the
instruction before its RIP is committed, and ``run()`` returns an ``IoIn``,
``IoOut``, ``MmioRead`` or ``MmioWrite`` exit.  The loop answers as it does
for KVM (writing into ``exit.data`` for reads); the next ``run()`` executes
the instruction again and the ops replay the answered accesses in order
instead of exiting.  That is KVM's own scheme (``complete_userspace_io``).
Each answered access is tagged with RCX/RSI/RDI at the time: a REP string
instruction commits those per iteration, so an answer recorded before a
commit can never be replayed into a later iteration.

Interrupts follow KVM's userspace-irqchip contract: ``interrupt(vector)``
queues an external interrupt, delivered before the next instruction;
``ready_for_interrupt_injection`` says whether one can be queued now;
``request_interrupt_window`` makes ``run()`` return ``IrqWindowOpen`` as
soon as the guest can take one; ``nmi()`` queues an NMI, taken whatever IF
says.  The machine's userspace APIC irqchip (:mod:`kvmlite.vmm.apic`) gives
each vCPU its local APIC (``attach_lapic``): the vCPU reaches its registers
directly, the xAPIC page at IA32_APIC_BASE and the x2APIC and TSC-deadline
MSRs, without an exit, and CPUID leaf 1 then carries the vCPU's APIC ID and
the TSC-deadline bit.  APs start in KVM's wait-for-SIPI state
(``get_mp_state``), which the irqchip ends.  HLT returns ``Hlt`` (with RIP past the
HLT, as KVM does) and the loop decides how to wait.  ``kick()`` makes a
running ``run()`` return ``Interrupted`` within a few instructions.

Server threads.  A running vCPU holds the GIL, and CPython's hand-over starves a thread that
wakes up from a socket while the vCPU makes frequent short system calls (serial output, disk
I/O): the VM's ``gil_turns`` (:mod:`kvmlite.gil`) is where the control socket names its
descriptors, and ``run()`` looks at them every couple of milliseconds and, when one is readable
or the server has a command in hand, waits for the server's round (a kick ends the wait).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from kvmlite.backend import BackendCaps, unsupported
from kvmlite.emulator.cpu import FLAG_IF, CpuState
from kvmlite.emulator.executor import Executor
from kvmlite.emulator.faults import GP, GuestFault, TripleFault
from kvmlite.emulator.guest_debug import DataBreakpoints
from kvmlite.emulator.instruction import MAX_INSN_LENGTH
from kvmlite.emulator.ops import ACCESS_FETCH, ACCESS_WRITE, EmulatorOps, PagedOps
from kvmlite.emulator.shadow import ShadowMmu
from kvmlite.errors import EmulatorError, GuestMemoryError
from kvmlite.gil import CHECK_S, GilTurns
from kvmlite.kvm import exits as E
from kvmlite.kvm import structs as S
from kvmlite.kvm.coalesced import CoalescedRing, Writer
from kvmlite.kvm.constants import GuestDebug, InternalError, MpState
from kvmlite.kvm.cpuid import CpuidEntry
from kvmlite.memory.guest import GuestMemory
from kvmlite.x86 import DR6_FIXED1, Dr6, DrRw, Msr, Vector, dr7_fields, dr7_slot

log = logging.getLogger(__name__)

#: Instructions executed between looks at kicks, queued interrupts and window requests.
SLICE = 256
#: As many as the MADT can describe (kvmlite.firmware.acpi.MAX_CPUS).
MAX_VCPUS = 254
BACKEND = "emu"
#: What the software backend can do (kvmlite.backend): vCPUs fed by kvmlite's own PIC, IOAPIC and LAPICs.
CAPS = BackendCaps(
    name=BACKEND,
    max_vcpus=MAX_VCPUS,
    in_kernel_irqchip=False,
    guest_debug=True,
    watchpoints=True,
    msr_filter=False,
    host_cpuid=False,
    fpu_state=False,
    lapic_state=False,
    rescue_emulation=False,
    userspace_apic=True,
)
#: CPUID leaf 1: ECX's TSC-deadline timer, EDX's HTT, EBX's logical-processor count and initial APIC ID.
CPUID1_TSC_DEADLINE, CPUID1_HTT = 1 << 24, 1 << 28
#: The MSRs a local APIC answers: TSC_DEADLINE and the x2APIC registers.
APIC_MSRS = range(0x800, 0x900)
#: MSRs an Intel CPU has that Linux reads without a safety net (``rdmsr`` in ``verify_cpu``, the
#: microcode revision), with KVM's values: microcode revision 0, MTRRcap (8 variable ranges, fixed
#: ranges, write-combining), MISC_ENABLE (fast strings; BTS and PEBS unavailable), PAT's reset value,
#: and the variable and fixed MTRRs and MTRR_DEF_TYPE (0 until written; memory types mean nothing
#: here).  Writes are kept.
MSR_DEFAULTS: dict[int, int] = {
    0x8B: 0,
    0xFE: 0x508,
    0x1A0: 0x1801,
    0x277: 0x0007_0406_0007_0406,
    **dict.fromkeys((*range(0x200, 0x210), 0x250, 0x258, 0x259, *range(0x268, 0x270), 0x2FF), 0),
}
DR6_FIXED, DR6_BS = DR6_FIXED1, int(Dr6.BS)  # plain ints for the run loop
VECTOR_DB, VECTOR_BP, VECTOR_NMI = int(Vector.DB), int(Vector.BP), int(Vector.NMI)
WAIT_FOR_SIPI = (MpState.UNINITIALIZED, MpState.INIT_RECEIVED)  # what a Debug exit reports, as KVM does
_RCX, _RSI, _RDI = 1, 6, 7


class _DeviceAccess(Exception):
    """Raised out of an instruction that needs the VMM; carries the exit to return."""

    def __init__(self, exit_: E.Exit) -> None:
        self.exit = exit_


class _Answer:
    """One answered device access: what it was, the registers at the time, and the data."""

    __slots__ = ("data", "key", "regs")

    def __init__(self, key: tuple[str, int, int], regs: tuple[int, int, int], data: bytearray) -> None:
        self.key = key
        self.regs = regs
        self.data = data


class BackendOps(PagedOps):
    """Paging over guest RAM; ports and MMIO become exits (see the module docstring)."""

    def __init__(
        self, memory: GuestMemory, cpu: CpuState, cpuid: dict[tuple[int, int], tuple[int, ...]]
    ) -> None:
        self.memory = memory
        self.cpu = cpu
        self.cpuid_table = cpuid
        self.answers: list[_Answer] = []
        self.pending: _Answer | None = None  # the access the last exit asked about
        self.apic: Any = None  # the vCPU's local APIC (kvmlite.vmm.apic.LapicAccess), if the machine has one
        self.apic_id = 0
        self.cpu_count = 1
        super().__init__(
            self._read_phys, self._write_phys, ShadowMmu(self._read_phys_ram, self._write_phys_ram)
        )

    # --- replay of answered accesses --------------------------------------------------
    def _regs(self) -> tuple[int, int, int]:
        gpr = self.cpu.gpr
        return gpr[_RCX], gpr[_RSI], gpr[_RDI]

    def _replay(self, key: tuple[str, int, int]) -> bytearray | None:
        regs = self._regs()
        answers = self.answers
        while answers:
            first = answers[0]
            if first.regs != regs:  # recorded before a REP iteration committed: stale
                answers.pop(0)
                continue
            if first.key != key:
                answers.clear()  # the instruction went another way: start over
                return None
            answers.pop(0)
            self._consumed.append(first)
            return first.data
        return None

    def start_instruction(self) -> None:
        """Called before each (re-)execution: answered accesses replay in order from the start."""
        self._consumed: list[_Answer] = []

    def exit_for(self, kind: str, addr: int, size: int, data: bytearray, exit_: E.Exit) -> _DeviceAccess:
        """Remember the access (and everything this execution already replayed) and stop the instruction."""
        self.answers = self._consumed + self.answers
        self.pending = _Answer((kind, addr, size), self._regs(), data)
        return _DeviceAccess(exit_)

    def answered(self) -> None:
        """The loop handled the last exit: its answer joins the replay list."""
        if self.pending is not None:
            self.answers.append(self.pending)
            self.pending = None

    def instruction_done(self) -> None:
        self.answers.clear()

    # --- physical accesses ----------------------------------------------------------------
    def _read_phys_ram(self, gpa: int, size: int) -> bytes:
        return self.memory.read(gpa, size)

    def _write_phys_ram(self, gpa: int, data: bytes) -> None:
        if self.code_pages or self.pt_pages:
            self.check_write(gpa, len(data))
        self.memory.write(gpa, data)

    def page_view(self, addr: int, access: int) -> memoryview | None:
        if access & ACCESS_WRITE and self.memory.tracking_writes:
            return None  # writes go through _write_phys, which records them (diff snapshots)
        return super().page_view(addr, access)

    def ram_page(self, gpa: int) -> memoryview | None:
        region = self.memory.find_region(gpa)
        if region is None:
            return None
        off = gpa - region.start
        return region.view[off : (off | 0xFFF) + 1]

    def _read_phys(self, gpa: int, size: int) -> bytes:
        region = self.memory.find_region(gpa)
        if region is not None and gpa + size <= region.end:
            off = gpa - region.start
            return bytes(region.view[off : off + size])
        if self.memory.is_ram(gpa, size):
            return self.memory.read(gpa, size)
        apic = self.apic
        if apic is not None and gpa & ~0xFFF == apic.mmio_page:
            return apic.read(gpa & 0xFFF, size).to_bytes(size, "little")
        data = self._replay(("mmio-r", gpa, size))
        if data is not None:
            return bytes(data)
        buf = bytearray(size)
        raise self.exit_for("mmio-r", gpa, size, buf, E.MmioRead(gpa, memoryview(buf)))

    def _write_phys(self, gpa: int, data: bytes) -> None:
        region = self.memory.find_region(gpa)
        size = len(data)
        if self.code_pages or self.pt_pages:
            self.check_write(gpa, size)
        if region is not None and gpa + size <= region.end:
            off = gpa - region.start
            region.view[off : off + size] = data
            if self.memory.tracking_writes:  # for diff snapshots (kvmlite.snapshot.dirty)
                self.memory.mark_written(gpa, size)
            return
        if self.memory.is_ram(gpa, size):
            self.memory.write(gpa, data)
            return
        apic = self.apic
        if apic is not None and gpa & ~0xFFF == apic.mmio_page:
            apic.write(gpa & 0xFFF, size, int.from_bytes(data, "little"))
            return
        if self._replay(("mmio-w", gpa, size)) is not None:
            return
        buf = bytearray(data)
        raise self.exit_for("mmio-w", gpa, size, buf, E.MmioWrite(gpa, memoryview(buf)))

    # --- ports -------------------------------------------------------------------------------
    def io_in(self, port: int, size: int) -> int:
        data = self._replay(("in", port, size))
        if data is not None:
            return int.from_bytes(data, "little")
        buf = bytearray(size)
        raise self.exit_for("in", port, size, buf, E.IoIn(port, size, 1, memoryview(buf)))

    def io_out(self, port: int, size: int, value: int) -> None:
        if self._replay(("out", port, size)) is not None:
            return
        buf = bytearray(value.to_bytes(size, "little"))
        raise self.exit_for("out", port, size, buf, E.IoOut(port, size, 1, memoryview(buf)))

    def cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        entry = self.cpuid_table.get((leaf, subleaf)) or self.cpuid_table.get((leaf, 0))
        if entry is not None:
            return entry  # type: ignore[return-value]
        eax, ebx, ecx, edx = EmulatorOps.cpuid(self, leaf, subleaf)
        if leaf == 1 and self.apic is not None:
            ebx = (ebx & 0xFFFF) | ((self.cpu_count & 0xFF) << 16) | ((self.apic_id & 0xFF) << 24)
            ecx |= CPUID1_TSC_DEADLINE
            edx |= CPUID1_HTT if self.cpu_count > 1 else 0
        return eax, ebx, ecx, edx

    # --- the local APIC's MSRs -------------------------------------------------------------------
    def read_msr(self, index: int) -> int:
        apic = self.apic
        if apic is not None and (index in APIC_MSRS or index == Msr.TSC_DEADLINE):
            value = apic.read_msr(index)
            if value is not None:
                return int(value)
        elif index in self.cpu.msrs:  # one the VMM set (the firmware's MTRR default type) or the guest wrote
            return self.cpu.msrs[index]
        elif index in MSR_DEFAULTS:
            return MSR_DEFAULTS[index]
        return super().read_msr(index)

    def write_msr(self, index: int, value: int) -> None:
        apic = self.apic
        if index in self.cpu.msrs or index in MSR_DEFAULTS:
            self.cpu.msrs[index] = value
        elif apic is None:
            super().write_msr(index, value)
        elif index == Msr.APIC_BASE:
            apic.set_base(value)
            self.cpu.apic_base = apic.base
        elif index in APIC_MSRS or index == Msr.TSC_DEADLINE:
            if not apic.write_msr(index, value):
                raise GuestFault(GP, 0, reason=f"WRMSR {index:#x} = {value:#x} refused by the local APIC")
        else:
            super().write_msr(index, value)


class EmuVcpu:
    """One emulated vCPU: :class:`kvmlite.backend.VcpuBackend` over the emulator."""

    def __init__(self, vm: EmuVm, vcpu_id: int) -> None:
        assert vm.memory is not None, "register guest memory first"
        self.vm = vm
        self.id = vcpu_id
        self.cpu = CpuState.reset()
        self.cpuid: dict[tuple[int, int], tuple[int, ...]] = {}
        self.ops = BackendOps(vm.memory, self.cpu, self.cpuid)
        self.executor = Executor(self.cpu, self.ops)
        self._kicked = False
        self._next_turn = 0.0  # when run() next looks at the servers' descriptors (vm.gil_turns)
        self._pending_vector: int | None = None
        self._nmi_pending = False
        #: KVM's MP state: APs wait for INIT/SIPI (kvmlite.vmm.apic ends the wait), the BSP runs.
        self.mp_state = MpState.RUNNABLE if vcpu_id == 0 else MpState.UNINITIALIZED
        self._window_requested = False
        self._last_exit: E.Exit | None = None
        self._thread_id: int | None = None
        self._debug_flags = 0
        self._breakpoints: list[int] = []  # linear addresses of the execution breakpoints, DR0 first
        self._dr7 = 0
        self._resume_over: int | None = None  # the breakpoint just reported: not again until it ran (RF)
        self._watch = DataBreakpoints()

    # --- running ---------------------------------------------------------------------------
    def run(self) -> E.Exit:
        self._complete_last_exit()
        if self.mp_state in WAIT_FOR_SIPI:
            return self._exit(E.Interrupted())  # an AP the irqchip has not started runs nothing
        cpu, ex, ops, turns = self.cpu, self.executor, self.ops, self.vm.gil_turns
        ex.blocks.epoch += 1  # the VMM ran: guest memory may have changed under the translation blocks
        # As KVM with immediate_exit: an instruction whose device access was answered completes
        # before a kick is honoured, so a paused vCPU never holds half an instruction (a snapshot
        # would otherwise run its OUT twice).
        finishing = bool(ops.answers)
        while True:
            if self._kicked and not finishing:
                return self._exit(E.Interrupted())
            if turns.fds and not finishing and (now := time.monotonic()) >= self._next_turn:
                self._next_turn = now + CHECK_S
                turns.give_turn(self._was_kicked)
                if self._kicked:
                    return self._exit(E.Interrupted())
            if self._nmi_pending and not finishing and not cpu.interrupt_shadow:
                self._nmi_pending = False
                try:
                    ex.inject_interrupt(VECTOR_NMI)
                except TripleFault as err:
                    log.error("vcpu %d: %s", self.id, err)
                    return self._exit(E.Shutdown())
            if self._pending_vector is not None and not finishing and self._can_take_interrupt():
                vector, self._pending_vector = self._pending_vector, None
                try:
                    ex.inject_interrupt(vector)
                except TripleFault as err:
                    log.error("vcpu %d: %s", self.id, err)
                    return self._exit(E.Shutdown())
            if self._window_requested and self._pending_vector is None and self._can_take_interrupt():
                return self._exit(E.IrqWindowOpen())
            debugging = self._debug_flags
            if not debugging and not finishing:
                # translation blocks (kvmlite.emulator.tb); guest debugging and replays go one by one
                ops.start_instruction()
                stop = self._execute(ex.run_blocks, SLICE)  # keeps its own interrupt-shadow state
                if stop is not None:
                    return stop
                ops.instruction_done()
                if cpu.halted:
                    cpu.halted = False  # as with KVM's userspace irqchip: RIP is past HLT, the VMM waits
                    return self._exit(E.Hlt())
                continue
            for _ in range(1 if debugging or finishing else SLICE):
                if debugging and (stop := self._breakpoint_here()) is not None:
                    return self._exit(stop)
                shadow = cpu.interrupt_shadow
                ops.start_instruction()
                stop = self._execute(ex.step)
                if stop is not None:
                    if isinstance(stop, E.IoIn | E.IoOut | E.MmioRead | E.MmioWrite):
                        cpu.interrupt_shadow = shadow  # the instruction will run again
                    return stop
                ops.instruction_done()
                finishing = False
                if debugging:
                    self._resume_over = None
                    dr6 = self._watch.take() | (DR6_BS if debugging & GuestDebug.SINGLESTEP else 0)
                    if dr6:
                        cpu.halted = False
                        return self._exit(E.Debug(VECTOR_DB, self._rip_linear(), DR6_FIXED | dr6, self._dr7))
                if cpu.halted:
                    cpu.halted = False  # as with KVM's userspace irqchip: RIP is past HLT, the VMM waits
                    return self._exit(E.Hlt())
                if self._kicked or self._pending_vector is not None or self._nmi_pending:
                    break

    def _execute(self, run: Callable[..., object], *args: int) -> E.Exit | None:
        """Run guest instructions; the exit that stopped them early, or None."""
        try:
            run(*args)
        except _DeviceAccess as access:
            return self._exit(access.exit)
        except TripleFault as err:
            log.error("vcpu %d: %s", self.id, err)
            return self._exit(E.Shutdown())
        except GuestMemoryError as err:
            return self._exit(self._internal(f"guest memory access failed: {err}"))
        except EmulatorError as err:
            return self._exit(self._internal(str(err)))
        return None

    def _exit(self, exit_: E.Exit) -> E.Exit:
        self._last_exit = exit_
        return exit_

    def _complete_last_exit(self) -> None:
        last, self._last_exit = self._last_exit, None
        if isinstance(last, E.IoIn | E.IoOut | E.MmioRead | E.MmioWrite):
            self.ops.answered()

    def _internal(self, detail: str) -> E.InternalErrorExit:
        try:
            code = self.ops.read_linear(self._rip_linear(), MAX_INSN_LENGTH, ACCESS_FETCH)
        except Exception:
            code = b""
        return E.InternalErrorExit(int(InternalError.EMULATION), (), code, detail)

    def _rip_linear(self) -> int:
        cpu = self.cpu
        return cpu.rip if cpu.code_bits == 64 else (cpu.segs[1].base + cpu.rip) & 0xFFFF_FFFF

    def _was_kicked(self) -> bool:
        return self._kicked

    def _can_take_interrupt(self) -> bool:
        return bool(self.cpu.rflags & FLAG_IF) and not self.cpu.interrupt_shadow

    # --- the KVM-like interface ------------------------------------------------------------------
    @property
    def if_flag(self) -> bool:
        return bool(self.cpu.rflags & FLAG_IF)

    @property
    def ready_for_interrupt_injection(self) -> bool:
        return self._pending_vector is None and self._can_take_interrupt()

    def request_interrupt_window(self, on: bool = True) -> None:
        self._window_requested = on

    @property
    def interrupt_window_requested(self) -> bool:
        return self._window_requested

    def interrupt(self, vector: int) -> None:
        if self._pending_vector is not None:
            raise EmulatorError(
                f"vcpu {self.id}: interrupt {vector:#x} queued while {self._pending_vector:#x} waits"
            )
        self._pending_vector = vector
        self.executor.stop_requested = True

    def bind_thread(self) -> None:
        self._thread_id = threading.get_ident()

    def drop_write_views(self) -> None:
        """Forget the RAM pages the executor writes directly (write tracking was turned on)."""
        self.executor.use_views(self.executor._views_on)

    def kick(self) -> None:
        self._kicked = True
        self.executor.stop_requested = True
        if self.vm.gil_turns.fds:
            self.vm.gil_turns.wake()

    def clear_kick(self) -> None:
        self._kicked = False

    def get_regs(self) -> S.kvm_regs:
        return self.cpu.to_kvm()[0]

    def get_sregs(self) -> S.kvm_sregs:
        return self.cpu.to_kvm()[1]

    def set_regs(self, regs: S.kvm_regs) -> None:
        self._load(CpuState.from_kvm(regs, self.get_sregs()), sregs=False)

    def set_sregs(self, sregs: S.kvm_sregs) -> None:
        self._load(CpuState.from_kvm(self.get_regs(), sregs), sregs=True)

    def _load(self, new: CpuState, sregs: bool) -> None:
        cpu = self.cpu
        cpu.assign(new, system=sregs)
        if sregs:
            self.ops.paging_changed(cpu.cr0, cpu.cr3, cpu.cr4, cpu.efer)
            self.ops.cr3_written(cpu.cr3)
            self.executor.reset_caches()  # memory may have been rewritten under them (a restore)

    def set_cpuid(self, entries: list[CpuidEntry]) -> None:
        self.cpuid.clear()
        for e in entries:
            self.cpuid[(e.function, e.index)] = (e.eax, e.ebx, e.ecx, e.edx)

    def get_mp_state(self) -> MpState:
        return self.mp_state

    def set_mp_state(self, state: MpState) -> None:
        if state not in (MpState.RUNNABLE, *WAIT_FOR_SIPI):
            unsupported(BACKEND, f"put a vCPU in MP state {state.name}")
        self.mp_state = state

    # --- the local APIC (kvmlite.vmm.apic) -----------------------------------------------------------
    def attach_lapic(self, apic: Any, cpus: int) -> None:
        """Reach ``apic`` (a :class:`kvmlite.vmm.apic.LapicAccess`) at its page and MSRs (``cpus``: CPUID)."""
        ops = self.ops
        ops.apic, ops.apic_id, ops.cpu_count = apic, self.id, cpus
        self.cpu.apic_base = apic.base

    def reset_for_init(self) -> None:
        """INIT: the reset state (real mode at F000:FFF0), the APIC base kept; nothing pending."""
        base = self.cpu.apic_base
        self._load(CpuState.reset(), sregs=True)
        self.cpu.apic_base = base
        self._pending_vector, self._nmi_pending = None, False
        self._window_requested = False

    def get_cpuid(self, max_entries: int = 256) -> list[CpuidEntry]:
        return [CpuidEntry(f, i, 0, *regs) for (f, i), regs in self.cpuid.items()][:max_entries]

    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        """The MSRs the emulator keeps (EFER and its ``msrs``); the others are left out, as KVM does."""
        msrs = self.cpu.msrs
        out = {}
        for index in indices:
            if index == Msr.EFER:
                out[index] = self.cpu.efer
            elif index in msrs:
                out[index] = msrs[index]
        return out

    def set_msrs(self, values: dict[int, int]) -> int:
        for index, value in values.items():
            if index == Msr.EFER:
                sregs = self.get_sregs()
                sregs.efer = value
                self.set_sregs(sregs)
            else:
                self.cpu.msrs[index] = value
        return len(values)

    def translate(self, linear_address: int) -> S.kvm_translation:
        """KVM_TRANSLATE's answer from a walk of the guest's page tables (``valid`` and the address only)."""
        tr = S.kvm_translation(linear_address=linear_address)
        gpa = self.ops.mmu.debug_translate(linear_address)
        if gpa is not None:
            tr.physical_address, tr.valid = gpa, 1
        return tr

    # --- guest debugging: single-step, execution breakpoints, int3 ------------------------------
    def set_guest_debug(self, flags: int, hw_breakpoints: Iterable[int] = (), dr7: int = 0) -> None:
        """KVM_SET_GUEST_DEBUG's meaning for execution: stops before a breakpointed instruction,
        after each instruction when single-stepping, at an ``int3`` with USE_SW_BP, and after an
        instruction that touched a data breakpoint's range (:mod:`kvmlite.emulator.guest_debug`)."""
        addrs = list(hw_breakpoints)[:4]
        if not dr7:
            for i in range(len(addrs)):
                dr7 |= dr7_slot(i, DrRw.EXEC, 1)
        fields = [dr7_fields(dr7, i) for i in range(len(addrs))]
        if any(rw == DrRw.IO for _, rw, _ in fields):  # I/O breakpoints (CR4.DE) are not emulated
            unsupported(BACKEND, "break on I/O port accesses")
        enabled = flags & GuestDebug.ENABLE
        self._debug_flags = int(flags) if enabled else 0
        use_hw = enabled and flags & GuestDebug.USE_HW_BP
        execute = [use_hw and enabled and rw == DrRw.EXEC for enabled, rw, _ in fields]
        self._breakpoints = [a if execute[i] else -1 for i, a in enumerate(addrs)]
        self._watch.configure(self.ops, addrs if use_hw else [], dr7)
        self.executor.use_views(not self._watch.ranges)  # direct accesses would bypass the watch
        self._dr7 = dr7 if use_hw else 0
        self._resume_over = None

    def _breakpoint_here(self) -> E.Debug | None:
        """The debug exit due before the next instruction, if any."""
        rip = self._rip_linear()
        if rip == self._resume_over:
            return None
        if rip in self._breakpoints:
            self._resume_over = rip
            return E.Debug(VECTOR_DB, rip, DR6_FIXED | (1 << self._breakpoints.index(rip)), self._dr7)
        if self._debug_flags & GuestDebug.USE_SW_BP:
            try:
                opcode = self.ops.read_linear(rip, 1, ACCESS_FETCH)
            except Exception:  # unmapped: the instruction fetch itself raises the guest's #PF
                return None
            if opcode == b"\xcc":
                self._resume_over = rip
                return E.Debug(VECTOR_BP, rip, DR6_FIXED, self._dr7)
        return None

    # --- what the emulator does not have -----------------------------------------------------------
    def nmi(self) -> None:
        """Queue an NMI: delivered before the next instruction, whatever IF says (no NMI blocking kept)."""
        self._nmi_pending = True
        self.executor.stop_requested = True

    def get_fpu(self) -> S.kvm_fpu:
        return unsupported(BACKEND, "read the FPU state (kvm_fpu)")

    def set_fpu(self, fpu: S.kvm_fpu) -> None:
        unsupported(BACKEND, "load an FPU state (kvm_fpu)")

    def get_xsave(self) -> S.kvm_xsave:
        return unsupported(BACKEND, "read the XSAVE state")

    def set_xsave(self, xs: S.kvm_xsave) -> None:
        unsupported(BACKEND, "load an XSAVE state")

    def get_xcrs(self) -> S.kvm_xcrs:
        return unsupported(BACKEND, "read the XCRs")

    def set_xcrs(self, xcrs: S.kvm_xcrs) -> None:
        unsupported(BACKEND, "load the XCRs")

    def get_lapic(self) -> S.kvm_lapic_state:
        return unsupported(BACKEND, "read a local APIC (it has none)")

    def set_lapic(self, lapic: S.kvm_lapic_state) -> None:
        unsupported(BACKEND, "load a local APIC (it has none)")

    def get_vcpu_events(self) -> S.kvm_vcpu_events:
        return unsupported(BACKEND, "read pending vCPU events")

    def set_vcpu_events(self, events: S.kvm_vcpu_events) -> None:
        unsupported(BACKEND, "load vCPU events")

    def close(self) -> None:
        pass


class EmuVm:
    """The software backend's VM: guest memory and emulated vCPUs."""

    backend = BACKEND

    def __init__(self) -> None:
        self.memory: GuestMemory | None = None
        self.vcpus: list[EmuVcpu] = []
        #: Where server threads name the descriptors they wait on (see the module docstring).
        self.gil_turns = GilTurns()

    def register_memory(self, memory: GuestMemory, log_dirty: bool = False) -> None:
        self.memory = memory

    def create_vcpu(self, vcpu_id: int) -> EmuVcpu:
        if self.memory is None:
            raise EmulatorError("register guest memory before creating vCPUs")
        vcpu = EmuVcpu(self, vcpu_id)
        self.vcpus.append(vcpu)
        if len(self.vcpus) > 1:  # SMP: each vCPU's shadow MMU flushes on CR3 loads (ShadowMmu.flush_on_cr3)
            for each in self.vcpus:
                mmu = each.ops.mmu
                if isinstance(mmu, ShadowMmu):
                    mmu.flush_on_cr3 = True
        return vcpu

    def close(self) -> None:
        self.vcpus.clear()

    # --- the backend protocol ---------------------------------------------------------------------
    def capabilities(self) -> BackendCaps:
        return CAPS

    def supported_cpuid(self) -> list[CpuidEntry]:
        return []  # the emulator answers CPUID from its own table unless the VMM sets one

    def msr_index_list(self) -> list[int]:
        return []

    def new_vm(self) -> EmuVm:
        return EmuVm()

    def set_msr_filter(self, denied: dict[int, int]) -> None:
        unsupported(BACKEND, "trap MSR accesses (MSR filters)")

    def create_irqchip(self) -> None:
        unsupported(BACKEND, "provide an in-kernel irqchip")

    def create_pit2(self, speaker_dummy: bool = True) -> None:
        unsupported(BACKEND, "provide an in-kernel PIT")

    def irq_line(self, irq: int, level: bool) -> None:
        unsupported(BACKEND, "drive in-kernel interrupt lines")

    def signal_msi(self, address: int, data: int, flags: int = 0, devid: int = 0) -> int:
        return unsupported(BACKEND, "deliver MSIs to in-kernel LAPICs")

    def ioeventfd(
        self, fd: int, addr: int, length: int, pio: bool, datamatch: int | None = None, deassign: bool = False
    ) -> None:
        unsupported(BACKEND, "signal eventfds on guest writes (ioeventfd)")

    def irqfd(self, fd: int, gsi: int, resamplefd: int | None = None, deassign: bool = False) -> None:
        unsupported(BACKEND, "raise interrupts from eventfds (irqfd)")

    def set_gsi_routing(
        self, irqchip_routes: list[tuple[int, int, int]], msi_routes: list[tuple[int, int, int]]
    ) -> None:
        unsupported(BACKEND, "route GSIs")

    def coalesce_writes(self, addr: int, length: int, pio: bool, deassign: bool = False) -> None:
        unsupported(BACKEND, "coalesce guest writes")

    def coalesced_ring(self, pio: Writer, mmio: Writer) -> CoalescedRing | None:
        return None
