"""The test guests under kvmlite: the same expectations QEMU is held to, and QEMU's own output.

Each guest runs through the real ``kvmlite run`` command under both interrupt
delivery modes and must print exactly the expected lines and exit with the
expected status.  Where QEMU can boot the same image, kvmlite's output must
be identical to QEMU's, line for line.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmlite.guests import DEMO_FINAL_LINE, DEMO_GUEST
from tests.conftest import requires_kvm
from tests.guest_expectations import (
    EXPECTATIONS,
    QEMU_MEMORY_MIB,
    BootFormat,
    build_guests,
    missing_build_tools,
)

TIMEOUT_S = 120

#: (backend, irqchip) pairs every guest runs under; the software backend needs no /dev/kvm.
CONFIGS = [
    pytest.param("kvm", "kernel", marks=requires_kvm, id="kvm-kernel"),
    pytest.param("kvm", "userspace", marks=requires_kvm, id="kvm-userspace"),
    pytest.param("emu", "userspace", id="emu"),
]


@pytest.fixture(scope="session")
def guest_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    missing = missing_build_tools()
    if missing:
        pytest.skip(f"building the test guests needs {', '.join(missing)}")
    out = tmp_path_factory.mktemp("guests")
    build_guests(out)
    return {p.name: p for p in out.iterdir()}


def run_kvmlite(image: Path, args: str, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kvmlite", "run", "--kernel", str(image), "--memory", str(QEMU_MEMORY_MIB)]
    if args:
        cmd += ["--cmdline", args]
    return subprocess.run(
        [*cmd, *extra], capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL
    )


@pytest.mark.parametrize("irqchip", ["kernel", "userspace"])
@pytest.mark.parametrize("name", sorted(EXPECTATIONS))
def test_guest_output_and_status_under_kvmlite(
    name: str, irqchip: str, guest_images: dict[str, Path]
) -> None:
    exp = EXPECTATIONS[name]
    r = run_kvmlite(guest_images[exp.image], exp.args, "--irqchip", irqchip)
    assert exp.mismatches(r.stdout) == [], r.stderr
    assert r.returncode == exp.exit_status, r.stderr
    assert "Traceback" not in r.stderr


QEMU_COMPARABLE = sorted(
    name
    for name, exp in EXPECTATIONS.items()
    if exp.boot in (BootFormat.MULTIBOOT_ELF32, BootFormat.MULTIBOOT_AOUT) and not exp.ends_with_halt
)


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.parametrize("backend", [pytest.param("kvm", marks=requires_kvm), "emu"])
@pytest.mark.parametrize("name", QEMU_COMPARABLE)
def test_same_serial_output_and_status_as_qemu(
    name: str, backend: str, guest_images: dict[str, Path]
) -> None:
    exp = EXPECTATIONS[name]
    image = guest_images[exp.image]
    qemu = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", str(QEMU_MEMORY_MIB), "-display", "none", "-no-reboot",
        "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", str(image),
    ]  # fmt: skip
    if exp.args:
        qemu += ["-append", exp.args]
    q = subprocess.run(qemu, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    k = run_kvmlite(image, exp.args, "--backend", backend)
    assert k.stdout.splitlines() == q.stdout.splitlines()
    assert k.returncode == q.returncode == exp.exit_status


@requires_kvm
def test_builtin_demo_runs_with_no_arguments_and_exits_0() -> None:
    assert DEMO_GUEST.is_file(), "the package must ship the demo guest"
    r = subprocess.run(
        [sys.executable, "-m", "kvmlite", "run"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("kvmlite demo guest")
    assert lines[-1] == DEMO_FINAL_LINE
    assert EXPECTATIONS["demo"].mismatches(r.stdout) == []


def test_builtin_demo_on_the_software_backend() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "kvmlite", "run", "--backend", "emu"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    assert EXPECTATIONS["demo"].mismatches(r.stdout) == []
