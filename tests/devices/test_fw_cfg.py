"""Register-level tests of the fw_cfg I/O port interface, read the way firmware reads it."""

from __future__ import annotations

import struct

import pytest

from kvmlite.devices import fw_cfg as f
from kvmlite.devices.fw_cfg import FwCfg
from kvmlite.errors import DeviceError


def select(dev: FwCfg, key: int) -> None:
    dev.write(f.SELECTOR_OFFSET, 2, key)


def read_bytes(dev: FwCfg, n: int) -> bytes:
    return bytes(dev.read(f.DATA_OFFSET, 1) for _ in range(n))


def read_item(dev: FwCfg, key: int, n: int) -> bytes:
    select(dev, key)
    return read_bytes(dev, n)


def directory(dev: FwCfg) -> dict[str, tuple[int, int]]:
    select(dev, f.FW_CFG_FILE_DIR)
    (count,) = struct.unpack(">I", read_bytes(dev, 4))
    out = {}
    for _ in range(count):
        size, sel, _reserved, name = struct.unpack(">IHH56s", read_bytes(dev, 64))
        out[name.rstrip(b"\0").decode()] = (sel, size)
    return out


def test_signature_reads_qemu() -> None:
    assert read_item(FwCfg(), f.FW_CFG_SIGNATURE, 4) == b"QEMU"


def test_id_reports_traditional_interface_only() -> None:
    assert struct.unpack("<I", read_item(FwCfg(), f.FW_CFG_ID, 4)) == (1,)


def test_ram_size_is_u64_little_endian() -> None:
    dev = FwCfg(ram_size=6 << 30)
    assert struct.unpack("<Q", read_item(dev, f.FW_CFG_RAM_SIZE, 8)) == (6 << 30,)


def test_cpu_counts_are_u16_little_endian() -> None:
    dev = FwCfg(nb_cpus=2, max_cpus=8)
    assert struct.unpack("<H", read_item(dev, f.FW_CFG_NB_CPUS, 2)) == (2,)
    assert struct.unpack("<H", read_item(dev, f.FW_CFG_MAX_CPUS, 2)) == (8,)
    assert struct.unpack("<H", read_item(FwCfg(nb_cpus=3), f.FW_CFG_MAX_CPUS, 2)) == (3,)


def test_cmdline_size_includes_nul_and_data_is_terminated() -> None:
    dev = FwCfg(cmdline="console=ttyS0")
    (size,) = struct.unpack("<I", read_item(dev, f.FW_CFG_CMDLINE_SIZE, 4))
    assert size == len("console=ttyS0") + 1
    assert read_item(dev, f.FW_CFG_CMDLINE_DATA, size) == b"console=ttyS0\0"


def test_empty_cmdline_has_size_zero() -> None:
    assert read_item(FwCfg(), f.FW_CFG_CMDLINE_SIZE, 4) == b"\0\0\0\0"


def test_reading_past_the_end_returns_zero() -> None:
    dev = FwCfg()
    assert read_item(dev, f.FW_CFG_SIGNATURE, 6) == b"QEMU\0\0"
    assert read_item(dev, 0x1234, 2) == b"\0\0"  # no such item


def test_selector_write_resets_offset() -> None:
    dev = FwCfg()
    assert read_item(dev, f.FW_CFG_SIGNATURE, 2) == b"QE"
    assert read_item(dev, f.FW_CFG_SIGNATURE, 4) == b"QEMU"


def test_write_channel_bit_selects_the_same_item_for_reading() -> None:
    dev = FwCfg()
    assert read_item(dev, f.FW_CFG_SIGNATURE | f.FW_CFG_WRITE_CHANNEL, 4) == b"QEMU"


def test_wide_data_read_returns_bytes_in_address_order() -> None:
    dev = FwCfg()
    select(dev, f.FW_CFG_SIGNATURE)
    assert dev.read(f.DATA_OFFSET, 4).to_bytes(4, "little") == b"QEMU"


def test_empty_file_directory_has_count_zero() -> None:
    assert read_item(FwCfg(), f.FW_CFG_FILE_DIR, 4) == b"\0\0\0\0"


def test_file_directory_lists_added_files_big_endian_sorted() -> None:
    dev = FwCfg()
    sel_b = dev.add_file("opt/org.kvmlite/b", b"bbbb")
    sel_a = dev.add_file("opt/org.kvmlite/a", b"a" * 300)
    assert sel_b == 0x20 and sel_a == 0x21
    select(dev, f.FW_CFG_FILE_DIR)
    raw = read_bytes(dev, 4 + 2 * 64)
    assert raw[:4] == b"\0\0\0\x02"
    assert raw[4:8] == (300).to_bytes(4, "big")
    assert raw[8:10] == b"\x00\x21"
    assert raw[12:30] == b"opt/org.kvmlite/a\0"
    assert directory(dev) == {"opt/org.kvmlite/a": (0x21, 300), "opt/org.kvmlite/b": (0x20, 4)}
    assert read_item(dev, sel_b, 5) == b"bbbb\0"


def test_add_file_rejects_bad_names_and_duplicates() -> None:
    dev = FwCfg()
    dev.add_file("etc/x", b"")
    for bad in ("", "x" * 56, "etc/x", "caf\u00e9", "a\0b"):
        with pytest.raises(DeviceError):
            dev.add_file(bad, b"1")
    dev.add_file("y" * 55, b"")


def test_set_item_cannot_touch_directory_or_files() -> None:
    dev = FwCfg()
    sel = dev.add_file("etc/x", b"1")
    with pytest.raises(DeviceError):
        dev.set_item(f.FW_CFG_FILE_DIR, b"")
    with pytest.raises(DeviceError):
        dev.set_item(sel, b"")
    dev.set_item(f.FW_CFG_UUID, bytes(range(16)))
    assert read_item(dev, f.FW_CFG_UUID, 16) == bytes(range(16))


def test_constructor_validates_arguments() -> None:
    with pytest.raises(DeviceError):
        FwCfg(nb_cpus=0)
    with pytest.raises(DeviceError):
        FwCfg(nb_cpus=4, max_cpus=2)
    with pytest.raises(DeviceError):
        FwCfg(cmdline=b"a\0b")


def test_data_writes_and_selector_reads_are_ignored() -> None:
    dev = FwCfg()
    select(dev, f.FW_CFG_SIGNATURE)
    dev.write(f.DATA_OFFSET, 1, 0x41)
    assert dev.read(f.SELECTOR_OFFSET, 2) == 0xFFFF
    assert read_bytes(dev, 4) == b"QEMU"


def test_state_round_trip_keeps_position_and_files() -> None:
    dev = FwCfg(ram_size=1 << 30, cmdline="quiet")
    dev.add_file("etc/boot", b"hello")
    select(dev, 0x20)
    read_bytes(dev, 2)
    copy = FwCfg.from_state(dev.state())
    assert read_bytes(copy, 3) == b"llo"
    assert directory(copy) == directory(dev)


def test_from_state_rejects_garbage() -> None:
    with pytest.raises(DeviceError):
        FwCfg.from_state({"items": {}, "files": {"x": 0x20}, "selector": 0, "offset": 0})
    with pytest.raises(DeviceError):
        FwCfg.from_state(f.FwCfgState(files={"x": 0x20}))
