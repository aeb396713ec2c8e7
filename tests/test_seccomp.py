"""seccomp (issue 17): each kvmlite thread runs under its role's allow-list; a forbidden call is caught.

Filters are per process and permanent, so every test that loads one does it in
a subprocess: a small script, or ``kvmlite run`` itself with a device patched
to make a forbidden call from the vCPU thread that runs it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kvmlite.vmm import seccomp, seccomp_lists
from kvmlite.vmm.seccomp import STATUS_SECCOMP
from tests.conftest import requires_kvm

HAVE_SECCOMP, WHY_NOT = seccomp.available()
requires_seccomp = pytest.mark.skipif(not HAVE_SECCOMP, reason=f"needs libseccomp: {WHY_NOT}")
REPO = Path(__file__).resolve().parent.parent


def _script(body: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``body`` in a fresh kvmlite-importing Python (its name says kvmlite: the traceback check applies)."""
    code = "import os, socket, sys, threading\nfrom kvmlite.vmm import seccomp\n" + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code, "kvmlite-seccomp-test"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


FORBIDDEN_IN_VCPU = """
def bad():
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
        print("socket made")
    except OSError as err:
        print(f"refused: {err.errno}")
t = seccomp.thread("vcpu", bad, "vcpu0")
t.start()
t.join()
print("still running")
"""


@requires_seccomp
def test_a_vcpu_threads_forbidden_call_stops_kvmlite_with_one_sentence() -> None:
    r = _script("seccomp.enable('on')\n" + FORBIDDEN_IN_VCPU)
    assert r.returncode == STATUS_SECCOMP == 159, r
    assert r.stdout == ""  # the call never returned
    assert r.stderr == (
        "kvmlite: seccomp: thread vcpu0 (vcpu allow-list) made the forbidden system call socket (41); "
        "kvmlite stops (status 159)\n"
    )


@requires_seccomp
def test_log_mode_names_the_call_once_and_lets_it_fail_with_enosys() -> None:
    r = _script("seccomp.enable('log')\n" + FORBIDDEN_IN_VCPU)
    assert r.returncode == 0, r
    assert r.stdout == "refused: 38\nstill running\n"
    assert r.stderr.count("made the system call socket (41), which the list lacks") == 1


@requires_seccomp
def test_log_mode_logs_each_call_once_per_role() -> None:
    body = """
    seccomp.enable('log')
    def bad():
        for _ in range(3):
            try:
                os.getppid()
            except OSError:
                pass
    for i in range(2):
        t = seccomp.thread("timers", bad, f"timers{i}")
        t.start()
        t.join()
    """
    r = _script(body)
    assert r.returncode == 0, r
    assert r.stderr.count("(timers allow-list) made the system call getppid") == 1


@requires_seccomp
def test_the_terminal_ioctl_that_types_into_the_shell_is_forbidden_even_where_ioctl_is_allowed() -> None:
    body = """
    import fcntl, termios
    seccomp.enable('on')
    def typing():
        try:
            fcntl.ioctl(0, termios.TIOCSTI, b"x")
        except OSError as err:
            print("refused", err.errno)  # not a terminal: refused by the kernel, had it been allowed
    t = seccomp.thread("vcpu", typing, "vcpu0")
    t.start()
    t.join()
    """
    r = _script(body)
    assert r.returncode == STATUS_SECCOMP, r
    assert "forbidden system call ioctl (16)" in r.stderr


@requires_seccomp
def test_the_main_threads_list_has_no_exec_and_its_threads_inherit_it() -> None:
    body = """
    seccomp.enable('on')
    seccomp.confine("main")
    seccomp.confine("main")  # once per thread and role: a restart does not stack filters
    def child():
        os.execv("/bin/true", ["true"])
    t = threading.Thread(target=child, name="helper")
    t.start()
    t.join()
    """
    r = _script(body)
    assert r.returncode == STATUS_SECCOMP, r
    assert "thread helper (its creator's allow-list) made the forbidden system call execve (59)" in r.stderr


def test_every_list_names_real_system_calls_and_gives_a_reason_per_group() -> None:
    assert set(seccomp_lists.ROLE_GROUPS) == set(seccomp_lists.ROLES)
    for group in seccomp_lists.GROUPS.values():
        assert len(group.reason) > 20 and group.rules
    if HAVE_SECCOMP:
        lib = seccomp._libseccomp()
        for role in seccomp_lists.ROLES:
            assert seccomp.compile_filter(lib, role)  # an unknown name would raise


def test_an_unknown_mode_is_one_sentence_and_status_2() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "kvmlite", "run", "--seccomp", "maybe"], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "--seccomp: invalid choice: 'maybe'" in r.stderr


@requires_seccomp
@requires_kvm
@pytest.mark.parametrize("mode", ["on", "log"])
def test_kvmlite_run_stops_a_vcpu_thread_that_makes_a_forbidden_call(mode: str) -> None:
    """The real path: ``kvmlite run`` with COM1 patched to open a netlink socket at the guest's first byte."""
    body = f"""
    from kvmlite.cli.main import main
    from kvmlite.devices.serial import Serial16550
    write = Serial16550.write
    def hostile_write(self, offset, size, value):
        try:
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()
        except OSError as err:
            print(f"refused: {{err.errno}}", file=sys.stderr)
        Serial16550.write = write
        return write(self, offset, size, value)
    Serial16550.write = hostile_write
    sys.exit(main(["run", "--serial", "none", "--backend", "kvm", "--seccomp", "{mode}"]))
    """
    r = _script(body, timeout=120)
    if mode == "on":
        assert r.returncode == STATUS_SECCOMP, r
        assert "thread vcpu0 (vcpu allow-list) made the forbidden system call socket (41)" in r.stderr
    else:
        assert r.returncode == 0, r  # the demo guest goes on and passes its checks
        assert "thread vcpu0 (vcpu allow-list) made the system call socket (41)" in r.stderr
        assert "refused: 38" in r.stderr


@requires_kvm
def test_the_demo_guest_passes_with_every_thread_confined() -> None:
    cmd = [sys.executable, "-m", "kvmlite", "run", "--seccomp", "on"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if not HAVE_SECCOMP:
        assert r.returncode == 2 and "libseccomp" in r.stderr
        return
    assert r.returncode == 0, r.stderr
    assert "demo: all checks passed" in r.stdout
