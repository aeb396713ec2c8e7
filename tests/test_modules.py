"""Kernel modules for the initramfs (modules.dep, modinfo, decompression) and ``kvmlite mkdisk``."""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kvmlite.tools import assets, initramfs, mkdisk, modules
from kvmlite.tools.modules import ModulesError
from tests.images import FAKE_ELF, read_newc


def fake_module(depends: str, name: str = "m") -> bytes:
    """A minimal ELF64 relocatable with a .modinfo section, as the kernel's modpost writes it."""
    modinfo = f"license=GPL\0depends={depends}\0name={name}\0".encode()
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    data_off = 64
    shstr_off = data_off + len(modinfo)
    shoff = (shstr_off + len(shstrtab) + 7) & ~7
    header = bytearray(64)
    header[:16] = b"\x7fELF\x02\x01\x01" + bytes(9)
    struct.pack_into("<HHIQQQIHHHHHH", header, 16, 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    sections = [
        bytes(64),
        struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, data_off, len(modinfo), 0, 0, 1, 0),
        struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, shstr_off, len(shstrtab), 0, 0, 1, 0),
    ]
    body = bytes(header) + modinfo + shstrtab
    return body.ljust(shoff, b"\0") + b"".join(sections)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A modules tree like Debian's: virtio_blk needs virtio_ring and virtio; .xz and .gz; ext4 built in."""
    root = tmp_path / "lib/modules/6.1.0-test"
    (root / "kernel/drivers/virtio").mkdir(parents=True)
    (root / "kernel/drivers/block").mkdir(parents=True)
    (root / "kernel/drivers/virtio/virtio.ko").write_bytes(fake_module("", "virtio"))
    (root / "kernel/drivers/virtio/virtio_ring.ko.xz").write_bytes(lzma.compress(fake_module("virtio")))
    (root / "kernel/drivers/block/virtio_blk.ko.gz").write_bytes(
        gzip.compress(fake_module("virtio_ring,virtio"))
    )
    (root / "kernel/drivers/virtio/virtio-pci.ko").write_bytes(fake_module("virtio,virtio_ring"))
    (root / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    return root


def test_modinfo_reads_the_depends_field_of_a_module() -> None:
    assert modules.modinfo(fake_module("a,b"))["depends"] == ["a,b"]


def test_modules_dep_is_written_from_the_modules_own_dependencies(tree: Path) -> None:
    modules.write_modules_dep(tree)
    deps = modules.read_modules_dep(tree)
    assert deps["kernel/drivers/block/virtio_blk.ko.gz"] == [
        "kernel/drivers/virtio/virtio_ring.ko.xz",
        "kernel/drivers/virtio/virtio.ko",
    ]
    assert deps["kernel/drivers/virtio/virtio.ko"] == []


def test_resolve_puts_dependencies_first_each_once_and_skips_builtins(tree: Path) -> None:
    modules.write_modules_dep(tree)
    order = modules.resolve(tree, ["virtio-pci", "virtio_blk", "ext4"])
    assert [modules.module_name(p) for p in order] == ["virtio", "virtio_ring", "virtio_pci", "virtio_blk"]


def test_an_unknown_module_and_a_dependency_loop_are_clear_errors(tree: Path) -> None:
    modules.write_modules_dep(tree)
    with pytest.raises(ModulesError, match="no module 'nosuch'"):
        modules.resolve(tree, ["nosuch"])
    (tree / "modules.dep").write_text("a.ko: b.ko\nb.ko: a.ko\n")
    with pytest.raises(ModulesError, match="loop"):
        modules.resolve(tree, ["a"])
    with pytest.raises(ModulesError, match="cannot read"):
        modules.resolve(tree.parent, ["a"])


def test_compressed_modules_are_stored_decompressed_with_the_load_list(tree: Path, tmp_path: Path) -> None:
    modules.write_modules_dep(tree)
    busybox = tmp_path / "busybox"
    busybox.write_bytes(FAKE_ELF)
    archive = initramfs.build_initramfs(
        busybox, applets=["sh"], compress=False, module_names=["virtio_blk"], modules_dir=tree
    )
    members = read_newc(archive)
    assert members["etc/kvmlite-modules"][1] == b"virtio.ko\nvirtio_ring.ko\nvirtio_blk.ko\n"
    assert members["lib/modules/virtio_ring.ko"][1] == fake_module("virtio")
    assert members["lib/modules/virtio_blk.ko"][1] == fake_module("virtio_ring,virtio")
    init = members["init"][1].decode()
    assert "insmod /lib/modules/$m" in init and "root=*" in init


def test_initramfs_cli_without_a_modules_tree_says_where_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVMLITE_ASSETS", str(tmp_path))
    busybox = tmp_path / "busybox"
    busybox.write_bytes(FAKE_ELF)
    args = ["initramfs", "--busybox", str(busybox), "--modules", "x", "-o", str(tmp_path / "out")]
    proc = subprocess.run(
        [sys.executable, "-m", "kvmlite", *args],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "fetch-assets --modules" in proc.stderr and "Traceback" not in proc.stderr


REAL_TREE, NO_TREE = assets.find_modules()


@pytest.mark.skipif(REAL_TREE is None, reason=f"no cached kernel modules: {NO_TREE}")
def test_debian_virtio_modules_resolve_in_load_order() -> None:
    assert REAL_TREE is not None
    order = [modules.module_name(p) for p in modules.resolve(REAL_TREE, ["virtio_pci", "virtio_blk", "ext4"])]
    assert order.index("virtio") < order.index("virtio_pci") and order.index("virtio_ring") < order.index(
        "virtio_blk"
    )
    assert "virtio_pci_modern_dev" in order and "ext4" not in order  # built into the cloud kernel
    for path in modules.resolve(REAL_TREE, ["virtio_blk"]):
        assert modules.read_module(REAL_TREE, path)[:4] == b"\x7fELF"


# --- kvmlite mkdisk ---------------------------------------------------------------------------------

needs_e2fsprogs = pytest.mark.skipif(
    shutil.which("debugfs") is None or shutil.which("mke2fs") is None, reason="needs e2fsprogs"
)


@needs_e2fsprogs
def test_mkdisk_makes_an_ext4_image_holding_the_directory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "motd").write_text("hello from mkdisk\n")
    image = tmp_path / "disk.img"
    proc = subprocess.run(
        [sys.executable, "-m", "kvmlite", "mkdisk", "--from", str(src), "--size", "16M", "-o", str(image)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert image.stat().st_size == 16 << 20
    assert image.read_bytes()[0x438:0x43A] == b"\x53\xef"  # the ext2/3/4 superblock magic
    cat = subprocess.run(["debugfs", "-R", "cat /etc/motd", str(image)], capture_output=True, text=True)
    assert cat.stdout == "hello from mkdisk\n"
    stats = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True).stdout
    assert "extent" in stats and "kvmlite" in stats  # ext4 features, the default label


@needs_e2fsprogs
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "1M"], "too small"),
        (["--size", "lots"], "not a size"),
        (["--size", "8M", "--from", "/nonexistent"], "not a directory"),
    ],
)
def test_mkdisk_bad_input_is_one_sentence(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kvmlite", "mkdisk", *args, "-o", str(tmp_path / "x.img")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_mkdisk_without_mke2fs_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mkdisk.shutil, "which", lambda name: None)
    monkeypatch.setattr(mkdisk.os, "access", lambda path, mode: False)
    with pytest.raises(mkdisk.MkdiskError, match="e2fsprogs"):
        mkdisk.make_ext4(tmp_path / "x.img", 8)
