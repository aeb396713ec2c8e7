"""Tests of the emulator-speed benchmark: its arithmetic, its result check, and its unavailable row."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import emulator_speed as es
import pytest
from harness import BenchFailed, BenchUnavailable

HAVE_TOOLS = all(shutil.which(t) for t in ("as", "ld"))


def test_ips_is_extra_loop_instructions_over_extra_time(monkeypatch: pytest.MonkeyPatch) -> None:
    times = {100: 1.0, 1100: 3.0}
    monkeypatch.setattr(es, "_timed", lambda cmd, iters, expected: times[iters])
    ips = es.instructions_per_second(lambda image, n: [str(n)], Path("x"), (100, 1100), check=False)
    assert ips == es.LOOP_INSNS_PER_ITER * 1000 / 2.0


def test_a_large_run_no_slower_than_the_small_one_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(es, "_timed", lambda cmd, iters, expected: 1.0)
    with pytest.raises(BenchFailed, match="raise the large N"):
        es.instructions_per_second(lambda image, n: [str(n)], Path("x"), (1, 2), check=False)


def test_missing_qemu_gives_an_unavailable_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(es, "QEMU", "qemu-system-x86_64-not-installed")
    with pytest.raises(BenchUnavailable, match="not installed"):
        es.measure(quick=True)


def test_lcg_reference_values() -> None:
    assert es.lcg(0) == 0
    assert es.lcg(1) == 1442695040888963407
    assert es.lcg(2) == (1442695040888963407 * 6364136223846793005 + 1442695040888963407) % (1 << 64)


@pytest.mark.skipif(not HAVE_TOOLS, reason="needs GNU as and ld to build the cbench guest")
def test_the_emulator_run_prints_the_reference_result() -> None:
    """The kvmlite command the benchmark times really runs the loop (checked value, expected status)."""
    image = es.build_guest()
    seconds = es._timed(es.kvmlite_cmd(image, 50), 50, es.lcg(50))
    assert seconds > 0
    with pytest.raises(BenchFailed, match="wrong result"):
        es._timed(es.kvmlite_cmd(image, 50), 50, es.lcg(51))


@pytest.mark.skipif(
    not HAVE_TOOLS or shutil.which(es.QEMU) is None, reason="needs as, ld and qemu-system-x86_64"
)
def test_the_qemu_run_prints_the_same_result() -> None:
    image = es.build_guest()
    res = subprocess.run(es.qemu_cmd(image, 50), capture_output=True, text=True, timeout=60)
    assert res.returncode == es.EXPECTED_STATUS
    assert f"{es.RESULT_MARK}{es.lcg(50):x}" in res.stdout
