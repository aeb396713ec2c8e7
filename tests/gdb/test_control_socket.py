"""The control socket (--api) from a plain socket client, `kvmlite ctl`, and a guest-memory core in gdb."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KVM_OK, KVM_REASON
from tests.gdb.support import (
    BACKENDS,
    DONE_STATUS,
    GDB,
    dbg_guest,  # noqa: F401  (a fixture)
    run_gdb,
    symbol,
    waiting_vm_with_api,
)


class Client:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")
        self.events: list[str] = []
        self.greeting = self.read()

    def read(self) -> dict[str, Any]:
        msg = json.loads(self.file.readline())
        assert isinstance(msg, dict)
        return msg

    def raw(self, line: bytes) -> dict[str, Any]:
        self.sock.sendall(line + b"\n")
        while True:
            msg = self.read()
            if "event" not in msg:
                return msg
            assert set(msg) == {"event", "data", "timestamp"} and msg["timestamp"]["seconds"] > 0
            self.events.append(msg["event"])

    def cmd(self, name: str, **arguments: Any) -> Any:
        reply = self.raw(json.dumps({"execute": name, "arguments": arguments}).encode())
        assert "return" in reply, reply
        return reply["return"]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_regs_write_memory_cont_and_every_malformed_input(
    dbg_guest: Path,  # noqa: F811
    tmp_path: Path,
    backend: str,
) -> None:
    with waiting_vm_with_api(dbg_guest, tmp_path, backend) as (proc, serial, path):
        first, second = Client(path), Client(path)
        assert first.greeting["QMP"]["capabilities"] == []
        assert (
            first.raw(b'{"execute": "query-status"}')["error"]["class"] == "CommandNotFound"
        )  # before negotiation
        first.cmd("qmp_capabilities")
        second.cmd("qmp_capabilities")
        bad = [
            b"this is not json",
            b"[1, 2]",
            b'{"arguments": {}}',
            b'{"execute": 5}',
            b'{"execute": "no-such-command"}',
            b'{"execute": "query-regs", "arguments": {"cpu": "zero"}}',
            b'{"execute": "query-regs", "arguments": {"cpu": 7}}',
            b'{"execute": "query-regs", "arguments": [0]}',
            b'{"execute": "read-memory", "arguments": {"addr": 0}}',
            b'{"execute": "read-memory", "arguments": {"addr": 0, "size": 4, "bogus": 1}}',
            b'{"execute": "read-memory", "arguments": {"addr": 1099511627776, "size": 4}}',
            b'{"execute": "write-memory", "arguments": {"addr": 0, "data": "zz"}}',
            b'{"execute": "set-regs", "arguments": {"regs": {"nosuch": 1}}}',
            b'{"execute": "stop", "unexpected": 1}',
            b"\xff\xfe",
        ]
        for line in bad:
            reply = first.raw(line)
            assert "error" in reply and reply["error"]["class"] in ("GenericError", "CommandNotFound"), (
                line,
                reply,
            )
        assert first.raw(b'{"execute": "no-such-command", "id": 9}') == {
            "error": {"class": "CommandNotFound", "desc": "The command no-such-command has not been found"},
            "id": 9,
        }
        assert second.cmd("query-status")["status"] == "running"  # the VM ran on through all of it
        first.cmd("stop")
        assert second.cmd("query-status") == {"running": False, "status": "paused"}
        regs = first.cmd("query-regs", cpu=0)
        assert regs["cr0"] & 1 and regs["cs"] == 0x08 and regs["rip"] > 0x100000  # in the guest's C code
        cpus = first.cmd("query-cpus")
        assert cpus[0]["mode"] == "32-bit protected mode" and cpus[0]["pc"] == regs["rip"]
        mailbox = symbol(dbg_guest, "mailbox")
        first.cmd("write-memory", addr=mailbox, data=(42).to_bytes(4, "little").hex())
        assert first.cmd("read-memory", addr=mailbox, size=4, virtual=True) == {"data": "2a000000"}
        devices = {d["name"]: d for d in second.cmd("query-devices")}
        assert devices["serial0"]["type"] == "isa-serial" and devices["serial0"]["irqs"] == [4]
        assert devices["serial0"]["pio"][0]["base"] == 0x3F8 and "state" in devices["serial0"]
        assert devices["debug-exit"]["type"] == "isa-debug-exit"
        assert first.cmd("query-stats")["total"] > 0
        first.cmd("system_powerdown")  # the ACPI power button: PWRBTN_STS set (this guest has no SCI handler)
        pm = {d["name"]: d for d in second.cmd("query-devices")}["acpi-pm"]
        assert pm["state"]["status"] & 0x100 and pm["irqs"] == [9]
        first.cmd("cont")
        while "RESUME" not in second.events:
            second.events.append(second.read()["event"])
        assert second.events == ["STOP", "POWERDOWN", "RESUME"]  # every negotiated client hears them
        assert proc.wait(timeout=60) == DONE_STATUS
        assert serial.read_text().splitlines() == [
            "magic-ok=1",
            "waiting",
            "mailbox=42",
            "counter=22",
            "result=7",
        ]
        first.close()
        second.close()


@pytest.mark.skipif(GDB is None, reason="needs gdb (Debian package gdb)")
@pytest.mark.parametrize("backend", BACKENDS)
def test_gdb_reads_a_variable_from_a_dump_guest_memory_core(
    dbg_guest: Path,  # noqa: F811
    tmp_path: Path,
    backend: str,
) -> None:
    core = tmp_path / "guest.core"
    with waiting_vm_with_api(dbg_guest, tmp_path, backend) as (proc, _, path):

        def ctl(*args: str) -> subprocess.CompletedProcess[str]:
            cmd = [sys.executable, "-m", "kvmlite", "ctl", str(path), *args]
            return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

        done = ctl("dump-guest-memory", str(core))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["size"] == core.stat().st_size
        bad = ctl("query-regs", '{"cpu": 9}')
        assert bad.returncode == 1 and "GenericError" in bad.stderr
        assert ctl("quit").returncode == 0
        assert proc.wait(timeout=30) == 0
    out = run_gdb(dbg_guest, f"core-file {core}", "print/x marker", "print/x mailbox", "info registers eip")
    assert "$1 = 0x5eed1234" in out, out
    assert "$2 = 0x0" in out
    assert re.search(r"eip\s+0x[0-9a-f]+\s+0x[0-9a-f]+ <kmain\+\d+>", out), out  # waiting in its loop


NEEDS_KVM = pytest.mark.skipif(not KVM_OK, reason=f"needs /dev/kvm: {KVM_REASON}")


@pytest.mark.parametrize("backend", [pytest.param("kvm", marks=NEEDS_KVM), "emu"])
def test_inject_nmi_reaches_the_guest(dbg_guest: Path, tmp_path: Path, backend: str) -> None:  # noqa: F811
    with waiting_vm_with_api(dbg_guest, tmp_path, backend) as (proc, _, path):
        client = Client(path)
        client.cmd("qmp_capabilities")
        assert client.cmd("inject-nmi") == {}
        # the guest has no IDT: the NMI it now takes is a triple fault, the crash status
        assert proc.wait(timeout=60) == 4
        assert "triple fault" in proc.communicate()[1]
        client.close()


def test_ctl_reports_bad_input_in_one_sentence(tmp_path: Path) -> None:
    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "kvmlite", "ctl", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    missing = ctl(str(tmp_path / "nothing.sock"), "query-status")
    assert missing.returncode == 2 and missing.stderr.startswith("kvmlite: cannot connect to")
    assert "Traceback" not in missing.stderr
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(tmp_path / "s.sock"))
    listening.listen(1)
    for bad in ("{not json", "[1]"):
        out = ctl(str(tmp_path / "s.sock"), "query-regs", bad)
        assert out.returncode == 2 and "JSON" in out.stderr and "Traceback" not in out.stderr
    listening.close()
