"""The suite-wide check of tests/conftest.py: a kvmlite subprocess that prints a Python traceback
fails the test that ran it, whether run through ``subprocess.run`` or ``Popen.communicate``."""

from __future__ import annotations

import subprocess
import sys

import pytest

CRASH = [sys.executable, "-c", "import kvmlite; raise RuntimeError('a bug')"]


def test_a_traceback_from_subprocess_run_fails_the_test() -> None:
    with pytest.raises(pytest.fail.Exception, match="kvmlite printed a Python traceback"):
        subprocess.run(CRASH, capture_output=True, text=True)


def test_a_traceback_from_popen_communicate_fails_the_test() -> None:
    proc = subprocess.Popen(CRASH, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with pytest.raises(pytest.fail.Exception, match="RuntimeError: a bug"):
        proc.communicate()


def test_one_sentence_on_stderr_passes() -> None:
    r = subprocess.run([sys.executable, "-m", "kvmlite", "run", "--memory", "1"], capture_output=True)
    assert r.returncode == 2 and b"--memory must be between" in r.stderr


def test_other_programs_are_not_checked() -> None:
    r = subprocess.run([sys.executable, "-c", "raise RuntimeError"], capture_output=True)
    assert b"Traceback" in r.stderr
