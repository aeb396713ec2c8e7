"""Linux boot time: command to shell prompt, kvmlite next to ``qemu-system-x86_64 -enable-kvm``.

Both boot the same Debian cloud kernel (as a PVH vmlinux extracted from the
bzImage, so neither pays for the kernel's self-decompression) with the same
kvmlite-built busybox initramfs, whose /init prints a ready marker before the
shell.  Each VMM gets one run with a time cap; the row reports the time to
the marker, or where the run ended: the cap (still booting: the last line the
kernel printed), or the VMM stopping on its own (QEMU stops at the first
instruction the host KVM cannot emulate on this project's machines).

The boot is long where guest ring-0 code is emulated by the host (see
docs/platform-notes.md), so this benchmark is tagged ``slow``: ``bench/run.py``
runs it only when asked (``--slow`` or ``--only linux-boot``).  The assets come
from ``kvmlite fetch-assets``; nothing is downloaded here.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from harness import BUILD_DIR, Benchmark, BenchUnavailable, Result

from kvmlite.tools.assets import LINUX_TEST_CMDLINE as CMDLINE

MEMORY_MIB = 128
CAP_S = int(os.environ.get("KVMLITE_BOOT_CAP_S", "2400"))
CAP_QUICK_S = 600
READ_CHUNK = 4096


def _assets() -> tuple[Path, Path]:
    from kvmlite.tools import assets, extract_vmlinux, initramfs
    from kvmlite.tools.initramfs import READY_MARKER

    found, reason = assets.find_assets()
    if found is None:
        raise BenchUnavailable(f"no kernel and busybox: {reason} (run `kvmlite fetch-assets`)")
    vmlinuz, busybox = found
    out = BUILD_DIR / "linux"
    out.mkdir(parents=True, exist_ok=True)
    vmlinux, initrd = out / "vmlinux", out / "initrd.cpio"
    if not vmlinux.exists():
        vmlinux.write_bytes(extract_vmlinux.extract_vmlinux(vmlinuz.read_bytes()))
    if not initrd.exists():
        initrd.write_bytes(initramfs.build_initramfs(busybox, compress=False))
    assert READY_MARKER
    return vmlinux, initrd


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


def measure(quick: bool) -> Result:
    vmlinux, initrd = _assets()
    cap = CAP_QUICK_S if quick else CAP_S
    common = [
        "--kernel",
        str(vmlinux),
        "--initrd",
        str(initrd),
        "--cmdline",
        CMDLINE,
        "--memory",
        str(MEMORY_MIB),
    ]
    ours, our_end = _boot([sys.executable, "-m", "kvmlite", "run", *common], cap)
    qemu = ["qemu-system-x86_64", "-enable-kvm", "-m", str(MEMORY_MIB), "-nodefaults", "-no-reboot"]
    qemu += ["-display", "none", "-serial", "stdio", "-kernel", str(vmlinux), "-initrd", str(initrd)]
    theirs, their_end = _boot([*qemu, "-append", CMDLINE], cap)
    both = our_end == their_end == "reached the shell"
    return Result(
        "Linux boot to shell (PVH)" if both else "Linux boot (PVH), to the shell or to where each stopped",
        "s",
        [ours],
        [theirs],
        "QEMU -enable-kvm",
        note=f"kvmlite: {our_end}; QEMU: {their_end}",
    )


def benchmarks() -> list[Benchmark]:
    return [
        Benchmark(
            "linux-boot",
            "Debian cloud kernel + busybox initramfs to the shell prompt",
            measure,
            ("qemu-system-x86_64",),
            tags=("slow",),
        )
    ]
