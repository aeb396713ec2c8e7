"""Hypothesis fuzzing of kvmlite's parsers and device models (issue 17), in the default suite.

Every test runs under the ``fuzz`` settings profile of tests/conftest.py: derandomized (the same
examples on every run) with a fixed number of examples.  What is checked is the contract for
hostile input: a parser either accepts the input or raises a :class:`KvmliteError` (one sentence
for the user); a device model answers any register access at any offset and size without an
exception; the control socket and the gdb stub answer anything with a reply.  Longer campaigns
over the same targets: fuzz/ (atheris), see the README.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmlite.control.api import SCHEMA, MachineApi
from kvmlite.control.server import ControlServer, _Client
from kvmlite.errors import KvmliteError
from kvmlite.gdb.packets import PacketReader
from kvmlite.gdb.stub import GdbStub
from kvmlite.guests import DEMO_GUEST
from kvmlite.loaders import load_kernel
from kvmlite.memory import GuestMemory
from kvmlite.tools import extract_vmlinux, initramfs
from kvmlite.vmm.machine import Machine, MachineConfig
from tests.gdb.fake_target import FakeTarget
from tests.images import make_bzimage, make_disk_image, make_vmlinux

FUZZ = settings.get_profile("fuzz")
SHARED = settings(FUZZ, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: One valid image per format the loaders detect, to mutate.
SEEDS = {
    "multiboot": DEMO_GUEST.read_bytes(),
    "pvh": make_vmlinux(),
    "elf64": make_vmlinux(notes=b""),
    "bzimage": make_bzimage(),
    "bootsector": b"\xf4" * 510 + b"\x55\xaa",
}


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with some bytes changed (headers more often: the first 4 KiB), maybe cut short."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 16))):
        at = draw(st.one_of(st.integers(0, min(len(data), 4096) - 1), st.integers(0, len(data) - 1)))
        data[at] = draw(st.one_of(st.integers(0, 255), st.sampled_from([0, 0xFF, 0x7F, 0x80])))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return bytes(data[:cut])


@pytest.fixture(scope="module")
def memory() -> GuestMemory:
    return GuestMemory.for_pc(64 << 20)


@pytest.mark.parametrize("fmt", sorted(SEEDS))
@SHARED
@given(data=st.data())
def test_kernel_loaders_take_any_mutation_of_a_valid_image(memory, fmt, data):
    image = data.draw(mutated(SEEDS[fmt]))
    try:
        load_kernel(memory, Path(f"fuzz.{fmt}"), "console=ttyS0", [], data=image)
    except KvmliteError:
        pass


@SHARED
@given(data=st.data())
def test_extract_vmlinux_takes_any_mutation_of_a_bzimage(data):
    try:
        extract_vmlinux.extract_vmlinux(data.draw(mutated(SEEDS["bzimage"])))
    except KvmliteError:
        pass


@SHARED
@given(spec=st.text(max_size=40))
def test_initramfs_add_specs(spec):
    try:
        _, dst = initramfs._parse_add(spec)
        initramfs.archive_path(dst)
    except KvmliteError:
        pass


# --- every device on the buses of a real machine ---------------------------------------------------
@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    disk = make_disk_image(tmp_path_factory.mktemp("fuzz") / "disk.img")
    config = MachineConfig(
        kernel=DEMO_GUEST,
        backend="emu",
        memory_mib=16,
        serial="none",
        serial_out=lambda b: None,
        extra_devices=["virtio-rng-pci", "pc-testdev"],
        disks=[str(disk)],
    )
    m = Machine.build(config)
    yield m
    m.close()


access = st.tuples(
    st.booleans(),  # PIO (True) or MMIO
    st.integers(0, 1 << 16),  # which range, modulo their number
    st.integers(-2, 0x1_0000),  # offset into it (past its end too)
    st.sampled_from([1, 2, 4, 8]),
    st.booleans(),  # write
    st.integers(0, (1 << 64) - 1),
)


@SHARED
@given(accesses=st.lists(access, max_size=60))
def test_every_device_register_interface_takes_any_access(machine, accesses):
    """Random reads and writes at random offsets and sizes of every device kvmlite attaches (the
    legacy PC devices, fw_cfg, ACPI PM, PCI configuration, virtio-pci with MSI-X, ...)."""
    for pio, which, offset, size, write, value in accesses:
        bus = machine.pio if pio else machine.mmio
        ranges = list(bus)
        r = ranges[which % len(ranges)]
        size = min(size, 4) if pio else size
        addr = max(r.base + offset % (r.length + 4), 0)
        if write:
            bus.write(addr, size, value & ((1 << (8 * size)) - 1))
        else:
            assert 0 <= bus.read(addr, size) < 1 << (8 * size)


# --- the control socket's JSON -------------------------------------------------------------------
#: Commands that write files (a random path would be written) are left out.
COMMANDS = sorted(set(SCHEMA) - {"dump-guest-memory", "snapshot-save"})
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ARG_NAMES = ["cpu", "addr", "size", "data", "regs", "virtual"]
requests = st.one_of(
    st.binary(max_size=80),
    st.builds(
        lambda name, args, ident: json.dumps({"execute": name, "arguments": args, "id": ident}).encode(),
        st.one_of(st.sampled_from(COMMANDS), st.text(max_size=12)),
        st.one_of(json_values, st.dictionaries(st.sampled_from(ARG_NAMES), json_values)),
        json_values,
    ),
    json_values.map(lambda v: json.dumps(v).encode()),
)


@SHARED
@given(lines=st.lists(requests, max_size=8))
def test_control_socket_answers_any_line(machine, tmp_path_factory, lines):
    server = ControlServer(str(tmp_path_factory.mktemp("api") / "api.sock"), MachineApi(machine))
    a, b = socket.socketpair()
    try:
        client = _Client(a)
        server.handle_line(client, b'{"execute": "qmp_capabilities"}')
        for line in lines:
            reply = server.handle_line(client, line)
            assert ("return" in reply) != ("error" in reply)
            json.dumps(reply)
    finally:
        if machine.control.paused:
            machine.control.resume()
        a.close()
        b.close()
        server.close()
    assert threading.active_count() < 50


# --- the gdb remote protocol ---------------------------------------------------------------------
COMMAND_LETTERS = b"?cCDgGHkmMpPqQsSTvXzZ!"


@SHARED
@given(stream=st.binary(max_size=200), payloads=st.lists(st.binary(max_size=40), max_size=20), data=st.data())
def test_gdb_packets_any_bytes_any_payload(stream, payloads, data):
    for event in PacketReader().feed(stream):
        assert event is not None
    stub = GdbStub(FakeTarget())
    for payload in payloads:
        letter = data.draw(st.sampled_from(list(COMMAND_LETTERS)))
        reply = stub.handle(bytes([letter]) + payload)
        assert reply is not None


NOT_HEX = [b"G" + b"t" * 40, b"P0=zzzzzzzz", b"P0=" + b"\xff\xfe" * 4, b"G\xd9" * 20]
#: Found by the atheris gdb target (10-minute campaign, issue 17): a register number with a sign
#: (int(x, 16) takes "-155") indexed the register layout from its end, then past it (IndexError).
#: Found by the second gdb campaign: a vCont action byte that is not ASCII (UnicodeDecodeError).
NOT_ASCII_VCONT = [b"vCont;\xe0", b"vCont;c;\xff:1", b"vCont;\xc3\xa9"]
SIGNED = [b"P-155=0000000000000000", b"p-1", b"P+1=00", b"p 1", b"p1_0", b"m-10,4", b"M10,-4:00"]


@pytest.mark.parametrize("packet", NOT_HEX)
def test_register_writes_that_are_not_hex_get_an_error_reply(packet):
    """Found by the atheris gdb target: a G packet of non-hex bytes raised ValueError out of the stub."""
    assert GdbStub(FakeTarget()).handle(packet) == b"E16"


@pytest.mark.parametrize("packet", SIGNED)
def test_numbers_with_a_sign_blank_or_underscore_get_an_error_reply(packet):
    assert GdbStub(FakeTarget()).handle(packet) == b"E16"


def test_the_gdb_campaigns_crash_input_gets_replies():
    """The atheris input itself (P packets for registers -0x155 and 0xd10), fed as fuzz/run.py's gdb
    target feeds it."""
    stream = (
        b";;$Pd10=\n\x03#\x00\x00\x00\x00\x00\xff\xffY$P-155=\n\x03#\x00\x00\x00\x00\x00\xff\xffY$P55=\n"
        b"\x03#\x03h9\x01\x00\xff\xff+\xffC\xff\xff\xff\xff\xff\xff\x03#\x03h9\x01\x00\xff\xff+\xffC"
        b"\xff\xff\xff\xff\xff\xff\xff\xff"
    )
    stub = GdbStub(FakeTarget())
    events = PacketReader().feed(stream)
    replies = [stub.handle(event.payload) for event in events if hasattr(event, "payload")]
    assert replies and all(reply is not None for reply in replies)


@pytest.mark.parametrize("packet", NOT_ASCII_VCONT)
def test_a_vcont_action_that_is_not_ascii_gets_an_error_reply(packet):
    assert GdbStub(FakeTarget()).handle(packet) == b"E16"


def test_the_second_gdb_campaigns_crash_input_gets_replies():
    """The input of the second campaign (a vCont with the action byte 0xe0), through the packet reader."""
    stream = bytes.fromhex(
        "242301002424b13023022501247030030000000000000000bd247000c0247a23c000bd2476436f6e743f230840db8523"
        "00c0247a2300bd24c0247a233dbd2476436f05000000000000006e743b23230025c0247a2300bd24c0e585dcc2bd2476"
        "436f6e742476436f6e743f2300c0247a2300c0247a2300bd24c0247a233dbd2476436f6e743be0dcffda3fdb85dc00bd"
        "24c0e585dcc2bd2476436f6e743f2300c0247a2300bd2476436f6e743f238134238223272a"
    )
    stub = GdbStub(FakeTarget())
    events = PacketReader().feed(stream)
    replies = [stub.handle(event.payload) for event in events if hasattr(event, "payload")]
    assert replies and all(reply is not None for reply in replies)
