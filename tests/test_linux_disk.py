"""Linux on virtio-blk: an ext4 image from ``kvmlite mkdisk`` on ``root=/dev/vda`` (opt-in: slow here).

Run with::

    kvmlite fetch-assets --modules       # Debian's cloud kernel, its modules, a static busybox
    KVMLITE_LINUX_BOOT=1 KVMLITE_KERNEL=debian python3 -m pytest tests/test_linux_disk.py -v

(``KVMLITE_KERNEL=microvm``, the default where ``kvmlite build-kernel`` has
run, boots kvmlite's own kernel, which has virtio built in, in minutes
instead.)  Debian's kernel has virtio-pci, virtio-mmio and virtio-blk as
modules: the initramfs is built with ``--modules virtio_pci,virtio_mmio,virtio_blk``
and its /init loads them, then mounts ``root=/dev/vda`` on /mnt.  The guest
reads a file the host put in the image, writes one and syncs; after
``poweroff -f`` the host finds it in the image with ``debugfs``.  The second
disk is ``readonly=on``: Linux sees it read-only, a raw write to it fails,
and its image is byte-for-byte unchanged.  Both transports: virtio-pci and
virtio-mmio (``--virtio-transport mmio``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kvmlite.tools import initramfs, mkdisk
from tests.conftest import requires_kvm
from tests.linux_guests import (
    BOOT_TIMEOUT_S,
    COMMAND_TIMEOUT_S,
    ENABLED,
    PROMPT,
    Console,
    Linux,
    linux_for_test,
)

pytestmark = [
    requires_kvm,
    pytest.mark.skipif(not ENABLED, reason="slow Linux boot: set KVMLITE_LINUX_BOOT=1 to run it"),
    pytest.mark.skipif(shutil.which("debugfs") is None, reason="needs debugfs and mke2fs (e2fsprogs)"),
]
DEBIAN_MODULES = ["virtio_pci", "virtio_mmio", "virtio_blk"]
HOST_TEXT = "written by the host"
GUEST_TEXT = "written by the guest"


@pytest.fixture(scope="module")
def linux(tmp_path_factory: pytest.TempPathFactory) -> Linux:
    return linux_for_test(tmp_path_factory.mktemp("linux"), DEBIAN_MODULES)


def debugfs_cat(image: Path, path: str) -> str:
    proc = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, text=True)
    return proc.stdout


@pytest.mark.parametrize("transport", ["pci", "mmio"])
def test_linux_mounts_an_ext4_disk_writes_to_it_and_a_readonly_disk_refuses(
    transport: str, linux: Linux, tmp_path: Path
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "hello.txt").write_text(HOST_TEXT + "\n")
    disk, ro_disk = tmp_path / "disk.img", tmp_path / "ro.img"
    mkdisk.make_ext4(disk, 32, files)
    mkdisk.make_ext4(ro_disk, 8, files)
    ro_before = ro_disk.read_bytes()
    args = ["--kernel", str(linux.pvh), "--initrd", str(linux.initrd)]
    args += ["--cmdline", f"{linux.cmdline} root=/dev/vda", "--memory", "256", "--cpus", "1"]
    args += ["--disk", str(disk), "--disk", f"{ro_disk},readonly=on", "--virtio-transport", transport]
    console = Console(tmp_path / "kvmlite.log", *args)
    try:
        console.expect(b"/dev/vda mounted on /mnt (rw)", BOOT_TIMEOUT_S)
        console.expect(initramfs.READY_MARKER.encode(), COMMAND_TIMEOUT_S)
        console.expect(PROMPT, COMMAND_TIMEOUT_S)
        assert "/dev/vda /mnt ext4 rw" in console.run("cat /proc/mounts")
        assert HOST_TEXT in console.run("cat /mnt/hello.txt")
        console.run(f"echo '{GUEST_TEXT}' > /mnt/guest.txt && sync && echo synced")
        # the read-only disk: Linux knows it, and a raw write (the block layer lets it through to the
        # device) fails with an I/O error
        assert console.run("cat /sys/block/vdb/ro").split()[-1] == "1"
        answer = console.run("dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct; echo status=$?")
        assert "status=0" not in answer, answer
        assert console.proc.stdin is not None
        console.proc.stdin.write(b"poweroff -f\n")
        console.proc.stdin.flush()
        assert console.proc.wait(timeout=COMMAND_TIMEOUT_S * 5) == 0
    finally:
        console.close()
    assert debugfs_cat(disk, "/guest.txt") == GUEST_TEXT + "\n"
    assert debugfs_cat(disk, "/hello.txt") == HOST_TEXT + "\n"
    assert ro_disk.read_bytes() == ro_before
