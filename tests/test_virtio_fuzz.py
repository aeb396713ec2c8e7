"""Random descriptor tables, chains, ring indices and transport register writes thrown at virtio-blk.

Whatever the driver writes: no exception leaves the device or the transport, no byte outside
guest RAM is touched (guest RAM here is one region with unmapped space around it, and
GuestMemory refuses anything else), and another device on the same memory keeps working.
"""

from __future__ import annotations

import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmlite.memory.guest import GuestMemory
from kvmlite.virtio import blk as B
from kvmlite.virtio import pci as P
from kvmlite.virtio.device import STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1

RAM = 0x10000
DESC, AVAIL, USED = 0x1000, 0x2000, 0x3000
QSIZE = 8
U64 = (1 << 64) - 1

addresses = st.one_of(st.integers(0, RAM + 0x100), st.integers(0, (1 << 64) - 1))
descriptor = st.tuples(
    addresses, st.integers(0, (1 << 32) - 1), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)
)


def blk_on(memory: GuestMemory, tmp_path: Path, name: str) -> tuple[B.VirtioBlk, B.BlockImage]:
    path = tmp_path / f"{name}.img"
    if not path.exists():
        path.write_bytes(bytes(64 * 512))
    image = B.BlockImage(B.DiskSpec(path))
    dev = B.VirtioBlk(memory, image, name=name)
    dev.driver_features = VIRTIO_F_VERSION_1
    dev.set_status(STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    return dev, image


def live_queue(dev: B.VirtioBlk, base: int) -> None:
    q = dev.queues[0]
    q.size, q.desc_addr, q.avail_addr, q.used_addr = QSIZE, base + DESC, base + AVAIL, base + USED
    q.ready = True


def good_read_request(memory: GuestMemory, base: int, idx: int) -> None:
    """One valid 512-byte read of sector 0 in a second device's queue."""
    memory.write(base + 0x4000, struct.pack("<IIQ", B.VIRTIO_BLK_T_IN, 0, 0))
    descs = [(base + 0x4000, 16, 1, 1), (base + 0x5000, 512, 3, 2), (base + 0x6000, 1, 2, 0)]
    for i, d in enumerate(descs):
        memory.write(base + DESC + 16 * i, struct.pack("<QIHH", *d))
    memory.write_u16(base + AVAIL + 4 + 2 * (idx % QSIZE), 0)
    memory.write_u16(base + AVAIL + 2, idx + 1)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    table=st.lists(descriptor, min_size=QSIZE, max_size=QSIZE),
    ring=st.lists(st.integers(0, 0xFFFF), min_size=QSIZE, max_size=QSIZE),
    avail_idx=st.integers(0, 0xFFFF),
    header=st.tuples(st.integers(0, 20), st.integers(0, (1 << 64) - 1)),
    indirect=st.lists(descriptor, max_size=6),
)
def test_random_rings_never_escape_the_device(
    tmp_path: Path,
    table: list[tuple[int, int, int, int]],
    ring: list[int],
    avail_idx: int,
    header: tuple[int, int],
    indirect: list[tuple[int, int, int, int]],
) -> None:
    memory = GuestMemory([(0, RAM)])
    fuzzed, image1 = blk_on(memory, tmp_path, "fuzzed")
    other_mem = GuestMemory([(0, 0x8000)])
    other, image2 = blk_on(other_mem, tmp_path, "other")
    try:
        live_queue(fuzzed, 0)
        live_queue(other, 0)
        for i, d in enumerate(table):
            memory.write(DESC + 16 * i, struct.pack("<QIHH", *d))
        for i, head in enumerate(ring):
            memory.write_u16(AVAIL + 4 + 2 * i, head)
        memory.write_u16(AVAIL + 2, avail_idx)
        memory.write(0x8000, struct.pack("<IIQ", header[0], 0, header[1] & ((1 << 64) - 1)))
        for i, d in enumerate(indirect):
            memory.write(0x9000 + 16 * i, struct.pack("<QIHH", *d))
        fuzzed.notify(0)
        fuzzed.notify(0)
        fuzzed.notify(7)  # a queue that does not exist
        assert memory.read_u16(USED + 2) <= QSIZE or fuzzed.status & 0x40
        good_read_request(other_mem, 0, 0)
        other.notify(0)
        assert other_mem.read_u16(USED + 2) == 1 and other_mem.read_u8(0x6000) == B.VIRTIO_BLK_S_OK
    finally:
        image1.close()
        image2.close()
        memory.close()
        other_mem.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    writes=st.lists(
        st.tuples(st.integers(0, P.BAR_SIZE - 1), st.sampled_from([1, 2, 4, 8]), st.integers(0, U64)),
        max_size=40,
    ),
    config_writes=st.lists(
        st.tuples(st.integers(0, 255), st.sampled_from([1, 2, 4]), st.integers(0, 0xFFFF_FFFF)), max_size=20
    ),
)
def test_random_transport_register_writes_never_raise(
    tmp_path: Path, writes: list[tuple[int, int, int]], config_writes: list[tuple[int, int, int]]
) -> None:
    memory = GuestMemory([(0, RAM)])
    dev, image = blk_on(memory, tmp_path, "regs")
    dev.set_status(0)
    fn = P.VirtioPciFunction(dev, lambda address, data: None)  # with MSI-X
    try:
        for offset, size, value in config_writes:
            fn.config_write(offset, size, value & ((1 << (8 * size)) - 1))
            fn.config_read(offset, size)
        for offset, size, value in writes:
            fn.bar.write(offset, size, value & ((1 << (8 * size)) - 1))
            fn.bar.read(offset, size)
    finally:
        image.close()
        memory.close()
