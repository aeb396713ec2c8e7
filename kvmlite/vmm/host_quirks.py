"""Boot Linux on hosts whose KVM cannot run AVX code at ring 0: add the kernel's own workaround.

Some nested hosts (this project's kvm-pvm machines, docs/platform-notes.md)
raise #UD for VEX-encoded (AVX) instructions a guest executes at CPL 0, and
show the host's CPUID to ring-0 code whatever KVM_SET_CPUID2 said.  An
unmodified Linux then panics in its first AVX code (``blake2s_compress``
while seeding the RNG), and it also needs help with what the host cannot
emulate at ring 0 either (SSSE3 and later arithmetic, XSAVES/XRSTORS,
XSAVE under SMAP).  Linux's own ``clearcpuid=`` keeps the kernel off all of
it: :data:`LINUX_CLEARCPUID`.

:func:`linux_cmdline` adds that parameter to a Linux guest's command line
(bzImage or PVH) when :func:`host_faults_avx_at_cpl0` finds the quirk, with
one log line saying what and why; ``--host-workarounds off`` leaves the
command line alone.  The probe is a tiny VM that executes ``vzeroupper`` at
CPL 0, run once per process and only for Linux guests.  User space keeps
using AVX where ring 3 runs with the host's XCR0: kvmlite.vmm.xstate_quirk
keeps that state across the kernel's context switches.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kvmlite.errors import KvmIoctlError
from kvmlite.vmm.host_probe import PORT, HostProbe, NewVm, long_mode_vm, reported, run_to_exit
from kvmlite.x86 import Cr4, Xcr0

log = logging.getLogger(__name__)

#: What a Linux guest's kernel must not use on such a host (names as in /proc/cpuinfo; Linux 6.1 and
#: later take names): AVX and AVX-512 (#UD at ring 0), SSSE3 and later arithmetic and the AES/CLMUL
#: instructions (the host cannot emulate them at ring 0, nor can kvmlite's rescue), XSAVES (XRSTORS
#: raises #GP there), SMAP (XSAVE to a signal frame at ring 0 faults for ever).
LINUX_CLEARCPUID = "clearcpuid=avx512f,avx2,avx,smap,xsaves,ssse3,sse4_1,sse4_2,pclmulqdq,aes"
LINUX_FORMATS = ("bzimage", "pvh")
XCR0_AVX = int(Xcr0.X87 | Xcr0.SSE | Xcr0.AVX)

def _probe(new_vm: NewVm) -> bool:
    """True if ``vzeroupper`` at CPL 0, with AVX enabled in CR4 and XCR0, does not run."""
    from kvmlite.vmm.cpu_setup import guest_cpuid

    code = bytes.fromhex("c5f877 e6") + bytes([PORT]) + b"\xf4"  # vzeroupper; out PORT, al; hlt
    with long_mode_vm(new_vm, code) as (vm, vcpu, _, regs, sregs):
        vcpu.set_cpuid(guest_cpuid(vm.supported_cpuid(), 0))
        sregs.cr4 |= Cr4.OSXSAVE
        sregs.idt.base, sregs.idt.limit = 0, 0  # a #UD triple-faults: the run ends either way
        vcpu.set_sregs(sregs)
        vcpu.set_regs(regs)
        xcrs = vcpu.get_xcrs()
        xcrs.nr_xcrs, xcrs.xcrs[0].xcr, xcrs.xcrs[0].value = 1, 0, XCR0_AVX
        try:
            vcpu.set_xcrs(xcrs)
        except KvmIoctlError:
            return False  # no AVX state for guests at all: no guest kernel uses AVX
        # (KVM_GET_SUPPORTED_CPUID may not list AVX on such a host: its ring 0 sees the host's CPUID.)
        return reported(run_to_exit(vcpu)) is None


#: True if an AVX instruction at CPL 0 does not run on this host (probed once, for Linux guests only).
host_faults_avx_at_cpl0: HostProbe[bool] = HostProbe("AVX at ring 0", _probe, False)


def linux_cmdline(kernel: Path, cmdline: str, new_vm: NewVm) -> str:
    """``cmdline``, with :data:`LINUX_CLEARCPUID` added if ``kernel`` is Linux and this host needs it."""
    from kvmlite.loaders import detect_format

    try:
        data = kernel.read_bytes()
    except OSError:
        return cmdline  # the loader reports it
    if detect_format(data) not in LINUX_FORMATS or not host_faults_avx_at_cpl0(new_vm):
        return cmdline
    if any(word.startswith("clearcpuid=") for word in cmdline.split()):
        log.info("this host's KVM cannot run AVX at ring 0; the command line has its own clearcpuid=: kept")
        return cmdline
    log.warning(
        "this host's KVM cannot run AVX instructions at ring 0: added `%s` to the Linux command line "
        "(--host-workarounds off to boot it unchanged)",
        LINUX_CLEARCPUID,
    )
    return f"{cmdline} {LINUX_CLEARCPUID}".strip()
