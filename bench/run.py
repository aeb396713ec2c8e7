"""Run every kvmlite benchmark against its baseline and print one table.

Usage::

    python3 bench/run.py [--quick] [--json FILE] [--png FILE] [--only SUBSTRING] [-v]

Each row is one :class:`harness.Benchmark`: kvmlite's median, the baseline's
median (measured in the same run, alternating with kvmlite), their ratio and
the spread of each side (half the range of the runs, relative to the median).
A benchmark whose baseline tool or /dev/kvm is missing gives a row that says
what is missing; nothing is installed.

Adding a benchmark: write a module in ``bench/`` with a function returning
:class:`harness.Benchmark` values and add it to :func:`registered`.  Planned
rows (issues 2 and 6): command-to-exit vs QEMU microvm, ring-3 compute vs
QEMU, serial throughput, idle CPU, memory overhead, emulator speed vs TCG.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import blk_bench
import emulator_speed
import exit_roundtrip
import gdb_bench
import idle
import linux_boot
import linux_snapshot
import machine_bench
import net_bench
import snapshot_bench
from harness import BenchFailed, Benchmark, BenchUnavailable, Result, kvm_usable

log = logging.getLogger("bench.run")

TABLE_COLUMNS = ("benchmark", "kvmlite", "baseline", "ratio", "spread (kvmlite / baseline)")
EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def registered() -> list[Benchmark]:
    """Every benchmark, in report order.  Add new modules' benchmarks here."""
    return [
        *exit_roundtrip.benchmarks(),
        *emulator_speed.benchmarks(),
        *machine_bench.benchmarks(),
        *gdb_bench.benchmarks(),
        *net_bench.benchmarks(),
        *blk_bench.benchmarks(),
        *idle.benchmarks(),
        *snapshot_bench.benchmarks(),
        *linux_boot.benchmarks(),
        *linux_snapshot.benchmarks(),
    ]


def _value(x: float) -> str:
    """Three significant digits, thousands separated: 0.105, 28.1, 28,110."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


@dataclass
class Row:
    """A benchmark's outcome: a result, or the reason there is none."""

    benchmark: Benchmark
    result: Result | None = None
    status: str = "ok"  # ok | unavailable | failed
    reason: str = ""
    seconds: float = 0.0

    def cells(self) -> tuple[str, ...]:
        if self.result is None:
            return (self.benchmark.name, "-", "-", "-", f"{self.status}: {self.reason}")
        r = self.result
        return (
            r.name,
            f"{_value(r.kvmlite)} {r.unit}",
            f"{_value(r.baseline)} {r.unit}",
            f"{r.ratio:.3g}x",  # 3 significant digits: emulator-vs-TCG ratios are ~1e-4
            f"+-{100 * r.kvmlite_spread:.1f}% / +-{100 * r.baseline_spread:.1f}%",
        )

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "benchmark": self.benchmark.name,
            "description": self.benchmark.description,
            "status": self.status,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
        }
        if self.result is not None:
            out["result"] = self.result.as_dict()
        return out


def missing_requirements(bench: Benchmark, kvm_state: tuple[bool, str]) -> str:
    """Why ``bench`` cannot run here, or "" if it can."""
    missing = [tool for tool in bench.requires_tools if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found on PATH (not installed by the benchmark)"
    if bench.needs_kvm and not kvm_state[0]:
        return kvm_state[1]
    return ""


def run_one(bench: Benchmark, quick: bool, kvm_state: tuple[bool, str]) -> Row:
    reason = missing_requirements(bench, kvm_state)
    if reason:
        return Row(bench, status="unavailable", reason=reason)
    log.info("running %s (%s)", bench.name, bench.description)
    t0 = time.monotonic()
    try:
        result = bench.measure(quick)
    except BenchUnavailable as err:
        return Row(bench, status="unavailable", reason=str(err), seconds=time.monotonic() - t0)
    except (BenchFailed, OSError, ValueError) as err:
        log.error("%s failed: %s", bench.name, err)
        return Row(bench, status="failed", reason=str(err).splitlines()[0], seconds=time.monotonic() - t0)
    return Row(bench, result=result, seconds=time.monotonic() - t0)


def format_table(rows: list[Row]) -> str:
    cells = [TABLE_COLUMNS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(TABLE_COLUMNS) - 1)]
    lines = []
    for i, line in enumerate(cells):
        padded = zip(line[:-1], widths, strict=True)
        head = "  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(padded))
        lines.append(f"{head}  {line[-1]}")
        if i == 0:
            lines.append("-" * len(lines[0]))
    notes = [f"  {row.result.name}: {row.result.note}" for row in rows if row.result and row.result.note]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def write_json(rows: list[Row], path: Path, quick: bool) -> None:
    doc = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "quick": quick,
        "rows": [row.as_dict() for row in rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def write_png(rows: list[Row], path: Path) -> str:
    """Bar chart of the ratios; returns a sentence saying what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"matplotlib is not importable: {path} not written"
    done = [row for row in rows if row.result is not None]
    if not done:
        return f"no benchmark produced a result: {path} not written"
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(done)))
    names = [row.result.name for row in done if row.result]
    ratios = [row.result.ratio for row in done if row.result]
    ax.barh(names, ratios)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("kvmlite / baseline (lower is better for times)")
    ax.invert_yaxis()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return f"wrote {path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run kvmlite's benchmarks against their baselines.")
    parser.add_argument(
        "--quick", action="store_true", help="fewer iterations per run (for CI and smoke tests)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every sample and the verdicts here")
    parser.add_argument("--png", type=Path, metavar="FILE", help="bar chart of the ratios (needs matplotlib)")
    parser.add_argument("--only", metavar="SUBSTRING", help="run only benchmarks whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--slow", action="store_true", help="also run benchmarks tagged slow (Linux boot)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(name)s: %(message)s")

    benches = registered()
    if not (args.slow or args.only):
        benches = [b for b in benches if "slow" not in b.tags]
    if args.only:
        benches = [b for b in benches if args.only in b.name]
        if not benches:
            log.error("no benchmark name contains %r (try --list)", args.only)
            return EXIT_USAGE
    if args.list:
        for b in benches:
            sys.stdout.write(f"{b.name}: {b.description}\n")
        return EXIT_OK

    kvm_state = kvm_usable()
    rows = [run_one(b, args.quick, kvm_state) for b in benches]
    sys.stdout.write(format_table(rows) + "\n")
    if args.json:
        write_json(rows, args.json, args.quick)
        sys.stdout.write(f"wrote {args.json}\n")
    if args.png:
        sys.stdout.write(write_png(rows, args.png) + "\n")
    return EXIT_SOME_FAILED if any(row.status == "failed" for row in rows) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
