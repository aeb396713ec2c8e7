"""A Linux initramfs's compressed archives unpacked on the host where ring 0 is emulated (loaders.initrd)."""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmlite.loaders import bootparams as B
from kvmlite.loaders import bzimage
from kvmlite.loaders.initrd import decompress_initramfs
from kvmlite.tools.initramfs import Entry, write_newc
from kvmlite.vmm import host_quirks
from kvmlite.vmm.machine import Machine, MachineConfig
from tests.conftest import requires_kvm
from tests.images import make_bzimage, read_newc

MAIN = write_newc({"init": Entry(0o100755, b"#!/bin/sh\necho hello\n" * 300), "bin": Entry(0o40755)})
#: Debian's first segment: CPU microcode in an uncompressed archive of its own.
EARLY = write_newc({"kernel/x86/microcode/AuthenticAMD.bin": Entry(0o100644, b"\x01" * 999)})
LIMIT = 1 << 30


def test_a_gzip_initramfs_becomes_its_archive() -> None:
    result = decompress_initramfs(gzip.compress(MAIN), LIMIT)
    assert result.compressed == ("gzip",)
    assert result.data == MAIN
    assert read_newc(result.data)["init"][1].startswith(b"#!/bin/sh")


@pytest.mark.parametrize(
    ("name", "compress"),
    [
        ("xz", lzma.compress),
        ("lzma", lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE)),
        ("bzip2", bz2.compress),
    ],
)
def test_the_other_formats_python_reads(name: str, compress: Callable[[bytes], bytes]) -> None:
    result = decompress_initramfs(compress(MAIN), LIMIT)
    assert result.compressed == (name,) and result.data == MAIN


def test_debians_layout_an_uncompressed_archive_then_a_compressed_one() -> None:
    result = decompress_initramfs(EARLY + gzip.compress(MAIN), LIMIT)
    assert result.compressed == ("gzip",)
    assert result.data == EARLY + MAIN  # EARLY ends 4-aligned: MAIN follows it directly


def test_an_archive_after_a_compressed_one_keeps_the_alignment_the_kernel_checks() -> None:
    first = gzip.compress(MAIN)
    padding = b"\0" * (-len(first) % 4 + 4)
    data = first + padding + EARLY  # EARLY at a 4-aligned offset, as the kernel wants it
    result = decompress_initramfs(data, LIMIT)
    at = result.data.index(EARLY[:6], len(MAIN))
    assert result.data[:len(MAIN)] == MAIN and result.data[at:] == EARLY
    assert at % 4 == 0 and not result.data[len(MAIN) : at].strip(b"\0")


def test_several_compressed_segments_and_members() -> None:
    data = gzip.compress(MAIN) + gzip.compress(EARLY) + b"\0" * 3 + lzma.compress(MAIN)
    result = decompress_initramfs(data, LIMIT)
    assert result.compressed == ("gzip", "gzip", "xz")
    assert result.data.replace(b"\0" * 4, b"").count(b"TRAILER!!!") == 3
    assert result.data.startswith(MAIN + EARLY)


def test_what_it_cannot_read_stays_as_it_was_for_the_kernel() -> None:
    zstd = b"\x28\xb5\x2f\xfd" + b"\x11" * 64  # zstd's magic: not in Python 3.11's standard library
    compressed = gzip.compress(MAIN)
    for data in (
        zstd,
        compressed[:-12],  # truncated
        compressed[:40] + bytes(b ^ 0x55 for b in compressed[40:80]) + compressed[80:],  # corrupt
        gzip.compress(b"an ext2 image, not a cpio archive" * 10),  # an old-style initrd
        b"",
    ):
        result = decompress_initramfs(data, LIMIT)
        assert not result.changed and result.data == data


def test_the_segments_before_an_unreadable_one_are_unpacked_and_the_rest_kept() -> None:
    zstd = b"\x28\xb5\x2f\xfd" + b"\x11" * 64
    first = gzip.compress(MAIN)
    data = first + b"\0" * (-len(first) % 4) + zstd
    result = decompress_initramfs(data, LIMIT)
    assert result.compressed == ("gzip",)
    assert result.data.startswith(MAIN) and result.data.endswith(zstd)
    assert (len(result.data) - len(zstd)) % 4 == (len(data) - len(zstd)) % 4


def test_a_result_past_the_limit_is_not_made() -> None:
    bomb = gzip.compress(write_newc({"zeros": Entry(0o100644, bytes(4 << 20))}))
    assert len(bomb) < 8192
    result = decompress_initramfs(bomb, 1 << 20)
    assert not result.changed and result.data == bomb


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.integers(0, 3), st.integers(0, 300))
def test_any_input_gives_an_initramfs_not_an_exception(noise: bytes, where: int, cut: int) -> None:
    pieces = [gzip.compress(MAIN)[: len(gzip.compress(MAIN)) - cut], EARLY, noise, zlib.compress(noise)]
    data = b"".join(pieces[where:] + pieces[:where])
    result = decompress_initramfs(data, LIMIT)
    assert result.changed or result.data == data
    assert len(result.data) <= max(LIMIT, len(data))


@requires_kvm
@pytest.mark.parametrize(("ns", "workarounds", "unpacked"), [
    (800, "auto", True), (800, "boot-speed", True), (800, "off", False), (800, "clearcpuid", False),
    (2, "auto", False),  # ring 0 on the CPU: the kernel inflates in no time
])  # fmt: skip
def test_the_machine_gives_linux_its_initramfs_unpacked_where_ring0_is_emulated(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    ns: int,
    workarounds: str,
    unpacked: bool,
) -> None:
    monkeypatch.setattr(host_quirks, "host_faults_avx_at_cpl0", lambda new_vm: False)
    monkeypatch.setattr(host_quirks, "host_ring0_ns_per_instruction", lambda new_vm: ns)
    kernel, initrd = tmp_path / "bzImage", tmp_path / "initrd.gz"
    kernel.write_bytes(make_bzimage())
    initrd.write_bytes(EARLY + gzip.compress(MAIN))
    config = MachineConfig(kernel=kernel, initrds=[initrd], backend="kvm", memory_mib=64,
                           host_workarounds=workarounds)  # fmt: skip
    machine = Machine(config)
    try:
        with caplog.at_level(logging.WARNING, logger="kvmlite.vmm.host_quirks"):
            machine.load()
        bp = B.BootParams.from_buffer_copy(machine.memory.read(bzimage.ZERO_PAGE_ADDR, B.ZERO_PAGE_SIZE))
        given_to_linux = machine.memory.read(bp.hdr.ramdisk_image, bp.hdr.ramdisk_size)
    finally:
        machine.close()
    assert given_to_linux == (EARLY + MAIN if unpacked else initrd.read_bytes())
    said = [r.getMessage() for r in caplog.records if "unpacked the initramfs" in r.getMessage()]
    assert len(said) == unpacked and all("gzip archive on the host" in line for line in said)
