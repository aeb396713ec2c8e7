"""A run's resources live and die with it: restarts leak nothing, signals end it cleanly, input is bounded.

Issue 17's findings 1, 3 (POST codes, stdin) and 6, each tried the way an attacker would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmlite.status import ExitStatus
from kvmlite.vmm.machine import Machine, MachineConfig
from tests.conftest import MULTIBOOT_HEADER, build_multiboot

ENTRY = ".text\n.globl _start\n_start:\n"
RESETS_FOREVER = MULTIBOOT_HEADER + ENTRY + "    mov $0xfe, %al\n    out %al, $0x64\n1:  hlt\n    jmp 1b\n"
IDLE_FOREVER = MULTIBOOT_HEADER + ENTRY + "    sti\n1:  hlt\n    jmp 1b\n"
POST_THEN_EXIT = (
    MULTIBOOT_HEADER
    + ENTRY
    + "    mov $1, %ecx\n1:  mov %cl, %al\n    out %al, $0x80\n"
    + "    inc %ecx\n    cmp $1001, %ecx\n    jne 1b\n"
    + "    mov $0xf4, %dx\n    mov $0x21, %eax\n    out %eax, %dx\n"
)

#: In a child process: ``kvmlite run --on-reset restart`` until the N+1st build, which fails; the
#: descriptors and threads at the 2nd build and at the last are printed.
RESTART_PROBE = """
import os, sys, threading
from kvmlite.cli.main import main
from kvmlite.errors import KvmliteError
from kvmlite.vmm.machine import Machine

n, kernel, serial = int(sys.argv[1]), sys.argv[2], sys.argv[3]
real, seen = Machine.build.__func__, []

def build(cls, config):
    seen.append((len(os.listdir("/proc/self/fd")), threading.active_count()))
    if len(seen) > n:
        raise KvmliteError("enough restarts")
    return real(cls, config)

Machine.build = classmethod(build)
main(["run", "--kernel", kernel, "--memory", "16", "--on-reset", "restart", "--serial", serial])
print("SECOND", *seen[1], "LAST", *seen[-1], flush=True)
"""
RESTARTS = 50


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.parametrize("serial", ["stdio", "unix"])
def test_fifty_restarts_leak_no_descriptor_and_no_thread(tmp_path: Path, serial: str) -> None:
    kernel = build_multiboot(tmp_path, "reset", RESETS_FOREVER)
    spec = f"unix:{tmp_path / 'console.sock'}" if serial == "unix" else "stdio"
    proc = subprocess.run(  # stdin a pipe that stays open and silent, as a terminal nobody types at
        [sys.executable, "-c", RESTART_PROBE, str(RESTARTS), str(kernel), spec],
        stdin=subprocess.PIPE,
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    words = proc.stdout.split()
    second, last = words[1:3], words[4:6]
    assert second == last, f"(fds, threads) at the 2nd build {second}, after {RESTARTS} restarts {last}"


def _wait_for(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_sigterm_during_a_reset_loop_ends_it_cleanly_and_removes_the_socket(tmp_path: Path) -> None:
    kernel = build_multiboot(tmp_path, "reset", RESETS_FOREVER)
    sock = tmp_path / "console.sock"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "kvmlite", "run", "--kernel", str(kernel), "--memory", "16"),
            *("--on-reset", "restart", "--serial", f"unix:{sock}"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        _wait_for(sock.exists)
        time.sleep(1.0)  # many restarts
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == ExitStatus.SIGNALED + signal.SIGTERM, err
    assert "Traceback" not in err, err
    assert not sock.exists()


def test_a_unix_socket_path_too_long_is_one_clear_sentence(tmp_path: Path) -> None:
    path = tmp_path / ("s" * 120)
    proc = subprocess.run(
        [sys.executable, "-m", "kvmlite", "run", "--serial", f"unix:{path}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert proc.returncode == ExitStatus.BAD_INPUT
    assert "a Unix socket path has at most 107" in proc.stderr and "None" not in proc.stderr


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_input_the_guest_does_not_read_is_bounded_and_costs_no_cpu(tmp_path: Path) -> None:
    """An idle guest with stdin=/dev/zero: kvmlite stops reading once 64 KiB wait for the UART."""
    kernel = build_multiboot(tmp_path, "idle", IDLE_FOREVER)
    with open(os.devnull, "rb") as _, open("/dev/zero", "rb") as zero:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvmlite", "run", "--kernel", str(kernel), "--memory", "16"],
            stdin=zero,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
    try:
        time.sleep(2.0)  # start-up (imports) done, the console threads running
        cpu, rss = _cpu_seconds(proc.pid), _rss_kib(proc.pid)
        time.sleep(3.0)
        cpu_used, rss_grown = _cpu_seconds(proc.pid) - cpu, _rss_kib(proc.pid) - rss
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert cpu_used < 0.6, f"{cpu_used:.2f} s of CPU in 3 s of an idle guest"
    assert rss_grown < 8 * 1024, f"RSS grew by {rss_grown} KiB"
    assert proc.returncode == ExitStatus.SIGNALED + signal.SIGTERM and "Traceback" not in err


def test_only_the_last_post_code_is_kept(tmp_path: Path) -> None:
    kernel = build_multiboot(tmp_path, "post", POST_THEN_EXIT)
    machine = Machine.build(MachineConfig(kernel=kernel, memory_mib=16, serial_out=lambda b: None))
    try:
        assert machine.run() == (0x21 << 1) | 1
        assert machine.post_code == 1000 & 0xFF
        assert not any(isinstance(v, list) and len(v) >= 1000 for v in vars(machine).values())
    finally:
        machine.close()
