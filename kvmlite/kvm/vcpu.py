"""``Vcpu``: a vCPU file descriptor, its shared ``kvm_run`` page, and ``run()``.

``run()`` is the hot path of every VMM built on kvmlite: one ioctl, one read
of ``exit_reason``, one ``struct.unpack_from`` of the exit's fields, one small
exit object.  Its data members are views into the ``kvm_run`` mapping, so
answering an IN or an MMIO read is a write into ``exit.data`` and nothing else.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import mmap
import operator
import os
import signal
import struct
import threading
from collections.abc import Callable, Iterable
from typing import NamedTuple, TypeVar, cast

from kvmlite.errors import KvmIoctlError
from kvmlite.kvm import exits as E
from kvmlite.kvm import structs as S
from kvmlite.kvm.constants import ExitReason, GuestDebug, Ioctl, MpState
from kvmlite.kvm.cpuid import CpuidEntry, cpuid_from_struct, cpuid_to_struct
from kvmlite.kvm.ioctl import ioctl

_StructT = TypeVar("_StructT", bound=S.Struct)

#: The signal used to kick a vCPU thread out of KVM_RUN.
KICK_SIGNAL = signal.SIGUSR1

_EXIT_OFFSET = S.kvm_run.exit.offset
_REASON_OFFSET = S.kvm_run.exit_reason.offset
#: exit_reason and, 20 bytes on, the io union member: one unpack serves the commonest exit.
_HEADER_IO = struct.Struct("<I20xBBHIQ")
assert _REASON_OFFSET + 4 + 20 == _EXIT_OFFSET
#: The bytes from exit_reason to the end of the io member: equal bytes, the same port access.
_IO_KEY = slice(_REASON_OFFSET, _REASON_OFFSET + _HEADER_IO.size)
_MMIO = struct.Struct("<Q8sIB")  # phys_addr, data, len, is_write
_MMIO_DATA = _EXIT_OFFSET + 8
_KVM_RUN = int(Ioctl.KVM_RUN)
_REASON_IO = int(ExitReason.IO)
#: The raw header of an interrupted KVM_RUN (Vcpu.run_failed).
_INTERRUPTED = (-1, 0, 0, 0, 0, 0)


def _noop_handler(signum: int, frame: object) -> None:
    """The kick signal only has to interrupt KVM_RUN; there is nothing to do."""


def install_kick_handler() -> bool:
    """Install the no-op handler for :data:`KICK_SIGNAL`; True if it is in place.

    Python lets only the main thread install handlers, so vCPUs created from the
    main thread do it then.  Without the handler :meth:`Vcpu.kick` does not
    signal (the default action would kill the process) and a stop takes effect
    at the vCPU's next exit instead.
    """
    if signal.getsignal(KICK_SIGNAL) is _noop_handler:
        return True
    if threading.current_thread() is threading.main_thread():
        signal.signal(KICK_SIGNAL, _noop_handler)
        return True
    return False


class RawExits(NamedTuple):
    """:meth:`Vcpu.raw_exits`: KVM_RUN, the exit's header, the header of a failed KVM_RUN, and the
    header's raw bytes."""

    enter: Callable[[], object]
    header: Callable[[], tuple[int, int, int, int, int, int]]
    failed: Callable[[OSError], tuple[int, int, int, int, int, int]]
    key: Callable[[], bytes]


class Vcpu:
    """One vCPU.  Made by :meth:`Vm.create_vcpu`."""

    def __init__(self, vcpu_id: int, fd: int, mmap_size: int) -> None:
        self.id = vcpu_id
        self.fd = fd
        self._mm = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._mv = memoryview(self._mm)
        #: The shared kvm_run structure, read and written in place.
        self.kvm_run = S.kvm_run.from_buffer(self._mm)
        self._thread_id: int | None = None
        self._can_signal = install_kick_handler()
        # KVM_RUN with no third argument: given one, fcntl.ioctl first tries it as a writable and
        # then as a read-only buffer, raising and clearing a TypeError each time, before taking it
        # as an int (about 0.7 us per call here, 8% of an exit).  Without it the argument is 0.
        # Partials: C calls with no Python frame of their own.
        self._enter = functools.partial(fcntl.ioctl, fd, _KVM_RUN)
        self._header = functools.partial(_HEADER_IO.unpack_from, self._mm, _REASON_OFFSET)
        self._key = cast(Callable[[], bytes], functools.partial(operator.getitem, self._mm, _IO_KEY))
        self._decoders = {
            int(ExitReason.MMIO): self._exit_mmio,
            int(ExitReason.HLT): lambda: E.Hlt(),
            int(ExitReason.SHUTDOWN): lambda: E.Shutdown(),
            int(ExitReason.IRQ_WINDOW_OPEN): lambda: E.IrqWindowOpen(),
            int(ExitReason.INTR): lambda: E.Interrupted(),
            int(ExitReason.FAIL_ENTRY): self._exit_fail_entry,
            int(ExitReason.INTERNAL_ERROR): self._exit_internal,
            int(ExitReason.DEBUG): self._exit_debug,
            int(ExitReason.SYSTEM_EVENT): self._exit_system_event,
            int(ExitReason.X86_RDMSR): self._exit_rdmsr,
            int(ExitReason.X86_WRMSR): self._exit_wrmsr,
            int(ExitReason.IOAPIC_EOI): self._exit_ioapic_eoi,
        }

    def close(self) -> None:
        if self.fd < 0:
            return
        del self.kvm_run
        try:
            self._mv.release()
            self._mm.close()
        except BufferError:
            pass  # an exit object still holds a view into kvm_run: the mapping goes when it does
        os.close(self.fd)
        self.fd = -1

    @property
    def run_mapping(self) -> mmap.mmap:
        """The whole kvm_run mapping (kvm_run, the PIO data page, the coalesced ring)."""
        return self._mm

    # --- running -------------------------------------------------------------
    def run(self) -> E.Exit:
        """KVM_RUN once; return the typed exit."""
        try:
            self._enter()
        except OSError as err:
            return self.exit_for(self.run_failed(err))
        return self.exit_for(self._header())

    def raw_exits(self) -> RawExits:
        """KVM_RUN and the exit's header as calls that run no Python code of their own, for the
        machine loop's fast path (:mod:`kvmlite.vmm.loop`), which answers a single port access
        from the header without building an exit object::

            try:
                raw.enter()                 # KVM_RUN
                header = raw.header()       # (reason, direction, size, port, count, data_offset)
            except OSError as err:
                header = raw.failed(err)    # interrupted: reason -1; any other error raises

        The last five of the header are KVM's ``io`` fields (they mean something for an IO exit
        only); :meth:`exit_for` makes the typed exit of any header.  ``key()`` gives the bytes the
        header is unpacked from (exit_reason to the end of the io member, the fields between them
        included): two exits with equal keys are the same port access, so a loop may look up what
        it did last time by the key instead of unpacking (bytes are hashable and, unlike the header
        tuple, no work for the garbage collector).
        """
        return RawExits(self._enter, self._header, self.run_failed, self._key)

    def run_failed(self, err: OSError) -> tuple[int, int, int, int, int, int]:
        """The header of an interrupted KVM_RUN (a kick, a signal); any other failure raises."""
        if err.errno in (errno.EINTR, errno.EAGAIN):
            return _INTERRUPTED
        raise KvmIoctlError("KVM_RUN", err.errno or 0, f"vcpu {self.id}") from None

    def exit_for(self, header: tuple[int, int, int, int, int, int]) -> E.Exit:
        """The typed exit of a :meth:`raw_exits` header (valid until the next run)."""
        reason, direction, size, port, count, off = header
        if reason == _REASON_IO:
            if direction:
                return E.IoOut(port, size, count, self._mv[off : off + size * count])
            return E.IoIn(port, size, count, self._mv[off : off + size * count])
        if reason < 0:
            return E.Interrupted()
        decoder = self._decoders.get(reason)
        if decoder is None:
            return E.Unsupported(reason)
        return decoder()

    def _exit_ioapic_eoi(self) -> E.Exit:
        return E.IoapicEoi(self._mm[_EXIT_OFFSET])  # kvm_run's eoi.vector

    def _exit_mmio(self) -> E.Exit:
        addr, _, length, is_write = _MMIO.unpack_from(self._mm, _EXIT_OFFSET)
        data = self._mv[_MMIO_DATA : _MMIO_DATA + min(length, 8)]
        if is_write:
            return E.MmioWrite(addr, data)
        return E.MmioRead(addr, data)

    def _exit_fail_entry(self) -> E.Exit:
        fe = self.kvm_run.exit.fail_entry
        return E.FailEntry(fe.hardware_entry_failure_reason, fe.cpu)

    def _exit_internal(self) -> E.Exit:
        internal = self.kvm_run.exit.internal
        ndata = min(internal.ndata, 16)
        data = tuple(internal.data[:ndata])
        insn = b""
        ef = self.kvm_run.exit.emulation_failure
        if internal.suberror == 1 and ndata >= 3 and ef.flags & 1:
            insn = bytes(ef.insn_bytes[: min(ef.insn_size, 15)])
        return E.InternalErrorExit(internal.suberror, data, insn)

    def _exit_debug(self) -> E.Exit:
        a = self.kvm_run.exit.debug.arch
        return E.Debug(a.exception, a.pc, a.dr6, a.dr7)

    def _exit_system_event(self) -> E.Exit:
        ev = self.kvm_run.exit.system_event
        return E.SystemEventExit(ev.type, tuple(ev.data[: min(ev.ndata, 16)]))

    def _exit_rdmsr(self) -> E.Exit:
        m = self.kvm_run.exit.msr
        return E.RdMsr(m.index, m.reason, self.kvm_run)

    def _exit_wrmsr(self) -> E.Exit:
        m = self.kvm_run.exit.msr
        return E.WrMsr(m.index, m.data, m.reason, self.kvm_run)

    @property
    def ready_for_interrupt_injection(self) -> bool:
        return bool(self.kvm_run.ready_for_interrupt_injection)

    @property
    def if_flag(self) -> bool:
        return bool(self.kvm_run.if_flag)

    def request_interrupt_window(self, on: bool = True) -> None:
        self.kvm_run.request_interrupt_window = int(on)

    @property
    def interrupt_window_requested(self) -> bool:
        return bool(self.kvm_run.request_interrupt_window)

    def bind_thread(self) -> None:
        """Record the calling thread as the one that runs this vCPU (for :meth:`kick`)."""
        self._thread_id = threading.get_ident()

    def kick(self) -> None:
        """Make the vCPU leave KVM_RUN soon, from any thread: set immediate_exit, then signal its thread.

        immediate_exit covers the window where the vCPU thread is about to
        enter KVM_RUN; the signal covers the case where it is already inside.
        The vCPU thread clears immediate_exit once it has seen the kick.
        """
        self.kvm_run.immediate_exit = 1
        if not self._can_signal:
            self._can_signal = install_kick_handler()
        if self._can_signal and self._thread_id is not None and self._thread_id != threading.get_ident():
            try:
                signal.pthread_kill(self._thread_id, KICK_SIGNAL)
            except (ProcessLookupError, OSError):
                pass

    def clear_kick(self) -> None:
        self.kvm_run.immediate_exit = 0

    # --- state -------------------------------------------------------------------
    def _get(self, request: Ioctl, cls: type[_StructT]) -> _StructT:
        obj = cls()
        ioctl(self.fd, request, obj, detail=f"vcpu {self.id}")
        return obj

    def get_regs(self) -> S.kvm_regs:
        return self._get(Ioctl.KVM_GET_REGS, S.kvm_regs)

    def set_regs(self, regs: S.kvm_regs) -> None:
        ioctl(self.fd, Ioctl.KVM_SET_REGS, regs, detail=f"vcpu {self.id}")

    def get_sregs(self) -> S.kvm_sregs:
        return self._get(Ioctl.KVM_GET_SREGS, S.kvm_sregs)

    def set_sregs(self, sregs: S.kvm_sregs) -> None:
        ioctl(self.fd, Ioctl.KVM_SET_SREGS, sregs, detail=f"vcpu {self.id}")

    def get_fpu(self) -> S.kvm_fpu:
        return self._get(Ioctl.KVM_GET_FPU, S.kvm_fpu)

    def set_fpu(self, fpu: S.kvm_fpu) -> None:
        ioctl(self.fd, Ioctl.KVM_SET_FPU, fpu, detail=f"vcpu {self.id}")

    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        """Read MSRs; the result holds those KVM returned (it stops at the first it cannot read)."""
        idx = list(indices)
        buf = S.msrs_with(len(idx))
        for entry, index in zip(buf.entries, idx, strict=True):
            entry.index = index
        n = ioctl(self.fd, Ioctl.KVM_GET_MSRS, buf, detail=f"vcpu {self.id}")
        return {e.index: e.data for e in buf.entries[:n]}

    def set_msrs(self, values: dict[int, int]) -> int:
        """Write MSRs; returns how many KVM accepted (it stops at the first it rejects)."""
        buf = S.msrs_with(len(values))
        for entry, (index, value) in zip(buf.entries, values.items(), strict=True):
            entry.index, entry.data = index, value
        n = ioctl(self.fd, Ioctl.KVM_SET_MSRS, buf, detail=f"vcpu {self.id}")
        if n != len(values):
            bad = list(values)[n]
            raise KvmIoctlError("KVM_SET_MSRS", errno.EINVAL, f"MSR {bad:#x} rejected")
        return n

    def set_cpuid(self, entries: list[CpuidEntry]) -> None:
        ioctl(self.fd, Ioctl.KVM_SET_CPUID2, cpuid_to_struct(entries), detail=f"{len(entries)} entries")

    def get_cpuid(self, max_entries: int = 256) -> list[CpuidEntry]:
        buf = S.cpuid2_with(max_entries)
        ioctl(self.fd, Ioctl.KVM_GET_CPUID2, buf)
        return cpuid_from_struct(buf)

    def get_lapic(self) -> S.kvm_lapic_state:
        return self._get(Ioctl.KVM_GET_LAPIC, S.kvm_lapic_state)

    def set_lapic(self, lapic: S.kvm_lapic_state) -> None:
        ioctl(self.fd, Ioctl.KVM_SET_LAPIC, lapic)

    def get_vcpu_events(self) -> S.kvm_vcpu_events:
        return self._get(Ioctl.KVM_GET_VCPU_EVENTS, S.kvm_vcpu_events)

    def set_vcpu_events(self, events: S.kvm_vcpu_events) -> None:
        ioctl(self.fd, Ioctl.KVM_SET_VCPU_EVENTS, events)

    def get_mp_state(self) -> MpState:
        st = self._get(Ioctl.KVM_GET_MP_STATE, S.kvm_mp_state)
        return MpState(st.mp_state)

    def set_mp_state(self, state: MpState) -> None:
        ioctl(self.fd, Ioctl.KVM_SET_MP_STATE, S.kvm_mp_state(int(state)))

    def get_debugregs(self) -> S.kvm_debugregs:
        return self._get(Ioctl.KVM_GET_DEBUGREGS, S.kvm_debugregs)

    def set_debugregs(self, dr: S.kvm_debugregs) -> None:
        ioctl(self.fd, Ioctl.KVM_SET_DEBUGREGS, dr)

    def get_xsave(self) -> S.kvm_xsave:
        return self._get(Ioctl.KVM_GET_XSAVE, S.kvm_xsave)

    def set_xsave(self, xs: S.kvm_xsave) -> None:
        ioctl(self.fd, Ioctl.KVM_SET_XSAVE, xs)

    def get_xcrs(self) -> S.kvm_xcrs:
        return self._get(Ioctl.KVM_GET_XCRS, S.kvm_xcrs)

    def set_xcrs(self, xcrs: S.kvm_xcrs) -> None:
        ioctl(self.fd, Ioctl.KVM_SET_XCRS, xcrs)

    def set_guest_debug(
        self, flags: GuestDebug | int, hw_breakpoints: Iterable[int] = (), dr7: int = 0
    ) -> None:
        """KVM_SET_GUEST_DEBUG: single-step, software/hardware breakpoints.

        ``hw_breakpoints`` are up to four linear addresses for DR0-3; when given
        and ``dr7`` is 0, DR7 enables each as an execution breakpoint.
        """
        dbg = S.kvm_guest_debug(control=int(flags))
        bps = list(hw_breakpoints)[:4]
        for i, addr in enumerate(bps):
            dbg.arch.debugreg[i] = addr
            if not dr7:
                dbg.arch.debugreg[7] |= 1 << (2 * i + 1)  # Gn: global enable, RW=00 (exec), LEN=00
        if dr7:
            dbg.arch.debugreg[7] = dr7
        ioctl(self.fd, Ioctl.KVM_SET_GUEST_DEBUG, dbg)

    def interrupt(self, vector: int) -> None:
        """KVM_INTERRUPT: queue an external interrupt (userspace irqchip only)."""
        ioctl(self.fd, Ioctl.KVM_INTERRUPT, S.kvm_interrupt(vector), detail=f"vector {vector}")

    def nmi(self) -> None:
        ioctl(self.fd, Ioctl.KVM_NMI)

    def translate(self, linear_address: int) -> S.kvm_translation:
        tr = S.kvm_translation(linear_address=linear_address)
        ioctl(self.fd, Ioctl.KVM_TRANSLATE, tr)
        return tr

    def tsc_khz(self) -> int:
        return ioctl(self.fd, Ioctl.KVM_GET_TSC_KHZ)
