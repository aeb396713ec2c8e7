"""Whole-VMM benchmarks: kvmlite against QEMU (microvm, KVM) on the same guest binaries.

Rows:

* command to exit: wall time from starting the VMM to its exit for a small
  multiboot guest (``pm32``), the two runs alternating (the CPU-time ratio in
  the note);
* ring-3 compute: time of ``cbench``'s compute loop at CPL 3, start-up cancelled
  by subtracting a short run from a long one;
* serial output: bytes per CPU second a guest pushes through the 16550
  (polling LSR, writing THR), start-up cancelled likewise (the wall-time
  ratio in the note);
* exit round trip on the real path: ``kvmlite run`` (the whole machine, the
  device on its port) on a multiboot guest looping ``in`` from COM1's LSR or
  ``out`` to COM1's scratch register, CPU ns per iteration (a long run minus a
  short one), against the C loop of ``exit_roundtrip`` doing the same access
  from the same state (32-bit protected mode, CPL 0, in-kernel irqchip) in
  the same run (the wall-time ratio in the note);
* seccomp on the exit path: the same ``out`` loop under ``kvmlite run --seccomp on`` against
  ``--seccomp off`` (the baseline is kvmlite itself: the ratio is the filters' cost);
* peak memory: the VMM process's peak RSS running the same guest (the guest
  touches the same pages under both, so the difference is each VMM's own).

kvmlite is run as ``python -m kvmlite`` with its modules byte-compiled first
(``compileall``): that is how an installed package starts, and an environment
with ``PYTHONDONTWRITEBYTECODE`` would otherwise recompile every module on every
run.  Guests are built from ``guests/`` into ``bench/_build/guests``.

Why CPU time: the machines this runs on are shared and often loaded (load 20
and more on 2 cores), where a process waits for a CPU longer than it runs and
wall-clock differences of a long and a short run turn to noise (even
negative).  CPU time (user + system of every thread of the process, guest
time included) counts what each side costs and is what load does not inflate;
on a quiet machine the two agree for these rows, as neither side waits.
"""

from __future__ import annotations

import compileall
import functools
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness import BUILD_DIR, BenchFailed, Benchmark, BenchUnavailable, Result, alternate, guest_builder

REPO = Path(__file__).resolve().parent.parent
GUEST_DIR = BUILD_DIR / "guests"
MEMORY_MIB = 128
RUN_TIMEOUT_S = 300
QEMU = "qemu-system-x86_64"

CBENCH_LONG, CBENCH_SHORT, CBENCH_LONG_QUICK = 2_000_000_000, 10_000_000, 500_000_000
SERIAL_LONG, SERIAL_SHORT, SERIAL_LONG_QUICK = 40_000, 2_000, 10_000

#: The multiboot header and entry of the bench's own guests.
MULTIBOOT_START = r"""
.section .multiboot, "a"
.align 4
.long 0x1BADB002, 0, -(0x1BADB002)
.text
.code32
.globl _start
_start:
"""
# A multiboot guest that writes N bytes to COM1 the way a driver does (wait for THRE, write THR), then
# leaves through the debug-exit port.  N is fixed at assembly time with --defsym so no parsing is timed.
SERIAL_FLOOD = MULTIBOOT_START + r"""
    mov $COUNT, %ecx
    mov $0x3fd, %dx
1:  in %dx, %al
    test $0x20, %al
    jz 1b
    mov $0x3f8, %dx
    mov %cl, %al
    and $0x3f, %al
    add $0x30, %al
    out %al, %dx
    mov $0x3fd, %dx
    loop 1b
    mov $0xf4, %dx
    xor %eax, %eax
    out %eax, %dx
"""
# A multiboot guest doing COUNT port accesses (one exit each), then leaving through debug-exit.
EXIT_LOOP = MULTIBOOT_START + r"""
    mov $COUNT, %ecx
    mov $PORT, %dx
1:  ACCESS
    dec %ecx
    jnz 1b
    mov $0xf4, %dx
    xor %eax, %eax
    out %eax, %dx
"""
#: The real-path exit rows: (name, port, the instruction).
EXIT_ACCESSES = {"in-lsr": (0x3FD, "in %dx, %al"), "out-scr": (0x3FF, "out %al, %dx")}
EXIT_LONG, EXIT_SHORT, EXIT_LONG_QUICK = 150_000, 1_000, 50_000
LINK_SCRIPT = "ENTRY(_start)\nSECTIONS { . = 0x100000; .text : { *(.multiboot) *(.text) } }\n"


def _build_guests() -> dict[str, Path]:
    """pm32 and cbench from guests/build.py, and the serial flood guest, built once."""
    build = guest_builder()
    images = {name: build.build_guest(name, GUEST_DIR) for name in ("pm32", "cbench")}
    for n in (SERIAL_LONG, SERIAL_SHORT, SERIAL_LONG_QUICK):
        images[f"serial{n}"] = _build_flood(f"serial{n}", SERIAL_FLOOD, n)
    for name, (port, access) in EXIT_ACCESSES.items():
        for n in (EXIT_LONG, EXIT_SHORT, EXIT_LONG_QUICK):
            source = EXIT_LOOP.replace("PORT", hex(port)).replace("ACCESS", access)
            images[f"{name}{n}"] = _build_flood(f"{name}{n}", source, n)
    return images


def _build_flood(name: str, source: str, count: int) -> Path:
    src, obj, lds, elf = (GUEST_DIR / f"{name}{ext}" for ext in (".S", ".o", ".ld", ".elf"))
    if elf.exists() and src.exists() and src.read_text() == source:
        return elf
    src.write_text(source)
    lds.write_text(LINK_SCRIPT)
    subprocess.run(["as", "--32", f"--defsym=COUNT={count}", "-o", str(obj), str(src)], check=True)
    subprocess.run(
        ["ld", "-m", "elf_i386", "-T", str(lds), "--build-id=none", "-o", str(elf), str(obj)], check=True
    )
    return elf


def _kvmlite_cmd(image: Path, args: str) -> list[str]:
    cmd = [sys.executable, "-m", "kvmlite", "run", "--kernel", str(image), "--memory", str(MEMORY_MIB)]
    return [*cmd, "--cmdline", args] if args else cmd


def _qemu_cmd(image: Path, args: str) -> list[str]:
    cmd = [QEMU, "-M", "microvm", "-enable-kvm", "-m", str(MEMORY_MIB), "-nodefaults", "-no-reboot"]
    cmd += ["-display", "none", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
    cmd += ["-kernel", str(image)]
    return [*cmd, "-append", args] if args else cmd


def _timed(cmd: list[str], expect: int) -> float:
    return _timed_with_cpu(cmd, expect)[0]


def _timed_with_cpu(cmd: list[str], expect: int) -> tuple[float, float]:
    """Wall time and CPU time (user + system, every thread) of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=RUN_TIMEOUT_S
    )
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != expect:
        raise BenchFailed(
            f"{' '.join(cmd[:4])}... exited {r.returncode}, expected {expect}: {r.stderr.strip()[-300:]}"
        )
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return elapsed, cpu


def _prepare() -> dict[str, Path]:
    if shutil.which(QEMU) is None:
        raise BenchUnavailable(f"{QEMU} is not installed (the bench installs nothing)")
    compileall.compile_dir(str(REPO / "kvmlite"), quiet=1)
    return _build_guests()


def _runs(quick: bool) -> int:
    return 3 if quick else 5


def measure_startup(quick: bool) -> Result:
    images = _prepare()
    image, args, status = images["pm32"], "a b", 67
    cpus: dict[str, list[float]] = {"ours": [], "theirs": []}

    def timed(side: str, cmd: list[str]) -> float:
        wall, cpu = _timed_with_cpu(cmd, status)
        cpus[side].append(cpu)
        return wall

    ours, theirs = alternate(
        lambda: timed("ours", _kvmlite_cmd(image, args)),
        lambda: timed("theirs", _qemu_cmd(image, args)),
        _runs(quick),
    )
    cpu = statistics.median(cpus["ours"]) / statistics.median(cpus["theirs"])
    return Result(
        "command to exit (multiboot pm32)",
        "s",
        ours,
        theirs,
        "QEMU microvm -enable-kvm",
        note=f"CPU-time ratio {cpu:.2f}x (under load the wall time follows the CPU time each side needs)",
    )


def _difference(
    cmd: Callable[[Path, str], list[str]], long: Path, short: Path, la: str, sa: str, st: int
) -> float:
    return _difference_with_cpu(cmd, long, short, la, sa, st)[0]


def _difference_with_cpu(
    cmd: Callable[[Path, str], list[str]], long: Path, short: Path, la: str, sa: str, st: int
) -> tuple[float, float]:
    """(wall, CPU) seconds of the long run minus the short one."""
    (wl, cl), (ws, cs) = _timed_with_cpu(cmd(long, la), st), _timed_with_cpu(cmd(short, sa), st)
    return wl - ws, cl - cs


def _wall_note(walls: dict[str, list[float]]) -> str:
    """kvmlite's median wall-clock value over the baseline's, for a row measured in CPU time."""
    ours, theirs = statistics.median(walls["ours"]), statistics.median(walls["theirs"])
    return f"wall-time ratio {ours / theirs if theirs else 0:.2f}x"


def measure_compute(quick: bool) -> Result:
    image = _prepare()["cbench"]
    long = CBENCH_LONG_QUICK if quick else CBENCH_LONG
    la, sa = f"iters={long}", f"iters={CBENCH_SHORT}"
    ours, theirs = alternate(
        lambda: _difference(_kvmlite_cmd, image, image, la, sa, 1),
        lambda: _difference(_qemu_cmd, image, image, la, sa, 1),
        _runs(quick),
    )
    return Result(
        "ring-3 compute (cbench)",
        "s",
        ours,
        theirs,
        "QEMU microvm -enable-kvm",
        note=f"{long - CBENCH_SHORT} iterations",
    )


def measure_serial(quick: bool) -> Result:
    images = _prepare()
    n_long = SERIAL_LONG_QUICK if quick else SERIAL_LONG
    long, short = images[f"serial{n_long}"], images[f"serial{SERIAL_SHORT}"]
    nbytes = n_long - SERIAL_SHORT
    walls: dict[str, list[float]] = {"ours": [], "theirs": []}

    def rate(side: str, cmd: Callable[[Path, str], list[str]]) -> float:
        wall, cpu = _difference_with_cpu(cmd, long, short, "", "", 1)
        walls[side].append(nbytes / max(wall, 1e-9))
        return nbytes / max(cpu, 1e-9)

    ours, theirs = alternate(
        lambda: rate("ours", _kvmlite_cmd), lambda: rate("theirs", _qemu_cmd), _runs(quick)
    )
    return Result(
        "serial output (16550, polled; per CPU second)",
        "bytes/s",
        ours,
        theirs,
        "QEMU microvm -enable-kvm",
        lower_is_better=False,
        note=f"{nbytes} bytes (a long run minus a short one); {_wall_note(walls)}",
    )


def measure_exit(name: str, quick: bool) -> Result:
    """ns per exit of ``kvmlite run`` (a long run minus a short one) against the C loop doing the same
    access from the same CPU state (``exit_loop.c`` pm32 mode, in-kernel irqchip) in the same run.

    The row is CPU time per exit (every thread of the kvmlite process; the C loop's process), which
    load on the machine does not inflate; the wall-time ratio is in the note (on a quiet machine the
    two agree: the vCPU thread never waits)."""
    from exit_roundtrip import run_c_pm32

    images = _prepare()
    n_long = EXIT_LONG_QUICK if quick else EXIT_LONG
    long, short = images[f"{name}{n_long}"], images[f"{name}{EXIT_SHORT}"]
    n = n_long - EXIT_SHORT
    port, _ = EXIT_ACCESSES[name]
    access = "in" if name.startswith("in") else "out"
    walls: dict[str, list[float]] = {"ours": [], "theirs": []}

    def ours() -> float:
        wall, cpu = _difference_with_cpu(_kvmlite_cmd, long, short, "", "", 1)
        walls["ours"].append(wall * 1e9 / n)
        return cpu * 1e9 / n

    def theirs() -> float:
        t = run_c_pm32(access, port, n)
        walls["theirs"].append(t.ns_per_exit)
        return t.cpu_ns_per_exit

    ours_cpu, theirs_cpu = alternate(ours, theirs, _runs(quick))
    return Result(
        f"exit roundtrip on kvmlite run: {name} {port:#x} (CPU)",
        "ns/exit",
        ours_cpu,
        theirs_cpu,
        "C exit_loop pm32",
        note=f"{n} exits (a long run minus a short one); {_wall_note(walls)}",
    )


def measure_exit_seccomp(quick: bool) -> Result:
    """The same exit loop (``out`` to COM1's scratch register) with every thread under its seccomp
    allow-list against the same run without filters: the filters' cost on the exit path."""
    images = _prepare()
    n_long = EXIT_LONG_QUICK if quick else EXIT_LONG
    long, short = images[f"out-scr{n_long}"], images[f"out-scr{EXIT_SHORT}"]
    n = n_long - EXIT_SHORT

    def per_exit(mode: str) -> float:
        def cmd(image: Path, args: str) -> list[str]:
            return [*_kvmlite_cmd(image, args), "--seccomp", mode]

        return _difference(cmd, long, short, "", "", 1) * 1e9 / n

    ours, theirs = alternate(lambda: per_exit("on"), lambda: per_exit("off"), _runs(quick))
    return Result(
        "exit roundtrip on kvmlite run, --seccomp on",
        "ns/exit",
        ours,
        theirs,
        "kvmlite run --seccomp off",
        note=f"{n} exits (a long run minus a short one)",
    )


_PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def _peak_rss_mib(cmd: list[str]) -> float:
    r = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *cmd], capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    try:
        return int(r.stdout.strip()) / 1024
    except ValueError as err:
        raise BenchFailed(f"could not measure peak RSS: {r.stderr.strip()[-200:]}") from err


def measure_memory(quick: bool) -> Result:
    image = _prepare()["pm32"]
    ours, theirs = alternate(
        lambda: _peak_rss_mib(_kvmlite_cmd(image, "a b")),
        lambda: _peak_rss_mib(_qemu_cmd(image, "a b")),
        _runs(quick),
    )
    return Result("peak RSS (multiboot pm32)", "MiB", ours, theirs, "QEMU microvm -enable-kvm")


def benchmarks() -> list[Benchmark]:
    needs = ("qemu-system-x86_64", "as", "ld")
    return [
        Benchmark("startup", "command to guest exit for a small multiboot guest", measure_startup, needs),
        Benchmark(
            "compute", "ring-3 compute loop inside the guest, start-up cancelled", measure_compute, needs
        ),
        Benchmark("serial", "guest-to-host serial throughput through the 16550", measure_serial, needs),
        *(
            Benchmark(
                f"exit-run-{name}",
                f"exit round trip on the whole `kvmlite run` path ({name}) vs the C loop",
                functools.partial(measure_exit, name),
                (*needs, "cc"),
                tags=("exit",),
            )
            for name in EXIT_ACCESSES
        ),
        Benchmark(
            "exit-run-seccomp",
            "exit round trip on the whole `kvmlite run` path with seccomp filters on vs off",
            measure_exit_seccomp,
            needs,
            tags=("exit",),
        ),
        Benchmark("memory", "peak RSS of the VMM process on the same guest", measure_memory, needs),
    ]
