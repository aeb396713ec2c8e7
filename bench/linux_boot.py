"""Linux boot time: command to shell prompt, for kvmlite's microVM kernel and Debian's, in one run.

Two rows, one per kernel, both PVH (no self-decompression), 128 MiB, one
vCPU, with the same kvmlite-built busybox initramfs, whose /init prints a
ready marker before the shell: kvmlite's microVM kernel (``kvmlite
build-kernel``, ``console=ttyS0``; the row is skipped with its reason when it
is not built) and Debian's cloud kernel (a vmlinux extracted from the bzImage,
``LINUX_TEST_CMDLINE``).  Each kernel boots under kvmlite and under QEMU:
``qemu-system-x86_64 -enable-kvm`` first (on this project's machines it stops
at the first instruction the host KVM cannot emulate: the note says where),
then QEMU's TCG (``-accel tcg -cpu max``, software emulation), the row's
baseline, which boots both here.  Each run has a time cap; a run reports the
time to the marker, or where it ended: the cap (still booting: the last line
the kernel printed), or the VMM stopping on its own.

Two more rows, ``emu-boot microvm`` and ``emu-boot debian``, boot the same
kernels with no KVM at all (``--backend emu``: kvmlite's emulator with its
userspace LAPICs and IOAPIC) against QEMU's TCG, with kvmlite's ``--backend
kvm`` time in the note (issue 18's comparison).

The boot is long where guest ring-0 code is emulated by the host (see
docs/platform-notes.md), so this benchmark is tagged ``slow``: ``bench/run.py``
runs it only when asked (``--slow``, ``--only linux-boot`` or ``--only emu-boot``).  The assets come
from ``kvmlite fetch-assets``; nothing is downloaded here.
"""

from __future__ import annotations

import functools
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness import BUILD_DIR, Benchmark, BenchUnavailable, Result

from kvmlite.tools.assets import LINUX_TEST_CMDLINE as CMDLINE

MEMORY_MIB = 128
CAP_S = int(os.environ.get("KVMLITE_BOOT_CAP_S", "2400"))
CAP_QUICK_S = 600
READ_CHUNK = 4096


def _initrd() -> Path:
    from kvmlite.tools import assets, initramfs

    found, reason = assets.find_assets()
    if found is None:
        raise BenchUnavailable(f"no kernel and busybox: {reason} (run `kvmlite fetch-assets`)")
    out = BUILD_DIR / "linux"
    out.mkdir(parents=True, exist_ok=True)
    initrd = out / "initrd.cpio"
    if not initrd.exists():
        initrd.write_bytes(initramfs.build_initramfs(found[1], compress=False))
    return initrd


def _debian() -> tuple[Path, str]:
    from kvmlite.tools import assets, extract_vmlinux

    found, reason = assets.find_assets()
    if found is None:
        raise BenchUnavailable(f"no kernel and busybox: {reason} (run `kvmlite fetch-assets`)")
    vmlinux = BUILD_DIR / "linux" / "vmlinux"
    if not vmlinux.exists():
        vmlinux.parent.mkdir(parents=True, exist_ok=True)
        vmlinux.write_bytes(extract_vmlinux.extract_vmlinux(found[0].read_bytes()))
    return vmlinux, CMDLINE


def _microvm() -> tuple[Path, str]:
    from kvmlite.tools.build_kernel import MICROVM_CMDLINE, find_microvm_kernel

    kernel, reason = find_microvm_kernel()
    if kernel is None:
        raise BenchUnavailable(f"{reason} (run `kvmlite build-kernel`)")
    return kernel.vmlinux, MICROVM_CMDLINE


#: What QEMU prints when the host KVM gives up on an instruction; it then pauses the VM and waits forever.
QEMU_STOPPED = b"KVM internal error"


def _boot(cmd: list[str], cap: float) -> tuple[float, str]:
    """Seconds to the ready marker (or to the end of the run) and a sentence on how it ended."""
    from kvmlite.tools.initramfs import READY_MARKER

    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    seen, err = b"", b""
    try:
        while True:
            elapsed = time.monotonic() - start
            if elapsed > cap:
                last = seen.decode(errors="replace").strip().splitlines()[-1:] or ["(nothing printed)"]
                return elapsed, f"still booting after {cap:.0f} s; last line: {last[0][:100]}"
            ready, _, _ = select.select([proc.stdout, proc.stderr], [], [], 1.0)
            if proc.stderr in ready:
                err += os.read(proc.stderr.fileno(), READ_CHUNK)
                if QEMU_STOPPED in err:
                    line = err[err.index(QEMU_STOPPED) :].split(b"\n")[0].decode(errors="replace")
                    return elapsed, f"stopped by the host KVM: {line.strip()} (emulation failure)"
            if proc.stdout in ready:
                chunk = os.read(proc.stdout.fileno(), READ_CHUNK)
                if not chunk:
                    proc.wait()
                    tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
                    return elapsed, f"stopped with status {proc.returncode}: {tail[0]}"
                seen += chunk
                if READY_MARKER.encode() in seen:
                    return time.monotonic() - start, "reached the shell"
    finally:
        proc.kill()
        proc.wait()


#: QEMU -enable-kvm stopped within a minute on both kernels here; past this it is booting after all.
QEMU_KVM_CAP_S = 300


def measure(name: str, kernel: Callable[[], tuple[Path, str]], quick: bool) -> Result:
    vmlinux, cmdline = kernel()
    initrd = _initrd()
    cap = CAP_QUICK_S if quick else CAP_S
    common = ["--kernel", str(vmlinux), "--initrd", str(initrd), "--cmdline", cmdline]
    common += ["--memory", str(MEMORY_MIB)]
    ours, our_end = _boot([sys.executable, "-m", "kvmlite", "run", *common], cap)
    qemu = ["qemu-system-x86_64", "-m", str(MEMORY_MIB), "-nodefaults", "-no-reboot", "-display", "none"]
    qemu += ["-serial", "stdio", "-kernel", str(vmlinux), "-initrd", str(initrd), "-append", cmdline]
    kvm_s, kvm_end = _boot([*qemu, "-enable-kvm"], min(cap, QEMU_KVM_CAP_S))
    theirs, their_end = _boot([*qemu, "-accel", "tcg", "-cpu", "max"], cap)
    both = our_end == their_end == "reached the shell"
    how = "to the shell" if both else "to the shell or to where each stopped"
    return Result(
        f"Linux boot {how}, {name} kernel (PVH)",
        "s",
        [ours],
        [theirs],
        "QEMU TCG",
        note=f"kvmlite: {our_end}; QEMU TCG: {their_end}; QEMU -enable-kvm: {kvm_end} ({kvm_s:.0f} s)",
    )


def measure_emu(name: str, kernel: Callable[[], tuple[Path, str]], quick: bool) -> Result:
    """The software backend (no KVM at all) against QEMU TCG, with ``--backend kvm`` in the note."""
    vmlinux, cmdline = kernel()
    initrd = _initrd()
    cap = CAP_QUICK_S if quick else CAP_S
    common = ["--kernel", str(vmlinux), "--initrd", str(initrd), "--cmdline", cmdline]
    common += ["--memory", str(MEMORY_MIB)]
    kvmlite = [sys.executable, "-m", "kvmlite", "run", *common]
    emu_s, emu_end = _boot([*kvmlite, "--backend", "emu"], cap)
    kvm_s, kvm_end = _boot([*kvmlite, "--backend", "kvm"], cap)
    qemu = ["qemu-system-x86_64", "-m", str(MEMORY_MIB), "-nodefaults", "-no-reboot", "-display", "none"]
    qemu += ["-serial", "stdio", "-kernel", str(vmlinux), "-initrd", str(initrd), "-append", cmdline]
    tcg_s, tcg_end = _boot([*qemu, "-accel", "tcg", "-cpu", "max"], cap)
    return Result(
        f"Linux boot on --backend emu, {name} kernel (PVH)",
        "s",
        [emu_s],
        [tcg_s],
        "QEMU TCG",
        note=f"emu: {emu_end}; QEMU TCG: {tcg_end}; kvmlite --backend kvm: {kvm_end} ({kvm_s:.0f} s)",
    )


KERNELS = (
    ("microvm", "kvmlite's microVM kernel", _microvm),
    ("debian", "Debian's cloud kernel", _debian),
)


def benchmarks() -> list[Benchmark]:
    return [
        Benchmark(
            f"linux-boot {name}",
            f"{what} + busybox initramfs to the shell prompt, kvmlite and QEMU",
            functools.partial(measure, name, kernel),
            ("qemu-system-x86_64",),
            tags=("slow",),
        )
        for name, what, kernel in KERNELS
    ] + [
        Benchmark(
            f"emu-boot {name}",  # not "linux-boot": --only linux-boot keeps meaning the KVM rows
            f"{what} + busybox initramfs to the shell prompt on the software backend, against QEMU TCG",
            functools.partial(measure_emu, name, kernel),
            ("qemu-system-x86_64",),
            tags=("slow",),
        )
        for name, what, kernel in KERNELS
    ]
