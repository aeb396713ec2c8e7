"""--trace filters and --trace-file JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvmlite.errors import ConfigError
from kvmlite.kvm import exits as E
from kvmlite.vmm.trace import ExitTracer, parse_trace_filter
from tests.gdb.support import DONE_STATUS, dbg_guest  # noqa: F401  (a fixture)


def _matches(spec: str, ex: E.Exit) -> bool:
    return any(t.matches(ex) for t in parse_trace_filter(spec))


def test_filters_select_by_kind_port_and_range() -> None:
    out = E.IoOut(0x3F8, 1, 1, memoryview(b"A"))
    assert _matches("io:0x3f8", out) and _matches("pio", out) and _matches("all", out)
    assert not _matches("pio:0x70-0x71", out) and not _matches("mmio", out)
    assert _matches("pio:0x70-0x71", E.IoIn(0x71, 1, 1, memoryview(bytearray(1))))
    assert _matches("mmio:0xfee00000-0xfee00fff", E.MmioRead(0xFEE00300, memoryview(bytearray(4))))
    assert _matches("hlt,error", E.Shutdown()) and not _matches("hlt", E.Shutdown())


@pytest.mark.parametrize("spec", ["bogus", "pio:zz", "pio:5-1", "hlt:3", ","])
def test_bad_filters_are_one_clear_error(spec: str) -> None:
    with pytest.raises(ConfigError, match="--trace"):
        parse_trace_filter(spec)


def test_trace_file_records_are_json_with_time_vcpu_and_fields(tmp_path: Path) -> None:
    tracer = ExitTracer("pio:0xf4", tmp_path / "t.jsonl")
    hook = tracer.hook(1)
    hook(E.IoOut(0x3F8, 1, 1, memoryview(b"A")))
    hook(E.IoOut(0xF4, 4, 1, memoryview(b"\x21\0\0\0")))
    tracer.close()
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["vcpu"] == 1 and record["exit"] == "IoOut" and record["port"] == 0xF4
    assert record["data"] == "21000000" and record["t"] >= 0


def test_kvmlite_run_writes_the_filtered_trace(dbg_guest: Path, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "trace.jsonl"
    cmd = [sys.executable, "-m", "kvmlite", "run", "--kernel", str(dbg_guest), "--backend", "emu",
           "--serial", "none", "--trace", "io:0x3f8", "--trace-file", str(path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == DONE_STATUS, proc.stderr
    records = [json.loads(line) for line in path.read_text().splitlines()]
    text = bytes.fromhex("".join(r["data"] for r in records)).decode()
    # every write to port 0x3f8 and nothing else: the divisor latch (3, DLAB set), then the characters
    assert text == "\x03magic-ok=1\ncounter=22\nresult=7\n"
    assert all(r["port"] == 0x3F8 and r["exit"] == "IoOut" for r in records)
    times = [r["t"] for r in records]
    assert times == sorted(times)
