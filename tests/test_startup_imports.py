"""Start-up: a plain ``kvmlite run`` imports only what a run needs (``-X importtime`` tells)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import requires_kvm

REPO = Path(__file__).resolve().parent.parent
#: Packages a plain run of a multiboot guest on KVM must not import: each is for another use
#: (the software backend and the rescue's emulator, host tools, the debugger, the control socket,
#: snapshots, the sampling profiler, virtio devices, network backends and test devices nobody
#: attached, the exit tracer nobody asked for).
DENIED = (
    "kvmlite.emulator",
    "kvmlite.tools",
    "kvmlite.gdb",
    "kvmlite.control.api",
    "kvmlite.control.server",
    "kvmlite.snapshot",
    "kvmlite.vmm.profile",
    "kvmlite.virtio",
    "kvmlite.pci.msix",
    "kvmlite.devices.pc_testdev",
    "kvmlite.devices.pci_testdev",
    "kvmlite.vmm.trace",
    "kvmlite.vmm.netdev",
    "kvmlite.loaders.bzimage",  # the loaders of the formats the run does not load
    "kvmlite.loaders.pvh",
    "kvmlite.loaders.elf64",
    "kvmlite.loaders.bootsector",
)


def imported_modules(args: list[str], cwd: Path) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "kvmlite", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [line.split("|") for line in r.stderr.splitlines() if line.startswith("import time:")]
    return {parts[2].strip() for parts in lines if len(parts) == 3}


@requires_kvm
def test_a_plain_run_imports_nothing_on_the_deny_list(tmp_path: Path) -> None:
    modules = imported_modules(["run"], tmp_path)  # the built-in demo guest (multiboot)
    assert "kvmlite.vmm.machine" in modules  # the measurement works
    bad = sorted(m for m in modules if any(m == d or m.startswith(d + ".") for d in DENIED))
    assert not bad, f"a plain run imported {bad}"
