"""virtio-net packets per second: kvmlite against QEMU on the same guest binary, in one run.

The guest is ``guests/virtio/vnet.c`` with ``bench=N`` on its command line: it transmits N
minimal (60-byte) frames through its own virtqueue, eight chains per notification, and
exits.  Both VMMs run it on the whole ``run`` path (``python -m kvmlite run --net
stream=PATH`` and ``qemu-system-x86_64 -M pc -enable-kvm -device virtio-net-pci,
disable-legacy=on`` with ``-netdev stream``), each against a fresh Python peer on a UNIX
socket that counts the frames (``tests/netpeer.py``); a run whose peer saw fewer frames
fails.  Packets per second = (N_long - N_short) / (t_long - t_short): start-up cancels.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness import BUILD_DIR, BenchFailed, Benchmark, Result, alternate, guest_builder

REPO = Path(__file__).resolve().parent.parent
GUEST_DIR = BUILD_DIR / "guests"
QEMU = "qemu-system-x86_64"
EXIT_OK = 0x47 << 1 | 1
LONG, LONG_QUICK, SHORT = 50_000, 20_000, 500
RUN_TIMEOUT_S = 600

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _guest() -> Path:
    guest: Path = guest_builder().build_guest("vnet", GUEST_DIR)
    return guest


def kvmlite_cmd(guest: Path, sock: Path, frames: int) -> list[str]:
    return [sys.executable, "-m", "kvmlite", "run", "--kernel", str(guest), "--cmdline", f"bench={frames}",
            "--net", f"stream={sock}"]  # fmt: skip


def qemu_cmd(guest: Path, sock: Path, frames: int) -> list[str]:
    return [QEMU, "-M", "pc", "-enable-kvm", "-m", "128", "-nodefaults", "-no-reboot", "-display", "none",
            "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}",
            "-device", "virtio-net-pci,disable-legacy=on,netdev=n0",
            "-kernel", str(guest), "-append", f"bench={frames}"]  # fmt: skip


def timed_run(cmd: Callable[[Path, Path, int], list[str]], guest: Path, frames: int) -> float:
    """Seconds from start to exit of one VMM sending ``frames`` frames to a fresh peer."""
    from tests.netpeer import StreamPeer

    with tempfile.TemporaryDirectory(prefix="kvmlite-netbench-") as tmp:
        with StreamPeer(Path(tmp) / "peer.sock") as peer:
            t0 = time.perf_counter()
            r = subprocess.run(
                cmd(guest, peer.path, frames), capture_output=True, text=True, timeout=RUN_TIMEOUT_S
            )
            elapsed = time.perf_counter() - t0
            peer.thread.join(timeout=10)  # the VMM closed the socket: the peer has counted everything
        if r.returncode != EXIT_OK or f"bench sent {frames} frames" not in r.stdout:
            raise BenchFailed(f"{cmd.__name__} exited {r.returncode}: {(r.stdout + r.stderr).strip()[-300:]}")
        if peer.frames != frames:
            raise BenchFailed(f"{cmd.__name__}: the peer received {peer.frames} of {frames} frames")
    return elapsed


def measure_pps(quick: bool) -> Result:
    guest = _guest()
    long = LONG_QUICK if quick else LONG

    def rate(cmd: Callable[[Path, Path, int], list[str]]) -> float:
        return (long - SHORT) / max(timed_run(cmd, guest, long) - timed_run(cmd, guest, SHORT), 1e-9)

    ours, theirs = alternate(lambda: rate(kvmlite_cmd), lambda: rate(qemu_cmd), 3 if quick else 5)
    return Result(
        "virtio-net tx packets/s (vnet, 60-byte frames)",
        "packets/s",
        ours,
        theirs,
        "QEMU pc -enable-kvm, -netdev stream",
        lower_is_better=False,
        note=f"{long - SHORT} frames (a long run minus a short one), 8 per notification",
    )


def benchmarks() -> list[Benchmark]:
    return [
        Benchmark(
            "virtio-net-pps",
            "virtio-net frames per second from the bare-metal guest to a socket peer",
            measure_pps,
            (QEMU, "gcc", "as", "ld"),
        )
    ]
