"""What the virtio guest tests share: building a guest, running it under kvmlite and under QEMU."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import KVM_OK
from tests.guest_expectations import load_build_module, missing_build_tools

QEMU = "qemu-system-x86_64"
requires_qemu = pytest.mark.skipif(shutil.which(QEMU) is None, reason=f"{QEMU} is not installed")


def build(name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = missing_build_tools()
    if missing:
        pytest.skip(f"cannot build the guests, missing: {', '.join(missing)}")
    built: Path = load_build_module().build_guest(name, tmp_path_factory.mktemp(name))
    return built


def qemu_run(kernel: Path, *devices: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        QEMU, "-accel", "tcg", "-m", "128", "-display", "none", "-no-reboot", "-serial", "stdio",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=4", *devices, "-kernel", str(kernel),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def skip_without_kvm(backend: str) -> None:
    if backend == "kvm" and not KVM_OK:
        pytest.skip("needs a usable /dev/kvm")


def kvmlite_run(*args: str) -> subprocess.CompletedProcess[str]:
    """``kvmlite run ARGS`` with COM1 on stdout, as the QEMU run has it."""
    cmd = [sys.executable, "-m", "kvmlite", "run", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
