"""The gdb stub's protocol layer: framing, the dispatcher, the target description, and real gdb
against a target without a VM (tests/gdb/fake_target.py)."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmlite.errors import ConfigError
from kvmlite.gdb import registers as R
from kvmlite.gdb.packets import Ack, BadPacket, Interrupt, Packet, PacketReader, escape, frame, unescape
from kvmlite.gdb.server import GdbServer, parse_endpoint
from kvmlite.gdb.stub import RESUMED, GdbStub
from kvmlite.gdb.target import BreakKind, StopEvent, StopQueue
from tests.gdb.fake_target import FakeTarget

GDB = shutil.which("gdb")
requires_gdb = pytest.mark.skipif(GDB is None, reason="needs gdb (Debian package gdb)")


def test_frame_and_checksum_match_the_protocol_examples() -> None:
    assert frame(b"OK") == b"$OK#9a"
    assert frame(b"") == b"$#00"


def test_reader_splits_packets_acks_and_interrupts_across_feeds() -> None:
    r = PacketReader()
    assert r.feed(b"+$g#6") == [Ack(True)]
    assert r.feed(b"7-\x03$m0,4#fd") == [Packet(b"g"), Ack(False), Interrupt(), Packet(b"m0,4")]


def test_reader_reports_a_bad_checksum_and_keeps_going() -> None:
    r = PacketReader()
    assert r.feed(b"$g#00$g#67") == [BadPacket(b"g"), Packet(b"g")]
    assert r.feed(b"$g#zz") == [BadPacket(b"g")]


def test_escape_round_trips_every_byte() -> None:
    data = bytes(range(256))
    assert b"#" not in escape(data) and b"$" not in escape(data)
    assert unescape(escape(data)) == data


@pytest.mark.parametrize("arch", [R.ARCH_64, R.ARCH_32])
def test_target_xml_is_well_formed_and_numbers_every_register(arch: str) -> None:
    root = ET.fromstring(R.target_xml(arch))
    assert root.findtext("architecture") == arch
    regs = root.findall("./feature/reg")
    assert [r.get("name") for r in regs] == [r.name for r in R.LAYOUTS[arch]]
    assert [int(r.get("regnum", -1)) for r in regs] == list(range(len(regs)))
    features = {f.get("name") for f in root.findall("feature")}
    assert {R.CORE, R.SSE} <= features


def test_register_encoding_round_trips_and_marks_missing_ones_unavailable() -> None:
    layout = R.LAYOUTS[R.ARCH_64]
    data = R.encode(layout, {"rax": 0x1122334455667788, "rip": 0x1000})
    assert data.startswith(b"8877665544332211")
    assert data[16:32] == b"xx" * 8  # rbx unknown
    assert R.decode(layout, data) == {"rax": 0x1122334455667788, "rip": 0x1000}


def _stub() -> tuple[GdbStub, FakeTarget]:
    target = FakeTarget()
    return GdbStub(target), target


def test_malformed_packets_get_error_replies_not_exceptions() -> None:
    stub, _ = _stub()
    for bad in (b"mzz,4", b"m1000", b"M1000,2:zz", b"M1000,4:00", b"Pzz", b"Z0,10", b"Hgzz", b"vCont;q"):
        assert stub.handle(bad).startswith(b"E"), bad  # type: ignore[union-attr]
    assert stub.handle(b"Z9,1000,1") == b""  # unknown breakpoint type: unsupported
    assert stub.handle(b"qNoSuchThing") == b""


def test_unmapped_memory_is_an_efault_reply() -> None:
    stub, _ = _stub()
    assert stub.handle(b"m10,4") == b"E0e"
    assert stub.handle(b"m1000,2") == b"0000"


def test_x_packet_writes_escaped_binary() -> None:
    stub, target = _stub()
    payload = bytes([0x23, 0x7D, 0x01])
    assert stub.handle(b"X1000,3:" + escape(payload)) == b"OK"
    assert target.memory[:3] == payload


def test_vcont_steps_only_the_stepping_thread_and_breakpoints_reach_the_target() -> None:
    stub, target = _stub()
    assert stub.handle(b"Z0,1020,1") == b"OK"
    assert (BreakKind.SOFTWARE, 0x1020, 1) in target.breakpoints
    assert stub.handle(b"vCont;s:2;c") is RESUMED
    assert target.resumed[-1] == {1: "s"}
    assert stub.stop_reply(StopEvent(1)) == b"T05thread:2;"
    assert stub.handle(b"vCont;c") is RESUMED
    assert target.resumed[-1] == {0: "c", 1: "c"}
    assert stub.stop_reply(StopEvent(0, reason="watch", addr=0x2000)) == b"T05thread:1;watch:2000;"
    assert stub.stop_reply(StopEvent(exit_status=133)) == b"W85"


def test_a_reported_stop_wakes_whoever_waits_on_the_stop_descriptor() -> None:
    """The server sleeps on the target's stop descriptor beside gdb's socket (no polling for stops)."""
    stops = StopQueue()
    try:
        assert select.select([stops], [], [], 0)[0] == [] and stops.get(0) is None
        threading.Timer(0.05, stops.put, (StopEvent(1, reason="swbreak", addr=0x1234),)).start()
        assert select.select([stops], [], [], 10)[0] == [stops]
        assert stops.get(0) == StopEvent(1, reason="swbreak", addr=0x1234)
        assert stops.get(0) is None and stops.empty()
    finally:
        stops.close()


def test_endpoint_parsing() -> None:
    assert parse_endpoint("1234").describe() == "127.0.0.1:1234"
    assert parse_endpoint("0.0.0.0:1").describe() == "0.0.0.0:1"
    assert parse_endpoint("unix:/tmp/x").family == "unix"
    for bad in ("abc", "unix:", "host:99999"):
        with pytest.raises(ConfigError):
            parse_endpoint(bad)


def _gdb(port: int, *commands: str) -> str:
    args = [GDB or "gdb", "-nx", "-batch", "-ex", "set architecture i386", "-ex", f"target remote :{port}"]
    for c in commands:
        args += ["-ex", c]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


@requires_gdb
def test_real_gdb_reads_writes_breaks_steps_and_sees_the_exit() -> None:
    target = FakeTarget()
    target.memory[0x10:0x14] = b"\xde\xad\xbe\xef"
    server = GdbServer(parse_endpoint("127.0.0.1:0"), target)
    server.start()
    try:
        out = _gdb(
            server.endpoint.port,
            "x/4xb 0x1010",
            "x/x 0x10",
            "info threads",
            "thread 2",
            "p/x $eip",
            "monitor info registers",
            "break *0x1020",
            "continue",
            "p/x $eip",
            "stepi",
            "p/x $eip",
            "set var *(int*)0x1004 = 0x11223344",
            "delete",
            "continue",
        )
    finally:
        server.close()
    assert "0x1010:\t0xde\t0xad\t0xbe\t0xef" in out
    assert "Cannot access memory at address 0x10" in out
    assert "Thread 2 (vCPU 1)" in out
    assert "$1 = 0x1010" in out
    assert "you said info registers" in out
    assert "hit Breakpoint 1, 0x00001020" in out
    assert "$3 = 0x1021" in out
    assert target.memory[4:8] == (0x11223344).to_bytes(4, "little")
    assert "exited with code 0205" in out  # gdb prints the status in octal: 133
    assert target.breakpoints == set()


def test_a_second_gdb_can_connect_after_the_first_leaves() -> None:
    target = FakeTarget()
    server = GdbServer(parse_endpoint("127.0.0.1:0"), target)
    server.start()
    try:
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", server.endpoint.port), timeout=5) as s:
                s.sendall(frame(b"?"))
                got = b""
                while b"#" not in got[:-2]:
                    got += s.recv(100)
                assert got.startswith(b"+$T02thread:1;#")
        assert target.detached
        stop_fd = target.stop_fd()
        os.fstat(stop_fd)
    finally:
        server.close()
    with pytest.raises(OSError):  # the server released the target's stop descriptor with it
        os.fstat(stop_fd)


@requires_gdb
def test_real_gdb_over_a_unix_socket(tmp_path: Path) -> None:
    target = FakeTarget()
    path = tmp_path / "gdb.sock"
    server = GdbServer(parse_endpoint(f"unix:{path}"), target)
    server.start()
    try:
        args = [GDB or "gdb", "-nx", "-batch", "-ex", "set architecture i386", "-ex", f"target remote {path}"]
        proc = subprocess.run([*args, "-ex", "p/x $eip"], capture_output=True, text=True, timeout=60)
    finally:
        server.close()
    assert "$1 = 0x1000" in proc.stdout, proc.stdout + proc.stderr
    assert target.detached and not path.exists()
