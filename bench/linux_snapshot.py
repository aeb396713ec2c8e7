"""Linux at its shell: snapshot, kill, restore; the shell answers.  Restore time next to a cold boot.

The microVM kernel (``kvmlite build-kernel``; PVH ``vmlinux``) with the busybox
initramfs, 512 MiB of RAM, one vCPU, COM1 on a pipe.  A cold boot runs to the
shell prompt (its time is the baseline); ``echo`` checks the shell; the
control socket's ``snapshot-save`` (separate memory file, paused) saves it
and the process is killed; ``kvmlite run --restore PATH --restore-memory map``
brings it back: the row is the restore's own time (the machine built, the
state loaded, 512 MiB mapped lazily: kvmlite's log line ``restored ... in X
ms``), and the note has the wall time from the restore command's start to
the shell's first answer.  Opt-in and slow (a Linux boot on this host):
``bench/run.py --slow`` or ``--only linux-snapshot``.

Standalone: ``python3 bench/linux_snapshot.py [--quick]`` (prints the row).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import BUILD_DIR, BenchFailed, Benchmark, BenchUnavailable, Result

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
MEMORY_MIB = 512
BOOT_CAP_S = float(os.environ.get("KVMLITE_BOOT_CAP_S", "3600"))
COMMAND_S = 600.0
PROMPT = b"kvmlite# "


class Console:
    """``kvmlite -v run ARGS`` with COM1 on our pipes and its log in a file."""

    def __init__(self, logfile: Path, *args: str) -> None:
        self.logfile = logfile
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with logfile.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kvmlite", "-v", "run", *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
            )
        self.seen = b""

    def expect(self, pattern: bytes, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while pattern not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                tail = self.seen[-1500:].decode(errors="replace")
                raise BenchFailed(f"waited for {pattern!r}; the console showed: {tail}")
            if select.select([self.proc.stdout], [], [], min(left, 1.0))[0]:
                self.seen += os.read(self.proc.stdout.fileno(), 4096)
        before, _, self.seen = self.seen.partition(pattern)
        return before

    def run(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return self.expect(PROMPT, COMMAND_S).decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def _assets(out: Path) -> tuple[Path, Path]:
    from kvmlite.tools import assets, build_kernel, initramfs

    found, reason = assets.find_assets()
    if found is None:
        raise BenchUnavailable(f"no busybox: {reason} (run `kvmlite fetch-assets`)")
    kernel, why = build_kernel.find_microvm_kernel()
    if kernel is None:
        raise BenchUnavailable(f"no microVM kernel: {why} (run `kvmlite build-kernel`)")
    initrd = out / "initrd.cpio"
    if not initrd.exists():
        initrd.write_bytes(initramfs.build_initramfs(found[1], compress=False))
    return kernel.vmlinux, initrd


def linux_snapshot(quick: bool) -> Result:
    sys.path.insert(0, str(REPO))
    from kvmlite.control.client import execute
    from kvmlite.tools.build_kernel import MICROVM_CMDLINE

    out = BUILD_DIR / "linux-snapshot"
    out.mkdir(parents=True, exist_ok=True)
    vmlinux, initrd = _assets(out)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        work = Path(tmp)
        sock, snap = work / "api.sock", work / "linux.snap"
        start = time.monotonic()
        boot = Console(
            work / "boot.log",
            "--kernel", str(vmlinux), "--initrd", str(initrd), "--cmdline", MICROVM_CMDLINE,
            "--memory", str(MEMORY_MIB), "--api", f"unix:{sock}",
        )  # fmt: skip
        try:
            boot.expect(b"kvmlite-initramfs: ready", BOOT_CAP_S)
            boot.expect(PROMPT, COMMAND_S)
            cold_s = time.monotonic() - start
            log.info("cold boot to the shell: %.1f s", cold_s)
            if "before-snapshot 42" not in boot.run("echo before-snapshot $((6*7))"):
                raise BenchFailed("the shell did not answer before the snapshot")
            reply = execute(str(sock), "snapshot-save", {"path": str(snap), "paused": True, "separate": True})
            if "return" not in reply:
                raise BenchFailed(f"snapshot-save: {reply}")
        finally:
            boot.kill()
        start = time.monotonic()
        restored = Console(work / "restore.log", "--restore", str(snap), "--restore-memory", "map")
        try:
            answer = restored.run("echo after-restore $((6*7))")
            answer_s = time.monotonic() - start
            if "after-restore 42" not in answer:
                raise BenchFailed(f"the restored shell answered {answer!r}")
            if "Linux" not in restored.run("uname -s"):
                raise BenchFailed("the restored shell does not run uname")
        finally:
            restored.kill()
        found = re.search(r"restored \S+ in ([\d.]+) ms", (work / "restore.log").read_text(errors="replace"))
        if found is None:
            raise BenchFailed("the restore's log has no 'restored ... in X ms' line")
        restore_ms = float(found.group(1))
    log.info("restore %.1f ms, shell answered %.2f s after the restore command started", restore_ms, answer_s)
    return Result(
        f"Linux shell restore, {MEMORY_MIB} MiB",
        "ms",
        [restore_ms],
        [cold_s * 1e3],
        "cold boot to the shell",
        note=f"lazy MAP_PRIVATE restore; the restored shell answered {answer_s:.2f} s after the command",
    )


def benchmarks() -> list[Benchmark]:
    return [
        Benchmark(
            "linux-snapshot",
            "a Linux shell snapshotted, killed and restored (512 MiB, lazy) against a cold boot",
            linux_snapshot,
            tags=("slow",),
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        res = linux_snapshot(args.quick)
    except (BenchUnavailable, BenchFailed) as err:
        log.error("linux-snapshot: %s", err)
        return 1
    log.info(
        "%s: kvmlite %.1f %s, %s %.1f (ratio %.4f); %s",
        res.name, res.kvmlite, res.unit, res.baseline_name, res.baseline, res.ratio, res.note,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
