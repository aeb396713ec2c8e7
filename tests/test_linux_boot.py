"""Boot a real Linux to a busybox shell and talk to it (opt-in: slow on this project's hosts).

Run with::

    kvmlite fetch-assets                 # static busybox (and Debian's cloud kernel)
    kvmlite build-kernel                 # kvmlite's microVM kernel (about 10 minutes on 2 cores)
    KVMLITE_LINUX_BOOT=1 python3 -m pytest tests/test_linux_boot.py -v

Which kernel: ``KVMLITE_KERNEL=microvm`` (the default where it is built: the
kernel ``kvmlite build-kernel`` makes from ``kvmlite/tools/microvm.config``)
or ``KVMLITE_KERNEL=debian`` (Debian's cloud kernel from ``kvmlite
fetch-assets``; the default where no microVM kernel is built).

On a normal KVM host either takes seconds.  On this project's nested
development machines every ring-0 instruction of the guest is emulated by the
host (docs/platform-notes.md): with ``--cpus 2`` the microVM kernel reached its
shell in 874 s on a machine loaded by seven other test suites (one vCPU: 341 s),
Debian's in nine to sixteen minutes on a quieter one (PVH about 9, the two
paths side by side 14 and 16 on 2026-11-25) and not in 35 under that load
(docs/performance.md), so the default test command leaves them out
(``KVMLITE_LINUX_BOOT`` unset: skipped with that reason).
``KVMLITE_BOOT_TIMEOUT_S`` raises the time allowed.  There, kvmlite also
completes every SYSCALL the host leaves at CPL 3 (kvmlite.vmm.syscall_fix)
and emulates the instructions the host gives up on; without either the
kernel panics at init's first system call or stops at ``cmpxchg16b``.

Besides the shell's answers, the test reads the kernel's whole log (``dmesg``)
and fails on any ACPI error or warning: an OS that rejects kvmlite's tables
still boots, but halts where it should power off.
"""

from __future__ import annotations

import datetime
import logging
import re
import time
from pathlib import Path

import pytest

from kvmlite.vmm.machine import HOST_WORKAROUNDS
from tests.conftest import requires_kvm
from tests.linux_guests import (
    BOOT_TIMEOUT_S,
    COMMAND_TIMEOUT_S,
    ENABLED,
    KERNEL_CHOICE,
    PROMPT,
    Console,
    Linux,
    debian,
    microvm,
)

log = logging.getLogger(__name__)
ACPI_TROUBLE = re.compile(r"ACPI (BIOS )?(Error|Warning)")
pytestmark = [
    pytest.mark.skipif(not ENABLED, reason="slow Linux boot: set KVMLITE_LINUX_BOOT=1 to run it"),
]


@pytest.fixture(scope="module")
def linux(tmp_path_factory: pytest.TempPathFactory) -> Linux:
    from kvmlite.tools import assets, initramfs

    if KERNEL_CHOICE not in ("", "microvm", "debian"):
        pytest.fail(f"KVMLITE_KERNEL={KERNEL_CHOICE!r}: use microvm or debian")
    found, reason = assets.find_assets()
    if found is None:
        pytest.skip(f"no kernel and busybox ({reason}): run `kvmlite fetch-assets`")
    vmlinuz, busybox = found
    out = tmp_path_factory.mktemp("linux")
    initrd = out / "initrd.cpio"
    initrd.write_bytes(initramfs.build_initramfs(busybox, compress=False))
    if KERNEL_CHOICE != "debian":
        small = microvm(initrd)
        if isinstance(small, Linux):
            return small
        if KERNEL_CHOICE == "microvm":
            pytest.skip(small)
    return debian(vmlinuz, out, initrd)


@requires_kvm
@pytest.mark.parametrize("path", ["pvh", "bzimage"])
def test_linux_boots_to_a_shell_that_answers_and_powers_off(path: str, linux: Linux, tmp_path: Path) -> None:
    kernel = linux.pvh if path == "pvh" else linux.bzimage
    args = ["--kernel", str(kernel), "--initrd", str(linux.initrd), "--cmdline", linux.cmdline]
    if path == "bzimage":  # the bzImage's own decompressor and entry, where ring 0 is emulated too
        args += ["--host-workarounds", ",".join(w for w in HOST_WORKAROUNDS if w != "pvh-entry")]
    console = Console(tmp_path / "kvmlite.log", *args, "--memory", "128", "--cpus", "2")
    try:
        shell_answers(console, linux, cpus=2)
        today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
        # the kernel's rtc-cmos driver reads kvmlite's CMOS RTC (UTC), and set the clock from it at boot
        assert console.run("cat /sys/class/rtc/rtc0/date").split()[-1] == today
        assert console.run("date -u +%Y-%m-%d").split()[-1] == today
        # the whole kernel log, whatever the console's log level showed
        dmesg = console.run("dmesg")
        assert "ACPI: Interpreter enabled" in dmesg, dmesg[-3000:]
        trouble = [line for line in dmesg.splitlines() if ACPI_TROUBLE.search(line)]
        trouble += [
            line
            for line in console.transcript.decode(errors="replace").splitlines()
            if ACPI_TROUBLE.search(line)
        ]
        assert trouble == []
        # the ECAM window (MCFG) is reserved by a PNP0C02 device in the DSDT, so Linux takes it
        assert "reserved in ACPI motherboard resources" in dmesg, dmesg[-3000:]
        assert "not reserved in ACPI motherboard resources" not in dmesg
        assert "PCI MMCONFIG" in console.run("cat /proc/iomem")
        powers_off(console)
    finally:
        console.close()


def shell_answers(console: Console, linux: Linux, cpus: int) -> None:
    """Boot to the prompt, then ``uname -r`` and the CPU count."""
    console.expect(b"kvmlite-initramfs: ready", BOOT_TIMEOUT_S)
    console.expect(PROMPT, COMMAND_TIMEOUT_S)
    release = console.run("uname -r")
    assert re.search(linux.release, release.split()[-1]), release
    assert console.run("grep -c ^processor /proc/cpuinfo").split()[-1] == str(cpus)


def powers_off(console: Console) -> None:
    """``poweroff -f``: ACPI S5, kvmlite's status 0."""
    assert console.proc.stdin is not None
    console.proc.stdin.write(b"poweroff -f\n")
    console.proc.stdin.flush()
    assert console.proc.wait(timeout=COMMAND_TIMEOUT_S * 5) == 0
    assert "guest powered off (ACPI S5)" in console.log.read_text(errors="replace")


@pytest.mark.parametrize("cpus", [1, 2])
def test_linux_on_the_software_backend_reaches_a_shell_and_powers_off(
    cpus: int, linux: Linux, tmp_path: Path
) -> None:
    """No KVM at all: ``--backend emu``, whose userspace LAPICs and IOAPIC (kvmlite.vmm.apic) the
    kernel's APIC set-up, timers and (with two CPUs) INIT/SIPI and IPIs run on."""
    args = ["--kernel", str(linux.pvh), "--initrd", str(linux.initrd), "--cmdline", linux.cmdline]
    emu = ["--memory", "128", "--cpus", str(cpus), "--backend", "emu"]
    console = Console(tmp_path / "kvmlite.log", *args, *emu)
    try:
        started = time.monotonic()
        shell_answers(console, linux, cpus)
        took = time.monotonic() - started
        log.info("Linux %s on emu with %d vCPU(s): a shell in %.0f s", linux.name, cpus, took)
        # the MADT's IOAPIC is the one Linux routes through, and each CPU's LAPIC timer ticks
        assert console.run("dmesg | grep -c 'IOAPIC\\[0\\]: apic_id'").split()[-1] == "1"
        local_timer = console.run("grep LOC: /proc/interrupts").splitlines()[-1].split()  # after the echo
        assert local_timer[0] == "LOC:" and all(int(n) > 0 for n in local_timer[1 : cpus + 1]), local_timer
        powers_off(console)
    finally:
        console.close()


@requires_kvm
def test_system_powerdown_on_the_control_socket_powers_the_guest_off(linux: Linux, tmp_path: Path) -> None:
    """QEMU's ``system_powerdown``: the ACPI power button, which the initramfs' acpid answers.

    The button driver reports the press on an evdev device; busybox acpid (started
    by kvmlite's /init) runs its handler, which powers off through ACPI S5.
    """
    from kvmlite.control.client import execute
    from kvmlite.tools import assets, initramfs
    from kvmlite.tools.initramfs import POWER_BUTTON_MARKER

    initrd = linux.initrd
    if linux.name == "debian":  # the ACPI button and evdev are modules there: /init loads them first
        tree, reason = assets.find_modules()
        if tree is None:
            pytest.skip(reason)
        found, _ = assets.find_assets()
        assert found is not None
        initrd = tmp_path / "initrd-modules.cpio"
        archive = initramfs.build_initramfs(
            found[1], compress=False, module_names=["button", "evdev"], modules_dir=tree
        )
        initrd.write_bytes(archive)
    api = tmp_path / "api.sock"
    args = ["--kernel", str(linux.pvh), "--initrd", str(initrd), "--cmdline", linux.cmdline]
    console = Console(tmp_path / "kvmlite.log", *args, "--memory", "128", "--api", f"unix:{api}")
    try:
        console.expect(b"kvmlite-initramfs: ready", BOOT_TIMEOUT_S)
        console.expect(PROMPT, COMMAND_TIMEOUT_S)
        # acpid is running (as busybox: `pidof acpid` cannot name it), with the power button's evdev device
        assert console.run("ps | grep -c '[b]usybox acpid'").split()[-1] == "1"
        assert execute(str(api), "system_powerdown") == {"return": {}}
        console.expect(POWER_BUTTON_MARKER.encode(), COMMAND_TIMEOUT_S)
        assert console.proc.wait(timeout=COMMAND_TIMEOUT_S * 5) == 0
        assert "guest powered off (ACPI S5)" in console.log.read_text(errors="replace")
    finally:
        console.close()
