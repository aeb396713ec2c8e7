"""The binding's layering and typed exits, without /dev/kvm."""

from __future__ import annotations

import subprocess
import sys

from kvmlite.kvm import exits as E


def test_system_event_kind_is_the_enum():
    assert E.SystemEventExit(2, ()).kind is E.SystemEvent.RESET
    assert E.SystemEventExit(1, (0,)).kind is E.SystemEvent.SHUTDOWN
    assert E.SystemEventExit(99, ()).kind is None
    assert E.SystemEventExit(99, ()).describe() == "system event 99"


def test_kvm_strata_import_one_way():
    """vcpu.py needs neither vm.py nor system.py, vm.py not system.py: no import circle."""
    probe = (
        "import sys, kvmlite.kvm.vcpu as _v\n"
        "assert 'kvmlite.kvm.vm' not in sys.modules and 'kvmlite.kvm.system' not in sys.modules\n"
        "import kvmlite.kvm.vm as _m\n"
        "assert 'kvmlite.kvm.system' not in sys.modules\n"
    )
    # kvmlite/kvm/__init__.py imports all three; load the submodules without running it first.
    code = (
        "import sys, types, pathlib, kvmlite\n"
        "pkg = types.ModuleType('kvmlite.kvm')\n"
        "pkg.__path__ = [str(pathlib.Path(kvmlite.__file__).parent / 'kvm')]\n"
        "sys.modules['kvmlite.kvm'] = pkg\n" + probe
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
