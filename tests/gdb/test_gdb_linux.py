"""gdb on a Linux guest: a breakpoint in the kernel, a backtrace of kernel frames (opt-in: slow here).

Run with a vmlinux that has debug information and busybox: by default Debian's
(``kvmlite fetch-assets --debug-vmlinux`` keeps the -dbg package's vmlinux,
which matches the cached vmlinuz and boots through its PVH note);
``KVMLITE_GDB_VMLINUX`` names another (e.g. the microVM kernel's vmlinux from
``kvmlite build-kernel``)::

    kvmlite fetch-assets --debug-vmlinux
    KVMLITE_LINUX_BOOT=1 python3 -m pytest tests/gdb/test_gdb_linux.py

The guest boots without ``--gdb-wait``: gdb connects once the kernel prints
that it frees its init memory (it runs in long mode by then, so gdb gets the
x86-64 register layout), breaks at ``do_sys_openat2`` (the kernel opening
``/init``) and detaches; the guest goes on to its shell.  Then a
``dump-guest-memory`` core with paging is opened by ``gdb vmlinux CORE``,
which reads the kernel's ``linux_banner`` at its virtual address.  On this project's
hosts the boot takes minutes (docs/platform-notes.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kvmlite.tools.assets import LINUX_TEST_CMDLINE, find_debug_vmlinux
from tests.conftest import requires_kvm
from tests.gdb.support import GDB, free_port, run_gdb, running_vm, serial_text, wait_listening

VMLINUX = os.environ.get("KVMLITE_GDB_VMLINUX") or str(find_debug_vmlinux()[0] or "")
pytestmark = [
    requires_kvm,
    pytest.mark.skipif(GDB is None, reason="needs gdb"),
    pytest.mark.skipif(
        os.environ.get("KVMLITE_LINUX_BOOT") != "1", reason="slow Linux boot: KVMLITE_LINUX_BOOT=1"
    ),
    pytest.mark.skipif(
        not Path(VMLINUX).is_file(),
        reason=f"no vmlinux with debug info: {find_debug_vmlinux()[1]}, or set KVMLITE_GDB_VMLINUX",
    ),
]
BOOT_TIMEOUT_S = float(os.environ.get("KVMLITE_BOOT_TIMEOUT_S", "3600"))
#: The Linux tests' line (what makes Debian's kernel feasible here), with the console at KERN_INFO again
#: after its ``quiet``: the test waits for "Freeing unused kernel image", an info line.
CMDLINE = f"{LINUX_TEST_CMDLINE} loglevel=7"


def test_break_in_the_kernel_and_backtrace_kernel_frames(tmp_path: Path) -> None:
    from kvmlite.tools import assets, initramfs

    found, reason = assets.find_assets()
    if found is None:
        pytest.skip(f"no busybox ({reason}): run `kvmlite fetch-assets`")
    initrd = tmp_path / "initrd.cpio"
    initrd.write_bytes(initramfs.build_initramfs(found[1], compress=False))
    port = free_port()
    api, core = tmp_path / "api.sock", tmp_path / "linux.core"
    args = (
        "--backend",
        "kvm",
        "--memory",
        "256",
        "--initrd",
        str(initrd),
        "--gdb",
        f"127.0.0.1:{port}",
        "--api",
        f"unix:{api}",
    )
    with running_vm(Path(VMLINUX), tmp_path, *args, cmdline=CMDLINE) as (proc, serial):
        wait_listening(proc)
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while "Freeing unused kernel image" not in serial_text(serial):
            assert proc.poll() is None and time.monotonic() < deadline, serial_text(serial)[-2000:]
            time.sleep(1)
        commands = ("break do_sys_openat2", "continue", "bt", "detach")
        out = run_gdb(Path(VMLINUX), f"target remote :{port}", *commands, timeout=600)
        assert "Breakpoint 1, do_sys_openat2 (" in out, out
        assert '"/init"' in out  # the first file the kernel opens for its init
        assert "in do_syscall_64" in out or "do_syscall_64 (" in out  # kernel frames below it
        while "ready" not in serial_text(serial):  # detached: the guest runs on to its shell
            assert proc.poll() is None and time.monotonic() < deadline, serial_text(serial)[-2000:]
            time.sleep(1)
        from kvmlite.control.client import execute

        assert "return" in execute(str(api), "dump-guest-memory", {"file": str(core), "paging": True})
        assert "return" in execute(str(api), "quit")
        assert proc.wait(timeout=60) == 0
    banner = run_gdb(Path(VMLINUX), f"core-file {core}", "print linux_banner")
    assert '"Linux version ' in banner, banner
