"""AML, the byte code of ACPI's DSDT: just the objects kvmlite's tables need, encoded by hand.

Names, integers, packages, scopes and devices (ACPI 6.4, 20.2), the resource
descriptors of a ``_CRS`` buffer (6.4), and :func:`pci_host_bridge`, the
``\\_SB.PCI0`` device that tells an OS where the PCI root bus is, which
I/O and memory ranges it decodes, and how each slot's INTA# reaches a GSI
(``_PRT``), plus the motherboard device reserving the ECAM window.  The
real ``iasl`` decompiles and recompiles what these produce without a
warning (tests/test_acpi.py).
"""

from __future__ import annotations

import struct

from kvmlite.errors import ConfigError

# --- AML opcodes ----------------------------------------------------------------------------------
AML_ZERO, AML_ONE = 0x00, 0x01
AML_BYTE_PREFIX, AML_WORD_PREFIX, AML_DWORD_PREFIX, AML_QWORD_PREFIX = 0x0A, 0x0B, 0x0C, 0x0E
AML_NAME_OP = 0x08
AML_PACKAGE_OP = 0x12
AML_SCOPE_OP = 0x10
AML_BUFFER_OP = 0x11
AML_EXT_PREFIX, AML_DEVICE_OP = 0x5B, 0x82

# --- resource descriptors -------------------------------------------------------------------------
RES_IO = 0x47  # small item: IO port range, 16-bit decode
RES_END_TAG = 0x79
RES_MEMORY32_FIXED = 0x86
RES_DWORD_ADDRESS = 0x87
RES_WORD_ADDRESS = 0x88
RES_EXTENDED_IRQ = 0x89
AML_STRING_PREFIX = 0x0D
#: Extended Interrupt flags: ResourceConsumer, Level, ActiveHigh, Exclusive.
IRQ_CONSUMER_LEVEL_HIGH = 0x01
SPACE_MEMORY, SPACE_IO, SPACE_BUS = 0, 1, 2
ADDR_MIN_FIXED, ADDR_MAX_FIXED = 1 << 2, 1 << 3
IO_ENTIRE_RANGE = 0x03
MEM_READ_WRITE = 0x01
PCI_ANY_FUNCTION = 0xFFFF


def aml_pkg_length(content_len: int) -> bytes:
    """PkgLength for ``content_len`` bytes following it (the encoding counts its own bytes too)."""
    for extra in range(4):
        total = content_len + 1 + extra
        if extra == 0 and total < 0x40:
            return bytes([total])
        if extra and total < 1 << (4 + 8 * extra):
            out = [(extra << 6) | (total & 0xF)]
            out += [(total >> (4 + 8 * i)) & 0xFF for i in range(extra)]
            return bytes(out)
    raise ConfigError(f"an AML package of {content_len} bytes is too long to encode")


def aml_integer(value: int) -> bytes:
    """The shortest AML encoding of an unsigned integer."""
    if value < 0 or value >= 1 << 64:
        raise ConfigError(f"AML integers are unsigned 64-bit: {value} does not fit")
    if value in (0, 1):
        return bytes([AML_ZERO if value == 0 else AML_ONE])
    for prefix, size in ((AML_BYTE_PREFIX, 1), (AML_WORD_PREFIX, 2), (AML_DWORD_PREFIX, 4)):
        if value < 1 << (8 * size):
            return bytes([prefix]) + value.to_bytes(size, "little")
    return bytes([AML_QWORD_PREFIX]) + value.to_bytes(8, "little")


def aml_name_seg(name: str) -> bytes:
    """A 4-character NameSeg, padded with '_' as ASL does (``_S5`` -> ``_S5_``)."""
    seg = name.ljust(4, "_").encode("ascii")
    if len(seg) != 4 or not (seg[:1].isupper() or seg[:1] == b"_"):
        raise ConfigError(f"{name!r} is not an ACPI name segment")
    return seg


def aml_package(elements: list[int]) -> bytes:
    """``Package () {integers...}``."""
    if len(elements) > 0xFF:
        raise ConfigError("an AML Package holds at most 255 elements")
    content = bytes([len(elements)]) + b"".join(aml_integer(e) for e in elements)
    return bytes([AML_PACKAGE_OP]) + aml_pkg_length(len(content)) + content


def aml_name(name: str, obj: bytes) -> bytes:
    """``Name (NAME, obj)`` in the current scope."""
    return bytes([AML_NAME_OP]) + aml_name_seg(name) + obj


def aml_package_of(elements: list[bytes]) -> bytes:
    """``Package () {objects...}`` of already encoded objects (packages in a package)."""
    if len(elements) > 0xFF:
        raise ConfigError("an AML Package holds at most 255 elements")
    content = bytes([len(elements)]) + b"".join(elements)
    return bytes([AML_PACKAGE_OP]) + aml_pkg_length(len(content)) + content


def aml_scope(name_: str, body: bytes) -> bytes:
    """``Scope (NAME) {body}`` for a name at the table's root, such as ``_SB`` (iasl's form of ``\\_SB``)."""
    name = aml_name_seg(name_)
    return bytes([AML_SCOPE_OP]) + aml_pkg_length(len(name) + len(body)) + name + body


def aml_device(name: str, body: bytes) -> bytes:
    """``Device (NAME) {body}``."""
    seg = aml_name_seg(name)
    return bytes([AML_EXT_PREFIX, AML_DEVICE_OP]) + aml_pkg_length(len(seg) + len(body)) + seg + body


def aml_buffer(data: bytes) -> bytes:
    """``Buffer () {bytes}``."""
    content = aml_integer(len(data)) + data
    return bytes([AML_BUFFER_OP]) + aml_pkg_length(len(content)) + content


def aml_string(text: str) -> bytes:
    """A string constant (ASCII, NUL-terminated)."""
    return bytes([AML_STRING_PREFIX]) + text.encode("ascii") + b"\0"


def eisa_id(text: str) -> int:
    """``EisaId ("PNP0A03")``: three letters in 5 bits each, then four hex digits, as a byte-swapped DWord."""
    letters = [ord(c) - 0x40 for c in text[:3]]
    raw = (letters[0] << 26) | (letters[1] << 21) | (letters[2] << 16) | int(text[3:], 16)
    return int.from_bytes(raw.to_bytes(4, "big"), "little")


def resource_template(*descriptors: bytes) -> bytes:
    """``ResourceTemplate () {...}``: the descriptors and an end tag (checksum 0: "trust me")."""
    return aml_buffer(b"".join(descriptors) + bytes([RES_END_TAG, 0]))


def res_word_address(space: int, minimum: int, maximum: int, type_flags: int = 0) -> bytes:
    """WordBusNumber / WordIO: a fixed range the bridge produces."""
    body = struct.pack(
        "<BBBHHHHH", space, ADDR_MIN_FIXED | ADDR_MAX_FIXED, type_flags, 0, minimum, maximum, 0,
        maximum - minimum + 1,
    )  # fmt: skip
    return struct.pack("<BH", RES_WORD_ADDRESS, len(body)) + body


def res_dword_memory(minimum: int, maximum: int) -> bytes:
    """DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite)."""
    body = struct.pack(
        "<BBBIIIII", SPACE_MEMORY, ADDR_MIN_FIXED | ADDR_MAX_FIXED, MEM_READ_WRITE, 0, minimum, maximum, 0,
        maximum - minimum + 1,
    )  # fmt: skip
    return struct.pack("<BH", RES_DWORD_ADDRESS, len(body)) + body


def res_io(base: int, length: int) -> bytes:
    """IO (Decode16, base, base, 1, length): a fixed port range the bridge itself uses."""
    return struct.pack("<BBHHBB", RES_IO, 1, base, base, 1, length)


def res_memory32_fixed(base: int, length: int) -> bytes:
    return struct.pack("<BHBII", RES_MEMORY32_FIXED, 9, MEM_READ_WRITE, base, length)


def res_extended_irq(gsi: int) -> bytes:
    """Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive) {gsi}: one GSI of the IOAPIC."""
    return struct.pack("<BHBBI", RES_EXTENDED_IRQ, 6, IRQ_CONSUMER_LEVEL_HIGH, 1, gsi)


def virtio_mmio_devices(devices: list[tuple[int, int, int]]) -> bytes:
    """``\\_SB.VRnn``: each virtio-mmio register block (base, length, GSI) as Linux's virtio_mmio driver
    finds it through ACPI (``LNRO0005``, as QEMU's microvm describes them), so its GSI is one Linux
    has registered (a GSI above 15 named only on the command line is not)."""
    body = b""
    for index, (base, length, gsi) in enumerate(devices):
        body += aml_device(
            f"VR{index:02X}",
            aml_name("_HID", aml_string("LNRO0005"))
            + aml_name("_UID", aml_integer(index))
            + aml_name("_CRS", resource_template(res_memory32_fixed(base, length), res_extended_irq(gsi))),
        )
    return aml_scope("_SB", body) if body else b""


def pci_host_bridge(
    config_ports: tuple[int, int],
    io_window: tuple[int, int],
    mmio_window: tuple[int, int],
    ecam: tuple[int, int],
    routes: list[tuple[int, int]],
) -> bytes:
    """``\\_SB.PCI0`` (a PCI Express root, bus 0) and ``\\_SB.MRES`` reserving the ECAM window.

    ``config_ports`` is (base, length) of the configuration mechanism's ports,
    ``io_window`` and ``mmio_window`` (base, length) what the bridge forwards,
    ``ecam`` (base, length) the configuration window, ``routes`` (device number,
    GSI) of each slot's INTA#.
    """
    cfg_base, cfg_len = config_ports
    io_base, io_len = io_window
    crs = resource_template(
        res_word_address(SPACE_BUS, 0, 0),
        res_io(cfg_base, cfg_len),
        res_word_address(SPACE_IO, 0, cfg_base - 1, IO_ENTIRE_RANGE),
        res_word_address(SPACE_IO, io_base, io_base + io_len - 1, IO_ENTIRE_RANGE),
        res_dword_memory(mmio_window[0], mmio_window[0] + mmio_window[1] - 1),
    )
    prt = aml_package_of(
        [aml_package([(device << 16) | PCI_ANY_FUNCTION, 0, 0, gsi]) for device, gsi in sorted(routes)]
    )
    pci0 = aml_device(
        "PCI0",
        aml_name("_HID", aml_integer(eisa_id("PNP0A08")))
        + aml_name("_CID", aml_integer(eisa_id("PNP0A03")))
        + aml_name("_SEG", aml_integer(0))
        + aml_name("_BBN", aml_integer(0))
        + aml_name("_UID", aml_integer(0))
        + aml_name("_CRS", crs)
        + aml_name("_PRT", prt),
    )
    mres = aml_device(
        "MRES",
        aml_name("_HID", aml_integer(eisa_id("PNP0C02")))
        + aml_name("_UID", aml_integer(1))
        + aml_name("_CRS", resource_template(res_memory32_fixed(*ecam))),
    )
    return aml_scope("_SB", pci0 + mres)
