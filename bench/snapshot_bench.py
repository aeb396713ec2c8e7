"""Snapshots: resets per second for fuzzing, and restoring a VM against booting it.

Rows:

* reset to snapshot: one input of ``examples/snapshot_fuzz.py``'s guest (64 MiB
  of RAM, 10 pages dirtied per input) through :class:`kvmlite.snapshot.fuzz.FuzzHarness`'s
  ``run_many`` (the reset on the vCPU's thread), in ms per input (run + reset; resets per
  second = 1000 / ms), with the process's CPU time per input in the note: on a loaded host the
  wall time is mostly waiting for a core.  Baseline: the
  same loop resetting by copying all of RAM back (what a reset without a dirty
  log costs).  Target (issue 16): 1 ms or less (1,000 resets/s).
* save 512 MiB: ``snapshot-save``'s own time (pause, state, the zero-page scan,
  CRCs, the sparse write) for a 512 MiB guest a quarter of whose pages are in use
  (written in runs of 1 to 16 pages, as a booted Linux leaves them), separate
  memory file.  Baseline: writing all of RAM to a file in one ``write`` (a dump
  without a scan or holes).
* restore vs boot: wall time until a guest has printed its 5th timer tick,
  either restored from a snapshot taken at that point (``build_restored``,
  memory mapped lazily) or booted and run there, 512 MiB of RAM, in-process,
  so Python's start-up is in neither.

Standalone: ``python3 bench/snapshot_bench.py [--quick]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from harness import BenchFailed, Benchmark, BenchUnavailable, Result, alternate

if TYPE_CHECKING:
    from kvmlite.memory.guest import GuestMemory

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
INPUTS, INPUTS_QUICK = 2000, 300
RUNS, RUNS_QUICK = 3, 2
RESTORE_MIB = 512


def _example() -> ModuleType:
    path = REPO / "examples" / "snapshot_fuzz.py"
    spec = importlib.util.spec_from_file_location("snapshot_fuzz_bench", path)
    if spec is None or spec.loader is None:
        raise BenchFailed(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _need_tools() -> None:
    if shutil.which("as") is None or shutil.which("ld") is None:
        raise BenchUnavailable("building the guest needs GNU as and ld")


def resets(quick: bool) -> Result:
    _need_tools()
    sys.path.insert(0, str(REPO))
    from kvmlite.snapshot.fuzz import FuzzHarness
    from kvmlite.vmm.machine import Machine, MachineConfig

    example = _example()
    n = INPUTS_QUICK if quick else INPUTS
    with tempfile.TemporaryDirectory() as tmp:
        guest = example.build_guest(Path(tmp), pages=10)

        def measure(full_copy: bool) -> float:
            machine = Machine.build(MachineConfig(kernel=guest, memory_mib=64, backend="kvm", serial="none"))
            try:
                harness = FuzzHarness(machine, example.INPUT_ADDR)
                if full_copy:  # every reset copies all of RAM back, as without a dirty log
                    point = harness.point
                    point.log.take = lambda: [  # type: ignore[union-attr]
                        (i, off) for i, r in enumerate(machine.memory) for off in range(0, r.size, 4096)
                    ]
                inputs = [bytes([i & 0xFF, 1, 2]) for i in range(n)]
                start, cpu = time.perf_counter(), time.process_time()
                results = harness.run_many(inputs)  # the resets on the vCPU's thread: no handoffs
                elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
                for i, result in enumerate(results):
                    if result.value != (i & 0xFF) + 3:
                        raise BenchFailed(f"input {i}: the guest answered {result.value}")
                if len(results) != n:
                    raise BenchFailed(f"{len(results)} results for {n} inputs")
                harness.close()
            finally:
                machine.close()
            cpu_ms.append(cpu / n * 1e3)
            return elapsed / n * 1e3

        cpu_ms: list[float] = []
        ours, theirs = alternate(
            lambda: measure(False), lambda: measure(True), runs=RUNS_QUICK if quick else RUNS
        )
    return Result(
        "reset to snapshot, 64 MiB, 10 dirty pages",
        "ms per input",
        ours,
        theirs,
        "full RAM copy per reset",
        note=(
            f"{1000 / min(ours):.0f} resets/s at best (wall); the process's CPU time per input "
            f"{min(cpu_ms):.3f} ms ({1000 / min(cpu_ms):.0f}/s: what an idle host gives); target 1,000"
        ),
    )


def _tick_guests() -> ModuleType:
    _need_tools()
    sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location(
        "snapshot_guests_bench", REPO / "tests" / "snapshot_guests.py"
    )
    if spec is None or spec.loader is None:
        raise BenchFailed("cannot load tests/snapshot_guests.py")
    guests = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(guests)
    except Exception as err:  # it needs pytest (for its skip) and binutils
        raise BenchUnavailable(f"the tick guest cannot be built here: {err}") from err
    return guests


def _fill_used(memory: GuestMemory, fraction: float, skip: int) -> int:
    """Write a pattern into ``fraction`` of the pages above ``skip`` bytes, in runs of 1-16 pages."""
    rnd = random.Random(16)
    pages = 0
    for region in memory:
        page = max(0, skip - int(region.start)) // 4096
        end = region.size // 4096
        while page < end:
            run = rnd.randint(1, 16)
            if rnd.random() < fraction:
                for p in range(page, min(page + run, end)):
                    region.view[p * 4096 + rnd.randrange(4096)] = 1 + p % 255
                    pages += 1
            page += run
    return pages


def save_speed(quick: bool) -> Result:
    guests = _tick_guests()
    from kvmlite.snapshot.machine import save
    from kvmlite.vmm.machine import Machine, MachineConfig

    with tempfile.TemporaryDirectory() as tmp:
        elf = guests.build_ticks_guest(Path(tmp))
        out = bytearray()
        cmdline = guests.ticks_cmdline(100_000)
        config = MachineConfig(
            kernel=elf, cmdline=cmdline, memory_mib=RESTORE_MIB, backend="kvm", serial_out=out.extend
        )
        machine = Machine.build(config)
        thread = threading.Thread(target=machine.run, daemon=True)
        try:
            used = _fill_used(machine.memory, 0.25, 16 << 20)  # the guest itself lives below 16 MiB
            thread.start()
            while out.count(b"\n") < 2:  # running: each save pauses and resumes it
                time.sleep(0.001)

            def ours() -> float:
                return float(save(machine, Path(tmp) / "vm.snap", separate_memory=True)["ms"])

            def dump() -> float:
                start = time.perf_counter()
                with open(Path(tmp) / "ram.dump", "wb") as f:
                    for region in machine.memory:
                        f.write(region.view)
                return (time.perf_counter() - start) * 1e3

            mine, theirs = alternate(ours, dump, runs=RUNS_QUICK if quick else RUNS)
            machine.control.stop(0)
            thread.join(10)
        finally:
            machine.close()
    return Result(
        f"snapshot save, {RESTORE_MIB} MiB, 1/4 of pages in use",
        "ms",
        mine,
        theirs,
        "one write of all RAM",
        note=f"{used} pages in use; zero pages left as holes",
    )


def restore_vs_boot(quick: bool) -> Result:
    guests = _tick_guests()
    from kvmlite.snapshot.machine import build_restored, save
    from kvmlite.vmm.machine import Machine, MachineConfig

    with tempfile.TemporaryDirectory() as tmp:
        elf = guests.build_ticks_guest(Path(tmp))
        cmdline = guests.ticks_cmdline(100_000)
        snap = Path(tmp) / "vm.snap"

        def boot(save_at_end: bool = False) -> float:
            out = bytearray()
            start = time.perf_counter()
            config = MachineConfig(
                kernel=elf, cmdline=cmdline, memory_mib=RESTORE_MIB, backend="kvm", serial_out=out.extend
            )
            machine = Machine.build(config)
            thread = threading.Thread(target=machine.run, daemon=True)
            thread.start()
            while out.count(b"\n") < 5:
                time.sleep(0.0005)
            elapsed = time.perf_counter() - start
            if save_at_end:
                save(machine, snap, separate_memory=True, stay_paused=True)
            machine.control.stop(0)
            thread.join(10)
            machine.close()
            return elapsed * 1e3

        def restore() -> float:
            start = time.perf_counter()
            config = MachineConfig(kernel=Path(), backend="kvm", serial="none")
            machine = build_restored(config, snap, lazy=True)
            elapsed = time.perf_counter() - start
            machine.close()
            return elapsed * 1e3

        boot(save_at_end=True)
        ours, theirs = alternate(restore, boot, runs=RUNS_QUICK if quick else RUNS)
    return Result(
        f"restore vs boot to the 5th tick, {RESTORE_MIB} MiB",
        "ms",
        ours,
        theirs,
        "boot and run to the same point",
        note="restore maps the memory file lazily (MAP_PRIVATE)",
    )


def benchmarks() -> list[Benchmark]:
    return [
        Benchmark("reset to snapshot", "resets per second for fuzzing (64 MiB, 10 dirty pages)", resets),
        Benchmark("snapshot save", "saving a 512 MiB VM a quarter of whose pages are in use", save_speed),
        Benchmark(
            "restore vs boot", "restoring a 512 MiB VM from a snapshot against booting it", restore_vs_boot
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for bench in benchmarks():
        try:
            res = bench.measure(args.quick)
        except (BenchUnavailable, BenchFailed) as err:
            log.error("%s: %s", bench.name, err)
            continue
        log.info(
            "%s: kvmlite %.3f %s (runs %s), %s %.3f (ratio %.2f); %s",
            res.name,
            res.kvmlite,
            res.unit,
            ", ".join(f"{v:.3f}" for v in res.kvmlite_samples),
            res.baseline_name,
            res.baseline,
            res.ratio,
            res.note,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
