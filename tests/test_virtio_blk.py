"""virtio-blk: a bare-metal guest with its own driver under kvmlite (both backends) and QEMU; the device."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmlite.errors import ConfigError
from kvmlite.memory.guest import GuestMemory
from kvmlite.virtio import blk as B
from kvmlite.virtio.device import STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1
from tests.conftest import KVM_OK
from tests.guest_expectations import debug_exit_status, load_build_module, missing_build_tools

SERIAL = "vblk-serial-01"
IMAGE_SECTORS = 128
EXPECTED = [
    "vblk: found 1af4:1042 revision 1 class 010000 subsystem 1af4:1100",
    "vblk: capabilities common=1 notify=1 isr=1 device=1 pci_cfg=1",
    "vblk: VIRTIO_F_VERSION_1 offered",
    f"vblk: capacity {IMAGE_SECTORS} sectors (high 0)",
    "vblk: queue 0 offers 256 entries; using 8",
    "vblk: status 0f",
    f'vblk: get-id status 0 serial "{SERIAL}"',
    "vblk: read sector 0 status 0 used.len 513",
    "vblk: sector 0: 6b 76 6d 6c 69 74 65 20 76 69 72 74 69 6f 2d 62",
    "vblk: write sector 1 status 0",
    "vblk: read back sector 1 status 0 matches",
    "vblk: flush status 0",
    "vblk: read past the end status 1",
    "vblk: done",
]
EXIT_OK = debug_exit_status(0x44)
SECTOR_1 = bytes((i * 7 + 3) & 0xFF for i in range(512))


@pytest.fixture(scope="module")
def vblk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = missing_build_tools()
    if missing:
        pytest.skip(f"cannot build the guests, missing: {', '.join(missing)}")
    built: Path = load_build_module().build_guest("vblk", tmp_path_factory.mktemp("vblk"))
    return built


def kvmlite_run(*args: str) -> subprocess.CompletedProcess[str]:
    """``kvmlite run ARGS`` with COM1 on stdout, as the QEMU run below has it."""
    cmd = [sys.executable, "-m", "kvmlite", "run", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def make_image(path: Path) -> Path:
    data = bytearray(IMAGE_SECTORS * 512)
    data[:30] = b"kvmlite virtio-blk test image\n"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("backend", ["kvm", "emu"])
def test_guest_drives_virtio_blk_under_kvmlite(vblk: Path, tmp_path: Path, backend: str) -> None:
    if backend == "kvm" and not KVM_OK:
        pytest.skip("needs a usable /dev/kvm")
    image = make_image(tmp_path / "disk.img")
    disk = f"{image},serial={SERIAL}"
    r = kvmlite_run("--backend", backend, "--kernel", str(vblk), "--disk", disk, "--stats")
    assert r.stdout.splitlines() == EXPECTED, r.stderr
    assert r.returncode == EXIT_OK
    assert image.read_bytes()[512:1024] == SECTOR_1  # the guest's write is in the file
    # six requests; on KVM every notification reaches the device through an ioeventfd, with no exit
    without_exit = 6 if backend == "kvm" else 0
    stats = f"virtio-blk0 queue 0: 6 notifications ({without_exit} without an exit), 6 requests"
    assert stats in r.stderr


def test_a_readonly_disk_refuses_the_write(vblk: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "ro.img")
    before = image.read_bytes()
    r = kvmlite_run("--backend", "emu", "--kernel", str(vblk), "--disk", f"{image},readonly=on")
    lines = r.stdout.splitlines()
    assert "vblk: write sector 1 status 1" in lines and "vblk: read back sector 1 status 0 DIFFERS" in lines
    assert r.returncode == debug_exit_status(0x01) and image.read_bytes() == before
    assert "read-only disk" in r.stderr


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed")
def test_the_same_guest_under_qemu_prints_the_same(vblk: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "qemu.img")
    cmd = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "128", "-display", "none", "-no-reboot",
        "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
        "-drive", f"file={image},format=raw,if=none,id=d0",
        "-device", f"virtio-blk-pci,drive=d0,disable-legacy=on,serial={SERIAL}",
        "-kernel", str(vblk),
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.stdout.splitlines() == EXPECTED, r.stderr
    assert r.returncode == EXIT_OK
    assert image.read_bytes()[512:1024] == SECTOR_1


# --- the device alone ----------------------------------------------------------------------------


def test_disk_specs_parse_or_say_what_is_wrong() -> None:
    assert B.DiskSpec.parse("a.img,readonly=on,serial=x") == B.DiskSpec(Path("a.img"), True, "x")
    with pytest.raises(ConfigError, match="unknown option 'cache=none'"):
        B.DiskSpec.parse("a.img,cache=none")
    with pytest.raises(ConfigError, match="path is missing"):
        B.DiskSpec.parse(",readonly=on")


def test_a_writable_image_is_locked_against_a_second_user(tmp_path: Path) -> None:
    image = make_image(tmp_path / "locked.img")
    first = B.BlockImage(B.DiskSpec(image))
    try:
        with pytest.raises(ConfigError, match="in use by another process"):
            B.BlockImage(B.DiskSpec(image, readonly=True))
    finally:
        first.close()
    B.BlockImage(B.DiskSpec(image)).close()  # free again once closed


def test_a_chain_that_loops_marks_the_device_needs_reset(tmp_path: Path) -> None:
    memory = GuestMemory([(0, 1 << 20)])
    image = B.BlockImage(B.DiskSpec(make_image(tmp_path / "d.img")))
    dev = B.VirtioBlk(memory, image)
    raised: list[str] = []
    dev.interrupt_config = lambda: raised.append("config")
    dev.driver_features = VIRTIO_F_VERSION_1
    q = dev.queues[0]
    q.size, q.desc_addr, q.avail_addr, q.used_addr = 4, 0x1000, 0x2000, 0x3000
    dev.set_status(STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    q.ready = True
    memory.write(0x1000, (0x8000).to_bytes(8, "little") + (16).to_bytes(4, "little") + b"\x01\x00\x00\x00")
    memory.write_u16(0x2004, 0)
    memory.write_u16(0x2002, 1)  # descriptor 0 -> 0 -> 0 ...
    dev.notify(0)
    assert dev.status & STATUS_NEEDS_RESET and raised == ["config"] and memory.read_u16(0x3002) == 0
    dev.set_status(0)
    assert dev.status == 0
    image.close()
    memory.close()
