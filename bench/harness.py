"""The pieces every kvmlite benchmark shares: results, statistics, C builds, tool checks.

A benchmark here is never an absolute number.  The machines this project runs
on are themselves virtual machines with an unusual nested KVM (see
``/work/shared/platform.md``), so an exit can cost 9 us on one and 27 us on
the next.  Every benchmark therefore measures kvmlite *and* a baseline doing
the same work (a C program doing the same ioctls, QEMU booting the same
guest, ...) in the same process run, alternating the two so that drift of the
machine hits both sides alike, and reports the ratio.

A benchmark is a :class:`Benchmark` value in a plain list (see ``run.py``);
its ``measure`` callable returns a :class:`Result` or raises
:class:`BenchUnavailable` with a sentence saying what is missing.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent
BUILD_DIR = BENCH_DIR / "_build"
C_DIR = BENCH_DIR / "c"
C_COMPILERS = ("cc", "gcc", "clang")
C_FLAGS = ("-O2", "-Wall", "-Wextra")
COMPILE_TIMEOUT_S = 120

#: Runs per side in a comparison; the median is reported, the range is the spread.
DEFAULT_RUNS = 5


class BenchUnavailable(Exception):
    """The benchmark cannot run here (no /dev/kvm, no compiler, no QEMU, API not written yet)."""


class BenchFailed(Exception):
    """The benchmark ran and something went wrong (a guest exited unexpectedly, a tool failed)."""


@dataclass
class Result:
    """One row of the report: kvmlite's value and the baseline's, each from ``runs`` samples.

    ``lower_is_better`` says how to read the ratio: for a time per exit the
    ratio kvmlite/baseline above 1 means kvmlite is slower.
    """

    name: str
    unit: str
    kvmlite_samples: list[float]
    baseline_samples: list[float]
    baseline_name: str
    lower_is_better: bool = True
    note: str = ""

    @property
    def kvmlite(self) -> float:
        return statistics.median(self.kvmlite_samples)

    @property
    def baseline(self) -> float:
        return statistics.median(self.baseline_samples)

    @property
    def ratio(self) -> float:
        """kvmlite / baseline, of the medians."""
        return self.kvmlite / self.baseline if self.baseline else float("inf")

    @property
    def paired_ratios(self) -> list[float]:
        """kvmlite / baseline of each alternating pair: less sensitive to slow drift of the machine."""
        return [k / b for k, b in zip(self.kvmlite_samples, self.baseline_samples, strict=False) if b]

    @property
    def kvmlite_spread(self) -> float:
        return relative_spread(self.kvmlite_samples)

    @property
    def baseline_spread(self) -> float:
        return relative_spread(self.baseline_samples)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "unit": self.unit,
            "kvmlite": self.kvmlite,
            "baseline": self.baseline,
            "baseline_name": self.baseline_name,
            "ratio": self.ratio,
            "paired_ratios": self.paired_ratios,
            "kvmlite_spread": self.kvmlite_spread,
            "baseline_spread": self.baseline_spread,
            "kvmlite_samples": self.kvmlite_samples,
            "baseline_samples": self.baseline_samples,
            "lower_is_better": self.lower_is_better,
            "note": self.note,
        }


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: a name, what it needs, and how to measure it.

    ``requires_tools`` are executables the benchmark (usually its baseline)
    needs on ``PATH``; ``needs_kvm`` says it needs a usable /dev/kvm.  The
    runner checks both before calling ``measure`` so that a missing tool
    gives a row saying so, never a traceback and never an install.
    """

    name: str
    description: str
    measure: Callable[[bool], Result]  # argument: quick
    requires_tools: tuple[str, ...] = ()
    needs_kvm: bool = True
    tags: tuple[str, ...] = field(default=())


def relative_spread(samples: list[float]) -> float:
    """Half the range of the samples relative to their median (0.05 means +-5 %)."""
    if len(samples) < 2:
        return 0.0
    med = statistics.median(samples)
    return (max(samples) - min(samples)) / 2 / med if med else 0.0


def alternate(
    kvmlite: Callable[[], float], baseline: Callable[[], float], runs: int = DEFAULT_RUNS
) -> tuple[list[float], list[float]]:
    """Run baseline and kvmlite ``runs`` times each, alternating, baseline first; return both sample lists."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    ours: list[float] = []
    theirs: list[float] = []
    for i in range(runs):
        theirs.append(baseline())
        ours.append(kvmlite())
        log.debug("run %d: kvmlite %.1f, baseline %.1f", i, ours[-1], theirs[-1])
    return ours, theirs


def find_c_compiler() -> str | None:
    for cc in C_COMPILERS:
        path = shutil.which(cc)
        if path:
            return path
    return None


def kvm_usable(path: str = "/dev/kvm") -> tuple[bool, str]:
    """Whether /dev/kvm can be opened read-write, and why not."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        return False, f"cannot open {path}: {err.strerror}"
    os.close(fd)
    return True, f"{path} usable"


def build_c(source_name: str) -> Path:
    """Compile ``bench/c/<source_name>`` with ``cc -O2`` into ``bench/_build/`` unless already up to date."""
    source = C_DIR / source_name
    if not source.is_file():
        raise BenchFailed(f"C source {source} does not exist")
    exe = BUILD_DIR / source.stem
    if exe.exists() and exe.stat().st_mtime >= source.stat().st_mtime:
        return exe
    cc = find_c_compiler()
    if cc is None:
        raise BenchUnavailable(
            f"no C compiler ({', '.join(C_COMPILERS)}) to build the baseline {source_name}"
        )
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_suffix(".tmp")
    cmd = [cc, *C_FLAGS, "-o", str(tmp), str(source)]
    log.info("building %s", " ".join(cmd))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    if res.returncode != 0:
        raise BenchFailed(f"compiling {source_name} failed:\n{res.stderr.strip()}")
    tmp.replace(exe)
    return exe


def parse_key_values(line: str) -> dict[str, str]:
    """``"a=1 b=x"`` -> ``{"a": "1", "b": "x"}`` (the output format of the C baselines)."""
    out: dict[str, str] = {}
    for word in line.split():
        key, sep, value = word.partition("=")
        if sep:
            out[key] = value
    return out


def guest_builder() -> ModuleType:
    """``guests/build.py`` as a module; BenchUnavailable when it or the tools it needs are missing."""
    path = BENCH_DIR.parent / "guests" / "build.py"
    spec = importlib.util.spec_from_file_location("kvmlite_guest_build", path)
    if spec is None or spec.loader is None:
        raise BenchUnavailable("guests/build.py is missing")
    build = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = build
    spec.loader.exec_module(build)
    missing = build.missing_tools()
    if missing:
        raise BenchUnavailable(f"building the guests needs {', '.join(missing)}")
    (BUILD_DIR / "guests").mkdir(parents=True, exist_ok=True)
    return build
