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

The same hosts emulate every instruction a guest runs at CPL 0 (about 1 µs
each), so a distribution kernel spends many minutes of its boot in work that
only costs time: ftrace's boot-time checks and the crypto self-tests.  Where
:func:`host_ring0_ns_per_instruction` (a probe VM timing a short CPL-0 loop)
finds ring 0 that slow, :func:`linux_cmdline` also adds
:data:`LINUX_BOOT_SPEED` (``--host-workarounds`` item ``boot-speed``),
merged with the user's own ``initcall_blacklist=`` and never overriding a
parameter the user wrote, and :func:`initramfs_unpacker` hands the kernel its
initramfs with the compressed archives unpacked (:mod:`kvmlite.loaders.initrd`):
inflating a megabyte of gzip takes the kernel minutes there.  With ``pvh-entry``,
:func:`pvh_kernel_from_bzimage` boots a bzImage's vmlinux through its PVH entry,
skipping the bzImage's decompressor (minutes there too).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from kvmlite.errors import KvmIoctlError
from kvmlite.files import MIB
from kvmlite.vmm.host_probe import PORT, HostProbe, NewVm, long_mode_vm, reported, run_to_exit
from kvmlite.x86 import Cr4, Xcr0

log = logging.getLogger(__name__)

#: What a Linux guest's kernel must not use on such a host (names as in /proc/cpuinfo; Linux 6.1 and
#: later take names): AVX and AVX-512 (#UD at ring 0), SSSE3 and later arithmetic and the AES/CLMUL
#: instructions (the host cannot emulate them at ring 0, nor can kvmlite's rescue), XSAVES (XRSTORS
#: raises #GP there), SMAP (XSAVE to a signal frame at ring 0 faults for ever).
LINUX_CLEARCPUID = "clearcpuid=avx512f,avx2,avx,smap,xsaves,ssse3,sse4_1,sse4_2,pclmulqdq,aes"
LINUX_FORMATS = ("bzimage", "pvh")
#: Initcalls of Linux that only cost boot time where ring 0 is emulated, each minutes of it there
#: (docs/platform-notes.md): ftrace's scan of its ~40,000 call sites with a kallsyms lookup each
#: (``ftrace_check_for_weak_functions``, and ``ftrace_check_sync`` that waits for it), and
#: ``trace_eval_init``'s rewrite of every trace event's format (enum names to numbers) that holds
#: ``event_mutex`` while init waits for it.  Without them nothing changes for user space: the ftrace
#: records of overridden weak functions (code that never runs) are not disabled, and the event formats
#: in tracefs show enum names instead of numbers, which only a trace reader notices.
LINUX_SLOW_INITCALLS = ("ftrace_check_for_weak_functions", "ftrace_check_sync", "trace_eval_init")
INITCALL_BLACKLIST = "initcall_blacklist="
#: What ``boot-speed`` adds where ring 0 is emulated: the initcalls above, and the crypto self-tests
#: (``cryptomgr.notests``: minutes there, long enough for the X.509 key loader to time out waiting for
#: them; the algorithms are the same, only not checked at registration).  Left out on purpose, although
#: they save time there too: ``init_on_alloc=0`` and ``mitigations=off`` (hardening and security
#: defaults the distribution chose), ``quiet``, ``audit=0``, ``apparmor=0``, ``nowatchdog``,
#: ``tsc=reliable`` (they change what the guest's user space and its administrator see).
LINUX_BOOT_SPEED = ("cryptomgr.notests", INITCALL_BLACKLIST + ",".join(LINUX_SLOW_INITCALLS))
#: A guest's ring 0 slower than this per instruction is emulated by the host (about 1,000 ns on this
#: project's machines; well under 5 ns where KVM runs it on the CPU, exits included).
EMULATED_NS_PER_INSTRUCTION = 50
SPEED_LOOP = 5_000  # iterations of the probe's 2-instruction loop: ~8 ms a run where ring 0 is emulated
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


def _speed_probe(new_vm: NewVm) -> int:
    """Nanoseconds of the vCPU thread's CPU time per instruction of a loop at CPL 0.

    ``mov ecx, N; 1: dec ecx; jnz 1b; out PORT, al`` three times, each run timed alone in CPU time of
    this thread (where the host emulates the guest it does so on this thread; preemption does not
    count): the best of the last two, as the first includes the VM's first entry.
    """
    loop = b"\xb9" + SPEED_LOOP.to_bytes(4, "little") + b"\xff\xc9\x75\xfc" + bytes([0xE6, PORT])
    with long_mode_vm(new_vm, loop * 3 + b"\xf4") as (_, vcpu, _, regs, sregs):
        vcpu.set_sregs(sregs)
        vcpu.set_regs(regs)
        times = []
        for _ in range(3):
            start = time.thread_time_ns()
            if reported(run_to_exit(vcpu)) is None:
                return 0  # the loop did not end in its out: assume a correct host
            times.append(time.thread_time_ns() - start)
    return round(min(times[1:]) / (2 * SPEED_LOOP))  # the first run includes the VM's first entry


#: The cost of one guest instruction at CPL 0 in ns (probed once per host boot, for Linux guests only).
host_ring0_ns_per_instruction: HostProbe[int] = HostProbe("ring0-ns-per-instruction", _speed_probe, 0)


def _split_init_args(cmdline: str) -> tuple[str, str]:
    """(the kernel's part of ``cmdline``, the rest from `` -- `` on: init's arguments, or "")."""
    end = re.search(r"(?:^|\s)--(?:\s|$)", cmdline)
    return (cmdline, "") if end is None else (cmdline[: end.start()], cmdline[end.start() :])


def _words(cmdline: str) -> list[str]:
    return _split_init_args(cmdline)[0].split()


def add_params(cmdline: str, params: Iterable[str]) -> tuple[str, list[str]]:
    """``cmdline`` with each of ``params`` the user did not set, and what was added.

    A parameter is the user's when its name (before ``=``) is already on the kernel's part of the
    command line; ``initcall_blacklist=`` names are merged into the user's first one instead (the
    user's names kept, in their order).  Added text goes before `` -- ``, where init's arguments start.
    """
    kernel, init_args = _split_init_args(cmdline)
    added: list[str] = []
    for param in params:
        name = param.split("=", 1)[0]
        if param.startswith(INITCALL_BLACKLIST):
            own = re.search(r"(?<!\S)initcall_blacklist=(\S*)", kernel)
            if own is not None:
                listed = own.group(1).split(",")
                missing = [f for f in param[len(INITCALL_BLACKLIST) :].split(",") if f not in listed]
                if missing:
                    value = ",".join([*(f for f in listed if f), *missing])
                    kernel = f"{kernel[: own.start(1)]}{value}{kernel[own.end(1) :]}"
                    added.append(INITCALL_BLACKLIST + ",".join(missing))
                continue
        if any(word.split("=", 1)[0] == name for word in kernel.split()):
            continue
        kernel = f"{kernel.rstrip()} {param}".strip()
        added.append(param)
    return kernel + init_args, added


def emulated_ring0_ns(new_vm: NewVm) -> int | None:
    """Nanoseconds per guest ring-0 instruction where the host emulates ring 0, else None."""
    ns = host_ring0_ns_per_instruction(new_vm)
    return ns if ns >= EMULATED_NS_PER_INSTRUCTION else None


def linux_cmdline(
    kernel: Path, cmdline: str, new_vm: NewVm, workarounds: Iterable[str] = ("clearcpuid", "boot-speed")
) -> str:
    """``cmdline`` with what this host needs added if ``kernel`` is Linux.

    :data:`LINUX_CLEARCPUID` (workaround ``clearcpuid``) where AVX does not run at ring 0, and
    :data:`LINUX_BOOT_SPEED` (workaround ``boot-speed``) where ring 0 is emulated; each with one log
    line saying what and why.
    """
    from kvmlite.loaders import kernel_format

    wanted = set(workarounds) & {"clearcpuid", "boot-speed"}
    if not wanted or kernel_format(kernel) not in LINUX_FORMATS:  # 'unknown' if unreadable
        return cmdline
    if "clearcpuid" in wanted and host_faults_avx_at_cpl0(new_vm):
        if any(word.startswith("clearcpuid=") for word in _words(cmdline)):
            log.info("this host's KVM cannot run AVX at ring 0; the command line's own clearcpuid= is kept")
        else:
            log.warning(
                "this host's KVM cannot run AVX instructions at ring 0: added `%s` to the Linux command line "
                "(--host-workarounds off to boot it unchanged)",
                LINUX_CLEARCPUID,
            )
            cmdline, _ = add_params(cmdline, [LINUX_CLEARCPUID])
    if "boot-speed" in wanted:
        ns = emulated_ring0_ns(new_vm)
        if ns is not None:
            cmdline, added = add_params(cmdline, LINUX_BOOT_SPEED)
            if added:
                log.warning(
                    "this host's KVM emulates the guest's ring 0 (about %d ns per instruction): added `%s` "
                    "to the Linux command line, skipping boot-time checks that take minutes there (ftrace's, "
                    "the crypto self-tests'); --host-workarounds without boot-speed to keep them",
                    ns,
                    " ".join(added),
                )
    return cmdline


def initramfs_unpacker(new_vm: NewVm, memory_size: int) -> Callable[[bytes], bytes] | None:
    """Where ring 0 is emulated: what unpacks a Linux initramfs's compressed archives on the host.

    Linux inflates a gzip'd initramfs at ring 0, minutes for a megabyte where each instruction is
    emulated (docs/platform-notes.md); it unpacks the same files from the archives uncompressed
    (:mod:`kvmlite.loaders.initrd`).  The result is kept to a quarter of guest RAM: past that the
    initramfs goes to the guest as it came.  None where ring 0 runs on the CPU.
    """
    ns = emulated_ring0_ns(new_vm)
    if ns is None:
        return None

    def unpack(data: bytes) -> bytes:
        from kvmlite.loaders.initrd import decompress_initramfs

        result = decompress_initramfs(data, memory_size // 4)
        if result.changed:
            log.warning(
                "this host's KVM emulates the guest's ring 0 (about %d ns per instruction): unpacked the "
                "initramfs's %s archive on the host (%.1f MiB to %.1f MiB), sparing the kernel minutes of "
                "decompressing it at ring 0; --host-workarounds without boot-speed to pass it as it is",
                ns,
                "+".join(result.compressed),
                len(data) / MIB,
                len(result.data) / MIB,
            )
        return result.data

    return unpack


def pvh_kernel_from_bzimage(kernel: Path, new_vm: NewVm) -> bytes | None:
    """Where ring 0 is emulated: the ELF vmlinux inside the bzImage ``kernel``, if it has a PVH entry.

    A bzImage is a decompressor and the compressed kernel; the decompressor takes minutes where the
    host emulates ring 0 (lz4 or xz over 50 MiB).  kvmlite decompresses it on the host
    (:mod:`kvmlite.tools.extract_vmlinux`, a tenth of a second) and boots the vmlinux through its
    PVH entry, which Linux has when built with ``CONFIG_PVH`` (Debian's cloud kernel is): same kernel,
    command line and initrd.  What the decompressor would have done and is not done: KASLR of the
    kernel's text (the kernel still randomises its memory regions).  None where ring 0 runs on the
    CPU, for a kernel that is not a bzImage, and where the payload cannot be decompressed here (its
    format needs a tool that is missing) or has no PVH entry: the bzImage boots as it is.
    """
    from kvmlite.loaders import detect_format, kernel_format

    if kernel_format(kernel) != "bzimage":
        return None
    ns = emulated_ring0_ns(new_vm)
    if ns is None:
        return None
    from kvmlite.errors import KvmliteError
    from kvmlite.files import read_bounded
    from kvmlite.tools.extract_vmlinux import MAX_BZIMAGE, extract_vmlinux

    try:
        vmlinux = extract_vmlinux(read_bounded(kernel, "kernel", MAX_BZIMAGE))
    except KvmliteError as err:
        log.info("booting the bzImage as it is: its vmlinux cannot be taken out here (%s)", err)
        return None
    if detect_format(vmlinux) != "pvh":
        log.info("booting the bzImage as it is: its vmlinux has no PVH entry (CONFIG_PVH)")
        return None
    log.warning(
        "this host's KVM emulates the guest's ring 0 (about %d ns per instruction): booting the bzImage's "
        "vmlinux, decompressed on the host (%.1f MiB), through its PVH entry, sparing the kernel minutes of "
        "decompressing itself at ring 0 (and the decompressor's KASLR of the kernel text); "
        "--host-workarounds without pvh-entry to boot the bzImage as it is",
        ns,
        len(vmlinux) / MIB,
    )
    return vmlinux
