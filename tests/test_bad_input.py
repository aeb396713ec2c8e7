"""Bad input ends in one sentence on stderr and status 2, never a traceback (issue 17, findings 2
and 6): each case runs ``python3 -m kvmlite`` as a user would."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kvmlite.errors import STATUS_BAD_INPUT, ElfError, GuestMemoryError
from kvmlite.loaders import detect_format
from kvmlite.loaders.pvh import pvh_entry
from kvmlite.memory import GuestMemory

PT_NOTE = 4


def kvmlite(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kvmlite", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def assert_one_sentence(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert done.returncode == STATUS_BAD_INPUT, done.stderr
    for word in words:
        assert word in lines[0]


def elf32_with_note_past_the_end() -> bytes:
    """An ELF32 executable whose only program header, a PT_NOTE, points 64 KiB past its end."""
    ident = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, 0x10_0000, 52, 0, 0, 52, 32, 1, 0, 0, 0)
    note = struct.pack("<IIIIIIII", PT_NOTE, 0x1_0000, 0, 0, 0x100, 0x100, 4, 4)
    return header + note


def test_a_note_past_the_end_of_the_file_is_not_a_pvh_kernel(tmp_path: Path) -> None:
    data = elf32_with_note_past_the_end()
    with pytest.raises(ElfError, match="beyond the end of the file"):
        pvh_entry(data)
    assert detect_format(data) == "unknown"
    kernel = tmp_path / "note.elf"
    kernel.write_bytes(data)
    assert_one_sentence(kvmlite("run", "--backend", "emu", "--serial", "none", "--kernel", str(kernel)))


def test_a_command_line_that_is_not_utf8_is_refused() -> None:
    cmdline = b"console=ttyS0 \xff\xfe".decode(errors="surrogateescape")
    assert_one_sentence(kvmlite("run", "--backend", "emu", "--serial", "none", "--cmdline", cmdline), "UTF-8")


@pytest.mark.parametrize("option", ["--kernel", "--initrd"])
def test_a_huge_sparse_kernel_or_initrd_is_refused_before_it_is_read(tmp_path: Path, option: str) -> None:
    huge = tmp_path / "huge.img"
    with huge.open("wb") as f:
        f.truncate(100 << 30)  # 100 GiB, no blocks
    done = kvmlite("run", "--backend", "emu", "--serial", "none", option, str(huge))
    assert_one_sentence(done, str(huge), "larger than")


def _host_can_refuse(size: int) -> bool:
    """Whether mmap of ``size`` bytes fails here (overcommit heuristic or strict, little memory)."""
    try:
        mode = int(Path("/proc/sys/vm/overcommit_memory").read_text())
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        total = (int(meminfo["MemTotal"].split()[0]) + int(meminfo["SwapTotal"].split()[0])) * 1024
    except (OSError, ValueError, KeyError):
        return False
    return mode != 1 and total < size


GUEST_MAX = 65536 << 20  # the most --memory accepts


@pytest.mark.skipif(not _host_can_refuse(GUEST_MAX), reason="this host could map 64 GiB of guest RAM")
def test_more_memory_than_the_host_has_is_one_sentence() -> None:
    with pytest.raises(GuestMemoryError, match=r"cannot map \d+ MiB of guest RAM"):
        GuestMemory.for_pc(GUEST_MAX)
    done = kvmlite("run", "--backend", "emu", "--serial", "none", "--memory", str(GUEST_MAX >> 20))
    assert_one_sentence(done, "guest RAM", "available")


def test_initramfs_from_dev_zero_is_bounded() -> None:
    done = kvmlite("initramfs", "--busybox", "/dev/zero", "-o", "/dev/null")
    assert_one_sentence(done, "busybox /dev/zero", "larger than")


def test_extract_vmlinux_from_dev_zero_is_bounded() -> None:
    done = kvmlite("extract-vmlinux", "/dev/zero", "-o", "/dev/null")
    assert_one_sentence(done, "larger than")


def test_tools_exit_2_on_bad_input(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a kernel")
    assert_one_sentence(kvmlite("extract-vmlinux", str(garbage), "-o", str(tmp_path / "out")))
    assert_one_sentence(kvmlite("initramfs", "--busybox", str(garbage), "-o", str(tmp_path / "out")), "ELF")
    assert_one_sentence(kvmlite("initramfs", "--busybox", str(tmp_path / "absent"), "-o", "/dev/null"))
