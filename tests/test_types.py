"""The type hints are checked, not only written: ``mypy`` passes with pyproject.toml's configuration
(strict on the binding, guest memory and the devices).  The same check is in scripts/test.sh; it is
here too so that the suite a change is landed with catches a type error."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


NO_MYPY = importlib.util.find_spec("mypy") is None


@pytest.mark.skipif(NO_MYPY, reason="mypy is not installed (pip install -e '.[test]')")
def test_mypy_passes_on_the_configured_packages() -> None:
    cmd = [sys.executable, "-m", "mypy"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
