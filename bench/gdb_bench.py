"""Debugging speed: real gdb hitting a breakpoint over and over, kvmlite's stub against QEMU's.

A multiboot guest calls a function ``hit`` COUNT times and leaves through the debug-exit port.
gdb (batch mode) connects to the VMM's stub before the first instruction (``--gdb-wait``, QEMU's
``-S``), sets ``hbreak hit`` and continues COUNT times, then to the exit: every hit is a stop
reply, the register and memory reads gdb makes at a stop, a step over the breakpoint and a
continue, the round trip a scripted or conditional breakpoint costs.  The row is wall
milliseconds per hit, a long run minus a short one (gdb's and the VMM's start-up cancel), on KVM
under both VMMs (QEMU microvm, ``-enable-kvm``).  Wall time, not CPU time: a stop's latency is
the point, and most of it is waiting.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from harness import BUILD_DIR, BenchFailed, Benchmark, BenchUnavailable, Result, alternate
from machine_bench import MEMORY_MIB, MULTIBOOT_START, QEMU, _build_flood

GUEST_DIR = BUILD_DIR / "guests"
HITS_LONG, HITS_SHORT, HITS_LONG_QUICK = 300, 20, 100
RUN_TIMEOUT_S = 300
# A multiboot guest that calls `hit` COUNT times, then leaves through debug-exit (status 1 under both).
HIT_LOOP = MULTIBOOT_START + r"""
    mov $0x90000, %esp
    mov $COUNT, %ecx
1:  call hit
    dec %ecx
    jnz 1b
    mov $0xf4, %dx
    xor %eax, %eax
    out %eax, %dx
.globl hit
hit:
    ret
"""
# Hardware breakpoints: QEMU's software ones (an int3 at CPL 0) stop it with an emulation failure on
# hosts whose KVM cannot emulate int3 at ring 0 (docs/conformance.md, H5), where kvmlite's rescue
# completes them.  The stop, the step over the breakpoint and the continue are the same packets.
# A loop of `continue`s rather than breakpoint `commands`: in batch mode those run after the script
# has ended, and gdb detaches first.
GDB_SCRIPT = "hbreak hit\nset $i = 0\nwhile $i < COUNT\n  continue\n  set $i = $i + 1\nend\ncontinue\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _vmm_cmd(side: str, image: Path, port: int) -> list[str]:
    if side == "kvmlite":
        return [sys.executable, "-m", "kvmlite", "run", "--kernel", str(image), "--memory", str(MEMORY_MIB),
                "--serial", "none", "--gdb", f"127.0.0.1:{port}", "--gdb-wait"]  # fmt: skip
    return [QEMU, "-M", "microvm", "-enable-kvm", "-m", str(MEMORY_MIB), "-nodefaults", "-no-reboot",
            "-display", "none", "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", str(image),
            "-gdb", f"tcp:127.0.0.1:{port}", "-S"]  # fmt: skip


def _session(side: str, image: Path, hits: int) -> float:
    """Seconds gdb takes from its start to the guest's exit (gdb retries its connection meanwhile)."""
    port = _free_port()
    vmm = subprocess.Popen(_vmm_cmd(side, image, port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        script = GUEST_DIR / f"hits{hits}.gdb"
        script.write_text(GDB_SCRIPT.replace("COUNT", str(hits)))
        # QEMU's stub describes every x86 vCPU as x86-64, protected mode too: gdb is told to expect it
        arch = ["-ex", "set architecture i386:x86-64"] if side == "qemu" else []
        t0 = time.perf_counter()
        connect = ["-ex", "set tcp connect-timeout 30", "-ex", f"target remote 127.0.0.1:{port}"]
        gdb = subprocess.run(
            ["gdb", "-nx", "-batch", *arch, *connect, "-x", str(script), str(image)],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        elapsed = time.perf_counter() - t0
        status = vmm.wait(timeout=30)
        seen = gdb.stdout.count("Breakpoint 1, ")
        if seen != hits or status != 1:  # debug-exit with 0: status 1 under both
            raise BenchFailed(f"{side}: {seen} of {hits} hits, status {status}: {gdb.stdout[-300:]}")
        return elapsed
    finally:
        if vmm.poll() is None:
            vmm.kill()
            vmm.wait()


def measure_breakpoint_hits(quick: bool) -> Result:
    if shutil.which(QEMU) is None:
        raise BenchUnavailable(f"{QEMU} is not installed (the bench installs nothing)")
    GUEST_DIR.mkdir(parents=True, exist_ok=True)
    n_long = HITS_LONG_QUICK if quick else HITS_LONG
    long, short = (_build_flood(f"hits{n}", HIT_LOOP, n) for n in (n_long, HITS_SHORT))
    n = n_long - HITS_SHORT

    def per_hit(side: str) -> float:
        return (_session(side, long, n_long) - _session(side, short, HITS_SHORT)) * 1000 / n

    ours, theirs = alternate(lambda: per_hit("kvmlite"), lambda: per_hit("qemu"), 3 if quick else 5)
    return Result(
        "gdb hardware breakpoint hit and continue (wall)",
        "ms/hit",
        ours,
        theirs,
        "QEMU microvm -enable-kvm, -S -gdb",
        note=f"{n} hits (a long run minus a short one)",
    )


def benchmarks() -> list[Benchmark]:
    needs = (QEMU, "gdb", "as", "ld")
    return [
        Benchmark(
            "gdb-breakpoint",
            "gdb's stop, step and continue round trip at a scripted breakpoint",
            measure_breakpoint_hits,
            needs,
        )
    ]
