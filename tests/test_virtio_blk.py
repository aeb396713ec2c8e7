"""virtio-blk alone: disk specs, image locking, malformed chains, notifications that follow the BAR."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

from kvmlite.errors import ConfigError
from kvmlite.memory.guest import GuestMemory
from kvmlite.pci import config as C
from kvmlite.virtio import blk as B
from kvmlite.virtio import pci as P
from kvmlite.virtio.device import STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1
from kvmlite.vmm.machine import Machine, MachineConfig
from tests.conftest import KVM_OK
from tests.images import make_disk_image as make_image

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


@pytest.mark.skipif(not KVM_OK, reason="needs a usable /dev/kvm")
def test_moving_the_bar_moves_the_notification_eventfds(tmp_path: Path) -> None:
    """KVM_IOEVENTFD follows BAR 4: deassigning at the old place and assigning at the new one succeed."""
    config = MachineConfig(kernel=Path("unused"), backend="kvm", memory_mib=4, serial_out=lambda b: None)
    machine = Machine(config)
    try:
        machine.attach_pci()
        machine.attach_virtio_blk(B.DiskSpec(make_image(tmp_path / "moved.img")))
        pci = machine.pci
        assert pci is not None
        where = machine.devices["virtio-blk0"].pci
        assert where is not None and pci.mapped(where, P.BAR_INDEX) is not None
        bar = C.BAR0 + 4 * P.BAR_INDEX
        pci.config_write(0, where, C.COMMAND, 2, 0)  # decoding off: the eventfds go away
        assert pci.mapped(where, P.BAR_INDEX) is None
        pci.config_write(0, where, bar, 4, 0xC800_0000)
        pci.config_write(0, where, C.COMMAND, 2, C.COMMAND_MEMORY)  # on again, elsewhere
        assert pci.mapped(where, P.BAR_INDEX) == 0xC800_0000
        pci.config_write(0, where, bar, 4, 0xC900_0000)  # moved while decoding
        assert pci.mapped(where, P.BAR_INDEX) == 0xC900_0000
        assert [s.base for s in machine.devices["virtio-blk0"].mmio if s.name == "BAR4"] == [0xC900_0000]
    finally:
        machine.close()


# --- requests, one chain at a time ---------------------------------------------------------------

DESC, AVAIL, USED, HEADER, DATA, STATUS = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000


class Driver:
    """Just enough driver to hand the device one request chain and read its status back."""

    def __init__(self, tmp_path: Path, readonly: bool = False, sectors: int = 64) -> None:
        path = tmp_path / "d.img"
        path.write_bytes(b"\xee" * sectors * B.SECTOR_SIZE)
        self.path = path
        self.memory = GuestMemory([(0, 1 << 20)])
        self.image = B.BlockImage(B.DiskSpec(path, readonly=readonly))
        self.dev = B.VirtioBlk(self.memory, self.image)
        self.dev.driver_features = VIRTIO_F_VERSION_1
        q = self.dev.queues[0]
        q.size, q.desc_addr, q.avail_addr, q.used_addr = 4, DESC, AVAIL, USED
        self.dev.set_status(STATUS_FEATURES_OK | STATUS_DRIVER_OK)
        q.ready = True
        self.avail = 0

    def request(self, kind: int, data: bytes = b"", sector: int = 0) -> int:
        self.memory.write(HEADER, kind.to_bytes(4, "little") + bytes(4) + sector.to_bytes(8, "little"))
        self.memory.write(DATA, data)
        chain = [(HEADER, 16, 0)] + ([(DATA, len(data), 0)] if data else []) + [(STATUS, 1, 2)]
        for i, (addr, length, flags) in enumerate(chain):
            flags |= 1 if i + 1 < len(chain) else 0  # NEXT
            desc = struct.pack("<QIHH", addr, length, flags, i + 1)
            self.memory.write(DESC + 16 * i, desc)
        self.memory.write_u16(AVAIL + 4 + 2 * (self.avail % 4), 0)
        self.avail += 1
        self.memory.write_u16(AVAIL + 2, self.avail)
        self.memory.write_u8(STATUS, 0xFF)
        self.dev.notify(0)
        assert self.memory.read_u16(USED + 2) == self.avail
        return self.memory.read_u8(STATUS)

    def close(self) -> None:
        self.image.close()
        self.memory.close()


def segment(sector: int, count: int, flags: int = 0) -> bytes:
    return sector.to_bytes(8, "little") + count.to_bytes(4, "little") + flags.to_bytes(4, "little")


@pytest.fixture
def driver(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = Driver(tmp_path)
    yield d
    d.close()


def test_write_zeroes_and_discard_leave_zeros_and_a_hole(driver: Driver) -> None:
    assert driver.dev.device_features & B.VIRTIO_BLK_F_WRITE_ZEROES
    assert driver.dev.device_features & B.VIRTIO_BLK_F_DISCARD  # this file system punches holes
    assert driver.request(B.VIRTIO_BLK_T_WRITE_ZEROES, segment(1, 2) + segment(4, 1, 1)) == B.VIRTIO_BLK_S_OK
    assert driver.request(B.VIRTIO_BLK_T_DISCARD, segment(8, 8)) == B.VIRTIO_BLK_S_OK
    data = driver.path.read_bytes()
    sector = B.SECTOR_SIZE
    assert data[:sector] == b"\xee" * sector and data[sector : 3 * sector] == bytes(2 * sector)
    assert data[3 * sector : 4 * sector] == b"\xee" * sector
    assert data[4 * sector : 5 * sector] == bytes(sector)
    assert data[8 * sector : 16 * sector] == bytes(8 * sector)
    with driver.path.open("rb") as f:
        assert os.lseek(f.fileno(), 8 * sector, os.SEEK_HOLE) == 8 * sector
    # the configuration space announces the limits
    config = driver.dev.config_bytes()
    assert int.from_bytes(config[36:40], "little") == B.MAX_DWZ_SECTORS  # max_discard_sectors
    assert int.from_bytes(config[52:56], "little") == B.MAX_DWZ_SEGMENTS  # max_write_zeroes_seg
    assert config[56] == 1  # write_zeroes_may_unmap


@pytest.mark.parametrize(
    ("kind", "data", "status"),
    [
        (B.VIRTIO_BLK_T_DISCARD, segment(0, 1, 1), B.VIRTIO_BLK_S_UNSUPP),  # UNMAP on a discard
        (B.VIRTIO_BLK_T_WRITE_ZEROES, segment(0, 1, 2), B.VIRTIO_BLK_S_UNSUPP),  # an unknown flag
        (B.VIRTIO_BLK_T_WRITE_ZEROES, segment(0, 1)[:12], B.VIRTIO_BLK_S_UNSUPP),  # not whole segments
        (B.VIRTIO_BLK_T_WRITE_ZEROES, segment(0, 1) * 33, B.VIRTIO_BLK_S_UNSUPP),  # too many segments
        (B.VIRTIO_BLK_T_DISCARD, segment(60, 8), B.VIRTIO_BLK_S_IOERR),  # past the end
        (B.VIRTIO_BLK_T_WRITE_ZEROES, segment(0, 1) + segment(63, 2), B.VIRTIO_BLK_S_IOERR),  # one bad
    ],
)
def test_bad_discard_and_write_zeroes_requests_fail_and_change_nothing(
    driver: Driver, kind: int, data: bytes, status: int
) -> None:
    before = driver.path.read_bytes()
    assert driver.request(kind, data) == status
    assert driver.path.read_bytes() == before


def test_write_zeroes_writes_zeros_where_the_file_system_cannot_zero_ranges(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fallocate(fd: int, mode: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(B, "fallocate", no_fallocate)
    driver.image.can_punch = False
    assert driver.request(B.VIRTIO_BLK_T_WRITE_ZEROES, segment(2, 3, 1)) == B.VIRTIO_BLK_S_OK
    data = driver.path.read_bytes()
    assert data[2 * B.SECTOR_SIZE : 5 * B.SECTOR_SIZE] == bytes(3 * B.SECTOR_SIZE)
    assert not driver.image.can_zero_range and data[5 * B.SECTOR_SIZE] == 0xEE


def test_without_hole_punching_discard_is_not_offered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fallocate(fd: int, mode: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(B, "fallocate", no_fallocate)
    d = Driver(tmp_path)
    try:
        assert not d.dev.device_features & B.VIRTIO_BLK_F_DISCARD
        assert d.dev.device_features & B.VIRTIO_BLK_F_WRITE_ZEROES
        assert d.request(B.VIRTIO_BLK_T_DISCARD, segment(0, 1)) == B.VIRTIO_BLK_S_UNSUPP
        assert d.dev.config_bytes()[56] == 0  # write_zeroes_may_unmap
    finally:
        d.close()


def test_a_readonly_disk_offers_neither_and_refuses_both(tmp_path: Path) -> None:
    d = Driver(tmp_path, readonly=True)
    try:
        assert not d.dev.device_features & (B.VIRTIO_BLK_F_DISCARD | B.VIRTIO_BLK_F_WRITE_ZEROES)
        assert d.request(B.VIRTIO_BLK_T_WRITE_ZEROES, segment(0, 1)) == B.VIRTIO_BLK_S_UNSUPP
        assert d.request(B.VIRTIO_BLK_T_OUT, b"x" * 512) == B.VIRTIO_BLK_S_IOERR
    finally:
        d.close()


def test_flush_reaches_the_disk_before_the_request_completes(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []

    def fdatasync(fd: int) -> None:
        seen.append(driver.memory.read_u16(USED + 2))  # the used index when the data reaches the disk

    monkeypatch.setattr(B.os, "fdatasync", fdatasync)
    assert driver.request(B.VIRTIO_BLK_T_FLUSH) == B.VIRTIO_BLK_S_OK
    assert seen == [0]  # synced while the request was still outstanding
