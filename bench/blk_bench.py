"""virtio-blk throughput and IOPS: kvmlite against QEMU on the same guest binary and image.

Rows (each kvmlite over QEMU, measured alternately in one run):

* sequential 64 KiB reads and writes, MB/s;
* random 4 KiB reads and writes (4 KiB-aligned offsets), IOPS.

The guest is ``vblkbench`` (guests/virtio/vblkbench.c), a bare-metal virtio-pci
driver keeping ``DEPTH`` requests in flight on one queue and polling for
completions.  It prints a line just before its first request and one after
its last; the time between the two lines on the VMM's serial output is what
is measured, so neither VMM's start-up counts (QEMU's SeaBIOS takes many
seconds on this project's hosts).  kvmlite runs the real path, ``kvmlite run
--disk IMAGE``; QEMU runs ``-M pc -accel kvm`` with ``-device
virtio-blk-pci,disable-legacy=on`` on a raw ``-drive`` (its default
writeback cache: both VMMs go through the host's page cache).  The image
(64 MiB of random bytes) is made once; both read it from the page cache.
"""

from __future__ import annotations

import functools
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from harness import BUILD_DIR, BenchFailed, Benchmark, BenchUnavailable, Result, alternate, guest_builder
from machine_bench import GUEST_DIR, MEMORY_MIB, QEMU, RUN_TIMEOUT_S, _prepare, _runs

IMAGE = BUILD_DIR / "blk-bench.img"
IMAGE_MIB = 64
DEPTH = 8
EXIT_STATUS = (0x44 << 1) | 1  # the guest's debug-exit value as both VMMs report it
START, DONE = b"vblkbench: start", b"requests of"
#: name -> (op, pattern, request size, requests, requests in quick mode)
ROWS = {
    "seq-read-64k": ("read", "seq", 64 << 10, 4096, 1024),
    "seq-write-64k": ("write", "seq", 64 << 10, 4096, 1024),
    "rand-read-4k": ("read", "rand", 4 << 10, 20000, 5000),
    "rand-write-4k": ("write", "rand", 4 << 10, 20000, 5000),
}


def _guest_and_image() -> tuple[Path, Path]:
    _prepare()  # QEMU present, kvmlite byte-compiled
    guest: Path = guest_builder().build_guest("vblkbench", GUEST_DIR)
    if not IMAGE.exists() or IMAGE.stat().st_size != IMAGE_MIB << 20:
        with IMAGE.open("wb") as f:
            for _ in range(IMAGE_MIB):
                f.write(os.urandom(1 << 20))
    return guest, IMAGE


def _kvmlite_cmd(guest: Path, image: Path, args: str) -> list[str]:
    return [
        sys.executable, "-m", "kvmlite", "run", "--kernel", str(guest), "--memory", str(MEMORY_MIB),
        "--disk", str(image), "--cmdline", args,
    ]  # fmt: skip


def _qemu_cmd(guest: Path, image: Path, args: str) -> list[str]:
    return [
        QEMU, "-M", "pc", "-accel", "kvm", "-m", str(MEMORY_MIB), "-nodefaults", "-no-reboot",
        "-display", "none", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
        "-drive", f"file={image},format=raw,if=none,id=d0",
        "-device", "virtio-blk-pci,drive=d0,disable-legacy=on",
        "-kernel", str(guest), "-append", args,
    ]  # fmt: skip


def _io_seconds(cmd: list[str]) -> float:
    """Seconds between the guest's start and done lines on the VMM's stdout."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    seen, started, ended = b"", 0.0, 0.0
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while not ended and time.monotonic() < deadline:
            if not select.select([proc.stdout], [], [], 1.0)[0]:
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            now = time.perf_counter()
            if not chunk:
                break
            seen += chunk
            if not started and START in seen:
                started = now
            if started and DONE in seen:
                ended = now
        status = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if not (started and ended) or status != EXIT_STATUS:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        what = f"{' '.join(cmd[:3])}... exited {status} (expected {EXIT_STATUS})"
        raise BenchFailed(f"{what}, output {seen[-200:]!r}: {err[-300:]}")
    return ended - started


def measure(row: str, quick: bool) -> Result:
    op, pattern, size, count, quick_count = ROWS[row]
    n = quick_count if quick else count
    guest, image = _guest_and_image()
    args = f"op={op} pattern={pattern} size={size} count={n} depth={DEPTH}"
    sequential = pattern == "seq"

    def rate(cmd: list[str]) -> float:
        seconds = max(_io_seconds(cmd), 1e-9)
        return n * size / seconds / 1e6 if sequential else n / seconds

    ours, theirs = alternate(
        lambda: rate(_kvmlite_cmd(guest, image, args)),
        lambda: rate(_qemu_cmd(guest, image, args)),
        _runs(quick),
    )
    what = f"{size >> 10} KiB {'sequential' if sequential else 'random'} {op}s"
    return Result(
        f"virtio-blk {what}",
        "MB/s" if sequential else "IOPS",
        ours,
        theirs,
        "QEMU pc -accel kvm, virtio-blk-pci",
        lower_is_better=False,
        note=f"{n} requests, {DEPTH} in flight, bare-metal guest polling",
    )


def benchmarks() -> list[Benchmark]:
    needs = (QEMU, "as", "ld", "gcc")
    return [
        Benchmark(
            f"blk-{row}",
            f"virtio-blk {row} through kvmlite run vs QEMU",
            functools.partial(measure, row),
            needs,
            tags=("blk",),
        )
        for row in ROWS
    ]


if __name__ == "__main__":  # pragma: no cover - a quick manual run
    try:
        for row in ROWS:
            r = measure(row, quick=True)
            print(f"{r.name}: kvmlite {r.kvmlite:.1f} {r.unit}, QEMU {r.baseline:.1f}, ratio {r.ratio:.2f}")
    except BenchUnavailable as err:
        print(f"unavailable: {err}")
