"""Guest debugging for every user at once: one owner of each vCPU's KVM_SET_GUEST_DEBUG.

KVM_SET_GUEST_DEBUG replaces the whole setting (enable, single-step,
software breakpoints, DR0-3 and DR7) at each call, so two users writing it
in turn would undo each other.  :class:`GuestDebugSettings` is the one place
it is written: each user (the SYSCALL repair, a debugger) states *its*
request under its own name, and the vCPU gets the union::

    dbg = loop.debug                                   # one per vCPU loop
    dbg.request("gdb", hw=[HwBreakpoint(0xffffffff81000000)], sw_breakpoints=True)
    dbg.request("gdb", single_step=True)               # replaces gdb's previous request
    dbg.release("gdb")                                 # the others' requests stay

The union: single-step if anyone asks for it, software breakpoints (``int3``
exits as a ``Debug`` exit with exception 3; the user patches the ``int3``
into guest memory itself) if anyone asks, and every distinct hardware
breakpoint or watchpoint in DR0-3 (more than four is a :class:`KvmliteError`
and leaves the previous setting in place).  Each user recognises its own
``Debug`` exits (by address, by its single-step state) and lets the others
pass.

Like every vCPU ioctl, a change must be made from the vCPU's own thread (in
an exit hook) or while the VM is paused (:meth:`VmControl.run_paused`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kvmlite.errors import KvmliteError
from kvmlite.kvm.constants import GuestDebug
from kvmlite.x86 import DR7_LEN_CODE, DrRw, dr7_slot

log = logging.getLogger(__name__)

DEBUG_REGISTERS = 4
#: DR7's R/W field: what a hardware breakpoint fires on (EXEC, WRITE, IO, ACCESS).
BreakKind = DrRw


@dataclass(frozen=True)
class HwBreakpoint:
    """One debug register's worth: a linear address, what fires it, how many bytes it covers."""

    addr: int
    kind: BreakKind = BreakKind.EXEC
    length: int = 1

    def __post_init__(self) -> None:
        if self.length not in DR7_LEN_CODE:
            raise KvmliteError(f"a hardware breakpoint covers 1, 2, 4 or 8 bytes, not {self.length}")
        if self.kind == BreakKind.EXEC and self.length != 1:
            raise KvmliteError("an execution breakpoint has length 1")


@dataclass(frozen=True)
class DebugRequest:
    """What one user wants of a vCPU's debug facilities."""

    single_step: bool = False
    sw_breakpoints: bool = False
    hw: tuple[HwBreakpoint, ...] = ()


class GuestDebugSettings:
    """The merged guest-debug requests of one vCPU (see the module docstring)."""

    def __init__(self, vcpu: Any) -> None:
        self.vcpu = vcpu
        self.requests: dict[str, DebugRequest] = {}

    def request(
        self,
        user: str,
        *,
        single_step: bool = False,
        sw_breakpoints: bool = False,
        hw: Iterable[HwBreakpoint] = (),
    ) -> None:
        """Replace ``user``'s request and apply the union of everyone's."""
        new = dict(self.requests)
        new[user] = DebugRequest(single_step, sw_breakpoints, tuple(hw))
        self._apply(new)

    def release(self, user: str) -> None:
        """Drop ``user``'s request (nothing if it had none)."""
        if user in self.requests:
            new = dict(self.requests)
            del new[user]
            self._apply(new)

    def merged(self, requests: dict[str, DebugRequest] | None = None) -> tuple[int, list[int], int]:
        """(KVM_GUESTDBG_* flags, DR0-3 addresses, DR7) for the union of ``requests``."""
        reqs = (self.requests if requests is None else requests).values()
        slots: list[HwBreakpoint] = []
        for req in reqs:
            slots += [bp for bp in req.hw if bp not in slots]
        if len(slots) > DEBUG_REGISTERS:
            raise KvmliteError(f"{len(slots)} hardware breakpoints asked for; the CPU has {DEBUG_REGISTERS}")
        flags = 0
        if any(r.single_step for r in reqs):
            flags |= GuestDebug.SINGLESTEP
        if any(r.sw_breakpoints for r in reqs):
            flags |= GuestDebug.USE_SW_BP
        dr7 = 0
        for i, bp in enumerate(slots):
            dr7 |= dr7_slot(i, bp.kind, bp.length)
        if slots:
            flags |= GuestDebug.USE_HW_BP
        if flags:
            flags |= GuestDebug.ENABLE
        return flags, [bp.addr for bp in slots], dr7

    def _apply(self, requests: dict[str, DebugRequest]) -> None:
        flags, addrs, dr7 = self.merged(requests)
        self.vcpu.set_guest_debug(flags, addrs, dr7)
        self.requests = requests
        log.debug("vcpu %d: guest debug %#x, DR0-3 %s, DR7 %#x", self.vcpu.id, flags, addrs, dr7)
