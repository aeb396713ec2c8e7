"""ACPI tables for kvmlite's PC: RSDP, XSDT/RSDT, FADT, FACS, DSDT, MADT, byte for byte.

An unmodified Linux learns three things from them that it has no other way to
learn on a BIOS-less machine: how many CPUs there are and their APIC IDs
(MADT), where the IOAPIC is and how ISA interrupts reach it (MADT), and how
to power off and reset (FADT + the DSDT's ``\\_S5_``, served by
:mod:`kvmlite.devices.acpi_pm`).

Where they live: the BIOS area [0xF0000, 0x100000), which
:func:`kvmlite.loaders.multiboot.e820_map` reports as reserved, so the
kernel never hands it out as RAM.  The RSDP comes first, at 0xF0000 (16-byte
aligned), where Linux's scan of 0xE0000-0xFFFFF finds it even when no boot
protocol field (``boot_params.acpi_rsdp_addr``, ``hvm_start_info.rsdp_paddr``)
passes its address.  Everything fits in a few KiB for up to
:data:`MAX_CPUS` CPUs.

The tables describe fixed ACPI hardware (not "hardware-reduced" ACPI as
Firecracker and cloud-hypervisor do): a PM1a event/control block in I/O space
and the SCI on IRQ 9 as QEMU's PIIX4 PM, and the 0xCF9 reset register with
``RESET_REG_SUP``.  There is no SMI_CMD port: the machine is always in ACPI
mode.  The FADT is revision 6 (ACPI 6.0 layout, 276 bytes), the DSDT revision
2 (64-bit AML integers).

Interrupt source overrides and KVM's routing
--------------------------------------------
QEMU installs its own GSI routing (``kvm_pc_setup_irq_routing``): GSI 0 goes
to IOAPIC pin 2, and its MADT says so with the classic "IRQ 0 -> GSI 2"
override.  kvmlite keeps KVM's *default* routing instead
(``kvm_setup_default_irq_routing``): GSI n goes to PIC input n (n < 16) and
IOAPIC pin n, and the in-kernel PIT raises GSI 0, which lands on IOAPIC pin
0.  So ISA IRQ 0 is identity-mapped here and the MADT has *no* IRQ 0
override: declaring one would send Linux's timer setup to pin 2, where no
PIT interrupt ever arrives.  The one override kept is QEMU's for the SCI:
IRQ 9 -> GSI 9, level-triggered, active high (without it Linux assumes the
ACPI default for the SCI, level active-low, and KVM's IOAPIC would see the
line inverted).

Checking them
-------------
``tests/test_acpi.py`` has iasl (acpica-tools) disassemble every table and
compile it again with its warnings on: the tables must come back byte for byte.
A Linux built without ``CONFIG_PCI`` prints ``ACPI Error: AE_BAD_PARAMETER,
During Region initialization`` and runs without ACPI (so halts instead of
powering off) whatever the tables say: its ACPICA still installs a default
handler for the PCI_Config space, which it was built without
(``acpi_ev_install_space_handler`` in Linux 6.1).  kvmlite's microVM kernel
configuration (``kvmlite/tools/microvm.config``) has PCI for that reason too.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvmlite.errors import ConfigError, GuestMemoryError, KvmliteError
from kvmlite.firmware.aml import (  # noqa: F401  (aml_pkg_length and aml_integer: used by the tests through here)
    aml_integer,
    aml_name,
    aml_package,
    aml_pkg_length,
    pci_host_bridge,
    virtio_mmio_devices,
)
from kvmlite.memory.guest import GuestMemory
from kvmlite.vmm import layout as L

if TYPE_CHECKING:
    from kvmlite.vmm.registry import DeviceRegistry

log = logging.getLogger(__name__)

# --- placement --------------------------------------------------------------------------------
TABLES_BASE = L.ACPI_TABLES_BASE  # reserved in the e820 map
TABLES_END = L.ACPI_TABLES_END
RSDP_ALIGN = 16
TABLE_ALIGN = 16
FACS_ALIGN = 64  # the FACS must be 64-byte aligned
#: Linux scans this range for "RSD PTR " on 16-byte boundaries when told no address.
RSDP_SCAN_START, RSDP_SCAN_END = 0xE_0000, 0x10_0000

# --- identity -----------------------------------------------------------------------------------
OEM_ID = b"KVMLIT"
OEM_TABLE_ID = b"KVMLITE "
OEM_REVISION = 1
CREATOR_ID = b"KVML"
CREATOR_REVISION = 1
HYPERVISOR_VENDOR = b"KVMLITE\0"

# --- signatures and revisions -------------------------------------------------------------------
RSDP_SIGNATURE = b"RSD PTR "
RSDP_REVISION = 2  # ACPI 2.0+: has the XSDT address
RSDP_V1_LEN = 20  # the part the first checksum covers
RSDP_LEN = 36
SDT_HEADER_LEN = 36
XSDT_REVISION = RSDT_REVISION = 1
FADT_REVISION, FADT_MINOR_REVISION = 6, 0
FADT_LEN = 276
FACS_LEN = 64
FACS_VERSION = 2
DSDT_REVISION = 2  # 64-bit AML integers
MADT_REVISION = 1  # what QEMU 7.2 uses; nothing kvmlite lists needs a later one
MCFG_REVISION = 1

# --- FADT fields --------------------------------------------------------------------------------
PM_PROFILE_UNSPECIFIED = 0
P_LVL2_LAT_NONE = 0x0FFF  # > 100: C2 not supported
P_LVL3_LAT_NONE = 0x0FFF  # > 1000: C3 not supported
RTC_CENTURY_INDEX = 0x32  # kvmlite.devices.rtc keeps the century there
FADT_WBINVD = 1 << 0
FADT_PROC_C1 = 1 << 2
FADT_SLP_BUTTON = 1 << 5  # no fixed sleep button (the fixed power button exists)
FADT_RESET_REG_SUP = 1 << 10
FADT_FLAGS = FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_RESET_REG_SUP
BOOT_ARCH_LEGACY_DEVICES = 1 << 0  # ISA devices: COM1, RTC, PIT
BOOT_ARCH_8042 = 1 << 1
BOOT_ARCH_VGA_NOT_PRESENT = 1 << 2
IAPC_BOOT_ARCH = BOOT_ARCH_LEGACY_DEVICES | BOOT_ARCH_8042 | BOOT_ARCH_VGA_NOT_PRESENT

# --- Generic Address Structure ----------------------------------------------------------------
GAS_SYSTEM_IO = 1
GAS_ACCESS_BYTE, GAS_ACCESS_WORD = 1, 2

# --- MADT ---------------------------------------------------------------------------------------
MADT_PCAT_COMPAT = 1 << 0  # dual 8259s present (KVM's in-kernel PIC)
MADT_LOCAL_APIC, MADT_IO_APIC, MADT_INT_OVERRIDE, MADT_LAPIC_NMI = 0, 1, 2, 4
LAPIC_ENABLED = 1 << 0
ISA_BUS = 0
MPS_ACTIVE_HIGH = 0b01
MPS_LEVEL = 0b11 << 2
ALL_PROCESSORS = 0xFF
LINT1 = 1
#: APIC IDs 0..N-1 for the CPUs and N for the IOAPIC must fit xAPIC's 8 bits with 0xFF left as broadcast.
MAX_CPUS = 254

_SDT_HEADER = struct.Struct("<4sIBB6s8sI4sI")
_RSDP = struct.Struct("<8sB6sBIIQB3s")
_GAS = struct.Struct("<BBBBQ")
_FACS = struct.Struct("<4sIIIIIQB3sI24s")


@dataclass(frozen=True)
class AcpiPlatform:
    """What the tables describe: the CPUs and where the machine's devices sit.

    The defaults are :mod:`kvmlite.vmm.layout`'s; a machine describes what it
    really attached with :meth:`from_registry`.
    """

    cpus: int = 1
    pm1_evt_blk: int = L.PM1_EVT_BLK
    pm1_evt_len: int = L.PM1_EVT_LEN
    pm1_cnt_blk: int = L.PM1_CNT_BLK
    pm1_cnt_len: int = L.PM1_CNT_LEN
    sci_irq: int = L.IRQ_SCI
    reset_port: int = L.RESET_PORT
    reset_value: int = L.RESET_VALUE
    s5_slp_typ: int = L.S5_SLP_TYP
    lapic_address: int = L.LAPIC_ADDRESS
    ioapic_address: int = L.IOAPIC_ADDRESS
    #: The PCI ECAM window (base, number of buses from bus 0) the MCFG announces; None: no PCI.
    ecam: tuple[int, int] | None = None
    #: (device number, GSI) of each PCI slot's INTA#, for the DSDT's ``_PRT``.
    pci_routes: tuple[tuple[int, int], ...] = ()
    #: Whether the machine has an IOAPIC (the in-kernel irqchip); without one (``--irqchip userspace``:
    #: kvmlite's own 8259 pair only) the MADT lists no IOAPIC and no interrupt source override.
    ioapic: bool = True
    #: (base, length, GSI) of each virtio-mmio register block, described in the DSDT.
    virtio_mmio: tuple[tuple[int, int, int], ...] = ()

    @classmethod
    def from_registry(cls, registry: DeviceRegistry, cpus: int, ioapic: bool = True) -> AcpiPlatform:
        """The platform as attached: the PM blocks, SCI and reset register where the builder put them."""
        pm, reset = registry["acpi-pm"], registry["reset-control"]
        evt, cnt = pm.slot("pm1_evt"), pm.slot("pm1_cnt")
        pci = registry.get("pcihost")
        ecam = pci.slot("ecam") if pci is not None else None
        return cls(
            cpus=cpus,
            pm1_evt_blk=evt.base,
            pm1_evt_len=evt.length,
            pm1_cnt_blk=cnt.base,
            pm1_cnt_len=cnt.length,
            sci_irq=pm.irqs[0],
            reset_port=reset.pio[0].base,
            s5_slp_typ=pm.device.s5_slp_typ,
            ecam=(ecam.base, ecam.length // L.ECAM_BUS_SIZE) if ecam is not None else None,
            pci_routes=tuple((r.pci >> 3, r.irqs[0]) for r in registry if r.pci is not None and r.irqs),
            ioapic=ioapic,
            virtio_mmio=tuple(
                (r.mmio[0].base, r.mmio[0].length, r.irqs[0])
                for r in registry
                if r.type.startswith("virtio-") and r.type.endswith("-device") and r.mmio and r.irqs
            ),
        )

    def validate(self) -> None:
        if not 1 <= self.cpus <= MAX_CPUS:
            raise ConfigError(f"ACPI tables describe 1 to {MAX_CPUS} CPUs, not {self.cpus}")
        if not 0 <= self.s5_slp_typ <= 7:
            raise ConfigError(f"SLP_TYP is a 3-bit field: {self.s5_slp_typ} does not fit")


@dataclass(frozen=True)
class SdtHeader:
    """The 36-byte header every ACPI table but the RSDP and FACS starts with."""

    signature: bytes
    length: int
    revision: int
    checksum: int
    oem_id: bytes
    oem_table_id: bytes
    oem_revision: int
    creator_id: bytes
    creator_revision: int


# --- primitives ---------------------------------------------------------------------------------
def checksum(data: bytes | bytearray) -> int:
    """The byte that makes ``data`` (with it in place of a zero) sum to 0 mod 256."""
    return -sum(data) & 0xFF


def _with_checksum(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] = 0
    out[at] = checksum(out)
    return bytes(out)


def sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """A complete table: header (with length and checksum) followed by ``body``."""
    header = _SDT_HEADER.pack(
        signature,
        SDT_HEADER_LEN + len(body),
        revision,
        0,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        CREATOR_ID,
        CREATOR_REVISION,
    )
    return _with_checksum(header + body, 9)


def gas(address: int, bit_width: int, access_size: int, space: int = GAS_SYSTEM_IO) -> bytes:
    """A Generic Address Structure (12 bytes); a zero address means "not present"."""
    if not address:
        return bytes(_GAS.size)
    return _GAS.pack(space, bit_width, 0, access_size, address)


# --- tables -----------------------------------------------------------------------------------------
def build_rsdp(xsdt_addr: int, rsdt_addr: int = 0) -> bytes:
    """The Root System Description Pointer, revision 2: both checksums filled."""
    raw = bytearray(
        _RSDP.pack(RSDP_SIGNATURE, 0, OEM_ID, RSDP_REVISION, rsdt_addr, RSDP_LEN, xsdt_addr, 0, bytes(3))
    )
    raw[8] = checksum(raw[:RSDP_V1_LEN])  # the ACPI 1.0 checksum: first 20 bytes
    raw[32] = checksum(raw)  # the extended checksum: all 36
    return bytes(raw)


def build_xsdt(tables: list[int]) -> bytes:
    return sdt(b"XSDT", XSDT_REVISION, b"".join(struct.pack("<Q", a) for a in tables))


def build_rsdt(tables: list[int]) -> bytes:
    return sdt(b"RSDT", RSDT_REVISION, b"".join(struct.pack("<I", a) for a in tables))


def build_facs() -> bytes:
    """The Firmware ACPI Control Structure: no checksum, no waking vector (no S3), global lock free."""
    return _FACS.pack(b"FACS", FACS_LEN, 0, 0, 0, 0, 0, FACS_VERSION, bytes(3), 0, bytes(24))


def build_dsdt(platform: AcpiPlatform) -> bytes:
    """``Name (\\_S5, Package () {SLP_TYPa, SLP_TYPb, 0, 0})``, the one sleep state kvmlite offers, and
    the PCI host bridge with its interrupt routing where the machine has PCI."""
    s5 = platform.s5_slp_typ
    body = aml_name("_S5", aml_package([s5, s5, 0, 0]))
    if platform.ecam is not None:
        ecam_base, buses = platform.ecam
        body += pci_host_bridge(
            (L.PCI_CONFIG_ADDRESS, 8),
            (L.PCI_IO_BASE, L.PCI_IO_END - L.PCI_IO_BASE),
            (L.PCI_MMIO32_BASE, L.PCI_MMIO32_SIZE),
            (ecam_base, buses * L.ECAM_BUS_SIZE),
            list(platform.pci_routes),
        )
    if platform.ioapic:
        body += virtio_mmio_devices(list(platform.virtio_mmio))
    return sdt(b"DSDT", DSDT_REVISION, body)


def build_fadt(platform: AcpiPlatform, dsdt_addr: int, facs_addr: int) -> bytes:
    """The Fixed ACPI Description Table, revision 6 (276 bytes)."""
    evt, cnt = platform.pm1_evt_blk, platform.pm1_cnt_blk
    body = b"".join(
        [
            struct.pack(
                "<IIBBHIBBBB",
                facs_addr,  # FIRMWARE_CTRL
                dsdt_addr,  # DSDT (X_DSDT holds it too, as QEMU does)
                0,  # reserved (INT_MODEL in ACPI 1.0)
                PM_PROFILE_UNSPECIFIED,
                platform.sci_irq,
                0,  # SMI_CMD: none, always in ACPI mode
                0,  # ACPI_ENABLE
                0,  # ACPI_DISABLE
                0,  # S4BIOS_REQ
                0,  # PSTATE_CNT
            ),
            # PM1a/b_EVT_BLK, PM1a/b_CNT_BLK, PM2_CNT_BLK, PM_TMR_BLK, GPE0/1_BLK
            struct.pack("<IIIIIIII", evt, 0, cnt, 0, 0, 0, 0, 0),
            struct.pack("<BBBBBBBB", platform.pm1_evt_len, platform.pm1_cnt_len, 0, 0, 0, 0, 0, 0),
            struct.pack(
                "<HHHHBBBBBHBI",
                P_LVL2_LAT_NONE,
                P_LVL3_LAT_NONE,
                0,  # FLUSH_SIZE
                0,  # FLUSH_STRIDE
                0,  # DUTY_OFFSET
                0,  # DUTY_WIDTH
                0,  # DAY_ALRM
                0,  # MON_ALRM
                RTC_CENTURY_INDEX,
                IAPC_BOOT_ARCH,
                0,  # reserved
                FADT_FLAGS,
            ),
            gas(platform.reset_port, 8, GAS_ACCESS_BYTE),  # RESET_REG
            struct.pack("<BHB", platform.reset_value, 0, FADT_MINOR_REVISION),  # + ARM_BOOT_ARCH
            struct.pack("<QQ", 0, dsdt_addr),  # X_FIRMWARE_CTRL (FIRMWARE_CTRL is used), X_DSDT
            gas(evt, 8 * platform.pm1_evt_len, GAS_ACCESS_WORD),  # X_PM1a_EVT_BLK
            gas(0, 0, 0),  # X_PM1b_EVT_BLK
            gas(cnt, 8 * platform.pm1_cnt_len, GAS_ACCESS_WORD),  # X_PM1a_CNT_BLK
            gas(0, 0, 0) * 5,  # X_PM1b_CNT, X_PM2_CNT, X_PM_TMR, X_GPE0, X_GPE1
            gas(0, 0, 0) * 2,  # SLEEP_CONTROL_REG, SLEEP_STATUS_REG (hardware-reduced only)
            HYPERVISOR_VENDOR,
        ]
    )
    table = sdt(b"FACP", FADT_REVISION, body)
    assert len(table) == FADT_LEN, len(table)
    return table


def build_madt(platform: AcpiPlatform) -> bytes:
    """Local APIC per CPU (APIC ID = vCPU index), the IOAPIC (ID = CPU count), the SCI override, LINT1 NMI.

    Without an IOAPIC (``platform.ioapic`` False) neither the IOAPIC nor the override (which maps an ISA
    IRQ onto an IOAPIC input) is listed: the 8259 pair (``PCAT_COMPAT``) is the interrupt controller.
    """
    n = platform.cpus
    entries = [struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, i, i, LAPIC_ENABLED) for i in range(n)]
    if platform.ioapic:
        entries.append(struct.pack("<BBBBII", MADT_IO_APIC, 12, n, 0, platform.ioapic_address, 0))
        # no IRQ 0 -> GSI 2 override: KVM's default routing puts the PIT on pin 0 (see the module docstring)
        entries.append(
            struct.pack(
                "<BBBBIH",
                MADT_INT_OVERRIDE,
                10,
                ISA_BUS,
                platform.sci_irq,
                platform.sci_irq,
                MPS_ACTIVE_HIGH | MPS_LEVEL,
            )
        )
    entries.append(struct.pack("<BBBHB", MADT_LAPIC_NMI, 6, ALL_PROCESSORS, 0, LINT1))
    body = struct.pack("<II", platform.lapic_address, MADT_PCAT_COMPAT) + b"".join(entries)
    return sdt(b"APIC", MADT_REVISION, body)


def build_mcfg(base: int, buses: int) -> bytes:
    """PCI Express memory-mapped configuration: one allocation, segment 0, buses 0..buses-1."""
    entry = struct.pack("<QHBBI", base, 0, 0, buses - 1, 0)
    return sdt(b"MCFG", MCFG_REVISION, bytes(8) + entry)


# --- layout --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AcpiTables:
    """Every table with its guest-physical address; :attr:`rsdp` is what the boot protocols pass."""

    rsdp: int
    blobs: dict[bytes, tuple[int, bytes]]  # signature -> (address, bytes); the RSDP under b"RSD PTR "

    def write(self, memory: GuestMemory) -> None:
        try:
            for addr, data in self.blobs.values():
                memory.write(addr, data)
        except GuestMemoryError as err:
            raise ConfigError(f"the ACPI tables do not fit in guest memory: {err}") from err

    @property
    def end(self) -> int:
        return max(addr + len(data) for addr, data in self.blobs.values())


def _align(addr: int, alignment: int) -> int:
    return -(-addr // alignment) * alignment


def build_tables(platform: AcpiPlatform, base: int = TABLES_BASE, limit: int = TABLES_END) -> AcpiTables:
    """Lay the tables out from ``base`` (RSDP first) and build them with their final addresses."""
    platform.validate()
    if base % RSDP_ALIGN:
        raise ConfigError(f"the RSDP must be {RSDP_ALIGN}-byte aligned, not at {base:#x}")
    rsdp_addr = base
    facs_addr = _align(rsdp_addr + RSDP_LEN, FACS_ALIGN)
    dsdt = build_dsdt(platform)
    dsdt_addr = _align(facs_addr + FACS_LEN, TABLE_ALIGN)
    fadt_addr = _align(dsdt_addr + len(dsdt), TABLE_ALIGN)
    madt = build_madt(platform)
    madt_addr = _align(fadt_addr + FADT_LEN, TABLE_ALIGN)
    listed = [fadt_addr, madt_addr]
    extra: dict[bytes, tuple[int, bytes]] = {}
    end = madt_addr + len(madt)
    if platform.ecam is not None:
        mcfg_addr = _align(end, TABLE_ALIGN)
        extra[b"MCFG"] = (mcfg_addr, build_mcfg(*platform.ecam))
        listed.append(mcfg_addr)
        end = mcfg_addr + len(extra[b"MCFG"][1])
    xsdt_addr = _align(end, TABLE_ALIGN)
    xsdt = build_xsdt(listed)
    rsdt_addr = _align(xsdt_addr + len(xsdt), TABLE_ALIGN)
    rsdt = build_rsdt(listed)
    blobs = {
        RSDP_SIGNATURE: (rsdp_addr, build_rsdp(xsdt_addr, rsdt_addr)),
        b"FACS": (facs_addr, build_facs()),
        b"DSDT": (dsdt_addr, dsdt),
        b"FACP": (fadt_addr, build_fadt(platform, dsdt_addr, facs_addr)),
        b"APIC": (madt_addr, madt),
        b"XSDT": (xsdt_addr, xsdt),
        b"RSDT": (rsdt_addr, rsdt),
        **extra,
    }
    tables = AcpiTables(rsdp_addr, blobs)
    if tables.end > limit:
        raise ConfigError(f"the ACPI tables end at {tables.end:#x}, past their area's end {limit:#x}")
    return tables


def write_tables(memory: GuestMemory, platform: AcpiPlatform, base: int = TABLES_BASE) -> int:
    """Build the tables, write them into guest memory, return the RSDP's address."""
    tables = build_tables(platform, base)
    tables.write(memory)
    log.debug("ACPI tables for %d CPU(s) at %#x..%#x", platform.cpus, base, tables.end)
    return tables.rsdp


# --- reading them back (tests, debugging) -----------------------------------------------------------------
def parse_sdt_header(data: bytes) -> SdtHeader:
    if len(data) < SDT_HEADER_LEN:
        raise KvmliteError(f"an ACPI table header is {SDT_HEADER_LEN} bytes, got {len(data)}")
    return SdtHeader(*_SDT_HEADER.unpack_from(data))


def find_rsdp(memory: GuestMemory, start: int = RSDP_SCAN_START, end: int = RSDP_SCAN_END) -> int | None:
    """Scan as an OS does: the first 16-byte-aligned "RSD PTR " whose 20-byte checksum holds."""
    area = memory.read(start, end - start)
    for off in range(0, len(area) - RSDP_V1_LEN + 1, RSDP_ALIGN):
        if area[off : off + 8] == RSDP_SIGNATURE and sum(area[off : off + RSDP_V1_LEN]) & 0xFF == 0:
            return start + off
    return None


def _read_table(memory: GuestMemory, addr: int) -> bytes:
    header = parse_sdt_header(memory.read(addr, SDT_HEADER_LEN))
    if header.length < SDT_HEADER_LEN:
        raise KvmliteError(f"table {header.signature!r} at {addr:#x} claims {header.length} bytes")
    data = memory.read(addr, header.length)
    if sum(data) & 0xFF:
        raise KvmliteError(f"table {header.signature!r} at {addr:#x} has a bad checksum")
    return bytes(data)


def read_tables(memory: GuestMemory, rsdp_addr: int) -> dict[bytes, bytes]:
    """Follow RSDP -> XSDT -> tables, FADT -> DSDT and FACS, checking every checksum and length."""
    raw = memory.read(rsdp_addr, RSDP_LEN)
    sig, _, _, revision, rsdt_addr, length, xsdt_addr, _, _ = _RSDP.unpack_from(raw)
    if sig != RSDP_SIGNATURE or sum(raw[:RSDP_V1_LEN]) & 0xFF:
        raise KvmliteError(f"no valid RSDP at {rsdp_addr:#x}")
    if revision < 2 or length != RSDP_LEN or sum(raw) & 0xFF:
        raise KvmliteError(f"the RSDP at {rsdp_addr:#x} is not a valid revision-2 RSDP")
    out: dict[bytes, bytes] = {RSDP_SIGNATURE: bytes(raw)}
    xsdt = _read_table(memory, xsdt_addr)
    out[b"XSDT"] = xsdt
    if rsdt_addr:
        out[b"RSDT"] = _read_table(memory, rsdt_addr)
    for (addr,) in struct.iter_unpack("<Q", xsdt[SDT_HEADER_LEN:]):
        table = _read_table(memory, addr)
        out[table[:4]] = table
    fadt = out.get(b"FACP")
    if fadt is not None:
        facs_addr, dsdt_addr = struct.unpack_from("<II", fadt, SDT_HEADER_LEN)
        (x_dsdt,) = struct.unpack_from("<Q", fadt, 140)
        out[b"DSDT"] = _read_table(memory, x_dsdt or dsdt_addr)
        if facs_addr:
            facs = bytes(memory.read(facs_addr, FACS_LEN))
            if facs[:4] != b"FACS":
                raise KvmliteError(f"no FACS at {facs_addr:#x}")
            out[b"FACS"] = facs
    return out
