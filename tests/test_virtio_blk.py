"""virtio-blk alone: disk specs, image locking, malformed chains, notifications that follow the BAR."""

from __future__ import annotations

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
