"""KVM hypercalls: find out once whether the host completes them, and hide the PV features that need them.

A KVM guest makes a hypercall with ``VMCALL`` (Intel) or ``VMMCALL`` (AMD);
KVM handles it in the host kernel (``kvm_emulate_hypercall``), never in the
VMM.  kvmlite's part is the CPUID it hands the guest: leaf 0x40000001 lists
the paravirtual features KVM supports, and Linux uses three of them through
hypercalls:

* ``KVM_FEATURE_PV_UNHALT``: a vCPU waiting on a contended spinlock halts and
  is woken with ``KVM_HC_KICK_CPU``;
* ``KVM_FEATURE_PV_SEND_IPI``: IPIs to many CPUs in one ``KVM_HC_SEND_IPI``;
* ``KVM_FEATURE_PV_SCHED_YIELD``: ``KVM_HC_SCHED_YIELD`` to a preempted target.

This project's nested kvm-pvm host (docs/platform-notes.md) never completes
a hypercall: it rewrites the guest's ``VMMCALL`` into ``VMCALL`` (KVM's
"fix hypercall" quirk, meant for a guest migrated from the other vendor) and
then handles that ``VMCALL`` the same way, for ever, without an exit.  A Linux
guest with two vCPUs stopped at ``x86: Booting SMP configuration:`` with one
vCPU in ``__send_ipi_mask`` (a PV IPI) and the other in ``kvm_wait``; with
one vCPU, ``PTP_1588_CLOCK_KVM``'s first ``KVM_HC_CLOCK_PAIRING`` stalled it
at ``kvm_hypercall2``.

:func:`host_completes_hypercalls` finds this out once per process, with a
one-vCPU VM that executes the host vendor's hypercall instruction; where it
does not complete, :func:`without_hypercall_features` clears the three
feature bits from the CPUID kvmlite gives its vCPUs, and Linux falls back to
native spinlocks and APIC IPIs.  (The PTP clock's hypercall has no feature
bit: the microVM kernel's configuration leaves that driver out.)
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Any

from kvmlite.errors import KvmliteError
from kvmlite.kvm.cpuid import CpuidEntry
from kvmlite.vmm.host_probe import CODE, PORT, HostProbe, NewVm, long_mode_vm, reported

log = logging.getLogger(__name__)

KVM_CPUID_SIGNATURE = 0x4000_0000
KVM_CPUID_FEATURES = 0x4000_0001
KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"
KVM_FEATURE_PV_UNHALT = 7
KVM_FEATURE_PV_SEND_IPI = 11
KVM_FEATURE_PV_SCHED_YIELD = 13
#: Feature bits (leaf 0x40000001 EAX) whose use goes through a hypercall.
HYPERCALL_FEATURES = (1 << KVM_FEATURE_PV_UNHALT) | (1 << KVM_FEATURE_PV_SEND_IPI) | (
    1 << KVM_FEATURE_PV_SCHED_YIELD
)
VMCALL, VMMCALL = b"\x0f\x01\xc1", b"\x0f\x01\xd9"
KVM_HC_UNKNOWN = 0xDEAD  # no such hypercall: a working host answers -KVM_ENOSYS
PROBE_WAIT_S = 0.2  # a working host answers in microseconds
KICKS = 10  # attempts to interrupt a vCPU stuck on the hypercall


def _is_amd(cpuid: list[CpuidEntry]) -> bool:
    leaf0 = next((e for e in cpuid if e.function == 0), None)
    if leaf0 is None:
        return False
    vendor = b"".join(r.to_bytes(4, "little") for r in (leaf0.ebx, leaf0.edx, leaf0.ecx))
    return vendor in (b"AuthenticAMD", b"HygonGenuine")


def _probe(new_vm: NewVm) -> bool:
    """``mov eax, KVM_HC_UNKNOWN; <the vendor's hypercall>; out PORT, al; hlt`` at CPL 0.

    Where the hypercall never returns there is no exit either: the vCPU runs in a thread that is
    kicked out of KVM_RUN after :data:`PROBE_WAIT_S`.
    """
    mov_eax = b"\xb8" + KVM_HC_UNKNOWN.to_bytes(4, "little")
    code = mov_eax + VMCALL + bytes([0xE6, PORT, 0xF4])
    with long_mode_vm(new_vm, code) as (vm, vcpu, memory, regs, sregs):
        supported = vm.supported_cpuid()
        if _is_amd(supported):
            memory.write(CODE + len(mov_eax), VMMCALL)
        vcpu.set_cpuid(supported)
        vcpu.set_sregs(sregs)
        vcpu.set_regs(regs)
        result: list[Any] = []

        def run() -> None:
            vcpu.bind_thread()
            try:
                result.append(vcpu.run())
            except KvmliteError as err:
                result.append(err)

        thread = threading.Thread(target=run, name="hypercall-probe", daemon=True)
        thread.start()
        thread.join(PROBE_WAIT_S)
        for _ in range(KICKS):  # the hypercall did not return: interrupt KVM_RUN
            if not thread.is_alive():
                break
            vcpu.kick()
            thread.join(PROBE_WAIT_S)
        return bool(result) and reported(result[0]) is not None


_completes = HostProbe("hypercall", _probe, default=True)


def host_completes_hypercalls(new_vm: NewVm) -> bool:
    """True if a guest's hypercall returns to it on this host (tested once per process).

    ``new_vm`` makes the probe's KVM VM (``VmBackend.new_vm`` or ``Kvm.create_vm``).
    """
    first = _completes.result is None
    works = _completes(new_vm)
    if first and not works:
        log.info(
            "this host's KVM never completes a guest hypercall: "
            "hiding PV spinlock kicks, PV IPIs and PV yield from the guest"
        )
    return works


def without_hypercall_features(cpuid: list[CpuidEntry]) -> list[CpuidEntry]:
    """``cpuid`` with :data:`HYPERCALL_FEATURES` cleared from KVM's feature leaf (if it has one)."""
    signature = next((e for e in cpuid if e.function == KVM_CPUID_SIGNATURE), None)
    if signature is None:
        return cpuid
    vendor = b"".join(r.to_bytes(4, "little") for r in (signature.ebx, signature.ecx, signature.edx))
    if vendor != KVM_SIGNATURE:
        return cpuid
    return [
        replace(e, eax=e.eax & ~HYPERCALL_FEATURES) if e.function == KVM_CPUID_FEATURES else e for e in cpuid
    ]
