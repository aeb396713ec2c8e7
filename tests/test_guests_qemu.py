"""The test guests, built from source and booted under QEMU: the reference kvmlite is compared with.

Each guest runs under qemu-system-x86_64 (TCG, so the result does not depend
on this machine's unusual nested KVM) and must print exactly the lines of
tests/guest_expectations.py and exit with the expected status.  kvmlite's own
tests hold kvmlite to the same expectations, so a guest that passes here and
fails there points at kvmlite, not at the guest.

Also checked: builds are deterministic, the demo shipped in the package is
the one the sources produce, and the build script fails clearly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmlite.guests import DEMO_FINAL_LINE, DEMO_GUEST
from kvmlite.x86 import Rflags
from tests.guest_expectations import (
    EXPECTATIONS,
    GuestExpectation,
    build_guests,
    lcg,
    load_build_module,
    missing_build_tools,
    qemu_command,
)

logger = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
QEMU_TIMEOUT_S = 60.0
HALT_SETTLE_S = 0.3
"""After the demo's last line, how long to keep reading to prove nothing else follows."""
QMP_TIMEOUT_S = 10.0
DEMO_TOOLCHAIN = "GNU ld (GNU Binutils for Debian) 2.40"
"""The linker that produced kvmlite/guests/demo.elf; other linkers may lay bytes out differently."""

QEMU_EXPECTATIONS = [name for name, exp in EXPECTATIONS.items() if exp.qemu_bootable]

requires_qemu = pytest.mark.skipif(shutil.which(QEMU) is None, reason=f"{QEMU} is not installed")


@pytest.fixture(scope="session")
def built_guests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every guest, built once per session into a temporary directory (name -> image path)."""
    missing = missing_build_tools()
    if missing:
        pytest.skip(f"cannot build the guests, missing: {', '.join(missing)}")
    out = tmp_path_factory.mktemp("guests")
    return build_guests(out)


def image_for(exp: GuestExpectation, built: dict[str, Path]) -> Path:
    """The path of the image the QEMU reference run of ``exp`` boots."""
    return next(path for path in built.values() if path.name == exp.reference_image)


@dataclass
class QemuRun:
    """What a QEMU run left behind: its serial output and how it ended."""

    serial: str
    status: int | None
    """Process exit status, or None when the guest halted and QEMU had to be stopped."""
    registers: str = ""
    """'info registers' at the time of the stop (halted runs only)."""


def run_qemu(exp: GuestExpectation, image: Path) -> QemuRun:
    """Boot ``image`` under QEMU until it exits through the debug-exit port."""
    try:
        proc = subprocess.run(
            qemu_command(exp, image),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=QEMU_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if err.stdout else ""
        pytest.fail(f"{exp.guest} did not exit within {QEMU_TIMEOUT_S}s; serial so far:\n{out}")
    if proc.stderr.strip():
        logger.info("qemu stderr: %s", proc.stderr.decode(errors="replace"))
    return QemuRun(proc.stdout.decode(errors="replace"), proc.returncode)


def _qmp_command(
    sock: socket.socket, reader: Iterator[dict[str, object]], command: dict[str, object]
) -> object:
    """Send one QMP command and return its 'return' value, skipping asynchronous events."""
    sock.sendall(json.dumps(command).encode() + b"\n")
    for message in reader:
        if "return" in message:
            return message["return"]
        if "error" in message:
            raise AssertionError(f"QMP error for {command}: {message['error']}")
    raise AssertionError("QMP connection closed")


def _qmp_messages(sock: socket.socket) -> Iterator[dict[str, object]]:
    """Yield QMP messages (one JSON object per line) from ``sock``."""
    buffer = b""
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
        chunk = sock.recv(65536)
        if not chunk:
            return
        buffer += chunk


def _read_registers(qmp_path: str) -> str:
    """'info registers' of the (only) CPU, through QMP's human-monitor-command."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(QMP_TIMEOUT_S)
        sock.connect(qmp_path)
        reader = _qmp_messages(sock)
        next(reader)  # greeting
        _qmp_command(sock, reader, {"execute": "qmp_capabilities"})
        result = _qmp_command(
            sock,
            reader,
            {"execute": "human-monitor-command", "arguments": {"command-line": "info registers"}},
        )
    return str(result)


def run_qemu_until_halt(exp: GuestExpectation, image: Path, final_line: str) -> QemuRun:
    """Boot a guest that ends with cli; hlt: wait for its last line, read its registers, stop QEMU."""
    qmp_dir = tempfile.mkdtemp(prefix="kvmlite-qmp-")  # short path: unix sockets are length-limited
    qmp_path = os.path.join(qmp_dir, "qmp.sock")
    cmd = [*qemu_command(exp, image), "-qmp", f"unix:{qmp_path},server=on,wait=off"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    output = b""
    registers = ""
    try:
        deadline = time.monotonic() + QEMU_TIMEOUT_S
        settle_until: float | None = None
        while True:
            now = time.monotonic()
            if settle_until is not None and now >= settle_until:
                break
            if now >= deadline:
                pytest.fail(f"{exp.guest} did not print {final_line!r} in time; serial:\n{output.decode()}")
            limit = (settle_until if settle_until is not None else deadline) - now
            ready, _, _ = select.select([proc.stdout], [], [], limit)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    pytest.fail(
                        f"QEMU exited ({proc.wait()}) before the guest halted; serial:\n{output.decode()}"
                    )
                output += chunk
            if settle_until is None and (final_line + "\n").encode() in output:
                settle_until = time.monotonic() + HALT_SETTLE_S
        registers = _read_registers(qmp_path)
        still_running = proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(qmp_dir, ignore_errors=True)
    return QemuRun(output.decode(errors="replace"), None if still_running else proc.returncode, registers)


def assert_run_matches(exp: GuestExpectation, run: QemuRun) -> None:
    """The run printed exactly the expected lines and ended the expected way."""
    problems = exp.mismatches(run.serial)
    assert not problems, f"{exp.guest} under QEMU: {problems}\nfull serial output:\n{run.serial}"
    if exp.ends_with_halt:
        assert run.status is None, f"QEMU exited ({run.status}) instead of halting"
        assert "HLT=1" in run.registers, f"CPU is not halted:\n{run.registers}"
        flags = re.search(r"\b[ER]FL=([0-9a-fA-F]+)", run.registers)
        assert flags, f"no flags register in:\n{run.registers}"
        eflags = int(flags.group(1), 16)
        assert not eflags & Rflags.IF, f"halted with interrupts enabled (EFL={eflags:#x})"
    else:
        assert run.status == exp.exit_status, f"exit status {run.status}, expected {exp.exit_status}"


@requires_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("name", QEMU_EXPECTATIONS)
def test_guest_output_and_exit_status_under_qemu(name: str, built_guests: dict[str, Path]) -> None:
    exp = EXPECTATIONS[name]
    image = image_for(exp, built_guests)
    if exp.ends_with_halt:
        final_line = exp.lines[-1]
        assert isinstance(final_line, str), "a halting guest must end with a literal line to wait for"
        run = run_qemu_until_halt(exp, image, final_line)
    else:
        run = run_qemu(exp, image)
    assert_run_matches(exp, run)


@requires_qemu
@pytest.mark.qemu
def test_shipped_demo_passes_its_checks_under_qemu() -> None:
    exp = EXPECTATIONS["demo"]
    assert exp.lines[-1] == DEMO_FINAL_LINE
    assert_run_matches(exp, run_qemu_until_halt(exp, DEMO_GUEST, DEMO_FINAL_LINE))


def test_every_guest_has_an_expectation_and_every_expectation_a_guest() -> None:
    build = load_build_module()
    assert {exp.guest for exp in EXPECTATIONS.values()} | {"lm64-pvh"} == set(build.GUEST_NAMES)
    outputs = {spec.output for spec in build.GUESTS.values()}
    for exp in EXPECTATIONS.values():
        assert exp.image in outputs
        assert exp.reference_image in outputs


def test_builds_are_deterministic(built_guests: dict[str, Path], tmp_path: Path) -> None:
    again = build_guests(tmp_path)
    for name, path in built_guests.items():
        assert again[name].read_bytes() == path.read_bytes(), f"{name} differs between two builds"


def test_shipped_demo_is_the_build_of_demo_source(built_guests: dict[str, Path]) -> None:
    version = subprocess.run(["ld", "--version"], capture_output=True, text=True, check=False).stdout
    if not version.startswith(DEMO_TOOLCHAIN):
        pytest.skip(f"demo.elf was linked by {DEMO_TOOLCHAIN!r}, this machine has {version.splitlines()[:1]}")
    assert DEMO_GUEST.read_bytes() == built_guests["demo"].read_bytes(), (
        "kvmlite/guests/demo.elf is stale: run python3 guests/build.py --install-demo"
    )


def test_boot_sector_is_one_signed_sector(built_guests: dict[str, Path]) -> None:
    data = built_guests["realmode"].read_bytes()
    assert len(data) == 512
    assert data[510:] == b"\x55\xaa"


def test_aout_header_describes_the_flat_image(built_guests: dict[str, Path]) -> None:
    data = built_guests["aout"].read_bytes()
    words = [int.from_bytes(data[i : i + 4], "little") for i in range(0, 32, 4)]
    magic, flags, checksum, header_addr, load_addr, load_end, bss_end, entry = words
    assert magic == 0x1BADB002 and (magic + flags + checksum) & 0xFFFFFFFF == 0
    assert flags & (1 << 16)
    assert header_addr == load_addr == 0x100000
    assert load_end - load_addr == len(data)
    assert bss_end > load_end
    assert load_addr <= entry < load_end


def test_multiboot_images_are_elf32_and_lm64_is_elf64(built_guests: dict[str, Path]) -> None:
    elfclass = {name: path.read_bytes()[:5] for name, path in built_guests.items() if path.suffix == ".elf"}
    for name, ident in elfclass.items():
        expected = b"\x7fELF\x02" if name.startswith("lm64") else b"\x7fELF\x01"
        assert ident == expected, name


def test_cbench_expectation_matches_a_python_lcg() -> None:
    assert lcg(0) == 0
    assert lcg(1) == 1442695040888963407
    assert f"cbench: result={lcg(1000):#x}" in EXPECTATIONS["cbench"].lines


def test_mismatches_report_wrong_missing_and_extra_lines() -> None:
    exp = EXPECTATIONS["pm32"]
    good = (
        "pm32: multiboot magic ok\npm32: cr0.pe=1 cr0.pg=0\npm32: eflags.if=0\n"
        "pm32: mem_lower=639 KiB\npm32: mem_upper=129920 KiB\n"
        'pm32: cmdline="/x/pm32.elf foo=bar baz"\n'
        "pm32: mmap base=0x0 length=0x9fc00 type=1\npm32: mmap base=0x100000 length=0x7ee0000 type=1\n"
        "pm32: mmap entries=2\npm32: done\n"
    )
    assert exp.mismatches(good) == []
    assert exp.mismatches(good + "junk\n")
    assert exp.mismatches(good.replace("pm32: done\n", ""))
    assert exp.mismatches(good.replace("foo=bar", "foo=baz"))
    assert exp.mismatches(good.replace("pm32: mmap base=0x0 length=0x9fc00 type=1\n", "").replace(
        "pm32: mmap base=0x100000 length=0x7ee0000 type=1\n", ""))  # fmt: skip


def test_build_rejects_unknown_guest_name(tmp_path: Path) -> None:
    build = load_build_module()
    with pytest.raises(build.GuestBuildError, match="unknown guest"):
        build.build_guest("no-such-guest", tmp_path)
    assert build.main(["--out", str(tmp_path), "no-such-guest"]) == 1
