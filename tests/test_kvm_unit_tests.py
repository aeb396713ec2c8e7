"""Upstream kvm-unit-tests through scripts/kvm-unit-tests.sh and its own run_tests.sh, under kvmlite.

The suite is not part of this repository: the script fetches a pinned commit
from ``KUT_SRC`` (a git URL or a local repository) and builds it.  These tests
run only where ``KUT_SRC`` is set (building takes minutes and needs the
source), and then check that upstream's unchanged runner drives kvmlite
through ``kvmlite-qemu``: tests that need pc-testdev pass.  The table of every
x86 test under kvmlite and QEMU is docs/conformance.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import requires_kvm

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "kvm-unit-tests.sh"
KUT_SRC = os.environ.get("KUT_SRC", "")
BUILD_TIMEOUT_S = 1800
RUN_TIMEOUT_S = 900
#: Quick tests that need what kvmlite-qemu provides: pc-testdev (realmode), SMP, ACPI S3, the env initrd.
QUICK_TESTS = ("smptest", "realmode", "s3")

needs_source = pytest.mark.skipif(
    not KUT_SRC,
    reason="set KUT_SRC to kvm-unit-tests' git URL or a local copy to build and run upstream's suite",
)
needs_toolchain = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("git", "gcc", "make")),
    reason="building kvm-unit-tests needs git, gcc and make",
)


def script(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=full_env)


def test_script_usage_and_unreachable_source_are_status_2(tmp_path: Path) -> None:
    r = script()
    assert r.returncode == 2 and "usage" in r.stderr
    r = script("build", env={"KUT_SRC": str(tmp_path / "missing"), "KUT_DIR": str(tmp_path / "kut")})
    assert r.returncode == 2 and "cannot clone" in r.stderr


@needs_source
@needs_toolchain
@requires_kvm
def test_upstream_runner_drives_kvmlite_qemu(tmp_path_factory: pytest.TempPathFactory) -> None:
    kut_dir = os.environ.get("KUT_DIR") or str(tmp_path_factory.mktemp("kut") / "kvm-unit-tests")
    env = {"KUT_DIR": kut_dir}
    built = script("build", env=env, timeout=BUILD_TIMEOUT_S)
    assert built.returncode == 0, built.stderr
    r = script("run", "kvmlite", *QUICK_TESTS, env={**env, "TIMEOUT": "300s"}, timeout=RUN_TIMEOUT_S)
    summary = (Path(kut_dir) / "results" / "kvmlite" / "summary.txt").read_text()
    for test in QUICK_TESTS:
        assert f"PASS {test} " in summary + " ", summary
    assert r.returncode == 0, r.stdout
