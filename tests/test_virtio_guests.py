"""The bare-metal virtio guests (guests/virtio/): their own driver, under kvmlite on both backends and QEMU.

Each guest prints what it found and did in a form that does not depend on the VMM; kvmlite
must print exactly what QEMU prints with the same device, and leave the same bytes behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.guest_expectations import debug_exit_status
from tests.images import DISK_SECTORS
from tests.images import make_disk_image as make_image
from tests.virtio_runs import build, kvmlite_run, qemu_run, requires_qemu, skip_without_kvm

SERIAL = "vblk-serial-01"
EXPECTED = [
    "vblk: found 1af4:1042 revision 1 class 010000 subsystem 1af4:1100",
    "vblk: capabilities common=1 notify=1 isr=1 device=1 pci_cfg=1",
    "vblk: VIRTIO_F_VERSION_1 offered",
    "vblk: discard offered, write-zeroes offered",
    f"vblk: capacity {DISK_SECTORS} sectors (high 0)",
    "vblk: queue 0 offers 256 entries; using 8",
    "vblk: status 0f",
    f'vblk: get-id status 0 serial "{SERIAL}"',
    "vblk: read sector 0 status 0 used.len 513",
    "vblk: sector 0: 6b 76 6d 6c 69 74 65 20 76 69 72 74 69 6f 2d 62",
    "vblk: write sector 1 status 0",
    "vblk: read back sector 1 status 0 matches",
    "vblk: flush status 0",
    "vblk: read past the end status 1",
    "vblk: write-zeroes status 0, with unmap 0: sectors 8-11 zero, 12-15 kept",
    "vblk: discard status 0: sectors 16-23 zero",
    "vblk: discard with the unmap flag status 2",
    "vblk: write-zeroes past the end status 1",
    "vblk: done",
]
EXIT_OK = debug_exit_status(0x44)
SECTOR_1 = bytes((i * 7 + 3) & 0xFF for i in range(512))
REQUESTS = 15
SECTOR = 512


def check_image(image: Path) -> None:
    """The guest's write, write-zeroes and discard, as bytes (and a hole) in the image file."""
    data = image.read_bytes()
    assert data[SECTOR : 2 * SECTOR] == SECTOR_1  # the guest's write is in the file
    assert data[8 * SECTOR : 12 * SECTOR] == bytes(4 * SECTOR)  # write-zeroes
    assert data[12 * SECTOR : 16 * SECTOR] == b"\xa5" * 4 * SECTOR  # written, left alone
    assert data[16 * SECTOR : 24 * SECTOR] == bytes(8 * SECTOR)  # discarded
    with image.open("rb") as f:  # the discard punched a hole: the 4 KiB at sector 16 hold no data
        assert os.lseek(f.fileno(), 16 * SECTOR, os.SEEK_HOLE) == 16 * SECTOR


RNG_EXPECTED = [
    "vrng: found 1af4:1044 revision 1 class 00ff00 subsystem 1af4:1100",
    "vrng: capabilities common=1 notify=1 isr=1 device=1 pci_cfg=1",
    "vrng: VIRTIO_F_VERSION_1 offered",
    "vrng: queue 0 offers 8 entries; using 8",
    "vrng: status 0f",
    "vrng: 4 requests returned 256 bytes",
    "vrng: bytes vary yes, requests differ yes",
    "vrng: done",
]
CONSOLE_EXPECTED = [
    "vcons: found 1af4:1043 revision 1 class 078000 subsystem 1af4:1100",
    "vcons: capabilities common=1 notify=1 isr=1 device=1 pci_cfg=1",
    "vcons: VIRTIO_F_VERSION_1 offered",
    "vcons: queue 0 offers 128 entries; using 8",
    "vcons: queue 1 offers 128 entries; using 8",
    "vcons: status 0f",
    "vcons: sent 37 bytes, used.len 0",
    "vcons: sent 30 bytes in 2 buffers, used.len 0",
    "vcons: done",
]
CONSOLE_BYTES = b"hello from vcons over virtio-console\na second line, in two buffers\n"



@pytest.fixture(scope="module")
def vblk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("vblk", tmp_path_factory)


@pytest.fixture(scope="module")
def vblk_mmio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("vblk-mmio", tmp_path_factory)


@pytest.fixture(scope="module")
def vcons(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("vcons", tmp_path_factory)


@pytest.fixture(scope="module")
def vrng(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("vrng", tmp_path_factory)


@pytest.mark.parametrize("backend", ["kvm", "emu"])
def test_guest_drives_virtio_blk_under_kvmlite(vblk: Path, tmp_path: Path, backend: str) -> None:
    skip_without_kvm(backend)
    image = make_image(tmp_path / "disk.img")
    disk = f"{image},serial={SERIAL}"
    r = kvmlite_run("--backend", backend, "--kernel", str(vblk), "--disk", disk, "--stats")
    assert r.stdout.splitlines() == EXPECTED, r.stderr
    assert r.returncode == EXIT_OK
    check_image(image)
    # on KVM every notification reaches the device through an ioeventfd, with no exit
    without_exit = REQUESTS if backend == "kvm" else 0
    stats = f"queue 0: {REQUESTS} notifications ({without_exit} without an exit), {REQUESTS} requests"
    assert stats in r.stderr


def test_a_readonly_disk_refuses_the_write(vblk: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "ro.img")
    before = image.read_bytes()
    r = kvmlite_run("--backend", "emu", "--kernel", str(vblk), "--disk", f"{image},readonly=on")
    lines = r.stdout.splitlines()
    assert "vblk: write sector 1 status 1" in lines and "vblk: read back sector 1 status 0 DIFFERS" in lines
    assert r.returncode == debug_exit_status(0x01) and image.read_bytes() == before
    assert "read-only disk" in r.stderr


def test_a_second_process_cannot_open_an_image_in_use(vblk: Path, tmp_path: Path) -> None:
    from kvmlite.virtio.blk import BlockImage, DiskSpec

    image = make_image(tmp_path / "busy.img")
    holder = BlockImage(DiskSpec(image))  # this process has it open for writing
    try:
        for disk in (str(image), f"{image},readonly=on"):
            r = kvmlite_run("--backend", "emu", "--kernel", str(vblk), "--disk", disk)
            assert r.returncode == 2 and r.stdout == ""
            assert r.stderr.strip() == f"kvmlite: --disk {image}: the image is in use by another process"
    finally:
        holder.close()


@requires_qemu
def test_the_blk_guest_under_qemu_prints_the_same(vblk: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "qemu.img")
    drive = f"file={image},format=raw,if=none,id=d0,discard=unmap"
    device = f"virtio-blk-pci,drive=d0,disable-legacy=on,serial={SERIAL}"
    r = qemu_run(vblk, "-drive", drive, "-device", device)
    assert r.stdout.splitlines() == EXPECTED, r.stderr
    assert r.returncode == EXIT_OK
    check_image(image)




@pytest.mark.parametrize("backend", ["kvm", "emu"])
def test_guest_reads_entropy_under_kvmlite(vrng: Path, backend: str) -> None:
    skip_without_kvm(backend)
    r = kvmlite_run("--backend", backend, "--kernel", str(vrng), "--device", "virtio-rng-pci", "--stats")
    assert r.stdout.splitlines() == RNG_EXPECTED, r.stderr
    assert r.returncode == debug_exit_status(0x45)
    assert "virtio-rng0 queue 0: 4 notifications" in r.stderr


@requires_qemu
def test_the_rng_guest_under_qemu_prints_the_same(vrng: Path) -> None:
    r = qemu_run(vrng, "-device", "virtio-rng-pci,disable-legacy=on")
    assert r.stdout.splitlines() == RNG_EXPECTED, r.stderr
    assert r.returncode == debug_exit_status(0x45)


@pytest.mark.parametrize("backend", ["kvm", "emu"])
def test_the_blk_guest_finds_a_virtio_mmio_disk_on_its_command_line(
    vblk_mmio: Path, tmp_path: Path, backend: str
) -> None:
    skip_without_kvm(backend)
    image = make_image(tmp_path / "mmio.img")
    disk = f"{image},serial={SERIAL}"
    args = ("--backend", backend, "--kernel", str(vblk_mmio), "--disk", disk, "--virtio-transport", "mmio")
    r = kvmlite_run(*args, "--stats")
    # the same steps and answers as over PCI; only how the device is found differs
    found = "vblk: found virtio-mmio version 2 device 2 vendor 554d4551"
    assert r.stdout.splitlines() == [found, *EXPECTED[2:]], r.stderr
    assert r.returncode == EXIT_OK
    check_image(image)
    without_exit = REQUESTS if backend == "kvm" else 0
    assert f"virtio-blk0 queue 0: {REQUESTS} notifications ({without_exit} without an exit)" in r.stderr


@pytest.mark.parametrize("backend", ["kvm", "emu"])
def test_guest_writes_to_a_virtio_console_under_kvmlite(vcons: Path, tmp_path: Path, backend: str) -> None:
    skip_without_kvm(backend)
    out = tmp_path / "hvc0.out"
    r = kvmlite_run("--backend", backend, "--kernel", str(vcons), "--virtio-console", f"file:{out}")
    assert r.stdout.splitlines() == CONSOLE_EXPECTED, r.stderr
    assert r.returncode == debug_exit_status(0x46) and out.read_bytes() == CONSOLE_BYTES


@requires_qemu
def test_the_console_guest_under_qemu_prints_the_same(vcons: Path, tmp_path: Path) -> None:
    out = tmp_path / "qemu-hvc0.out"
    r = qemu_run(
        vcons,
        *("-device", "virtio-serial-pci,disable-legacy=on", "-chardev", f"file,id=c0,path={out}"),
        *("-device", "virtconsole,chardev=c0"),
    )
    assert r.stdout.splitlines() == CONSOLE_EXPECTED, r.stderr
    assert r.returncode == debug_exit_status(0x46) and out.read_bytes() == CONSOLE_BYTES
