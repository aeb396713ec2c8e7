"""Tests of the benchmark harness: statistics, the guest image, the report, and (with /dev/kvm) the loops.

Run with ``python3 -m pytest bench/test_bench.py -q``.  The guest checks
decode the hand-assembled loops with capstone and walk the page tables, so a
wrong byte or a wrong table entry fails here instead of as a triple fault.
"""

from __future__ import annotations

import struct
from pathlib import Path

import exit_roundtrip as er
import pytest
import run
from harness import (
    Benchmark,
    BenchUnavailable,
    Result,
    alternate,
    find_c_compiler,
    kvm_usable,
    parse_key_values,
    relative_spread,
)

from kvmlite.kvm import structs as S

KVM_OK, KVM_REASON = kvm_usable()
needs_kvm = pytest.mark.skipif(not KVM_OK, reason=f"needs a usable /dev/kvm: {KVM_REASON}")
needs_cc = pytest.mark.skipif(find_c_compiler() is None, reason="needs a C compiler (cc, gcc or clang)")
SMALL_ITERATIONS = 200


# --- statistics ------------------------------------------------------------------
def test_relative_spread_is_half_range_over_median() -> None:
    assert relative_spread([90.0, 100.0, 110.0]) == pytest.approx(0.10)
    assert relative_spread([5.0]) == 0.0


def test_alternate_runs_baseline_first_and_interleaves() -> None:
    calls: list[str] = []
    ours, theirs = alternate(lambda: calls.append("k") or 2.0, lambda: calls.append("b") or 1.0, runs=3)
    assert calls == ["b", "k", "b", "k", "b", "k"]
    assert ours == [2.0, 2.0, 2.0] and theirs == [1.0, 1.0, 1.0]


def test_alternate_rejects_zero_runs() -> None:
    with pytest.raises(ValueError, match="runs"):
        alternate(lambda: 1.0, lambda: 1.0, runs=0)


def test_result_ratio_is_ratio_of_medians() -> None:
    res = Result("x", "ns", [30.0, 10.0, 20.0], [10.0, 5.0, 100.0], "C")
    assert res.kvmlite == 20.0 and res.baseline == 10.0 and res.ratio == 2.0
    assert res.paired_ratios == [3.0, 2.0, 0.2]


def test_parse_key_values_reads_c_baseline_output() -> None:
    kv = parse_key_values("variant=pio cpl=3 iterations=5 exits=5 seconds=0.5 ns_per_exit=100.0\n")
    assert kv["exits"] == "5" and kv["seconds"] == "0.5" and kv["cpl"] == "3"


# --- the guest ----------------------------------------------------------------------
def _translate(mem: bytes, linear: int) -> int:
    """Walk the 4-level tables of the guest image (2 MiB pages), demanding user+write at every level."""
    table = er.PML4_ADDR
    for level, shift in enumerate((39, 30, 21)):
        entry = struct.unpack_from("<Q", mem, table + ((linear >> shift) & 511) * 8)[0]
        wanted = er.PTE_P | er.PTE_RW | er.PTE_US
        assert entry & wanted == wanted, f"level {level} entry {entry:#x} for {linear:#x}"
        if shift == 21:
            assert entry & er.PTE_PS
            return (entry & ~0x1FFFFF & ((1 << 52) - 1)) | (linear & 0x1FFFFF)
        table = entry & ~0xFFF & ((1 << 52) - 1)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("variant", er.VARIANTS)
def test_guest_page_tables_identity_map_code_stack_and_mmio(variant: str) -> None:
    mem = er.build_guest_image(variant)
    for addr in (er.CODE_ADDR, er.STACK_TOP - 8, er.MMIO_ADDR, er.MMIO_ADDR + 0x1234):
        assert _translate(mem, addr) == addr


def test_guest_tss_descriptor_and_io_bitmap_allow_every_port() -> None:
    mem = er.build_guest_image("pio")
    low = struct.unpack_from("<Q", mem, er.GDT_ADDR + er.SEL_TSS)[0]
    limit = (low & 0xFFFF) | ((low >> 48) & 0xF) << 16
    base = ((low >> 16) & 0xFFFFFF) | ((low >> 56) & 0xFF) << 24
    assert (base, limit, (low >> 40) & 0xFF) == (er.TSS_ADDR, er.TSS_LIMIT, 0x8B)
    iomap = struct.unpack_from("<H", mem, er.TSS_ADDR + 0x66)[0]
    bitmap = mem[er.TSS_ADDR + iomap : er.TSS_ADDR + iomap + er.TSS_IOMAP_BYTES]
    assert not any(bitmap)
    assert mem[er.TSS_ADDR + er.TSS_LIMIT] == 0xFF


def test_guest_loops_decode_to_the_intended_instructions() -> None:
    capstone = pytest.importorskip("capstone")
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)

    def listing(code: bytes) -> list[str]:
        return [f"{i.mnemonic} {i.op_str}".strip() for i in md.disasm(code, er.CODE_ADDR)]

    assert listing(er.GUEST_PIO) == [
        "mov dx, 0x500",
        "out dx, al",
        "dec rcx",
        f"jne {er.CODE_ADDR + 4:#x}",
        "mov dx, 0x501",
        "out dx, al",
        f"jmp {er.CODE_ADDR + 15:#x}",
    ]
    assert listing(er.GUEST_MMIO) == [
        "mov dx, 0x501",
        "mov byte ptr [rbx], al",
        "dec rcx",
        f"jne {er.CODE_ADDR + 4:#x}",
        "out dx, al",
        f"jmp {er.CODE_ADDR + 12:#x}",
    ]


@pytest.mark.parametrize("cpl", er.CPLS)
def test_configure_sregs_enters_long_mode_at_requested_privilege(cpl: int) -> None:
    sregs = S.kvm_sregs()
    er.configure_sregs(sregs, cpl)
    assert (sregs.cs.dpl, sregs.ss.dpl, sregs.cs.selector & 3, sregs.ss.selector & 3) == (cpl, cpl, cpl, cpl)
    assert sregs.cs.l == 1 and sregs.cs.db == 0
    assert sregs.efer & er.EFER_LMA and sregs.cr0 & er.CR0_PG and sregs.cr4 & er.CR4_PAE


def test_drivers_reject_bad_arguments_before_touching_kvm() -> None:
    with pytest.raises(ValueError, match="variant"):
        er.run_raw("dma", 10)
    with pytest.raises(ValueError, match="cpl"):
        er.run_c("pio", 10, cpl=1)
    with pytest.raises(ValueError, match="iterations"):
        er.run_kvmlite("pio", 0)


# --- the report ---------------------------------------------------------------------------
def _fake_bench(name: str, tools: tuple[str, ...] = (), raises: Exception | None = None) -> Benchmark:
    def measure(quick: bool) -> Result:
        if raises:
            raise raises
        return Result(name, "ns/exit", [200.0, 210.0], [100.0, 100.0], "C")

    return Benchmark(name, "test", measure, requires_tools=tools, needs_kvm=False)


def test_missing_baseline_tool_gives_an_unavailable_row_not_a_run() -> None:
    row = run.run_one(_fake_bench("q", tools=("definitely-not-a-tool-xyz",)), True, (True, ""))
    assert row.status == "unavailable" and "definitely-not-a-tool-xyz not found" in row.reason
    assert row.result is None


def test_missing_kvm_gives_an_unavailable_row() -> None:
    bench = Benchmark("k", "test", lambda quick: pytest.fail("must not run"), needs_kvm=True)
    row = run.run_one(bench, True, (False, "cannot open /dev/kvm: No such file"))
    assert row.status == "unavailable" and "/dev/kvm" in row.reason


def test_benchmark_raising_unavailable_or_failed_is_reported_in_its_row() -> None:
    rows = [
        run.run_one(_fake_bench("a", raises=BenchUnavailable("API not written")), True, (True, "")),
        run.run_one(_fake_bench("b", raises=run.BenchFailed("guest shut down")), True, (True, "")),
        run.run_one(_fake_bench("c"), True, (True, "")),
    ]
    assert [r.status for r in rows] == ["unavailable", "failed", "ok"]
    table = run.format_table(rows)
    assert "unavailable: API not written" in table
    assert "failed: guest shut down" in table
    assert "2.05x" in table  # 205 / 100


def test_json_report_holds_samples(tmp_path: Path) -> None:
    import json

    rows = [run.run_one(_fake_bench("c"), True, (True, ""))]
    out = tmp_path / "r.json"
    run.write_json(rows, out, quick=True)
    doc = json.loads(out.read_text())
    assert doc["rows"][0]["result"]["kvmlite_samples"] == [200.0, 210.0]
    assert doc["quick"] is True


def test_unknown_only_filter_is_a_usage_error() -> None:
    assert run.main(["--only", "no-such-benchmark-xyz", "--list"]) == run.EXIT_USAGE


# --- the loops on real KVM --------------------------------------------------------------------
@needs_kvm
@pytest.mark.parametrize(("variant", "cpl"), [("pio", 3), ("mmio", 3), ("pio", 0)])
def test_raw_python_driver_counts_every_exit(variant: str, cpl: int) -> None:
    timing = er.run_raw(variant, SMALL_ITERATIONS, cpl)
    assert timing.exits == SMALL_ITERATIONS and timing.seconds > 0


@needs_kvm
@needs_cc
@pytest.mark.parametrize("variant", er.VARIANTS)
def test_c_baseline_counts_every_exit(variant: str) -> None:
    timing = er.run_c(variant, SMALL_ITERATIONS)
    assert timing.exits == SMALL_ITERATIONS and timing.ns_per_exit > 0


@needs_kvm
@needs_cc
@pytest.mark.parametrize("access", ["in", "out"])
def test_c_pm32_baseline_counts_every_exit_and_its_cpu_time(access: str) -> None:
    timing = er.run_c_pm32(access, 0x3FD, SMALL_ITERATIONS)
    assert timing.exits == SMALL_ITERATIONS and 0 < timing.cpu_seconds and timing.variant in ("in", "pio")


@needs_kvm
def test_kvmlite_driver_counts_every_exit() -> None:
    try:
        timing = er.run_kvmlite("pio", SMALL_ITERATIONS)
    except BenchUnavailable as err:
        pytest.skip(str(err))
    assert timing.exits == SMALL_ITERATIONS


@needs_kvm
def test_blk_bench_guest_times_its_requests_between_its_two_lines() -> None:
    import blk_bench

    try:
        guest, image = blk_bench._guest_and_image()
    except BenchUnavailable as err:
        pytest.skip(str(err))
    args = "op=read pattern=rand size=4096 count=200 depth=4"
    seconds = blk_bench._io_seconds(blk_bench._kvmlite_cmd(guest, image, args))
    assert 0 < seconds < blk_bench.RUN_TIMEOUT_S
    assert [b.name for b in blk_bench.benchmarks()] == [f"blk-{row}" for row in blk_bench.ROWS]
