"""``kvmlite build-kernel``: the config fragment, the cache naming, the build driver and its errors.

The real build (download, configure, ten minutes of make) is not run here; where one is cached,
its configuration is checked against the fragment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kvmlite.tools import build_kernel as BK

REQUIRED = [
    # what issue 12 asks the microVM kernel to carry, built in
    "CONFIG_64BIT", "CONFIG_PVH", "CONFIG_SMP", "CONFIG_ACPI", "CONFIG_SERIAL_8250_CONSOLE",
    "CONFIG_RTC_DRV_CMOS", "CONFIG_SERIO_I8042", "CONFIG_PCI", "CONFIG_PCI_MSI", "CONFIG_VIRTIO_PCI",
    "CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_BLK", "CONFIG_VIRTIO_NET", "CONFIG_VIRTIO_CONSOLE",
    "CONFIG_HW_RANDOM_VIRTIO", "CONFIG_VIRTIO_BALLOON", "CONFIG_EXT4_FS", "CONFIG_TMPFS",
    "CONFIG_DEVTMPFS", "CONFIG_UNIX", "CONFIG_INET", "CONFIG_KVM_GUEST", "CONFIG_PARAVIRT",
    "CONFIG_UNWINDER_FRAME_POINTER", "CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT", "CONFIG_IKCONFIG_PROC",
    "CONFIG_BLK_DEV_INITRD", "CONFIG_BINFMT_ELF", "CONFIG_BINFMT_SCRIPT",
]  # fmt: skip


def test_the_fragment_builds_in_everything_the_issue_lists() -> None:
    values = BK.parse_config(BK.FRAGMENT.read_text())
    assert [name for name in REQUIRED if values.get(name) != "y"] == []
    assert "m" not in values.values(), "built in, no modules"
    assert values.get("CONFIG_MODULES", "n") == "n"


def test_every_group_of_the_fragment_says_why_it_is_there() -> None:
    """Settings come in groups, each after a ``# ---`` comment; a lone setting with no reason is refused."""
    group_comment = False
    for number, line in enumerate(BK.FRAGMENT.read_text().splitlines(), 1):
        if not line.strip():
            group_comment = False
        elif line.startswith("# ---"):
            group_comment = True
        elif BK.parse_config(line):
            assert group_comment, f"microvm.config:{number}: {line!r} is not in a commented group"
        else:
            assert line.startswith("#"), f"microvm.config:{number}: {line!r} is neither setting nor comment"


def test_the_fragment_hash_names_the_kernel_so_a_changed_fragment_rebuilds(tmp_path: Path) -> None:
    fragment = tmp_path / "f.config"
    fragment.write_text("CONFIG_SMP=y\n")
    built = BK.kernel_paths(tmp_path, "6.1.1-1", BK.fragment_hash(fragment.read_text()))
    for path in (built.vmlinux, built.bzimage, built.config):
        path.write_bytes(b"x")
    found, reason = BK.find_microvm_kernel(tmp_path, fragment)
    assert found == built and reason == ""
    assert re.fullmatch(r"vmlinux-microvm-6\.1\.1-1-[0-9a-f]{12}", built.vmlinux.name)
    fragment.write_text("# SMP, because\nCONFIG_SMP=y\n")  # a comment changes nothing
    assert BK.find_microvm_kernel(tmp_path, fragment)[0] == built
    fragment.write_text("CONFIG_SMP=y\nCONFIG_PCI=y\n")
    found, reason = BK.find_microvm_kernel(tmp_path, fragment)
    assert found is None
    assert "kvmlite build-kernel" in reason and str(tmp_path) in reason


def test_settings_kconfig_refused_are_named() -> None:
    fragment = BK.parse_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=64\nCONFIG_D=y\n")
    config = BK.parse_config("CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=64\n# CONFIG_D is not set\n")
    assert BK.unmet_settings(fragment, config) == ["CONFIG_B=n (got y)", "CONFIG_D=y (got n)"]


def test_without_build_tools_the_command_names_the_debian_packages(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path / "empty"), KVMLITE_ASSETS=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "kvmlite", "build-kernel"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for package in ("make", "gcc", "bc", "bison", "flex"):
        assert f" {package}" in lines[0]
    assert "apt-get install" in lines[0]


def _fake_tree(tmp_path: Path, recipe: str) -> Path:
    tree = tmp_path / "linux"
    tree.mkdir()
    (tree / "Makefile").write_text(f"bzImage vmlinux:\n\t{recipe}\n")
    return tree


def test_make_output_goes_to_the_build_log(tmp_path: Path) -> None:
    tree = _fake_tree(tmp_path, "@printf '  CC      kernel/$@.o\\n'")
    BK.make_images(tree, jobs=1, progress=False)
    log = (tree / "build.log").read_text()
    assert "CC      kernel/bzImage.o" in log and "CC      kernel/vmlinux.o" in log


def test_a_failed_make_says_so_with_the_end_of_its_log(tmp_path: Path) -> None:
    tree = _fake_tree(tmp_path, "@echo 'error: something broke'; exit 3")
    with pytest.raises(BK.BuildKernelError, match="something broke") as err:
        BK.make_images(tree, jobs=1, progress=False)
    assert "build.log" in str(err.value)


def test_the_cached_kernel_has_every_value_of_the_fragment() -> None:
    found, reason = BK.find_microvm_kernel()
    if found is None:
        pytest.skip(reason)
    config = BK.parse_config(found.config.read_text())
    assert BK.unmet_settings(BK.parse_config(BK.FRAGMENT.read_text()), config) == []
    assert found.vmlinux.read_bytes()[:4] == b"\x7fELF"
    assert found.bzimage.read_bytes()[0x202:0x206] == b"HdrS"
