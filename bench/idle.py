"""Idle CPU: what a guest sleeping in HLT for a 1 Hz timer costs the host, kvmlite vs QEMU.

The guest is guests/platform64.S with ``idle=N``: after its device checks it
enables the RTC's update-ended interrupt (1 Hz, IRQ 8 through the PIC) and
HLTs through N of them, printing one line before and one after.  The VMM's
process CPU time (user + system, every thread) is sampled when each of the
two lines arrives, so boot and device checks are excluded; the result is the
CPU time over the wall time between them, in percent of one host core.  A
VMM that polls, spins on HLT or wakes its timer thread needlessly shows up
here; kvmlite's goal is under :data:`TARGET_PERCENT`.

CPU time is read per thread from ``/proc/PID/task/*/schedstat`` (ns on
CPU) where the kernel provides it, otherwise from ``/proc/PID/stat`` (clock
ticks, 10 ms): a whole-process figure either way, so the vCPU thread, the
timer service, the console reader and Python's own threads all count.

Baseline: QEMU on the same guest binary with ``-enable-kvm`` (its in-kernel
PIC and PIT, userspace RTC), the same kind of VMM doing the same waiting.
One row per ``--irqchip`` mode of kvmlite.

Standalone use: ``python3 bench/idle.py [--quick] [--irqchip kernel|userspace]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

from harness import BUILD_DIR, BenchFailed, Benchmark, BenchUnavailable, Result, alternate, kvm_usable

log = logging.getLogger(__name__)

REPO_DIR = Path(__file__).resolve().parent.parent
GUEST_BUILD_SCRIPT = REPO_DIR / "guests" / "build.py"
GUEST = "platform64"
QEMU = "qemu-system-x86_64"
MEMORY_MIB = 128
IRQCHIP_MODES = ("kernel", "userspace")

IDLE_SECONDS = 5
IDLE_SECONDS_QUICK = 3
RUNS = 3
RUNS_QUICK = 2
TARGET_PERCENT = 2.0
"""kvmlite's goal for an idle guest, in percent of one host core."""
START_LINE = "rtc: idle for {n} update interrupts"
END_LINE = "rtc: {n} update interrupts"
BOOT_TIMEOUT_S = 60.0
"""Ring-0 device checks run emulated on the nested development host: allow for a slow boot."""
IDLE_SLACK_S = 5.0
"""Beyond the N seconds of idling, how long to wait for the end line before calling the run failed."""
READ_CHUNK = 4096
NS_PER_S = 1_000_000_000


def _load_guest_builder() -> ModuleType:
    """guests/build.py is a script, not a package module: import it by path."""
    spec = importlib.util.spec_from_file_location("kvmlite_guest_build_bench", GUEST_BUILD_SCRIPT)
    if spec is None or spec.loader is None:
        raise BenchFailed(f"cannot load {GUEST_BUILD_SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def build_guest() -> Path:
    """Build the idle guest into bench/_build (the guest build is quick and deterministic)."""
    builder = _load_guest_builder()
    missing = builder.missing_tools()
    if missing:
        raise BenchUnavailable(f"building the guest needs {', '.join(missing)}")
    try:
        path: Path = builder.build_guest(GUEST, BUILD_DIR)
    except builder.GuestBuildError as err:
        raise BenchFailed(f"building {GUEST}: {err}") from err
    return path


HAVE_SCHEDSTAT = Path("/proc/self/schedstat").exists()


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """CPU time (user + system) so far of each thread of ``pid``, in ns, by thread id.

    Per thread because a VMM's thread set changes (QEMU's start-up workers
    end): the process total of the living threads is not monotonic, but each
    thread's own count is.  Without schedstat (a kernel without
    CONFIG_SCHED_INFO) the whole process's clock ticks from /proc/PID/stat are
    returned under the key -1 (10 ms resolution, dead threads included).
    """
    if not HAVE_SCHEDSTAT:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError as err:
            raise BenchFailed(f"reading /proc/{pid}/stat: {err}") from err
        utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
        return {-1: (utime + stime) * NS_PER_S // os.sysconf("SC_CLK_TCK")}
    task_dir = Path(f"/proc/{pid}/task")
    try:
        tasks = list(task_dir.iterdir())
    except OSError as err:
        raise BenchFailed(f"reading {task_dir}: {err}") from err
    times: dict[int, int] = {}
    for task in tasks:
        try:
            times[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        except (OSError, ValueError, IndexError) as err:
            raise BenchFailed(f"reading {task}/schedstat: {err}") from err
    return times


def cpu_between(before: dict[int, int], after: dict[int, int]) -> int:
    """ns of CPU the threads alive at ``after`` used since ``before`` (new threads count in full)."""
    return sum(max(ns - before.get(tid, 0), 0) for tid, ns in after.items())


def idle_cpu_percent(cmd: list[str], seconds: int, who: str) -> float:
    """Run ``cmd`` (VMM ``who`` booting the idle guest); return its CPU% of one core while the guest idles."""
    start_line = START_LINE.format(n=seconds).encode()
    end_line = END_LINE.format(n=seconds).encode()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    output = b""
    marks: list[tuple[float, dict[int, int]]] = []
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    try:
        while len(marks) < 2:
            left = deadline - time.monotonic()
            if left <= 0:
                wanted = (start_line, end_line)[len(marks)]
                raise BenchFailed(
                    f"{who}: no {wanted.decode()!r} in time (timer interrupts stopped?); "
                    f"last output: {output[-200:]!r}"
                )
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                continue
            chunk = os.read(fd, READ_CHUNK)
            if not chunk:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise BenchFailed(f"{who} exited early ({proc.wait()}): {err.strip()[-300:]}")
            now, cpu = time.monotonic(), thread_cpu_ns(proc.pid)
            output += chunk
            lines = output.split(b"\n")[:-1]
            wanted = (start_line, end_line)[len(marks)]
            if wanted in lines:
                marks.append((now, cpu))
                deadline = now + seconds + IDLE_SLACK_S
        try:
            proc.wait(timeout=IDLE_SLACK_S)
        except subprocess.TimeoutExpired as err:
            raise BenchFailed(f"{who} did not exit after the guest's last line") from err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    (t0, cpu0), (t1, cpu1) = marks
    return 100.0 * cpu_between(cpu0, cpu1) / NS_PER_S / (t1 - t0)


def kvmlite_command(image: Path, seconds: int, irqchip: str) -> list[str]:
    return [
        sys.executable, "-m", "kvmlite", "run", "--kernel", str(image), "--memory", str(MEMORY_MIB),
        "--irqchip", irqchip, "--cmdline", f"idle={seconds}",
    ]  # fmt: skip


def qemu_command(image: Path, seconds: int, accel: str) -> list[str]:
    return [
        QEMU, "-accel", accel, "-m", str(MEMORY_MIB), "-display", "none", "-no-reboot", "-serial", "stdio",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", str(image), "-append", f"idle={seconds}",
    ]  # fmt: skip


def compare(irqchip: str, quick: bool) -> Result:
    """kvmlite with ``irqchip`` against QEMU -enable-kvm, alternating runs."""
    if not kvm_usable()[0]:
        raise BenchUnavailable(kvm_usable()[1])
    image = build_guest()
    seconds = IDLE_SECONDS_QUICK if quick else IDLE_SECONDS

    def ours() -> float:
        return idle_cpu_percent(kvmlite_command(image, seconds, irqchip), seconds, "kvmlite")

    def theirs() -> float:
        return idle_cpu_percent(qemu_command(image, seconds, "kvm"), seconds, "QEMU")

    k, b = alternate(ours, theirs, RUNS_QUICK if quick else RUNS)
    verdict = "meets" if max(k) < TARGET_PERCENT else "MISSES"
    return Result(
        name=f"idle guest CPU, --irqchip {irqchip}",
        unit="% of a core",
        kvmlite_samples=k,
        baseline_samples=b,
        baseline_name="QEMU -enable-kvm, same guest",
        note=f"guest HLTs for {seconds} RTC update interrupts (1 Hz); {verdict} the {TARGET_PERCENT}% target",
    )


def _bench(irqchip: str) -> Benchmark:
    return Benchmark(
        name=f"idle-cpu-{irqchip}",
        description=f"host CPU of a guest idling in HLT on a 1 Hz RTC interrupt, kvmlite --irqchip {irqchip}"
        " vs QEMU -enable-kvm (target under 2% of a core)",
        measure=lambda quick: compare(irqchip, quick),
        requires_tools=(QEMU, "gcc", "ld"),
        needs_kvm=True,
    )


def benchmarks() -> list[Benchmark]:
    """The idle rows, one per interrupt-delivery mode."""
    return [_bench(mode) for mode in IRQCHIP_MODES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{IDLE_SECONDS_QUICK} s idle, {RUNS_QUICK} runs"
    )
    parser.add_argument("--irqchip", choices=IRQCHIP_MODES, default="kernel")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        res = compare(args.irqchip, args.quick)
    except (BenchUnavailable, BenchFailed) as err:
        log.error("%s", err)
        return 1
    log.info(
        "%s: kvmlite %.2f%% (runs %s), %s %.2f%% (runs %s); %s",
        res.name,
        res.kvmlite,
        ", ".join(f"{v:.2f}" for v in res.kvmlite_samples),
        res.baseline_name,
        res.baseline,
        ", ".join(f"{v:.2f}" for v in res.baseline_samples),
        res.note,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
