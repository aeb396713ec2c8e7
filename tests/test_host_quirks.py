"""A Linux guest on a host that cannot run AVX at ring 0 gets the kernel's workaround (vmm.host_quirks)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmlite.loaders import bzimage
from kvmlite.tools.assets import LINUX_TEST_CMDLINE
from kvmlite.vmm import host_quirks
from kvmlite.vmm.host_quirks import LINUX_CLEARCPUID, linux_cmdline
from kvmlite.vmm.machine import Machine, MachineConfig
from tests.conftest import requires_kvm
from tests.images import make_bzimage


@pytest.fixture
def quirky_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_quirks, "host_faults_avx_at_cpl0", lambda new_vm: True)


@pytest.fixture
def linux(tmp_path: Path) -> Path:
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage())
    return path


def test_linux_gets_clearcpuid_with_one_log_line_saying_why(
    quirky_host: None, linux: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="kvmlite.vmm.host_quirks"):
        assert linux_cmdline(linux, "console=ttyS0", new_vm=None) == f"console=ttyS0 {LINUX_CLEARCPUID}"
    (record,) = caplog.records
    assert LINUX_CLEARCPUID in record.getMessage() and "--host-workarounds off" in record.getMessage()


def test_a_command_line_with_its_own_clearcpuid_is_left_alone(quirky_host: None, linux: Path) -> None:
    assert linux_cmdline(linux, "console=ttyS0 clearcpuid=avx", new_vm=None) == "console=ttyS0 clearcpuid=avx"
    assert linux_cmdline(linux, LINUX_TEST_CMDLINE, new_vm=None) == LINUX_TEST_CMDLINE


def test_other_kernels_are_not_probed_or_changed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def probe(new_vm: object) -> bool:
        raise AssertionError("probed for a guest that is not Linux")

    monkeypatch.setattr(host_quirks, "host_faults_avx_at_cpl0", probe)
    other = tmp_path / "boot.bin"
    other.write_bytes(b"\x90" * 510 + b"\x55\xaa")
    assert linux_cmdline(other, "", new_vm=None) == ""


def test_a_correct_host_leaves_the_command_line_alone(monkeypatch: pytest.MonkeyPatch, linux: Path) -> None:
    monkeypatch.setattr(host_quirks, "host_faults_avx_at_cpl0", lambda new_vm: False)
    assert linux_cmdline(linux, "console=ttyS0", new_vm=None) == "console=ttyS0"


@requires_kvm
@pytest.mark.parametrize("workarounds", ["auto", "off", "clearcpuid", "xstate,hypercalls"])
def test_the_machine_boots_linux_with_the_workaround_unless_told_not_to(
    quirky_host: None, linux: Path, workarounds: str
) -> None:
    config = MachineConfig(
        kernel=linux, cmdline="console=ttyS0", backend="kvm", memory_mib=64, host_workarounds=workarounds
    )
    machine = Machine(config)
    try:
        machine.load()
        written = machine.memory.read_cstr(bzimage.CMDLINE_ADDR).decode()
    finally:
        machine.close()
    wanted = workarounds in ("auto", "clearcpuid")
    assert written == (f"console=ttyS0 {LINUX_CLEARCPUID}" if wanted else "console=ttyS0")


@requires_kvm
def test_probe_runs_once_and_answers() -> None:
    from kvmlite.kvm import Kvm

    new_vm = Kvm().create_vm
    first = host_quirks.host_faults_avx_at_cpl0(new_vm)
    assert isinstance(first, bool)
    assert host_quirks.host_faults_avx_at_cpl0(new_vm) is first


LINUX_BOOT = os.environ.get("KVMLITE_LINUX_BOOT") == "1"
INIT_RAN = "kvmlite-host-quirks: init ran"


@requires_kvm
@pytest.mark.skipif(not LINUX_BOOT, reason="slow Linux boot: set KVMLITE_LINUX_BOOT=1 to run it")
def test_linux_with_a_plain_console_command_line_reaches_init(tmp_path: Path) -> None:
    """Issue 14: Debian's bzImage (or KVMLITE_LINUX_KERNEL), gzip'd busybox initramfs, `console=ttyS0`."""
    from kvmlite.tools import assets, initramfs

    found, reason = assets.find_assets()
    if found is None:
        pytest.skip(f"no kernel and busybox ({reason}): run `kvmlite fetch-assets`")
    vmlinuz, busybox = found
    kernel = Path(os.environ.get("KVMLITE_LINUX_KERNEL") or vmlinuz)
    init = tmp_path / "init"
    init.write_text(f"#!/bin/sh\necho '{INIT_RAN}'\n/bin/busybox poweroff -f\n")
    initrd = tmp_path / "initrd.gz"
    initrd.write_bytes(initramfs.build_initramfs(busybox, init=init, compress=True))
    cmd = [sys.executable, "-m", "kvmlite", "run", "--kernel", str(kernel), "--initrd", str(initrd)]
    log = tmp_path / "console.log"
    with log.open("w") as out:
        subprocess.run(
            [*cmd, "--cmdline", "console=ttyS0", "--cpus", "2", "--memory", "256"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=float(os.environ.get("KVMLITE_BOOT_TIMEOUT_S", "3600")),
            check=False,
        )
    text = log.read_text(errors="replace")
    assert INIT_RAN in text, text[-3000:]
    if "cannot run AVX instructions at ring 0" in text:  # this host: the one line saying what was added
        assert LINUX_CLEARCPUID in text
