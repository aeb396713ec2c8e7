"""The split virtqueue: chains through indirect tables, EVENT_IDX, and what it refuses."""

from __future__ import annotations

import struct

import pytest

from kvmlite.memory.guest import GuestMemory
from kvmlite.virtio.queue import (
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    Buffer,
    QueueError,
    Virtqueue,
)

DESC, AVAIL, USED, TABLE = 0x1000, 0x2000, 0x3000, 0x4000
SIZE = 8
NEXT, WRITE, INDIRECT = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT


@pytest.fixture
def ring():  # type: ignore[no-untyped-def]
    memory = GuestMemory([(0, 1 << 20)])
    q = Virtqueue(SIZE)
    q.desc_addr, q.avail_addr, q.used_addr = DESC, AVAIL, USED
    q.check_layout(memory)
    yield q, memory
    memory.close()


def put(memory: GuestMemory, table: int, index: int, addr: int, length: int, flags: int, nxt: int = 0) -> None:  # noqa: E501
    memory.write(table + 16 * index, struct.pack("<QIHH", addr, length, flags, nxt))


def make_available(memory: GuestMemory, *heads: int) -> None:
    idx = memory.read_u16(AVAIL + 2)
    for head in heads:
        memory.write_u16(AVAIL + 4 + 2 * (idx % SIZE), head)
        idx += 1
    memory.write_u16(AVAIL + 2, idx)


def test_an_indirect_table_is_one_chain_readable_then_writable(ring) -> None:  # type: ignore[no-untyped-def]
    q, memory = ring
    put(memory, DESC, 3, TABLE, 48, INDIRECT)
    put(memory, TABLE, 0, 0x8000, 16, NEXT, 2)  # indirect entries chain by their own indices
    put(memory, TABLE, 2, 0x9000, 512, NEXT | WRITE, 1)
    put(memory, TABLE, 1, 0xA000, 1, WRITE)
    make_available(memory, 3)
    chain = q.pop(memory)
    assert chain is not None and chain.head == 3
    assert chain.readable == [Buffer(0x8000, 16, False)]
    assert chain.writable == [Buffer(0x9000, 512, True), Buffer(0xA000, 1, True)]
    assert q.pop(memory) is None


@pytest.mark.parametrize(
    ("descriptors", "problem"),
    [
        ([(0x8000, 16, NEXT | WRITE, 1), (0x9000, 16, 0, 0)], "readable buffer after a writable"),
        ([(0x8000, 16, NEXT, 0)], "loops"),
        ([(0xFFFF_F000, 0x2000, 0, 0)], "outside guest RAM"),
        ([(0x8000, 16, NEXT, SIZE)], "past the table"),
        ([(TABLE, 16, INDIRECT | NEXT, 1)], "must stand alone"),
        ([(TABLE, 20, INDIRECT, 0)], "not 1-"),
    ],
)
def test_malformed_chains_are_refused(ring, descriptors, problem) -> None:  # type: ignore[no-untyped-def]
    q, memory = ring
    for i, (addr, length, flags, nxt) in enumerate(descriptors):
        put(memory, DESC, i, addr, length, flags, nxt)
    make_available(memory, 0)
    with pytest.raises(QueueError, match=problem):
        q.pop(memory)


def test_nested_indirect_tables_are_refused(ring) -> None:  # type: ignore[no-untyped-def]
    q, memory = ring
    put(memory, DESC, 0, TABLE, 16, INDIRECT)
    put(memory, TABLE, 0, TABLE, 16, INDIRECT)
    make_available(memory, 0)
    with pytest.raises(QueueError, match="inside an indirect table"):
        q.pop(memory)


def test_an_avail_index_too_far_ahead_is_refused(ring) -> None:  # type: ignore[no-untyped-def]
    q, memory = ring
    memory.write_u16(AVAIL + 2, SIZE + 1)
    with pytest.raises(QueueError, match="ahead"):
        q.pop(memory)


def test_used_elements_are_published_by_the_index(ring) -> None:  # type: ignore[no-untyped-def]
    q, memory = ring
    q.push(memory, 5, 100)
    q.push(memory, 6, 0)
    assert memory.read_u16(USED + 2) == 2
    assert struct.unpack("<IIII", memory.read(USED + 4, 16)) == (5, 100, 6, 0)


def test_without_event_idx_no_interrupt_is_the_drivers_flag(ring) -> None:  # type: ignore[no-untyped-def]
    q, memory = ring
    q.push(memory, 0, 0)
    assert q.should_notify(memory)
    memory.write_u16(AVAIL, VIRTQ_AVAIL_F_NO_INTERRUPT)
    assert not q.should_notify(memory)


def test_event_idx_interrupts_only_when_used_event_is_crossed(ring) -> None:  # type: ignore[no-untyped-def]
    q, memory = ring
    q.event_idx = True
    used_event = AVAIL + 4 + 2 * SIZE
    memory.write_u16(used_event, 1)  # "interrupt me once the used index passes 1"
    q.push(memory, 0, 0)
    assert not q.should_notify(memory)  # used idx 1: not past used_event yet
    q.push(memory, 1, 0)
    assert q.should_notify(memory)  # used idx 2 crossed 1
    q.push(memory, 2, 0)
    assert not q.should_notify(memory)  # the driver did not move used_event
    put(memory, DESC, 0, 0x8000, 4, 0)
    make_available(memory, 0)
    q.pop(memory)
    assert memory.read_u16(USED + 4 + 8 * SIZE) == 1  # avail_event: where the device has read up to
