"""The suite-wide check of tests/conftest.py: a kvmlite subprocess that prints a Python traceback
fails the test that ran it, whether run through ``subprocess.run`` or ``Popen.communicate``, or with
its stderr sent to a file."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests import conftest

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


def test_a_traceback_written_to_a_stderr_file_fails_the_test(tmp_path: Path) -> None:
    with open(tmp_path / "err.txt", "w") as err:
        err.write("written before the process started\n")
        err.flush()
        subprocess.Popen(CRASH, stdout=subprocess.DEVNULL, stderr=err).wait()
    with pytest.raises(pytest.fail.Exception, match="RuntimeError: a bug"):
        conftest.check_redirected()


def test_a_traceback_in_a_deleted_temporary_file_is_seen_too() -> None:
    with tempfile.TemporaryFile() as err:
        subprocess.Popen(CRASH, stderr=err).wait()
    with pytest.raises(pytest.fail.Exception, match="RuntimeError: a bug"):
        conftest.check_redirected()


def test_a_clean_stderr_file_passes(tmp_path: Path) -> None:
    with open(tmp_path / "err.txt", "w") as err:
        cmd = [sys.executable, "-m", "kvmlite", "run", "--memory", "1"]
        assert subprocess.Popen(cmd, stderr=err).wait() == 2
    conftest.check_redirected()
    assert "--memory must be between" in (tmp_path / "err.txt").read_text()
