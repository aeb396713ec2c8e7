"""MSI-X: the table, masking and pending bits, and virtio-pci's vectors."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmlite.errors import DeviceError
from kvmlite.memory.guest import GuestMemory
from kvmlite.pci import config as C
from kvmlite.pci.msix import CONTROL_ENABLE, CONTROL_FUNCTION_MASK, PBA_OFFSET, Msix
from kvmlite.virtio import pci as P
from kvmlite.virtio.rng import VirtioRng


def msix(vectors: int = 3) -> tuple[Msix, C.ConfigSpace, list[tuple[int, int]]]:
    cfg = C.ConfigSpace(0x1AF4, 0x1044, 0xFF00)
    sent: list[tuple[int, int]] = []
    return Msix(cfg, vectors, 1, lambda vector, address, data: sent.append((address, data))), cfg, sent


def program(table: Msix, vector: int, address: int, data: int, masked: bool) -> None:
    base = 16 * vector
    table.write(base, 8, address)
    table.write(base + 8, 4, data)
    table.write(base + 12, 4, int(masked))


def test_the_capability_describes_table_and_pba() -> None:
    table, cfg, _ = msix(3)
    assert cfg.capabilities() == [(table.cap, C.CAP_ID_MSIX)]
    assert cfg.read(table.cap + 2, 2) == 2  # table size - 1, disabled, unmasked
    assert cfg.read(table.cap + 4, 4) == 1 and cfg.read(table.cap + 8, 4) == PBA_OFFSET | 1
    cfg.write(table.cap + 2, 2, 0xFFFF)
    assert cfg.read(table.cap + 2, 2) == 2 | CONTROL_ENABLE | CONTROL_FUNCTION_MASK  # the size is read-only
    with pytest.raises(DeviceError):
        msix(0)


def test_a_masked_vector_is_pending_until_unmasked() -> None:
    table, cfg, sent = msix()
    cfg.write(table.cap + 2, 2, CONTROL_ENABLE)
    program(table, 1, 0xFEE0_0000, 0x41, masked=True)
    assert table.notify(1) and sent == [] and table.read(PBA_OFFSET, 4) == 0b10
    table.write(16 + 12, 4, 0)  # unmask: the pending message goes out
    assert sent == [(0xFEE0_0000, 0x41)] and table.read(PBA_OFFSET, 4) == 0
    table.notify(1)
    assert sent[-1] == (0xFEE0_0000, 0x41) and len(sent) == 2
    assert not table.notify(7)  # no such vector


def test_the_function_mask_holds_every_vector() -> None:
    table, cfg, sent = msix()
    program(table, 0, 0xFEE0_1000, 0x30, masked=False)
    cfg.write(table.cap + 2, 2, CONTROL_ENABLE | CONTROL_FUNCTION_MASK)
    table.notify(0)
    assert sent == [] and table.pending == 1
    cfg.write(table.cap + 2, 2, CONTROL_ENABLE)
    table.config_written(table.cap + 2, 2)
    assert sent == [(0xFEE0_1000, 0x30)]


def test_virtio_pci_sends_the_queues_vector_instead_of_intx(tmp_path: Path) -> None:
    memory = GuestMemory([(0, 1 << 20)])
    sent: list[tuple[int, int]] = []
    intx: list[bool] = []
    fn = P.VirtioPciFunction(VirtioRng(memory), lambda vector, address, data: sent.append((address, data)))
    fn.intx = intx.append
    assert fn.config.bars[P.MSIX_BAR_INDEX].size == P.MSIX_BAR_SIZE and fn.bar_device(1) is fn.msix
    assert fn.msix is not None
    fn.common_write(P.QUEUE_SELECT, 2, 0)
    fn.common_write(P.QUEUE_MSIX_VECTOR, 2, 1)
    assert fn.common_read(P.QUEUE_MSIX_VECTOR, 2) == 1
    fn.common_write(P.CONFIG_MSIX_VECTOR, 2, 99)  # more than the table has
    assert fn.common_read(P.CONFIG_MSIX_VECTOR, 2) == P.NO_VECTOR
    fn.device.interrupt_queue(0)
    assert intx == [True] and sent == []  # MSI-X still off: INTx
    fn.read_isr()
    program(fn.msix, 1, 0xFEE0_0000, 0x51, masked=False)
    fn.config_write(fn.msix.cap + 2, 2, CONTROL_ENABLE)
    fn.device.interrupt_queue(0)
    assert sent == [(0xFEE0_0000, 0x51)] and intx == [True, False]
    memory.close()
