"""A Linux guest on a host that cannot run AVX at ring 0 gets the kernel's workaround (vmm.host_quirks),
and where ring 0 is emulated, the parameters that skip Linux's slowest boot-time checks."""

from __future__ import annotations

import logging
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmlite.loaders import bzimage
from kvmlite.tools.assets import LINUX_TEST_CMDLINE
from kvmlite.vmm import host_quirks
from kvmlite.vmm.host_quirks import LINUX_BOOT_SPEED, LINUX_CLEARCPUID, linux_cmdline
from kvmlite.vmm.machine import Machine, MachineConfig
from tests.conftest import requires_kvm
from tests.images import image_with_payload, make_bzimage, make_vmlinux

SPEED = " ".join(LINUX_BOOT_SPEED)
BLACKLISTED = "ftrace_check_for_weak_functions,ftrace_check_sync,trace_eval_init"


@pytest.fixture
def quirky_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """This project's hosts, as their probes answer: no AVX at ring 0, ring 0 emulated (~1 µs)."""
    monkeypatch.setattr(host_quirks, "host_faults_avx_at_cpl0", lambda new_vm: True)
    monkeypatch.setattr(host_quirks, "host_ring0_ns_per_instruction", lambda new_vm: 800)


@pytest.fixture
def slow_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ring 0 emulated, but AVX runs there."""
    monkeypatch.setattr(host_quirks, "host_faults_avx_at_cpl0", lambda new_vm: False)
    monkeypatch.setattr(host_quirks, "host_ring0_ns_per_instruction", lambda new_vm: 800)


@pytest.fixture
def linux(tmp_path: Path) -> Path:
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage())
    return path


def test_linux_gets_clearcpuid_and_the_speed_parameters_each_with_one_log_line_saying_why(
    quirky_host: None, linux: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="kvmlite.vmm.host_quirks"):
        written = linux_cmdline(linux, "console=ttyS0", new_vm=None)
    assert written == f"console=ttyS0 {LINUX_CLEARCPUID} cryptomgr.notests initcall_blacklist={BLACKLISTED}"
    avx, speed = (r.getMessage() for r in caplog.records)
    assert LINUX_CLEARCPUID in avx and "--host-workarounds off" in avx
    assert SPEED in speed and "800 ns per instruction" in speed and "boot-speed" in speed


def test_the_speed_parameters_do_not_need_the_avx_quirk(slow_host: None, linux: Path) -> None:
    assert linux_cmdline(linux, "console=ttyS0", new_vm=None) == f"console=ttyS0 {SPEED}"


def test_a_users_initcall_blacklist_is_extended_not_repeated(slow_host: None, linux: Path) -> None:
    cmdline = "initcall_blacklist=foo_init console=ttyS0"
    written = linux_cmdline(linux, cmdline, new_vm=None)
    assert written == f"initcall_blacklist=foo_init,{BLACKLISTED} console=ttyS0 cryptomgr.notests"
    listed_one = "console=ttyS0 initcall_blacklist=trace_eval_init,foo_init"
    written = linux_cmdline(linux, listed_one, new_vm=None)
    assert written.split() == [
        "console=ttyS0",
        "initcall_blacklist=trace_eval_init,foo_init,ftrace_check_for_weak_functions,ftrace_check_sync",
        "cryptomgr.notests",
    ]


def test_a_parameter_the_user_wrote_is_never_overridden(slow_host: None, linux: Path) -> None:
    """Here the user wants the crypto self-tests: `cryptomgr.notests=0` stays, no second one is added."""
    written = linux_cmdline(linux, "console=ttyS0 cryptomgr.notests=0", new_vm=None)
    assert written == f"console=ttyS0 cryptomgr.notests=0 initcall_blacklist={BLACKLISTED}"
    everything = f"console=ttyS0 {SPEED}"
    assert linux_cmdline(linux, everything, new_vm=None) == everything


def test_added_parameters_go_before_inits_arguments(quirky_host: None, linux: Path) -> None:
    written = linux_cmdline(linux, "console=ttyS0 -- initcall_blacklist=x single", new_vm=None)
    assert written == f"console=ttyS0 {LINUX_CLEARCPUID} {SPEED} -- initcall_blacklist=x single"


def test_a_command_line_with_its_own_clearcpuid_is_left_alone(quirky_host: None, linux: Path) -> None:
    written = linux_cmdline(linux, "console=ttyS0 clearcpuid=avx", new_vm=None)
    assert written == f"console=ttyS0 clearcpuid=avx {SPEED}"
    assert linux_cmdline(linux, LINUX_TEST_CMDLINE, new_vm=None) == LINUX_TEST_CMDLINE


def test_the_test_command_line_is_made_of_the_same_parameters() -> None:
    words = LINUX_TEST_CMDLINE.split()
    assert all(param in words for param in [*LINUX_BOOT_SPEED, LINUX_CLEARCPUID])
    assert sum(word.startswith("initcall_blacklist=") for word in words) == 1


def test_other_kernels_are_not_probed_or_changed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def probe(new_vm: object) -> bool:
        raise AssertionError("probed for a guest that is not Linux")

    monkeypatch.setattr(host_quirks, "host_faults_avx_at_cpl0", probe)
    monkeypatch.setattr(host_quirks, "host_ring0_ns_per_instruction", probe)
    other = tmp_path / "boot.bin"
    other.write_bytes(b"\x90" * 510 + b"\x55\xaa")
    assert linux_cmdline(other, "", new_vm=None) == ""


@pytest.mark.parametrize("ns", [0, 1, 20])  # 0: the probe failed; 1-20: KVM runs ring 0 on the CPU
def test_a_correct_host_leaves_the_command_line_alone(
    monkeypatch: pytest.MonkeyPatch, linux: Path, ns: int
) -> None:
    monkeypatch.setattr(host_quirks, "host_faults_avx_at_cpl0", lambda new_vm: False)
    monkeypatch.setattr(host_quirks, "host_ring0_ns_per_instruction", lambda new_vm: ns)
    assert linux_cmdline(linux, "console=ttyS0", new_vm=None) == "console=ttyS0"


@requires_kvm
@pytest.mark.parametrize("workarounds", ["auto", "off", "clearcpuid", "xstate,hypercalls", "boot-speed"])
def test_the_machine_boots_linux_with_the_workarounds_unless_told_not_to(
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
    added = {
        "auto": f" {LINUX_CLEARCPUID} {SPEED}",
        "clearcpuid": f" {LINUX_CLEARCPUID}",
        "boot-speed": f" {SPEED}",
    }.get(workarounds, "")
    assert written == f"console=ttyS0{added}"


@requires_kvm
def test_probe_runs_once_and_answers() -> None:
    from kvmlite.kvm import Kvm

    new_vm = Kvm().create_vm
    first = host_quirks.host_faults_avx_at_cpl0(new_vm)
    assert isinstance(first, bool)
    assert host_quirks.host_faults_avx_at_cpl0(new_vm) is first
    ns = host_quirks.host_ring0_ns_per_instruction(new_vm)
    assert isinstance(ns, int) and ns >= 0
    assert host_quirks.host_ring0_ns_per_instruction(new_vm) == ns


LINUX_BOOT = os.environ.get("KVMLITE_LINUX_BOOT") == "1"
INIT_RAN = "kvmlite-host-quirks: init ran"


@requires_kvm
@pytest.mark.skipif(not LINUX_BOOT, reason="slow Linux boot: set KVMLITE_LINUX_BOOT=1 to run it")
def test_linux_with_a_plain_console_command_line_reaches_init(tmp_path: Path) -> None:
    """Issue 14: Debian's bzImage (or KVMLITE_LINUX_KERNEL), gzip'd busybox initramfs, `console=ttyS0`.

    ``KVMLITE_CONSOLE_LOG=PATH`` writes the console there (to watch the boot) instead of ``tmp_path``;
    ``KVMLITE_PROFILE=PATH`` adds ``--profile PATH`` (raw addresses: the bzImage randomises its own).
    """
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
    if os.environ.get("KVMLITE_PROFILE"):
        cmd += ["--profile", os.environ["KVMLITE_PROFILE"]]
    log = Path(os.environ.get("KVMLITE_CONSOLE_LOG") or tmp_path / "console.log")
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


def _bzimage_around(vmlinux: bytes) -> bytes:
    """A bzImage whose payload (named by its header) is ``vmlinux``, xz-compressed as kernels build it."""
    xz = lzma.compress(vmlinux, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    return image_with_payload(xz, size_append=len(vmlinux))


def test_a_bzimage_boots_its_vmlinux_through_pvh_where_ring0_is_emulated(
    slow_host: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(_bzimage_around(make_vmlinux()))
    with caplog.at_level(logging.INFO, logger="kvmlite.vmm.host_quirks"):
        assert host_quirks.pvh_kernel_from_bzimage(kernel, new_vm=None) == make_vmlinux()
    (line,) = [r.getMessage() for r in caplog.records]
    assert "through its PVH entry" in line and "KASLR" in line and "without pvh-entry" in line


def test_a_bzimage_it_cannot_open_or_without_pvh_boots_as_it_is(
    slow_host: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    no_pvh, no_payload = tmp_path / "no-pvh", tmp_path / "no-payload"
    no_pvh.write_bytes(_bzimage_around(make_vmlinux(notes=b"")))
    no_payload.write_bytes(make_bzimage())
    with caplog.at_level(logging.INFO, logger="kvmlite.vmm.host_quirks"):
        assert host_quirks.pvh_kernel_from_bzimage(no_pvh, new_vm=None) is None
        assert host_quirks.pvh_kernel_from_bzimage(no_payload, new_vm=None) is None
    assert [r.levelname for r in caplog.records] == ["INFO", "INFO"]
    assert "no PVH entry" in caplog.records[0].getMessage()


def test_where_ring0_runs_on_the_cpu_the_bzimage_is_not_opened(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(host_quirks, "host_ring0_ns_per_instruction", lambda new_vm: 2)
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(_bzimage_around(make_vmlinux()))
    assert host_quirks.pvh_kernel_from_bzimage(kernel, new_vm=None) is None


@requires_kvm
@pytest.mark.parametrize(("workarounds", "entered"), [
    ("auto", "ELF64 PVH"), ("pvh-entry", "ELF64 PVH"),
    ("off", "bzImage"), ("clearcpuid,boot-speed", "bzImage"),
])  # fmt: skip
def test_the_machine_takes_the_pvh_entry_unless_told_not_to(
    quirky_host: None, tmp_path: Path, workarounds: str, entered: str
) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(_bzimage_around(make_vmlinux()))
    config = MachineConfig(
        kernel=kernel, cmdline="console=ttyS0", backend="kvm", memory_mib=64, host_workarounds=workarounds
    )
    machine = Machine(config)
    try:
        assert machine.load().format.startswith(entered)
    finally:
        machine.close()


@requires_kvm
def test_a_vmlinux_that_does_not_load_through_pvh_falls_back_to_the_bzimage(
    quirky_host: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(_bzimage_around(make_vmlinux(paddr=0x7000_0000)))  # past the guest's 64 MiB
    config = MachineConfig(kernel=kernel, backend="kvm", memory_mib=64)
    machine = Machine(config)
    try:
        with caplog.at_level(logging.WARNING, logger="kvmlite.vmm.machine"):
            assert machine.load().format.startswith("bzImage")
    finally:
        machine.close()
    assert any("does not load through PVH" in r.getMessage() for r in caplog.records)
