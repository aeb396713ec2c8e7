"""Running the dbg guest under ``kvmlite run --gdb/--api`` for the debugger and control-socket tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import KVM_OK, KVM_REASON
from tests.guest_expectations import load_build_module, missing_build_tools

GDB = shutil.which("gdb")
DONE_STATUS = (0x21 << 1) | 1
BACKENDS = [
    pytest.param("emu"),
    pytest.param("kvm", marks=pytest.mark.skipif(not KVM_OK, reason=f"needs /dev/kvm: {KVM_REASON}")),
]


@pytest.fixture(scope="session")
def dbg_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = missing_build_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} to build the dbg guest")
    return Path(load_build_module().build_guest("dbg", tmp_path_factory.mktemp("dbg")))


def symbol(image: Path, name: str) -> int:
    """A symbol's address in the guest image (its own ELF symbol table)."""
    from kvmlite.loaders.elf import elf_symbols

    for sym in elf_symbols(image.read_bytes()):
        if sym[2] == name:
            return int(sym[0])
    raise LookupError(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_vm(image: Path, tmp: Path, *args: str, cmdline: str = "") -> tuple[subprocess.Popen[str], Path]:
    """``kvmlite run`` in the background; its serial output goes to the returned file."""
    serial = tmp / "serial.txt"
    cmd = [sys.executable, "-m", "kvmlite", "run", "--kernel", str(image), "--serial", f"file:{serial}",
           "--memory", "16", *args]  # fmt: skip
    if cmdline:
        cmd += ["--cmdline", cmdline]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc, serial


@contextlib.contextmanager
def running_vm(
    image: Path, tmp: Path, *args: str, cmdline: str = ""
) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """:func:`start_vm`, killed on the way out if it still runs."""
    proc, serial = start_vm(image, tmp, *args, cmdline=cmdline)
    try:
        yield proc, serial
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def waiting_vm_with_api(
    image: Path, tmp: Path, backend: str
) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    """The dbg guest waiting for its mailbox, with ``--api`` on a socket: (process, serial file, socket)."""
    path = tmp / "api.sock"
    with running_vm(image, tmp, "--backend", backend, "--api", f"unix:{path}", cmdline="mailbox") as (
        proc,
        serial,
    ):
        wait_for(path.exists)
        wait_for(lambda: "waiting" in serial_text(serial))
        yield proc, serial, path


def serial_text(serial: Path) -> str:
    return serial.read_text() if serial.exists() else ""


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def wait_listening(proc: subprocess.Popen[str]) -> str:
    """Block until ``kvmlite run`` says a server listens (a probe connection would be a debugger)."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "listening on" in line:
            return line
    raise AssertionError(f"kvmlite ended before listening: {''.join(seen)}")


def run_gdb(image: Path | None, *commands: str, timeout: float = 120) -> str:
    args = [GDB or "gdb", "-nx", "-batch"]
    if image is not None:
        args.append(str(image))
    for c in commands:
        args += ["-ex", c]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return proc.stdout + proc.stderr


def kvm_data_breakpoints_fire() -> bool:
    """Whether this host's KVM reports a DR0 write breakpoint at CPL 0 in 32-bit protected mode.

    This project's hosts let the write run on (docs/platform-notes.md); a normal host stops.
    """
    from kvmlite.kvm import Kvm
    from kvmlite.kvm import exits as E
    from kvmlite.kvm.constants import GuestDebug
    from kvmlite.loaders.base import EntryMode, LoadResult
    from kvmlite.memory.guest import GuestMemory
    from kvmlite.vmm.cpu_setup import setup_cpu

    memory = GuestMemory([(0, 4 << 20)])
    with Kvm() as kvm:
        vm = kvm.create_vm()
        try:
            vm.set_tss_addr()
            vm.register_memory(memory)
            memory.write(0x10_0000, bytes([0xA3, 0x00, 0x20, 0x00, 0x00, 0xF4]))  # mov [0x2000], eax; hlt
            vcpu = vm.create_vcpu(0)
            regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
            setup_cpu(regs, sregs, memory, LoadResult("probe", 0x10_0000, EntryMode.PROTECTED32))
            vcpu.set_sregs(sregs)
            vcpu.set_regs(regs)
            dr7 = 2 | 1 << 16 | 3 << 18  # DR0: global, write, 4 bytes
            vcpu.set_guest_debug(GuestDebug.ENABLE | GuestDebug.USE_HW_BP, [0x2000], dr7)
            return isinstance(vcpu.run(), E.Debug)
        finally:
            vm.close()
            memory.close()
