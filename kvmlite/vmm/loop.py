"""The main loop of one vCPU: run, dispatch the exit, repeat.

(Longer than the project's ~600 lines: :class:`VmControl`'s pause and stop protocol and the loop
that honours it at each exit are kept side by side, as each relies on the other's ordering.)

One :class:`VcpuLoop` per vCPU, each in its own thread.  Exits are
dispatched by their type through a dict; PIO and MMIO go to the buses.

Extensions.  Everything that adds to the loop (interrupt injection, the
halt wait, the emulation rescue, the SYSCALL repair, the profiler, exit
tracing, a debugger) is a :class:`LoopExtension` given to
:meth:`VcpuLoop.add`.  An extension overrides what it needs:

* ``exits``: the exit types its ``on_exit(loop, ex)`` sees, before the
  loop's own handling; returning True takes the exit over.  Only these
  types pay for it: the common exits cost nothing more.
* ``every_exit = True``: ``on_exit`` sees every exit (tracing, debuggers).
* ``before_run(loop)``: called before each entry into the guest.
* ``wait_for_interrupt(loop)``: the vCPU executed HLT with interrupts
  enabled; block until an interrupt may be due (or ``loop.control.attention``
  is set).  One extension of a loop may have it; without one, such a HLT ends
  the VM.

Extensions reach the loop only through its public face: ``loop.vcpu`` (the
:class:`~kvmlite.backend.VcpuBackend`), ``loop.control``, ``loop.pio`` and
``loop.mmio``, ``loop.stats``, ``loop.debug``, :meth:`VcpuLoop.handle` (hand
over an exit of their own making) and :meth:`VcpuLoop.crash`.  Of the
extensions for one exit type, the one added last sees the exit first: a
debugger attached to a built machine comes before the machine's own rescue.

:class:`VmControl` is the VM's control from any thread: ``stop()`` ends the
run; ``pause()``/``resume()``/``run_paused(fn)`` park every vCPU at a
consistent point (out of KVM_RUN, the last exit completed, see its
docstring) so that registers, guest memory and devices can be read and
changed.  Both kick every vCPU out of KVM_RUN (immediate_exit + signal); the
loop tests one flag, ``control.attention``, per exit.  Each loop owns its
vCPU's guest-debug settings (``loop.debug``, :mod:`kvmlite.vmm.debug`), and
guest-virtual memory is read through :mod:`kvmlite.vmm.vmem`.  A guest that
triple-faults, fails VM entry or hits a KVM internal error stops the VM with
a readable register dump, never a traceback.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kvmlite.backend import VcpuBackend
from kvmlite.errors import KvmliteError
from kvmlite.kvm import exits as E
from kvmlite.kvm.coalesced import CoalescedRing
from kvmlite.kvm.constants import ExitReason, SystemEvent
from kvmlite.memory.bus import Bus
from kvmlite.status import ExitStatus
from kvmlite.vmm.debug import GuestDebugSettings
from kvmlite.vmm.dump import format_state
from kvmlite.vmm.stats import ExitStats

log = logging.getLogger(__name__)
T = TypeVar("T")
#: The ring test of a loop without a coalesced ring: never pending.
_NO_RING = memoryview(bytes(8)).cast("I")
_REASON_IO = int(ExitReason.IO)
#: Port accesses whose accessors a bus keeps for the fast path before it starts again.
MAX_CACHED_ACCESSES = 1024
#: (out, accessor, data offset in kvm_run, size): a port access as the fast path performs it.
PortAccess = tuple[int, Callable[..., Any], int, int]
#: The header the fast path leaves for the last exit when it handled a port access.
_PORT_ACCESS = (_REASON_IO, 0, 1, 0, 1, 0)


@dataclass
class StopInfo:
    status: int
    message: str
    vcpu: int | None = None
    reset: bool = False  # the guest asked for a reset (the caller may restart it)


class VmControl:
    """Shared by every vCPU loop of one VM: stop, pause and resume, and who to kick.

    Pause (for a debugger, a monitor, a snapshot)::

        control.pause()            # returns once every vCPU loop is parked
        regs = vcpu.get_regs()     # any vCPU ioctl, guest memory, devices: nothing runs
        control.resume()

        value = control.run_paused(lambda: read_something())   # the same, as one call

    Guarantees while paused: no vCPU is inside KVM_RUN (or the emulator) and
    none is handling an exit; every exit that was being handled has been
    completed (the loop re-enters KVM_RUN once with ``immediate_exit`` set, so
    KVM finishes a pending IN, MMIO read or MSR access and returns without
    running guest code), so the registers read are the architectural state and
    registers written are what the guest runs with.  A vCPU halted in the
    userspace irqchip's wait stays halted after the resume; one halted inside
    KVM (in-kernel irqchip) is kicked out and re-enters its halt on resume.
    Devices and timers keep running: interrupts raised meanwhile stay pending
    in the interrupt controllers and are delivered after the resume.

    Pauses nest: each :meth:`pause` needs its :meth:`resume`, and the vCPUs
    run again after the last one.  :meth:`pause` may be called from a vCPU
    thread (from an exit hook): it then waits for the other vCPUs only, and
    the calling vCPU parks as soon as its hook returns.  A :meth:`stop` ends
    every pause.  vCPU ioctls from other threads block while that vCPU is in
    KVM_RUN, so they belong inside a pause (or in the vCPU's own thread).
    """

    def __init__(self) -> None:
        self.stopping = False
        #: True while a stop or a pause is requested: the one flag a vCPU loop tests per exit.
        self.attention = False
        self.stop_info: StopInfo | None = None
        self.stopped = threading.Event()
        self.vcpus: list[VcpuBackend] = []
        #: Called once the stop is requested (restore the terminal, close sockets).
        self.on_stop: list[Callable[[], None]] = []
        #: Called on a stop and on a pause: wake whatever a vCPU thread may be sleeping on (a halt).
        self.wakers: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pauses = 0
        self._running: set[int] = set()  # thread ids of loops inside VcpuLoop.run
        self._parked: set[int] = set()

    def stop(self, status: int, message: str = "", vcpu: int | None = None, reset: bool = False) -> None:
        """Ask every vCPU to stop; the first request's status wins.  Ends any pause."""
        with self._lock:
            if self.stop_info is None:
                self.stop_info = StopInfo(status, message, vcpu, reset)
                if message:
                    log.info("stopping: %s (status %d)", message, status)
            self.stopping = self.attention = True
            self._changed.notify_all()
        for v in self.vcpus:
            v.kick()
        for callback in self.on_stop:
            callback()
        for wake in self.wakers:
            wake()
        self.stopped.set()

    # --- pause -----------------------------------------------------------------------
    def pause(self, timeout: float | None = None) -> bool:
        """Stop every vCPU at a consistent point and wait for it (see the class docstring).

        True once every running vCPU loop is parked (or the VM is stopping);
        False if ``timeout`` seconds passed first, in which case the pause is
        still requested and still needs its :meth:`resume`.
        """
        me = threading.get_ident()
        with self._lock:
            self._pauses += 1
            self.attention = True
        for v in self.vcpus:
            v.kick()
        for wake in self.wakers:
            wake()
        with self._changed:
            return self._changed.wait_for(
                lambda: self.stopping or not (self._running - self._parked - {me}), timeout
            )

    def resume(self) -> None:
        """End one :meth:`pause`; the vCPUs run again when no pause is left."""
        with self._lock:
            if self._pauses == 0:
                raise KvmliteError("resume() without a pause()")
            self._pauses -= 1
            self.attention = self.stopping or self._pauses > 0
            self._changed.notify_all()

    def run_paused(self, fn: Callable[[], T]) -> T:
        """Pause, call ``fn`` and resume (also when ``fn`` raises); ``fn``'s result."""
        self.pause()
        try:
            return fn()
        finally:
            self.resume()

    @property
    def paused(self) -> bool:
        """A pause is in effect and every running vCPU loop is parked."""
        with self._lock:
            return self._pauses > 0 and not (self._running - self._parked)

    # --- the loops' side ------------------------------------------------------------------
    def park(self) -> None:
        """Called by a vCPU loop at a consistent point: block while a pause is in effect."""
        me = threading.get_ident()
        with self._changed:
            self._parked.add(me)
            self._changed.notify_all()
            while self._pauses and not self.stopping:
                self._changed.wait()
            self._parked.discard(me)

    def loop_started(self) -> None:
        with self._lock:
            self._running.add(threading.get_ident())

    def loop_ended(self) -> None:
        with self._changed:
            self._running.discard(threading.get_ident())
            self._changed.notify_all()


class LoopExtension:
    """A plug-in for :class:`VcpuLoop` (see the module docstring); override what you need."""

    #: The exit types given to :meth:`on_exit`.
    exits: tuple[type[E.Exit], ...] = ()
    #: Give every exit to :meth:`on_exit` (costs on every exit: tracing, debuggers).
    every_exit: bool = False

    def before_run(self, loop: VcpuLoop) -> None:
        """Called before each entry into the guest (only if overridden)."""

    def on_exit(self, loop: VcpuLoop, ex: Any) -> bool:
        """An exit of one of :attr:`exits`; True if this extension handled it."""
        return False

    def wait_for_interrupt(self, loop: VcpuLoop) -> None:
        """HLT with interrupts enabled: block until an interrupt may be due or ``control.attention``."""
        raise NotImplementedError

    def state_loaded(self, loop: VcpuLoop) -> None:
        """A snapshot's state (and RAM) was loaded into this vCPU of a new machine: redo what this
        extension set up when the guest did something it will not do again (the SYSCALL repair)."""

    def _overrides(self, name: str) -> bool:
        return getattr(type(self), name) is not getattr(LoopExtension, name)


class ExitHook(LoopExtension):
    """An extension made of one function, ``hook(ex) -> bool``, for some exit types or every exit."""

    def __init__(
        self, hook: Callable[[Any], bool], exits: tuple[type[E.Exit], ...] = (), every_exit: bool = False
    ) -> None:
        self.hook = hook
        self.exits = exits
        self.every_exit = every_exit

    def on_exit(self, loop: VcpuLoop, ex: Any) -> bool:
        return self.hook(ex)


class VcpuLoop:
    """Runs one vCPU until the VM stops."""

    def __init__(
        self,
        vcpu: VcpuBackend,
        control: VmControl,
        pio: Bus,
        mmio: Bus,
        *,
        timing: bool = False,
    ) -> None:
        self.vcpu = vcpu
        self.control = control
        self.pio = pio
        self.mmio = mmio
        self.timing = timing
        self.stats = ExitStats()
        #: The host thread id (TID) of the thread running this vCPU, once it runs (QMP's thread-id).
        self.native_thread_id: int | None = None
        #: Set by a state restore (kvmlite.snapshot) while the loop is parked: do not go back to a halt wait
        #: (unless ``resume_halted``: the restored state was itself waiting there).
        self.state_reloaded = False
        #: True while the vCPU waits in the userspace irqchip's halt wait (a snapshot records it).
        self.halted = False
        #: Set by a state restore: the state was taken in the halt wait, so the vCPU goes back to it.
        self.resume_halted = False
        #: The one writer of this vCPU's KVM_SET_GUEST_DEBUG (see kvmlite.vmm.debug).
        self.debug = GuestDebugSettings(vcpu)
        self.extensions: list[LoopExtension] = []
        #: The VM's coalesced-write ring (kvmlite.kvm.coalesced), drained before each exit is handled.
        self.coalesced: CoalescedRing | None = None
        #: Called when an extension wants every exit (a trace, a debugger): writes that go through
        #: the coalesced ring make none, so the owner of the ring stops coalescing.
        self.every_exit_wanted: Callable[[], None] | None = None
        self._before_run: list[Callable[[VcpuLoop], None]] = []
        self._every_exit: list[Callable[[E.Exit], bool]] = []
        self._halt_wait: Callable[[VcpuLoop], None] | None = None
        self._handlers: dict[type[E.Exit], Callable[[Any], None]] = {
            E.IoOut: self._io_out,
            E.IoIn: self._io_in,
            E.MmioWrite: self._mmio_write,
            E.MmioRead: self._mmio_read,
            E.Hlt: self._hlt,
            E.Interrupted: self._interrupted,
            E.IrqWindowOpen: lambda ex: None,
            E.IoapicEoi: lambda ex: None,  # the split irqchip's (kvmlite.vmm.split_irqchip) to handle
            E.Shutdown: self._shutdown,
            E.FailEntry: self._fail_entry,
            E.InternalErrorExit: self._internal_error,
            E.Debug: self._debug,
            E.SystemEventExit: self._system_event,
            E.RdMsr: self._rdmsr,
            E.WrMsr: self._wrmsr,
            E.Unsupported: self._unsupported,
        }
        if timing:
            for kind, cls in (("pio", E.IoOut), ("pio", E.IoIn), ("mmio", E.MmioWrite), ("mmio", E.MmioRead)):
                self._handlers[cls] = self._timed(kind, self._handlers[cls])
        self._defaults = dict(self._handlers)
        control.vcpus.append(vcpu)

    def add(self, extension: LoopExtension) -> None:
        """Plug ``extension`` into this loop (before the loop runs; see the module docstring)."""
        if extension._overrides("wait_for_interrupt"):
            if self._halt_wait is not None:
                raise KvmliteError(f"vcpu {self.vcpu.id}: two extensions wait for interrupts on HLT")
            self._halt_wait = extension.wait_for_interrupt
        self.extensions.append(extension)
        if extension._overrides("before_run"):
            self._before_run.append(extension.before_run)
        if extension.every_exit:
            if self.every_exit_wanted is not None:
                self.every_exit_wanted()
            on_exit = extension.on_exit

            def every(ex: E.Exit) -> bool:
                return on_exit(self, ex)

            self._every_exit.append(every)
        for cls in extension.exits:
            self._handlers[cls] = self._dispatcher(cls)

    def _dispatcher(self, cls: type[E.Exit]) -> Callable[[Any], None]:
        """The handler of ``cls``: the extensions that want it, latest first, then the loop's own."""
        hooks = tuple(ext.on_exit for ext in reversed(self.extensions) if cls in ext.exits)
        default = self._defaults[cls]

        def dispatch(ex: Any) -> None:
            for hook in hooks:
                if hook(self, ex):
                    return
            default(ex)

        return dispatch

    # --- the loop ----------------------------------------------------------------
    def run(self) -> None:
        """Run until the VM stops.  Any kvmlite error stops the VM with a message instead of escaping."""
        self.vcpu.bind_thread()
        self.native_thread_id = threading.get_native_id()
        self.state_reloaded = False  # a state loaded before the start is simply where it starts
        self.control.loop_started()
        try:
            self._resume_halt()
            self._loop()
        except KvmliteError as err:
            self.control.stop(ExitStatus.GUEST_CRASH, f"vcpu {self.vcpu.id}: {err}", self.vcpu.id)
        except Exception:  # a bug in kvmlite or in a device model: stop cleanly, keep the trace in the log
            log.exception("vcpu %d: unexpected error in the VMM", self.vcpu.id)
            self.control.stop(
                ExitStatus.GUEST_CRASH, f"vcpu {self.vcpu.id}: internal VMM error (see log)", self.vcpu.id
            )
        finally:
            if self.coalesced is not None:
                self.coalesced.drain()  # the guest's last coalesced writes reach their devices
            self.control.loop_ended()
            self.stats.ended_ns = time.perf_counter_ns()

    def _loop(self) -> None:
        control = self.control
        unfinished = False  # the last exit is one KVM completes only at the next KVM_RUN
        while True:
            if control.attention:  # a stop or a pause: the only test the hot path pays for
                if control.stopping:
                    return
                self._settle(unfinished)
                unfinished = False
                if control.stopping:
                    return
                if self.coalesced is not None:
                    self.coalesced.drain()
                control.park()
                self.state_reloaded = False
                self._resume_halt()
                continue
            # Both return once control.attention is set; which one may change at a pause (a debugger).
            unfinished = self._run_fast() if self._fast_path_applies() else self._run_generic()

    def _run_generic(self) -> bool:
        """Run and dispatch typed exits until ``control.attention``; True if the last exit is unfinished."""
        control = self.control
        vcpu = self.vcpu
        handlers = self._handlers
        by_reason = self.stats.by_reason
        before_run = self._before_run
        after_exit = self._every_exit
        timing = self.timing
        clock = time.perf_counter_ns
        stats = self.stats
        ring = self.coalesced
        pending = _NO_RING if ring is None else ring.words  # first != last: coalesced writes wait
        ex: E.Exit | None = None
        while not control.attention:
            for hook in before_run:
                hook(self)
            if timing:
                t0 = clock()
                ex = vcpu.run()
                t1 = clock()
                stats.run_ns += t1 - t0
            else:
                ex = vcpu.run()
            if pending[0] != pending[1]:
                ring.drain()  # type: ignore[union-attr]  # before this exit: the guest's order
            kind = type(ex)
            counter = by_reason[kind.__name__]
            counter.count += 1
            if not (after_exit and any(h(ex) for h in after_exit)):
                handlers[kind](ex)
            if timing:
                counter.ns += clock() - t1
        return ex is not None and type(ex) is not E.Interrupted

    def _fast_path_applies(self) -> bool:
        """Port I/O may skip the exit objects: a backend that offers raw exits (KVM), and nothing
        (an extension, ``--stats`` timing, a trace) that wants to see or time the port accesses."""
        handlers, defaults = self._handlers, self._defaults
        return (
            hasattr(self.vcpu, "raw_exits")
            and not (self.timing or self._before_run or self._every_exit)
            and handlers[E.IoIn] is defaults[E.IoIn]
            and handlers[E.IoOut] is defaults[E.IoOut]
        )

    def _run_fast(self) -> bool:
        """:meth:`_run_generic` for a backend with ``raw_exits``: a single IN or OUT (the commonest exit,
        a device register) goes from the ``kvm_run`` page to the device and back without an exit object.

        The first time an access is seen, the bus gives the register's own function
        (:meth:`Bus.accessor`), kept in ``pio.accessors`` under the exit's raw header bytes; the
        next identical exit (a driver polling a status register, a port written in a loop) is
        one dictionary lookup and that function, under the bus lock, with no header unpacked, no
        bus lookup and nothing allocated that the garbage collector tracks.  Every other exit is
        decoded and handled as in :meth:`_run_generic`.
        """
        control = self.control
        vcpu: Any = self.vcpu
        enter, header_of, failed, key_of = vcpu.raw_exits()
        exit_for, mm = vcpu.exit_for, vcpu.run_mapping
        handlers = self._handlers
        by_reason = self.stats.by_reason
        pio = self.pio
        acquire, release = pio.lock.acquire, pio.lock.release
        cached = pio.accessors
        lookup = cached.get
        ring = self.coalesced
        pending = _NO_RING if ring is None else ring.words
        io, from_bytes = _REASON_IO, int.from_bytes
        ins = outs = 0
        header = None
        try:
            while not control.attention:
                try:
                    enter()
                except OSError as err:
                    header = failed(err)
                    if pending[0] != pending[1]:
                        ring.drain()  # type: ignore[union-attr]
                else:
                    key = key_of()
                    if pending[0] != pending[1]:
                        ring.drain()  # type: ignore[union-attr]  # before this exit: the guest's order
                    acquire()
                    try:
                        access = lookup(key)
                        if access is None:
                            header = header_of()
                            if header[0] == io and header[4] == 1:
                                access = self._remember_access(key, header)
                        if access is not None:
                            out, fn, off, size = access
                            if out:
                                outs += 1
                                fn(mm[off] if size == 1 else from_bytes(mm[off : off + size], "little"))
                            else:
                                ins += 1
                                if size == 1:
                                    mm[off] = fn()
                                else:
                                    mm[off : off + size] = fn().to_bytes(size, "little")
                            header = _PORT_ACCESS
                            continue
                    finally:
                        release()
                ex = exit_for(header)
                kind = type(ex)
                by_reason[kind.__name__].count += 1
                handlers[kind](ex)
        finally:
            if ins:
                by_reason["IoIn"].count += ins
            if outs:
                by_reason["IoOut"].count += outs
        return header is not None and header[0] >= 0

    def _remember_access(self, key: bytes, header: tuple[int, int, int, int, int, int]) -> PortAccess:
        """What to do for a single IN or OUT, kept for the next exit with the same ``key`` (called
        holding the bus lock, see :meth:`_run_fast`): (out, the register's accessor, where its data
        is in ``kvm_run``, size).  A port no device claims gets the bus's own read or write, which
        answers and counts it."""
        _, direction, size, port, _, off = header
        pio = self.pio
        fn = pio.accessor(port, size, bool(direction))
        if fn is None:
            fn = functools.partial(pio.write if direction else pio.read, port, size)
        if len(pio.accessors) >= MAX_CACHED_ACCESSES:
            pio.accessors.clear()
        access = pio.accessors[key] = (direction, fn, off, size)
        return access

    def _settle(self, unfinished: bool) -> None:
        """Bring the vCPU to a consistent state before it parks.

        KVM completes an exit (the data of an IN or MMIO read, an MSR access,
        the next round of a string instruction) only at the next KVM_RUN.
        Entering once with ``immediate_exit`` set (a kick from this thread)
        has it do that and return at once, without running guest code.
        """
        vcpu = self.vcpu
        while unfinished and not self.control.stopping:
            vcpu.kick()
            ex = vcpu.run()
            if self.coalesced is not None:
                self.coalesced.drain()
            self.stats.by_reason[type(ex).__name__].count += 1
            if not (self._every_exit and any(h(ex) for h in self._every_exit)):
                self._handlers[type(ex)](ex)
            unfinished = type(ex) is not E.Interrupted

    def state_loaded(self) -> None:
        """Tell every extension that a snapshot's state was loaded into this vCPU."""
        for extension in self.extensions:
            extension.state_loaded(self)

    def handle(self, ex: E.Exit) -> None:
        """Give an exit to its handler (for extensions that produce exits of their own)."""
        self._handlers[type(ex)](ex)

    def intercept(self, cls: type[E.Exit], hook: Callable[[Any], bool]) -> None:
        """``add(ExitHook(hook, (cls,)))``: ``hook(ex)`` sees the exits of type ``cls`` first."""
        self.add(ExitHook(hook, (cls,)))

    # --- handlers ------------------------------------------------------------------
    def _count_addr(self, kind: str, addr: int, t0: int) -> None:
        c = self.stats.by_address[(kind, addr)]
        c.count += 1
        c.ns += time.perf_counter_ns() - t0

    def _io_out(self, ex: E.IoOut) -> None:
        size, data, write, port = ex.size, ex.data, self.pio.write, ex.port
        if ex.count == 1:
            write(port, size, int.from_bytes(data, "little"))
        else:
            for i in range(0, size * ex.count, size):
                write(port, size, int.from_bytes(data[i : i + size], "little"))

    def _io_in(self, ex: E.IoIn) -> None:
        size, data, read, port = ex.size, ex.data, self.pio.read, ex.port
        if ex.count == 1:
            data[:] = read(port, size).to_bytes(size, "little")
            return
        for i in range(0, size * ex.count, size):
            data[i : i + size] = read(port, size).to_bytes(size, "little")

    def _mmio_write(self, ex: E.MmioWrite) -> None:
        self.mmio.write(ex.addr, len(ex.data), int.from_bytes(ex.data, "little"))

    def _mmio_read(self, ex: E.MmioRead) -> None:
        n = len(ex.data)
        ex.data[:] = self.mmio.read(ex.addr, n).to_bytes(n, "little")

    def _timed(self, kind: str, handler: Callable[[Any], None]) -> Callable[[Any], None]:
        """``handler`` counted and timed per port/address (only under ``--stats``: it costs a clock read)."""

        def timed(ex: Any) -> None:
            t0 = time.perf_counter_ns()
            handler(ex)
            self._count_addr(kind, ex.port if kind == "pio" else ex.addr, t0)

        return timed

    def _hlt(self, ex: E.Hlt) -> None:
        if not self.vcpu.if_flag:
            self.control.stop(ExitStatus.OK, "guest halted with interrupts disabled", self.vcpu.id)
        elif self._halt_wait is not None:
            self._wait_halted()
        else:
            self.control.stop(
                ExitStatus.OK,
                "guest halted with interrupts enabled and no interrupt source to wake it",
                self.vcpu.id,
            )

    def _wait_halted(self) -> None:
        """The userspace irqchip's halt wait, through pauses; returns when the vCPU is to run again."""
        assert self._halt_wait is not None
        control = self.control
        self.halted = True
        try:
            self._halt_wait(self)  # returns on an interrupt, a stop or a pause
            while control.attention and not control.stopping:
                control.park()  # halted: nothing is pending in the vCPU
                if self.state_reloaded:  # a restore replaced the vCPU's state while it was parked here:
                    self.state_reloaded = False  # run what it holds now (it may be inside an interrupt
                    if not self.resume_halted:  # handler whose EOI the wait would never see), unless
                        return  # that state was itself taken in this wait: then wait on
                    self.resume_halted = False
                self._halt_wait(self)  # and still halted after the resume
        finally:
            self.halted = False

    def _resume_halt(self) -> None:
        """A restored state taken in the halt wait goes back to it instead of running past its HLT."""
        if self.resume_halted:
            self.resume_halted = False
            if self._halt_wait is not None and not self.control.stopping:
                self._wait_halted()

    def _interrupted(self, ex: E.Interrupted) -> None:
        self.vcpu.clear_kick()

    def crash(self, what: str) -> None:
        """Stop the VM because the guest cannot go on, logging a register dump."""
        try:
            dump = format_state(self.vcpu.get_regs(), self.vcpu.get_sregs())
        except KvmliteError as err:
            dump = f"(registers unavailable: {err})"
        log.error("vcpu %d: %s\n%s", self.vcpu.id, what, dump)
        self.control.stop(ExitStatus.GUEST_CRASH, f"vcpu {self.vcpu.id}: {what}", self.vcpu.id)

    def _shutdown(self, ex: E.Shutdown) -> None:
        self.crash("guest triple fault (shutdown)")

    def _fail_entry(self, ex: E.FailEntry) -> None:
        self.crash(f"VM entry failed, hardware reason {ex.hardware_entry_failure_reason:#x}")

    def _internal_error(self, ex: E.InternalErrorExit) -> None:
        self.crash(ex.describe())

    def _debug(self, ex: E.Debug) -> None:
        log.info(
            "vcpu %d: debug exit, exception %d at %#x (no debugger attached)",
            self.vcpu.id,
            ex.exception,
            ex.pc,
        )

    def _system_event(self, ex: E.SystemEventExit) -> None:
        kind = ex.kind
        if kind == SystemEvent.CRASH:
            self.crash("guest reported a crash (system event)")
        elif kind == SystemEvent.RESET:
            self.control.stop(ExitStatus.OK, "guest requested a reset", self.vcpu.id, reset=True)
        else:
            self.control.stop(ExitStatus.OK, f"guest requested {ex.describe()}", self.vcpu.id)

    def _rdmsr(self, ex: E.RdMsr) -> None:
        log.warning("vcpu %d: RDMSR %#x not handled: injecting #GP", self.vcpu.id, ex.index)
        ex.fail()

    def _wrmsr(self, ex: E.WrMsr) -> None:
        log.warning("vcpu %d: WRMSR %#x <- %#x not handled: injecting #GP", self.vcpu.id, ex.index, ex.value)
        ex.fail()

    def _unsupported(self, ex: E.Unsupported) -> None:
        self.crash(f"unsupported exit reason {ex.reason.name} ({ex.code})")
