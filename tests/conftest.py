"""Shared fixtures: KVM availability, assembling snippets with GNU as, and the suite-wide check
that no kvmlite subprocess prints a Python traceback (:func:`_no_kvmlite_traceback`): on a captured
stderr, and on a stderr that goes to a file. Only a stderr sent to /dev/null goes unseen."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from kvmlite.kvm.system import Kvm

#: The fuzz tests' budget (tests/test_fuzz.py): the same examples on every run, a fixed number.
settings.register_profile("fuzz", derandomize=True, max_examples=120, deadline=None, database=None)

KVM_OK, KVM_REASON = Kvm.available()
requires_kvm = pytest.mark.skipif(not KVM_OK, reason=f"needs a usable /dev/kvm: {KVM_REASON}")
HAVE_AS = shutil.which("as") is not None and shutil.which("objcopy") is not None
requires_as = pytest.mark.skipif(
    not HAVE_AS, reason="needs GNU as and objcopy (binutils) to assemble test guests"
)


def assemble(source: str, bits: int, tmp: Path, org: int = 0) -> bytes:
    """Assemble a snippet with GNU as (Intel syntax) into flat bytes linked at ``org``."""
    src = tmp / "snippet.S"
    obj = tmp / "snippet.o"
    out = tmp / "snippet.bin"
    src.write_text(f".intel_syntax noprefix\n.code{bits}\n{source}\n")
    arch = {16: "--32", 32: "--32", 64: "--64"}[bits]
    subprocess.run(["as", arch, "-o", str(obj), str(src)], check=True, capture_output=True)
    linked = tmp / "snippet.elf"
    emu = "elf_x86_64" if bits == 64 else "elf_i386"
    subprocess.run(
        ["ld", "-m", emu, "-Ttext", hex(org), "--oformat", "binary", "-o", str(linked), str(obj)],
        check=True,
        capture_output=True,
    )
    out.write_bytes(linked.read_bytes())
    return out.read_bytes()


@pytest.fixture
def asm(tmp_path: Path):  # type: ignore[no-untyped-def]
    if not HAVE_AS:
        pytest.skip("needs GNU as and objcopy (binutils) to assemble test guests")

    def _asm(source: str, bits: int = 64, org: int = 0) -> bytes:
        return assemble(source, bits, tmp_path, org)

    return _asm


#: The multiboot v1 header (no flags) that build_multiboot's linker script puts first; guests start with it.
MULTIBOOT_HEADER = '.section .multiboot, "a"\n.align 4\n.long 0x1BADB002, 0, -0x1BADB002\n'

MULTIBOOT_LD = (
    "ENTRY(_start)\nSECTIONS { . = 0x100000; .text : { *(.multiboot) *(.text) } .bss : { *(.bss) } }\n"
)


def build_multiboot(tmp: Path, name: str, source: str) -> Path:
    """Assemble (AT&T syntax, 32-bit) and link a small multiboot ELF32 test kernel at 1 MiB."""
    if not HAVE_AS or shutil.which("ld") is None:
        pytest.skip("needs GNU as and ld to build test guests")
    src, obj, elf, lds = (tmp / f"{name}{ext}" for ext in (".S", ".o", ".elf", ".ld"))
    src.write_text(source)
    lds.write_text(MULTIBOOT_LD)
    subprocess.run(["as", "--32", "-o", str(obj), str(src)], check=True, capture_output=True)
    subprocess.run(
        [
            "ld",
            "-m",
            "elf_i386",
            "-T",
            str(lds),
            "--build-id=none",
            "--no-warn-rwx-segments",
            "-o",
            str(elf),
            str(obj),
        ],
        check=True,
        capture_output=True,
    )
    return elf


TRACEBACK = "Traceback (most recent call last)"


def _is_kvmlite(cmd: object) -> bool:
    args = [cmd] if isinstance(cmd, (str, bytes, os.PathLike)) else cmd
    return any("kvmlite" in os.fsdecode(arg) for arg in args)  # type: ignore[union-attr]


def assert_no_traceback(cmd: object, stderr: str | bytes | None) -> None:
    """A kvmlite process must end with one sentence, never a Python traceback (issue 17)."""
    if stderr is None or not _is_kvmlite(cmd):
        return
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    if TRACEBACK in text:
        pytest.fail(f"kvmlite printed a Python traceback on stderr:\n{text[text.index(TRACEBACK) :][-3000:]}")


_real_run = subprocess.run
_real_communicate = subprocess.Popen.communicate


def _checked_run(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    result = _real_run(*args, **kwargs)
    assert_no_traceback(result.args, result.stderr)
    return result


def _checked_communicate(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    out, err = _real_communicate(self, *args, **kwargs)
    assert_no_traceback(self.args, err)
    return out, err


_real_popen_init = subprocess.Popen.__init__
#: stderr files of the kvmlite processes the running test started: (args, the file opened for reading,
#: its size when the process started); checked when the test ends.
REDIRECTED: list[tuple[object, int, int]] = []
#: At most this much of a redirected stderr is read (its end: a traceback is what a process prints last).
REDIRECTED_TAIL = 1 << 20


def _stderr_file(kwargs: dict[str, Any]) -> int | None:
    """The descriptor a child's stderr goes to when that is a regular file (not a pipe, not /dev/null)."""
    target = kwargs.get("stderr")
    if target == subprocess.STDOUT:
        target = kwargs.get("stdout")
    if target in (subprocess.PIPE, subprocess.DEVNULL, subprocess.STDOUT):
        return None
    try:
        fd = 2 if target is None else target if isinstance(target, int) else target.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (OSError, AttributeError, ValueError):
        return None


def _tracking_init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
    fd = _stderr_file(kwargs) if not rest and _is_kvmlite(args) else None
    if fd is not None:
        # opened again for reading (the child's may be write-only); /proc reaches a deleted file too
        reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        REDIRECTED.append((args, reader, os.fstat(fd).st_size))
    _real_popen_init(self, args, *rest, **kwargs)


def check_redirected() -> None:
    """What kvmlite processes wrote to stderr files (a test's own, an inherited one) since they started."""
    tracked = REDIRECTED[:]
    REDIRECTED.clear()
    for args, fd, start in tracked:
        try:
            end = os.fstat(fd).st_size
            text = os.pread(fd, min(end - start, REDIRECTED_TAIL), max(start, end - REDIRECTED_TAIL))
        finally:
            os.close(fd)
        assert_no_traceback(args, text)


@pytest.fixture(autouse=True)
def _no_kvmlite_traceback(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test: a kvmlite subprocess whose stderr is captured (``subprocess.run``,
    ``Popen.communicate``) fails the test if that stderr holds a Python traceback; one whose stderr
    goes to a file (the test's, or pytest's own capture inherited) fails it when the test ends."""
    monkeypatch.setattr(subprocess, "run", _checked_run)
    monkeypatch.setattr(subprocess.Popen, "communicate", _checked_communicate)
    monkeypatch.setattr(subprocess.Popen, "__init__", _tracking_init)
    yield
    check_redirected()


def kvmlite_run(*args: str) -> subprocess.CompletedProcess[str]:
    """``kvmlite run ARGS --serial none`` in a subprocess, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "kvmlite", "run", *args, "--serial", "none"],
        capture_output=True,
        text=True,
        timeout=120,
    )
