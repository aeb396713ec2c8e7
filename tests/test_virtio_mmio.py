"""The virtio-mmio (version 2) transport, driven register by register as Linux's virtio_mmio does."""

from __future__ import annotations

import struct
from pathlib import Path

from kvmlite.memory.guest import GuestMemory
from kvmlite.virtio import blk as B
from kvmlite.virtio import mmio as M
from kvmlite.virtio.device import (
    STATUS_ACKNOWLEDGE,
    STATUS_DRIVER,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
    STATUS_NEEDS_RESET,
)
from tests.images import DISK_SECTOR_0, DISK_SECTORS, make_disk_image

DESC, AVAIL, USED, HEADER, DATA, STATUS_BYTE = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000
DRIVER = STATUS_ACKNOWLEDGE | STATUS_DRIVER


class Line:
    def __init__(self) -> None:
        self.levels: list[bool] = []

    def __call__(self, level: bool) -> None:
        self.levels.append(level)


def setup(tmp_path: Path) -> tuple[M.VirtioMmio, GuestMemory, Line, B.BlockImage]:
    memory = GuestMemory([(0, 1 << 20)])
    image = B.BlockImage(B.DiskSpec(make_disk_image(tmp_path / "d.img")))
    line = Line()
    return M.VirtioMmio(B.VirtioBlk(memory, image), irq=line), memory, line, image


def test_a_driver_reads_a_sector_through_the_registers(tmp_path: Path) -> None:
    dev, memory, line, image = setup(tmp_path)
    r, w = dev.read, dev.write
    assert (r(M.MAGIC_VALUE, 4), r(M.VERSION_REG, 4), r(M.DEVICE_ID, 4)) == (M.MAGIC, 2, B.VIRTIO_ID_BLOCK)
    assert r(M.VENDOR_ID_REG, 4) == M.VENDOR_ID
    w(M.STATUS, 4, DRIVER)
    w(M.DEVICE_FEATURES_SEL, 4, 1)
    assert r(M.DEVICE_FEATURES, 4) & 1  # VIRTIO_F_VERSION_1
    w(M.DRIVER_FEATURES_SEL, 4, 1)
    w(M.DRIVER_FEATURES, 4, 1)
    w(M.STATUS, 4, DRIVER | STATUS_FEATURES_OK)
    assert r(M.STATUS, 4) & STATUS_FEATURES_OK
    assert r(M.CONFIG, 8) == DISK_SECTORS  # capacity
    w(M.QUEUE_SEL, 4, 0)
    assert r(M.QUEUE_NUM_MAX, 4) == B.QUEUE_SIZE and r(M.QUEUE_READY, 4) == 0
    w(M.QUEUE_NUM, 4, 8)
    for reg, addr in ((M.QUEUE_DESC_LOW, DESC), (M.QUEUE_DRIVER_LOW, AVAIL), (M.QUEUE_DEVICE_LOW, USED)):
        w(reg, 4, addr)
        w(reg + 4, 4, 0)
    w(M.QUEUE_READY, 4, 1)
    w(M.STATUS, 4, DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    memory.write(HEADER, struct.pack("<IIQ", B.VIRTIO_BLK_T_IN, 0, 0))
    chain = [(HEADER, 16, 1, 1), (DATA, 512, 3, 2), (STATUS_BYTE, 1, 2, 0)]
    for i, d in enumerate(chain):
        memory.write(DESC + 16 * i, struct.pack("<QIHH", *d))
    memory.write_u16(AVAIL + 4, 0)
    memory.write_u16(AVAIL + 2, 1)
    w(M.QUEUE_NOTIFY, 4, 0)
    assert memory.read_u16(USED + 2) == 1 and memory.read_u8(STATUS_BYTE) == B.VIRTIO_BLK_S_OK
    assert memory.read(DATA, len(DISK_SECTOR_0)) == DISK_SECTOR_0
    assert r(M.INTERRUPT_STATUS, 4) == M.INT_USED_BUFFER and line.levels == [True]
    w(M.INTERRUPT_ACK, 4, M.INT_USED_BUFFER)
    assert r(M.INTERRUPT_STATUS, 4) == 0 and line.levels == [True, False]
    image.close()
    memory.close()


def test_a_queue_made_ready_outside_ram_needs_a_reset_and_status_0_resets(tmp_path: Path) -> None:
    dev, memory, _, image = setup(tmp_path)
    dev.write(M.STATUS, 4, DRIVER)
    dev.write(M.QUEUE_NUM, 4, 8)
    dev.write(M.QUEUE_DESC_LOW + 4, 4, 0x10)  # 64 GiB: no RAM there
    dev.write(M.QUEUE_READY, 4, 1)
    assert dev.read(M.QUEUE_READY, 4) == 0 and dev.read(M.STATUS, 4) & STATUS_NEEDS_RESET
    dev.write(M.STATUS, 4, 0)
    assert dev.read(M.STATUS, 4) == 0 and dev.device.queues[0].desc_addr == 0
    assert dev.read(M.MAGIC_VALUE, 2) == 0  # registers are 32-bit only
    image.close()
    memory.close()


def test_linux_is_told_where_the_device_is() -> None:
    assert M.VirtioMmio.cmdline(0xD000_0000, 16) == "virtio_mmio.device=512@0xd0000000:16"
