"""ACPI tables: byte layout, checksums, what they tell an OS, and the real iasl's reading of them."""

from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from kvmlite.errors import ConfigError
from kvmlite.firmware import acpi as A
from kvmlite.loaders import bootparams as B
from kvmlite.loaders import bzimage, pvh
from kvmlite.loaders.multiboot import E820_RESERVED, e820_map
from kvmlite.memory.guest import GuestMemory
from kvmlite.vmm import layout as L
from tests.images import make_bzimage, make_vmlinux

MIB = 1 << 20
HAVE_IASL = shutil.which("iasl") is not None


@pytest.fixture
def memory() -> GuestMemory:
    mem = GuestMemory.for_pc(64 * MIB)
    yield mem
    mem.close()


def tables_in(memory: GuestMemory, cpus: int = 2) -> dict[bytes, bytes]:
    rsdp = A.write_tables(memory, A.AcpiPlatform(cpus=cpus))
    return A.read_tables(memory, rsdp)


def madt_entries(madt: bytes) -> list[tuple[int, bytes]]:
    out, off = [], A.SDT_HEADER_LEN + 8
    while off < len(madt):
        kind, length = madt[off], madt[off + 1]
        assert length >= 2, "a MADT entry of length < 2 would loop forever"
        out.append((kind, madt[off : off + length]))
        off += length
    assert off == len(madt), "the entries must end exactly at the table's end"
    return out


# --- structure ------------------------------------------------------------------------------------


def test_rsdp_is_revision_2_with_both_checksums_at_a_16_byte_boundary(memory: GuestMemory) -> None:
    rsdp_addr = A.write_tables(memory, A.AcpiPlatform())
    raw = memory.read(rsdp_addr, A.RSDP_LEN)
    assert rsdp_addr % 16 == 0
    assert raw[:8] == b"RSD PTR " and raw[15] == 2 and raw[9:15] == b"KVMLIT"
    assert sum(raw[:20]) & 0xFF == 0 and sum(raw) & 0xFF == 0
    assert struct.unpack_from("<I", raw, 20)[0] == A.RSDP_LEN


def test_an_os_scanning_the_bios_area_finds_the_rsdp(memory: GuestMemory) -> None:
    rsdp_addr = A.write_tables(memory, A.AcpiPlatform())
    assert A.find_rsdp(memory) == rsdp_addr


def test_every_table_is_reachable_from_the_rsdp_with_valid_checksum_and_length(memory: GuestMemory) -> None:
    tables = tables_in(memory)
    assert set(tables) == {b"RSD PTR ", b"XSDT", b"RSDT", b"FACP", b"APIC", b"DSDT", b"FACS"}
    for sig, data in tables.items():
        if sig in (b"RSD PTR ", b"FACS"):
            continue
        header = A.parse_sdt_header(data)
        assert header.length == len(data) and sum(data) & 0xFF == 0
        assert header.oem_id == b"KVMLIT"
    assert len(tables[b"FACS"]) == 64 and struct.unpack_from("<I", tables[b"FACS"], 4)[0] == 64


def test_xsdt_and_rsdt_list_the_same_tables(memory: GuestMemory) -> None:
    tables = tables_in(memory)
    x = struct.unpack_from("<2Q", tables[b"XSDT"], A.SDT_HEADER_LEN)
    r = struct.unpack_from("<2I", tables[b"RSDT"], A.SDT_HEADER_LEN)
    assert x == r and len(tables[b"XSDT"]) == A.SDT_HEADER_LEN + 16


def test_tables_sit_in_memory_the_e820_map_reserves(memory: GuestMemory) -> None:
    tables = A.build_tables(A.AcpiPlatform(cpus=A.MAX_CPUS))
    reserved = [(b, b + n) for b, n, kind in e820_map(memory) if kind == E820_RESERVED]
    for addr, data in tables.blobs.values():
        assert any(lo <= addr and addr + len(data) <= hi for lo, hi in reserved), hex(addr)
    assert A.build_tables(A.AcpiPlatform()).blobs[b"FACS"][0] % 64 == 0


@pytest.mark.parametrize("cpus", [0, A.MAX_CPUS + 1])
def test_cpu_counts_the_madt_cannot_describe_are_refused(cpus: int) -> None:
    with pytest.raises(ConfigError, match="CPUs"):
        A.build_tables(A.AcpiPlatform(cpus=cpus))


# --- FADT -------------------------------------------------------------------------------------------


def test_fadt_describes_the_pm_device_the_sci_and_the_reset_register(memory: GuestMemory) -> None:
    fadt = tables_in(memory)[b"FACP"]
    assert len(fadt) == 276 and fadt[8] == 6
    assert struct.unpack_from("<H", fadt, 46)[0] == 9  # SCI_INT
    assert struct.unpack_from("<I", fadt, 48)[0] == 0  # no SMI_CMD: always in ACPI mode
    pm1a_evt, _, pm1a_cnt = struct.unpack_from("<III", fadt, 56)
    assert (pm1a_evt, pm1a_cnt) == (L.PM1_EVT_BLK, L.PM1_CNT_BLK) == (0x600, 0x604)
    assert (fadt[88], fadt[89]) == (4, 2)  # PM1_EVT_LEN, PM1_CNT_LEN
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert flags & A.FADT_RESET_REG_SUP
    assert struct.unpack_from("<BBBBQ", fadt, 116) == (1, 8, 0, 1, 0xCF9)  # SystemIO, byte, port 0xcf9
    assert fadt[128] == 0x06
    assert struct.unpack_from("<Q", fadt, 140)[0] == struct.unpack_from("<I", fadt, 40)[0]  # X_DSDT == DSDT
    assert struct.unpack_from("<BBBBQ", fadt, 148) == (1, 32, 0, 2, L.PM1_EVT_BLK)  # X_PM1a_EVT_BLK
    assert struct.unpack_from("<BBBBQ", fadt, 172) == (1, 16, 0, 2, L.PM1_CNT_BLK)  # X_PM1a_CNT_BLK


def test_dsdt_is_exactly_the_s5_package_in_aml(memory: GuestMemory) -> None:
    dsdt = tables_in(memory)[b"DSDT"]
    # Name (_S5_, Package (4) {5, 5, 0, 0})
    assert dsdt[A.SDT_HEADER_LEN :] == bytes.fromhex("08 5F53355F 12 08 04 0A05 0A05 00 00")
    assert dsdt[8] == 2  # revision 2: 64-bit integers


# --- MADT -------------------------------------------------------------------------------------------


def test_madt_lists_one_enabled_local_apic_per_cpu_with_apic_id_equal_to_index(memory: GuestMemory) -> None:
    madt = tables_in(memory, cpus=4)[b"APIC"]
    assert struct.unpack_from("<II", madt, A.SDT_HEADER_LEN) == (0xFEE0_0000, 1)
    lapics = [struct.unpack("<BBBBI", e) for kind, e in madt_entries(madt) if kind == 0]
    assert [(uid, apic, flags & 1) for _, _, uid, apic, flags in lapics] == [(i, i, 1) for i in range(4)]


def test_madt_ioapic_takes_the_id_after_the_cpus_and_gsi_base_0(memory: GuestMemory) -> None:
    madt = tables_in(memory, cpus=3)[b"APIC"]
    (ioapic,) = [struct.unpack("<BBBBII", e) for kind, e in madt_entries(madt) if kind == 1]
    assert ioapic[2:] == (3, 0, 0xFEC0_0000, 0)


def test_madt_overrides_only_the_sci_level_high_and_keeps_irq0_on_pin_0(memory: GuestMemory) -> None:
    madt = tables_in(memory)[b"APIC"]
    overrides = [struct.unpack("<BBBBIH", e)[2:] for kind, e in madt_entries(madt) if kind == 2]
    # KVM's default routing delivers the PIT's GSI 0 to IOAPIC pin 0: an IRQ0->GSI2 override would be wrong
    assert overrides == [(0, 9, 9, 0b1101)]


def test_madt_without_an_ioapic_lists_only_the_cpus_and_the_8259s() -> None:
    """``--irqchip userspace``: kvmlite's own PIC pair is all there is, so neither an IOAPIC nor an
    override onto one is described; PCAT_COMPAT still says the 8259s are there."""
    madt = A.build_madt(A.AcpiPlatform(cpus=1, ioapic=False))
    assert struct.unpack_from("<II", madt, A.SDT_HEADER_LEN)[1] & 1  # PCAT_COMPAT
    assert sorted({kind for kind, _ in madt_entries(madt)}) == [0, 4]  # local APIC, LAPIC NMI


def test_machine_describes_an_ioapic_only_with_the_kernel_irqchip(tmp_path: Path) -> None:
    from kvmlite.vmm.machine import Machine, MachineConfig
    from tests.conftest import KVM_OK

    for irqchip, has_ioapic in (("userspace", False), ("kernel", True)):
        if irqchip == "kernel" and not KVM_OK:
            continue
        backend = "kvm" if KVM_OK else "emu"
        config = MachineConfig(kernel=tmp_path / "unused", backend=backend, memory_mib=4, irqchip=irqchip)
        machine = Machine(config)
        try:
            machine.attach_pc_devices()
            madt = A.read_tables(machine.memory, machine.write_acpi_tables())[b"APIC"]
            assert any(kind == 1 for kind, _ in madt_entries(madt)) == has_ioapic
            assert any(kind == 2 for kind, _ in madt_entries(madt)) == has_ioapic
        finally:
            machine.close()


def test_madt_grows_with_the_cpu_count(memory: GuestMemory) -> None:
    one = A.build_madt(A.AcpiPlatform(cpus=1))
    many = A.build_madt(A.AcpiPlatform(cpus=A.MAX_CPUS))
    assert len(many) - len(one) == 8 * (A.MAX_CPUS - 1)


# --- AML primitives -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "encoded"),
    [(0, "01"), (62, "3F"), (63, "4104"), (0xFFD, "4FFF"), (0xFFE, "8100 01"), (0x10_0000, "C4 000001")],
)
def test_pkg_length_counts_its_own_bytes(content: int, encoded: str) -> None:
    assert A.aml_pkg_length(content) == bytes.fromhex(encoded)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (5, "0A05"),
        (0x1234, "0B3412"),
        (0x1_0000, "0C00000100"),
        (1 << 32, "0E" + "0000000001000000"),
    ],
)
def test_aml_integers_take_the_shortest_encoding(value: int, encoded: str) -> None:
    assert A.aml_integer(value) == bytes.fromhex(encoded)


# --- the boot protocols pass the address -----------------------------------------------------------------


def test_pvh_start_info_carries_the_rsdp(memory: GuestMemory) -> None:
    pvh.load(memory, make_vmlinux(), rsdp=0xF0000)
    info = pvh.HvmStartInfo.from_buffer_copy(
        memory.read(pvh.START_INFO_ADDR, ctypes.sizeof(pvh.HvmStartInfo))
    )
    assert info.rsdp_paddr == 0xF0000


def test_bzimage_zero_page_carries_the_rsdp(memory: GuestMemory) -> None:
    bzimage.load(memory, make_bzimage(), rsdp=0xF0000)
    bp = B.BootParams.from_buffer_copy(memory.read(bzimage.ZERO_PAGE_ADDR, B.ZERO_PAGE_SIZE))
    assert bp.acpi_rsdp_addr == 0xF0000


# --- the reference disassembler ---------------------------------------------------------------------------


@pytest.mark.skipif(not HAVE_IASL, reason="needs iasl (Debian package acpica-tools) to check the tables")
def test_iasl_reads_every_table_as_we_meant_it(tmp_path: Path) -> None:
    tables = A.build_tables(A.AcpiPlatform(cpus=2))
    text = {}
    for sig in (b"FACP", b"APIC", b"DSDT", b"XSDT", b"FACS"):
        path = tmp_path / f"{sig.decode()}.dat"
        path.write_bytes(tables.blobs[sig][1])
        run = subprocess.run(["iasl", "-d", str(path)], capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "error" not in (run.stdout + run.stderr).lower().replace("0 errors", "")
        text[sig] = path.with_suffix(".dsl").read_text()
    assert "Invalid" not in "".join(text.values())
    assert "SCI Interrupt : 0009" in text[b"FACP"]
    assert "Reset Register Supported (V2) : 1" in text[b"FACP"]
    assert "Address : 0000000000000CF9" in text[b"FACP"]
    assert text[b"APIC"].count("[Processor Local APIC]") == 2
    assert "Name (_S5, Package (0x04)" in text[b"DSDT"]


@pytest.mark.skipif(not HAVE_IASL, reason="needs iasl (Debian package acpica-tools) to check the tables")
@pytest.mark.parametrize(("cpus", "pci"), [(1, False), (2, False), (8, False), (2, True)])
def test_iasl_recompiles_every_table_to_the_same_bytes_without_a_warning(
    tmp_path: Path, cpus: int, pci: bool
) -> None:
    """Disassemble, compile again with iasl's own checks on (-vs: no signon), compare byte for byte.

    iasl's compiler validates every field it knows (GAS widths against block lengths, MADT entry
    lengths, AML package counts) and warns where a table is legal but odd; a table it rebuilds
    identically was read field for field as we meant it.  Only the creator ID and revision (iasl
    puts its own) and therefore the checksum may differ.
    """
    if pci:  # the PCI host bridge with two slots routed (DSDT) and the ECAM window (MCFG)
        platform = A.AcpiPlatform(cpus=cpus, ecam=(L.ECAM_BASE, 1), pci_routes=((1, 16), (2, 17)))
    else:
        platform = A.AcpiPlatform(cpus=cpus)
    tables = A.build_tables(platform)
    for sig in (b"FACP", b"APIC", b"DSDT", b"XSDT", b"RSDT", b"FACS", *([b"MCFG"] if pci else [])):
        name = sig.decode().lower()
        original = tables.blobs[sig][1]
        (tmp_path / f"{name}.dat").write_bytes(original)
        run = subprocess.run(
            ["iasl", "-d", f"{name}.dat"], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert run.returncode == 0, run.stdout + run.stderr
        run = subprocess.run(
            ["iasl", "-vs", "-p", f"re_{name}", f"{name}.dsl"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "0 Errors, 0 Warnings, 0 Remarks" in run.stdout, f"{sig!r}: {run.stdout}"
        rebuilt = (tmp_path / f"re_{name}.aml").read_bytes()
        assert len(rebuilt) == len(original), sig
        if sig == b"FACS":  # no header: nothing for iasl to sign
            assert rebuilt == original
            continue
        skip = set(range(28, 36)) | {9}  # creator ID and revision; the checksum over them
        assert [b for i, b in enumerate(rebuilt) if i not in skip] == [
            b for i, b in enumerate(original) if i not in skip
        ], sig
        assert sum(rebuilt) & 0xFF == 0


@pytest.mark.skipif(not HAVE_IASL, reason="needs iasl (Debian package acpica-tools) to check the tables")
def test_dsdt_describes_virtio_mmio_devices_as_linux_finds_them(tmp_path: Path) -> None:
    """LNRO0005 with its register block and a level, active-high GSI: Linux registers that GSI from
    ACPI (one above 15 named only on the command line fails virtio_mmio's probe with -EINVAL)."""
    platform = A.AcpiPlatform(cpus=1, virtio_mmio=((0xD000_0000, 0x200, 16), (0xD000_1000, 0x200, 17)))
    path = tmp_path / "dsdt.dat"
    path.write_bytes(A.build_tables(platform).blobs[b"DSDT"][1])
    run = subprocess.run(["iasl", "-d", str(path)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    text = " ".join(path.with_suffix(".dsl").read_text().split())
    assert text.count('Name (_HID, "LNRO0005")') == 2
    assert "Memory32Fixed (ReadWrite, 0xD0001000, // Address Base 0x00000200, // Address Length" in text
    assert "Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, ) { 0x00000011, }" in text
    no_ioapic = A.AcpiPlatform(cpus=1, virtio_mmio=platform.virtio_mmio, ioapic=False)
    assert b"LNRO0005" not in A.build_tables(no_ioapic).blobs[b"DSDT"][1]
