"""Real gdb (batch mode) against the dbg guest (C, debug info) under ``kvmlite run --gdb``, both backends."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from kvmlite.gdb.packets import frame
from tests.gdb.support import (
    BACKENDS,
    DONE_STATUS,
    GDB,
    dbg_guest,  # noqa: F401  (a fixture)
    free_port,
    kvm_data_breakpoints_fire,
    run_gdb,
    running_vm,
    serial_text,
    wait_listening,
)

pytestmark = pytest.mark.skipif(GDB is None, reason="needs gdb (Debian package gdb)")


def _session(image: Path, tmp: Path, backend: str, commands: list[str], *extra: str) -> tuple[str, int, str]:
    port = free_port()
    args = ("--backend", backend, "--gdb", f"127.0.0.1:{port}", "--gdb-wait", *extra)
    with running_vm(image, tmp, *args) as (proc, serial):
        wait_listening(proc)
        out = run_gdb(image, f"target remote :{port}", *commands)
        status = proc.wait(timeout=60)
    return out, status, serial_text(serial)


@pytest.mark.parametrize("backend", BACKENDS)
def test_break_bt_registers_step_watch_set_var_and_run_to_the_exit(
    dbg_guest: Path,  # noqa: F811
    tmp_path: Path,
    backend: str,
) -> None:
    # This project's KVM hosts do not deliver data breakpoints (DR7 R/W=01) at CPL 0 (measured:
    # the write runs on, in long mode the vCPU shuts down): there gdb watches by stepping.
    hw_watch = backend == "emu" or kvm_data_breakpoints_fire()
    watch_mode = [] if hw_watch else ["set can-use-hw-watchpoints 0"]
    out, status, serial = _session(
        dbg_guest,
        tmp_path,
        backend,
        [
            "break compute",
            "continue",
            "bt",
            "info registers",
            "print scale",
            "x/4i $pc",
            "stepi",
            "print/x $pc",
            "stepi",
            "print/x $pc",
            "stepi",
            "print/x $pc",
            *watch_mode,
            "watch counter",
            "continue",
            "set var scale = 10",
            "delete",
            "continue",
        ],
    )
    assert "Breakpoint 1, compute (x=7)" in out, out
    assert re.search(r"#1 .* in kmain \(magic=732803074", out), out
    assert re.search(r"eip\s+0x[0-9a-f]+\s+0x[0-9a-f]+ <compute>", out), out
    assert re.search(r"eflags\s+0x[0-9a-f]+\s+\[", out), out
    assert "$1 = 3" in out
    disassembly = re.findall(r"(?:=>)?\s+(0x[0-9a-f]+) <compute(?:\+\d+)?>:", out)
    assert len(disassembly) >= 4, out
    stepped = re.findall(r"^\$[234] = (0x[0-9a-f]+)", out, re.M)
    assert stepped == disassembly[1:4], out  # each stepi lands on the next instruction
    assert "Old value = 0\nNew value = 22" in out, out
    assert ("Hardware watchpoint 2: counter" in out) == hw_watch
    assert "exited with code 0103" in out, out  # 67 in octal
    assert status == DONE_STATUS
    assert serial.splitlines() == ["magic-ok=1", "counter=22", "result=21"]  # scale changed to 10


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_errors_monitor_commands_and_ctrl_c(dbg_guest: Path, tmp_path: Path, backend: str) -> None:  # noqa: F811
    out, status, serial = _session(
        dbg_guest,
        tmp_path,
        backend,
        [
            "x/x 0x40000000",  # beyond RAM: gdb is told, nothing breaks
            "monitor info registers",
            "monitor info devices",
            "print marker",
            "kill",
        ],
        "--cmdline",
        "mailbox",
    )
    assert "Cannot access memory at address 0x40000000" in out
    assert "vCPU 0:" in out and "RIP=" in out
    assert "serial0 (isa-serial): pio 0x3f8-0x3ff, irq 4" in out and "(isa-debug-exit)" in out
    assert "$1 = 1592594996" in out  # 0x5eed1234
    assert status == 0 and serial == ""  # killed before it ran (--gdb-wait)


def _packet(sock: socket.socket) -> bytes:
    data = b""
    while not re.search(rb"\$[^#]*#..", data):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return re.search(rb"\$([^#]*)#", data).group(1)  # type: ignore[union-attr]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_stops_a_running_guest_and_k_kills_it(dbg_guest: Path, tmp_path: Path, backend: str) -> None:  # noqa: F811
    port = free_port()
    args = ("--backend", backend, "--gdb", f"127.0.0.1:{port}")
    with running_vm(dbg_guest, tmp_path, *args, cmdline="mailbox") as (proc, _):
        wait_listening(proc)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(frame(b"QStartNoAckMode"))
            assert _packet(sock) == b"OK"
            sock.sendall(frame(b"vCont;c"))
            time.sleep(0.5)
            sock.sendall(b"\x03")
            assert _packet(sock) == b"T02thread:1;"
            sock.sendall(frame(b"k"))
        assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_vcpus_are_two_threads(dbg_guest: Path, tmp_path: Path, backend: str) -> None:  # noqa: F811
    out, status, _ = _session(
        dbg_guest,
        tmp_path,
        backend,
        ["info threads", "thread 2", "print/x $pc", "thread 1", "continue"],
        "--cpus",
        "2",
    )
    assert re.search(r"\* 1\s+Thread 1 \(vCPU 0\)", out), out
    assert re.search(r"  2\s+Thread 2 \(vCPU 1\)", out), out
    assert "Switching to thread 2" in out
    assert "$1 = 0xfff0" in out  # the AP waits for INIT/SIPI at the reset vector
    assert "exited with code 0103" in out
    assert status == DONE_STATUS


@pytest.fixture(scope="session")
def lm64_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.guest_expectations import load_build_module, missing_build_tools

    if missing_build_tools():
        pytest.skip("needs gcc, ld and objcopy to build the lm64 guest")
    return Path(load_build_module().build_guest("lm64", tmp_path_factory.mktemp("lm64")))


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_mode_guest_is_x86_64_with_control_registers_and_hw_breakpoints(
    lm64_guest: Path, tmp_path: Path, backend: str
) -> None:
    out, status, _ = _session(
        lm64_guest,
        tmp_path,
        backend,
        [
            "show architecture",
            "x/3i $pc",
            "hbreak *$_",
            "stepi",
            "print/x $rip",
            "continue",
            "print/x $rip",
            "print/x $cr0",
            "print/x $efer",
            "delete",
            "continue",
        ],
    )
    disassembly = re.findall(r"(?:=>)?\s+0x([0-9a-f]+):\t", out)
    assert len(disassembly) == 3, out
    assert "i386:x86-64" in out
    assert f"$1 = 0x{disassembly[1]}" in out  # the step
    assert f"Breakpoint 1, 0x{int(disassembly[2], 16):016x}" in out  # the hardware breakpoint
    assert "$3 = 0x80010033" in out  # PG, WP, NE, ET, MP, PE
    assert re.search(r"\$4 = 0x5[0-9a-f]{2}", out)  # EFER: LMA, LME (and SCE/NXE as set up)
    assert "exited with code 0141" in out  # 97: lm64's own exit
    assert status == 97
