"""virtio-rng alone: buffers filled from getrandom, the rate limit, requests a driver gets wrong."""

from __future__ import annotations

import struct

from kvmlite.memory.guest import GuestMemory
from kvmlite.virtio.device import STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1
from kvmlite.virtio.queue import VIRTQ_DESC_F_WRITE
from kvmlite.virtio.rng import NS_PER_S, VirtioRng

DESC, AVAIL, USED, BUF = 0x1000, 0x2000, 0x3000, 0x8000
WRITABLE = VIRTQ_DESC_F_WRITE


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def rng_with_queue(rate: int, burst: int) -> tuple[VirtioRng, GuestMemory, Clock]:
    memory = GuestMemory([(0, 1 << 20)])
    clock = Clock()
    rng = VirtioRng(memory, rate=rate, burst=burst, clock=clock)
    rng.driver_features = VIRTIO_F_VERSION_1
    rng.set_status(STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    q = rng.queues[0]
    q.desc_addr, q.avail_addr, q.used_addr, q.ready = DESC, AVAIL, USED, True
    return rng, memory, clock


def offer(memory: GuestMemory, rng: VirtioRng, slot: int, length: int, flags: int = WRITABLE) -> None:
    memory.write(DESC + 16 * slot, struct.pack("<QIHH", BUF + 0x100 * slot, length, flags, 0))
    idx = memory.read_u16(AVAIL + 2)
    memory.write_u16(AVAIL + 4 + 2 * (idx % rng.queues[0].size), slot)
    memory.write_u16(AVAIL + 2, idx + 1)


def test_buffers_fill_until_the_bucket_is_empty_then_wait_for_the_timer() -> None:
    rng, memory, clock = rng_with_queue(rate=100, burst=64)
    offer(memory, rng, 0, 48)
    offer(memory, rng, 1, 48)
    rng.notify(0)
    assert memory.read_u16(USED + 2) == 2
    assert struct.unpack_from("<II", memory.read(USED + 4, 16), 8) == (1, 16)  # only 16 tokens were left
    offer(memory, rng, 2, 10)
    rng.notify(0)
    assert memory.read_u16(USED + 2) == 2 and rng.next_deadline() == 0 + NS_PER_S // 100 + 1
    clock.now = NS_PER_S // 10  # 10 bytes' worth
    rng.tick(clock.now)
    assert memory.read_u16(USED + 2) == 3
    assert struct.unpack_from("<I", memory.read(USED + 4 + 16 + 4, 4))[0] == 10
    assert rng.next_deadline() is None
    memory.close()


def test_a_device_readable_buffer_needs_a_reset() -> None:
    rng, memory, _ = rng_with_queue(rate=100, burst=64)
    offer(memory, rng, 0, 16, flags=0)
    rng.notify(0)
    assert rng.status & STATUS_NEEDS_RESET and memory.read_u16(USED + 2) == 0
    memory.close()
