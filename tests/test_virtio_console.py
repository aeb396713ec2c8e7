"""virtio-console alone: input into the buffers the guest gave, output held back while the host is busy."""

from __future__ import annotations

import struct

from kvmlite.memory.guest import GuestMemory
from kvmlite.virtio.console import RECEIVEQ, TRANSMITQ, VirtioConsole
from kvmlite.virtio.device import STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1
from kvmlite.virtio.queue import VIRTQ_DESC_F_WRITE

RINGS = {RECEIVEQ: (0x1000, 0x2000, 0x3000), TRANSMITQ: (0x5000, 0x6000, 0x7000)}
BUF = 0x10000


def console() -> tuple[VirtioConsole, GuestMemory, list[bytes], list[int]]:
    memory = GuestMemory([(0, 1 << 20)])
    out: list[bytes] = []
    wakeups: list[int] = []
    dev = VirtioConsole(memory, out.append, lambda: wakeups.append(1))
    dev.driver_features = VIRTIO_F_VERSION_1
    dev.set_status(STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    for index, (desc, avail, used) in RINGS.items():
        q = dev.queues[index]
        q.size, q.desc_addr, q.avail_addr, q.used_addr, q.ready = 8, desc, avail, used, True
    return dev, memory, out, wakeups


def offer(memory: GuestMemory, queue: int, slot: int, addr: int, length: int, flags: int) -> None:
    desc, avail, _ = RINGS[queue]
    memory.write(desc + 16 * slot, struct.pack("<QIHH", addr, length, flags, 0))
    idx = memory.read_u16(avail + 2)
    memory.write_u16(avail + 4 + 2 * (idx % 8), slot)
    memory.write_u16(avail + 2, idx + 1)


def test_input_fills_the_receive_buffers_and_says_how_much_fitted() -> None:
    dev, memory, _, wakeups = console()
    assert dev.rx_space() == 0
    assert dev.enqueue_input(b"early") == 0  # no buffer yet: the host keeps it
    offer(memory, RECEIVEQ, 0, BUF, 4, VIRTQ_DESC_F_WRITE)
    offer(memory, RECEIVEQ, 1, BUF + 0x100, 4, VIRTQ_DESC_F_WRITE)
    dev.notify(RECEIVEQ)
    assert wakeups == [1]  # the host is told there is room now
    assert dev.rx_space() == 8  # what the console host asks before it feeds input
    assert dev.enqueue_input(b"abcdefghij") == 8
    assert dev.rx_space() == 0
    assert memory.read(BUF, 4) == b"abcd" and memory.read(BUF + 0x100, 4) == b"efgh"
    used = RINGS[RECEIVEQ][2]
    assert memory.read_u16(used + 2) == 2 and struct.unpack_from("<II", memory.read(used + 4, 8)) == (0, 4)
    memory.close()


def test_output_waits_in_the_ring_while_the_host_is_busy() -> None:
    dev, memory, out, _ = console()
    memory.write(BUF, b"hello")
    dev.set_tx_busy(True)
    offer(memory, TRANSMITQ, 0, BUF, 5, 0)
    dev.notify(TRANSMITQ)
    assert out == [] and memory.read_u16(RINGS[TRANSMITQ][2] + 2) == 0
    dev.set_tx_busy(False)
    assert out == [b"hello"] and memory.read_u16(RINGS[TRANSMITQ][2] + 2) == 1
    memory.close()
