"""extract_vmlinux on synthetic bzImages for every compression, and on a real Debian kernel when cached."""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from kvmlite.errors import BzImageError
from kvmlite.loaders.elf import EM_X86_64, parse_elf
from kvmlite.tools import assets, extract_vmlinux
from kvmlite.tools.extract_vmlinux import extract_vmlinux as extract
from tests.images import STUB, image_with_payload, make_bzimage

FAKE_VMLINUX = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 200


def _tool(argv: list[str], data: bytes) -> bytes:
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


COMPRESSORS = {
    "gzip": lambda d: gzip.compress(d, mtime=0),
    "xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
    "bzip2": bz2.compress,
    "zstd": lambda d: _tool(["zstd", "-q", "-c"], d),
    "lz4": lambda d: _tool(["lz4", "-q", "-l", "-c"], d),  # legacy format, as the kernel build uses
}
NEEDS_COMMAND = {"zstd": "zstd", "lz4": "lz4"}


@pytest.mark.parametrize("method", sorted(COMPRESSORS))
def test_payload_named_by_the_header_is_decompressed(method: str) -> None:
    command = NEEDS_COMMAND.get(method)
    if command and shutil.which(command) is None:
        pytest.skip(f"the {command} command is not installed")
    compressed = COMPRESSORS[method](FAKE_VMLINUX)
    size = None if method == "gzip" else len(FAKE_VMLINUX)
    assert extract(image_with_payload(compressed, size_append=size)) == FAKE_VMLINUX


@pytest.mark.parametrize("method", sorted(COMPRESSORS))
def test_a_compression_bomb_is_refused(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compression bomb: refused once the output passes MAX_VMLINUX, not decompressed whole."""
    command = NEEDS_COMMAND.get(method)
    if command and shutil.which(command) is None:
        pytest.skip(f"the {command} command is not installed")
    monkeypatch.setattr(extract_vmlinux, "MAX_VMLINUX", len(FAKE_VMLINUX) - 1)
    compressed = COMPRESSORS[method](FAKE_VMLINUX)
    size = None if method == "gzip" else len(FAKE_VMLINUX)
    with pytest.raises(BzImageError, match="decompresses to more than"):
        extract(image_with_payload(compressed, size_append=size))
    monkeypatch.setattr(extract_vmlinux, "MAX_VMLINUX", len(FAKE_VMLINUX))
    assert extract(image_with_payload(compressed, size_append=size)) == FAKE_VMLINUX


def test_a_decompressing_command_that_hangs_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extract_vmlinux, "TOOL_TIMEOUT", 0.2)
    with pytest.raises(BzImageError, match=r"did not decompress the zstd payload in 0\.2 s"):
        extract_vmlinux._run_tool(["sleep", "30"], b"", "zstd")


def test_old_image_without_payload_fields_is_scanned() -> None:
    decoy = b"\x1f\x8b\x08" + b"not gzip at all"
    kernel = STUB + decoy + gzip.compress(FAKE_VMLINUX) + bytes(32)
    image = make_bzimage(kernel, version=0x0207, xloadflags=0)
    assert extract(image) == FAKE_VMLINUX


def test_scan_without_any_payload_says_so() -> None:
    with pytest.raises(BzImageError, match="no compressed ELF kernel found"):
        extract(make_bzimage(b"\x90" * 4096, version=0x0207, xloadflags=0))


def test_payload_that_is_not_elf_is_rejected() -> None:
    image = image_with_payload(gzip.compress(b"MZ not an elf"), size_append=None)
    with pytest.raises(BzImageError, match="is not an ELF file"):
        extract(image)


def test_payload_running_past_the_file_is_rejected() -> None:
    image = make_bzimage(STUB + b"\x1f\x8b\x08", payload=(len(STUB), 10_000))
    with pytest.raises(BzImageError, match="runs past the end"):
        extract(image)


def test_unknown_compression_is_named() -> None:
    image = make_bzimage(STUB + b"ABCDEFGH" * 8, payload=(len(STUB), 64))
    with pytest.raises(BzImageError, match="no compression kvmlite knows"):
        extract(image)


def test_corrupt_payload_is_a_clear_error() -> None:
    compressed = bytearray(lzma.compress(FAKE_VMLINUX, format=lzma.FORMAT_XZ))
    compressed[40:60] = b"\xff" * 20
    with pytest.raises(BzImageError, match="the xz payload does not decompress"):
        extract(image_with_payload(bytes(compressed), size_append=len(FAKE_VMLINUX)))


def test_size_trailer_mismatch_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    image = image_with_payload(bz2.compress(FAKE_VMLINUX), size_append=len(FAKE_VMLINUX) + 1)
    with caplog.at_level(logging.WARNING):
        assert extract(image) == FAKE_VMLINUX
    assert "may be damaged" in caplog.text


def test_missing_zstd_support_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extract_vmlinux, "_optional_module", lambda name: None)
    monkeypatch.setattr(extract_vmlinux.shutil, "which", lambda name: None)
    image = image_with_payload(b"\x28\xb5\x2f\xfd" + bytes(32), size_append=0)
    with pytest.raises(BzImageError, match="install the Python package 'zstandard' or the 'zstd' command"):
        extract(image)


def test_elf_input_is_returned_unchanged() -> None:
    assert extract(FAKE_VMLINUX) == FAKE_VMLINUX


def test_not_a_kernel_is_a_bzimage_error() -> None:
    with pytest.raises(BzImageError, match="no boot flag"):
        extract(bytes(4096))


def test_main_writes_the_vmlinux_and_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, out = tmp_path / "vmlinuz", tmp_path / "vmlinux"
    src.write_bytes(image_with_payload(gzip.compress(FAKE_VMLINUX), size_append=None))
    assert extract_vmlinux.main([str(src), "-o", str(out)]) == 0
    assert out.read_bytes() == FAKE_VMLINUX
    src.write_bytes(b"garbage")
    assert extract_vmlinux.main([str(src), "-o", str(out)]) == 2
    assert "too short" in capsys.readouterr().err
    assert extract_vmlinux.main([str(tmp_path / "absent"), "-o", str(out)]) == 2


FOUND, MISSING = assets.find_assets()


@pytest.mark.skipif(FOUND is None, reason=f"no cached Linux kernel: {MISSING}")
def test_debian_kernel_yields_an_x86_64_vmlinux_with_a_pvh_note() -> None:
    assert FOUND is not None
    vmlinux = extract(FOUND[0].read_bytes())
    elf = parse_elf(vmlinux)
    assert elf.bits == 64 and elf.machine == EM_X86_64
    assert any(name == b"Xen" and kind == 18 for name, kind, _ in elf.notes(vmlinux))
