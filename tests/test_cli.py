"""`kvmlite run` / `kvmlite info` end to end, through the real entry point."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvmlite.cli.main import main
from tests.conftest import requires_kvm
from tests.images import build_guest


def kvmlite(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvmlite", *args], capture_output=True, text=True, timeout=timeout
    )


@requires_kvm
def test_multiboot_guest_prints_its_cmdline_and_leaves_through_debug_exit(tmp_path):
    elf = build_guest(tmp_path, "exit")
    r = kvmlite("run", "--kernel", str(elf), "--cmdline", "console=ttyS0 x=1")
    assert r.stdout == f"hello from a multiboot guest: {elf} console=ttyS0 x=1\n"
    assert r.returncode == (0x21 << 1) | 1
    assert "Traceback" not in r.stderr
    # the unclaimed port was reported once, as a warning, and did not stop the guest
    assert r.stderr.count("claimed by no device") == 2


@requires_kvm
def test_hlt_with_interrupts_off_is_a_clean_stop(tmp_path):
    r = kvmlite("run", "--kernel", str(build_guest(tmp_path, "halt")))
    assert r.returncode == 0
    assert r.stdout.startswith("hello from a multiboot guest")


@requires_kvm
def test_triple_fault_stops_with_a_register_dump_not_a_traceback(tmp_path):
    r = kvmlite("run", "--kernel", str(build_guest(tmp_path, "triple")))
    assert r.returncode == 4
    # a normal host reports the triple fault; a nested host that emulates ring 0 (this project's) may
    # fail to emulate the faulting int3 first: either way the VM stops with a dump
    assert "triple fault" in r.stderr or "KVM internal error: EMULATION" in r.stderr
    assert "RIP=" in r.stderr and "CR0=" in r.stderr and "32-bit protected mode" in r.stderr
    assert "Traceback" not in r.stderr


@requires_kvm
def test_stats_count_exits_per_reason_and_port(tmp_path):
    r = kvmlite("run", "--stats", "--kernel", str(build_guest(tmp_path, "exit")))
    assert r.returncode == 0x43
    assert "IoOut" in r.stderr and "pio 0x3f8" in r.stderr and "pio 0xf4" in r.stderr
    assert "IoIn" in r.stderr and "pio 0x1234" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--memory", "0"], "must be positive"),
        (["run", "--memory", "lots"], "is not a number"),
        (["run", "--memory", "1"], "--memory must be between"),
        (["run", "--kernel", "/nonexistent/kernel"], "does not exist"),
        (["run", "--backend", "quantum"], "invalid choice"),
        (["run", "--host-workarounds", "xstate,warp"], "list of clearcpuid, xstate, hypercalls"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_give_one_sentence_and_status_2(args, message):
    r = kvmlite(*args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


@requires_kvm
def test_malformed_kernel_gives_status_2(tmp_path):
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"\x7fELF\x01\x01\x01" + bytes(9) + b"\x02\x00\x03\x00" + bytes(30))
    r = kvmlite("run", "--kernel", str(bad))
    assert r.returncode == 2
    assert r.stderr.startswith("kvmlite: ") and "Traceback" not in r.stderr


@requires_kvm
def test_info_lists_api_version_and_capabilities():
    r = kvmlite("info")
    assert r.returncode == 0
    assert "API version" in r.stdout and "12" in r.stdout
    assert "KVM_CAP_IRQCHIP" in r.stdout and "KVM_CAP_USER_MEMORY" in r.stdout


def test_unknown_cpu_feature_is_a_clear_error():
    r = kvmlite("run", "--cpu-features", "-warpdrive")
    assert r.returncode == 2 and "unknown feature 'warpdrive'" in r.stderr and "Traceback" not in r.stderr


@requires_kvm
def test_hidden_cpu_feature_is_hidden_from_the_guest(tmp_path):
    from kvmlite.kvm import Kvm
    from kvmlite.vmm.cpuid import FEATURES
    from kvmlite.vmm.machine import Machine, MachineConfig

    with Kvm() as kvm:
        sse42 = FEATURES["sse4_2"]
        leaf1 = next(e for e in kvm.supported_cpuid() if e.function == 1)
        if not leaf1.ecx >> sse42.bit & 1:
            pytest.skip("the host does not offer SSE4.2")
    machine = Machine(MachineConfig(kernel=build_guest(tmp_path, "exit"), cpu_features="-sse4_2,-avx"))
    machine.load()
    machine.create_vcpus(1)
    cpuid = {(e.function, e.index): e for e in machine.loops[0].vcpu.get_cpuid()}
    assert not cpuid[(1, 0)].ecx >> sse42.bit & 1
    assert not cpuid[(1, 0)].ecx >> FEATURES["avx"].bit & 1
    machine.close()


def test_no_usable_dev_kvm_is_status_6_which_no_debug_exit_value_gives(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvmlite.errors import KvmUnavailableError
    from kvmlite.kvm.system import Kvm
    from kvmlite.status import ExitStatus

    def unusable(self: Kvm, path: str = "/dev/kvm") -> None:
        raise KvmUnavailableError("cannot open /dev/kvm: No such file or directory")

    monkeypatch.setattr(Kvm, "__init__", unusable)
    assert main(["run", "--backend", "kvm"]) == ExitStatus.NO_BACKEND == 6
    assert "cannot open /dev/kvm" in capsys.readouterr().err
    statuses = [int(s) for s in ExitStatus]
    assert all(s % 2 == 0 for s in statuses if s < ExitStatus.SIGNALED)  # a guest's (v << 1) | 1 is odd
