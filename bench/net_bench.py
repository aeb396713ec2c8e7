"""virtio-net packets per second: kvmlite against QEMU on the same guest binary, in one run.

The guest is ``guests/virtio/vnet.c`` with ``bench=N`` on its command line: it transmits N
minimal (60-byte) frames through its own virtqueue, eight chains per notification, and
prints how many TSC cycles that took.  Both VMMs run it on the whole ``run`` path
(``python -m kvmlite run --net stream=PATH`` and ``qemu-system-x86_64 -M pc -enable-kvm
-device virtio-net-pci,disable-legacy=on`` with ``-netdev stream``), each against a fresh
Python peer on a UNIX socket that counts the frames (``tests/netpeer.py``); a run whose peer
saw fewer frames fails.  Timing the loop in the guest leaves out each VMM's start-up (QEMU's
firmware alone takes seconds here, and varies by more than the transfer under load); the
TSC rate is the vCPU's (KVM_GET_TSC_KHZ), the same under both.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from harness import BUILD_DIR, BenchFailed, Benchmark, Result, alternate, guest_builder

REPO = Path(__file__).resolve().parent.parent
GUEST_DIR = BUILD_DIR / "guests"
QEMU = "qemu-system-x86_64"
EXIT_OK = 0x47 << 1 | 1
FRAMES, FRAMES_QUICK = 20_000, 5_000
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


def tsc_hz() -> float:
    from kvmlite.kvm.system import Kvm

    kvm = Kvm()
    vm = kvm.create_vm()
    vcpu = vm.create_vcpu(0)
    try:
        return vcpu.tsc_khz() * 1000.0
    finally:
        vcpu.close()
        vm.close()
        kvm.close()


def frames_per_second(
    cmd: Callable[[Path, Path, int], list[str]], guest: Path, frames: int, hz: float
) -> float:
    """One VMM sending ``frames`` frames to a fresh peer: frames per second of the guest's send loop."""
    from tests.netpeer import StreamPeer

    with tempfile.TemporaryDirectory(prefix="kvmlite-netbench-") as tmp:
        with StreamPeer(Path(tmp) / "peer.sock") as peer:
            r = subprocess.run(
                cmd(guest, peer.path, frames), capture_output=True, text=True, timeout=RUN_TIMEOUT_S
            )
            peer.thread.join(timeout=10)  # the VMM closed the socket: the peer has counted everything
    found = re.search(rf"bench sent {frames} frames in (\d+) TSC kilocycles", r.stdout)
    if r.returncode != EXIT_OK or found is None:
        raise BenchFailed(f"{cmd.__name__} exited {r.returncode}: {(r.stdout + r.stderr).strip()[-300:]}")
    if peer.frames != frames:
        raise BenchFailed(f"{cmd.__name__}: the peer received {peer.frames} of {frames} frames")
    return frames * hz / (int(found.group(1)) * 1024)


def measure_pps(quick: bool) -> Result:
    guest = _guest()
    frames = FRAMES_QUICK if quick else FRAMES
    hz = tsc_hz()
    ours, theirs = alternate(
        lambda: frames_per_second(kvmlite_cmd, guest, frames, hz),
        lambda: frames_per_second(qemu_cmd, guest, frames, hz),
        3 if quick else 5,
    )
    return Result(
        "virtio-net tx packets/s (vnet, 60-byte frames)",
        "packets/s",
        ours,
        theirs,
        "QEMU pc -enable-kvm, -netdev stream",
        lower_is_better=False,
        note=f"{frames} frames per run, 8 per notification, timed by the guest's TSC",
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
