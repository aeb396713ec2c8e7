"""Every device can be rebuilt from its state: typed records, and the rebuilt device answers
its registers as the original did."""

from __future__ import annotations

import dataclasses

import pytest

from kvmlite.devices import acpi_pm as PM
from kvmlite.devices.base import DeviceState, Snapshottable
from kvmlite.devices.debug_exit import DebugExit, DebugExitState
from kvmlite.devices.fw_cfg import FwCfg
from kvmlite.devices.i8042 import I8042, PortA20Reset, PostCodePort
from kvmlite.devices.ioapic import Ioapic
from kvmlite.devices.lapic import Lapic
from kvmlite.devices.pc_testdev import PcTestdev, PcTestdevIomem
from kvmlite.devices.pci_testdev import PciTestdev, PciTestdevBlock
from kvmlite.devices.pic import Elcr, Pic8259, Pic8259Pair
from kvmlite.devices.pit import Pit8254, PitChannel, SystemPortB
from kvmlite.devices.rtc import CmosRtc
from kvmlite.devices.serial import Serial16550
from kvmlite.errors import DeviceError
from kvmlite.vmm import layout as L
from tests.devices.conftest import Calls, FakeClock, Line

#: Parts of a device above (a chip of the pair, a register window) whose state is in its record.
PARTS = {Elcr, Pic8259, PitChannel, SystemPortB, PcTestdevIomem, PciTestdevBlock}

#: Each device class with what its constructor needs injected.
DEVICES: list[tuple[type, dict[str, object]]] = [
    (Serial16550, {}),
    (Pic8259Pair, {}),
    (Pit8254, {"clock": FakeClock()}),
    (CmosRtc, {"clock": FakeClock(), "now": lambda: 1.7e9}),
    (I8042, {}),
    (PortA20Reset, {}),
    (PostCodePort, {}),
    (FwCfg, {}),
    (PM.AcpiPm, {"power_off": Calls(), "s5_slp_typ": L.S5_SLP_TYP}),
    (PM.ResetControl, {"reset": Calls()}),
    (DebugExit, {"on_exit": print}),
    (PcTestdev, {}),
    (PciTestdev, {}),
    (Lapic, {"clock": FakeClock(), "bsp": True}),
    (Ioapic, {}),
]


@pytest.mark.parametrize(("cls", "injected"), DEVICES, ids=[cls.__name__ for cls, _ in DEVICES])
def test_every_device_snapshots_to_a_typed_record(cls: type, injected: dict[str, object]) -> None:
    dev = cls(**injected)
    assert isinstance(dev, Snapshottable)
    st = dev.state()
    assert isinstance(st, DeviceState) and dataclasses.is_dataclass(st)
    assert type(st)().version == st.version  # every field has a default
    assert cls.from_state(st, **injected).state() == st
    with pytest.raises(DeviceError):
        cls.from_state(object(), **injected)


def test_acpi_pm_round_trip_keeps_registers_sci_and_sleep() -> None:
    off, sci = Calls(), Line()
    pm = PM.AcpiPm(power_off=off, s5_slp_typ=L.S5_SLP_TYP, sci=sci)
    pm.write(PM.REG_PM1_EN, 2, PM.PWRBTN_EN)
    pm.write(PM.REG_PM1_CNT, 2, L.S5_SLP_TYP << PM.SLP_TYP_SHIFT)  # type first, as Linux does
    pm.press_power_button()
    assert sci.high
    off2, sci2 = Calls(), Line()
    copy = PM.AcpiPm.from_state(pm.state(), power_off=off2, s5_slp_typ=L.S5_SLP_TYP, sci=sci2)
    assert sci2.high  # the SCI is raised again for a fresh interrupt controller
    for offset in (PM.REG_PM1_STS, PM.REG_PM1_EN, PM.REG_PM1_CNT):
        assert copy.read(offset, 2) == pm.read(offset, 2)
    copy.write(PM.REG_PM1_STS, 2, PM.PWRBTN_STS)
    assert not sci2.high
    copy.write(PM.REG_PM1_CNT, 2, copy.read(PM.REG_PM1_CNT, 2) | PM.SLP_EN)
    assert (off2.count, off.count) == (1, 0)


def test_acpi_pm_from_state_drops_bits_that_do_not_exist() -> None:
    copy = PM.AcpiPm.from_state(
        PM.AcpiPmState(enable=0xFFFF, control=0), power_off=Calls(), s5_slp_typ=L.S5_SLP_TYP
    )
    assert copy.read(PM.REG_PM1_EN, 2) == PM.PM1_EN_MASK
    assert copy.read(PM.REG_PM1_CNT, 2) & PM.SCI_EN  # always in ACPI mode
    with pytest.raises(DeviceError):
        PM.AcpiPm.from_state(PM.AcpiPmState(status="x"), power_off=Calls(), s5_slp_typ=5)  # type: ignore[arg-type]


def test_reset_control_round_trip_keeps_the_reset_type() -> None:
    rcr = PM.ResetControl(reset=Calls())
    rcr.write(0, 1, PM.RCR_SYS_RST)
    resets = Calls()
    copy = PM.ResetControl.from_state(rcr.state(), reset=resets)
    assert copy.read(0, 1) == PM.RCR_SYS_RST
    copy.write(0, 1, PM.RCR_SYS_RST | PM.RCR_RST_CPU)
    assert resets.count == 1


def test_debug_exit_round_trip_keeps_the_port_behaviour() -> None:
    statuses: list[int] = []
    copy = DebugExit.from_state(DebugExit(on_exit=print).state(), on_exit=statuses.append, width=1)
    assert copy.read(0, 4) == 0xFFFF_FFFF
    copy.write(0, 4, 0x1234)
    assert statuses == [(0x34 << 1) | 1]
    with pytest.raises(DeviceError):
        DebugExit.from_state(DebugExitState(version=2), on_exit=print)


def test_every_device_class_is_in_the_round_trip_list() -> None:
    """A device added to kvmlite/devices/ without a state record (or without a place above) fails here."""
    import importlib
    import inspect
    import pkgutil

    import kvmlite.devices

    listed = {cls for cls, _ in DEVICES}
    for info in pkgutil.iter_modules(kvmlite.devices.__path__):
        module = importlib.import_module(f"kvmlite.devices.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            is_device = hasattr(cls, "read") and hasattr(cls, "write") and not getattr(cls, "_is_protocol", 0)
            if cls.__module__ == module.__name__ and is_device and cls not in listed | PARTS:
                assert not hasattr(cls, "state"), f"{cls.__name__} snapshots but is not tested here"
                pytest.fail(f"{module.__name__}.{cls.__name__} has no state()/from_state()")
