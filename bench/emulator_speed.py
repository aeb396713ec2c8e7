"""Emulator speed: guest instructions per second of kvmlite's software backend vs QEMU TCG.

The guest is ``guests/cbench.S``: a multiboot kernel that switches to long
mode and runs ``iters=N`` steps of a 64-bit LCG at CPL 3, four instructions
per step (``imul; add; dec; jnz``, :data:`LOOP_INSNS_PER_ITER`), then prints
the result and leaves through the isa-debug-exit port.  The same ELF runs
under ``kvmlite run --backend emu`` and under ``qemu-system-x86_64 -accel
tcg``, each as a fresh process, timed from the outside.

Start-up (Python import, QEMU's machine set-up, the guest's own ring-0 boot
and serial output) is the same whatever N is, so each sample runs the guest
twice, with a small and a large N, and divides the extra loop instructions
by the extra time:

    ips = LOOP_INSNS_PER_ITER * (N_large - N_small) / (t_large - t_small)

N differs per side (the emulator interprets every instruction in Python,
TCG runs translated blocks) so that each run stays within a few seconds;
the ratio is kvmlite ips / QEMU ips (higher is better, and far below 1).

Standalone use: ``python3 bench/emulator_speed.py [--quick]``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness import BUILD_DIR, BenchFailed, Benchmark, BenchUnavailable, Result, alternate

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
GUEST_BUILD = REPO / "guests" / "build.py"
GUEST_NAME = "cbench"
GUEST_IMAGE = "cbench.elf"
GUEST_OUT = BUILD_DIR / "guests"
QEMU = "qemu-system-x86_64"

#: ``imul rax, rbx; add rax, rdx; dec rcx; jnz 1b`` per LCG step (see user_lcg in cbench.S).
LOOP_INSNS_PER_ITER = 4
#: (small N, large N) per side; the large N keeps one run at a few seconds on this project's machines.
EMU_ITERS = (1_000, 1_500_000)
EMU_ITERS_QUICK = (1_000, 400_000)
QEMU_ITERS = (1_000, 400_000_000)
QEMU_ITERS_QUICK = (1_000, 100_000_000)
RUNS = 3
RUNS_QUICK = 1
GUEST_MEMORY_MIB = 32
RUN_TIMEOUT_S = 60
BUILD_TIMEOUT_S = 120
#: isa-debug-exit status for the guest's "v = 0" exit: (0 << 1) | 1.
EXPECTED_STATUS = 1
RESULT_MARK = "cbench: result=0x"


def build_guest() -> Path:
    """``guests/build.py --out bench/_build/guests cbench`` unless the image is newer than its source."""
    image = GUEST_OUT / GUEST_IMAGE
    source = REPO / "guests" / "cbench.S"
    if image.exists() and image.stat().st_mtime >= source.stat().st_mtime:
        return image
    GUEST_OUT.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(GUEST_BUILD), "--out", str(GUEST_OUT), GUEST_NAME]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise BenchFailed(f"building {GUEST_NAME} took longer than {BUILD_TIMEOUT_S} s") from err
    if res.returncode != 0 or not image.exists():
        raise BenchUnavailable(f"cannot build the {GUEST_NAME} guest: {(res.stderr or res.stdout).strip()}")
    return image


def lcg(iters: int) -> int:
    """What the guest prints for ``iters`` steps (Knuth's MMIX LCG from 0), to check each run."""
    x = 0
    for _ in range(iters):
        x = (x * 6364136223846793005 + 1442695040888963407) & ((1 << 64) - 1)
    return x


def _timed(cmd: list[str], iters: int, expected: int | None) -> float:
    """Run one guest process; its wall time in seconds after checking status and printed result."""
    start = time.perf_counter()
    try:
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as err:
        raise BenchFailed(f"{' '.join(cmd)} took longer than {RUN_TIMEOUT_S} s") from err
    elapsed = time.perf_counter() - start
    if res.returncode != EXPECTED_STATUS:
        raise BenchFailed(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.strip()[-500:]}")
    if expected is not None and f"{RESULT_MARK}{expected:x}" not in res.stdout:
        raise BenchFailed(f"{cmd[0]} with iters={iters} printed a wrong result: {res.stdout.strip()!r}")
    return elapsed


def kvmlite_cmd(image: Path, iters: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kvmlite",
        "run",
        "--backend",
        "emu",
        "--kernel",
        str(image),
        "--cmdline",
        f"iters={iters}",
        "--memory",
        str(GUEST_MEMORY_MIB),
    ]


def qemu_cmd(image: Path, iters: int) -> list[str]:
    return [
        QEMU,
        "-accel",
        "tcg",
        "-kernel",
        str(image),
        "-append",
        f"iters={iters}",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-m",
        str(GUEST_MEMORY_MIB),
    ]


def instructions_per_second(
    cmd_for: Callable[[Path, int], list[str]], image: Path, iters: tuple[int, int], check: bool
) -> float:
    """Loop instructions per second from a small-N and a large-N run of the same command.

    ``check``: verify the small run's printed LCG value (the large one is too
    long to recompute in Python).
    """
    small, large = iters
    t_small = _timed(cmd_for(image, small), small, lcg(small) if check else None)
    t_large = _timed(cmd_for(image, large), large, None)
    if t_large <= t_small:
        raise BenchFailed(f"iters={large} ran no longer than iters={small}: raise the large N")
    return LOOP_INSNS_PER_ITER * (large - small) / (t_large - t_small)


def measure(quick: bool) -> Result:
    if shutil.which(QEMU) is None:
        raise BenchUnavailable(f"{QEMU} is not installed (the TCG baseline)")
    image = build_guest()
    emu_iters = EMU_ITERS_QUICK if quick else EMU_ITERS
    qemu_iters = QEMU_ITERS_QUICK if quick else QEMU_ITERS
    # one throw-away small run per side: a cold page cache would inflate the first small-N time
    _timed(kvmlite_cmd(image, emu_iters[0]), emu_iters[0], None)
    _timed(qemu_cmd(image, qemu_iters[0]), qemu_iters[0], None)
    ours, theirs = alternate(
        lambda: instructions_per_second(kvmlite_cmd, image, emu_iters, check=True),
        lambda: instructions_per_second(qemu_cmd, image, qemu_iters, check=True),
        RUNS_QUICK if quick else RUNS,
    )
    return Result(
        name="emulator speed: kvmlite --backend emu vs QEMU TCG",
        unit="insn/s",
        kvmlite_samples=ours,
        baseline_samples=theirs,
        baseline_name="qemu-system-x86_64 -accel tcg",
        lower_is_better=False,
        note=(
            f"cbench.S LCG loop at CPL 3, {LOOP_INSNS_PER_ITER} insns/iteration; "
            f"iters {emu_iters} (kvmlite) and {qemu_iters} (QEMU), large minus small"
        ),
    )


def benchmarks() -> list[Benchmark]:
    return [
        Benchmark(
            name="emulator-speed-vs-tcg",
            description="software backend instructions per second on a ring-3 compute loop vs QEMU TCG",
            measure=measure,
            requires_tools=(QEMU, "as", "ld"),
            needs_kvm=False,
            tags=("emulator",),
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller N, one sample per side")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        res = measure(args.quick)
    except (BenchUnavailable, BenchFailed) as err:
        log.error("%s", err)
        return 1
    log.info(
        "kvmlite emu %.0f insn/s (+-%.1f%%), QEMU TCG %.0f insn/s (+-%.1f%%), ratio %.2e",
        res.kvmlite,
        100 * res.kvmlite_spread,
        res.baseline,
        100 * res.baseline_spread,
        res.ratio,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
