"""``kvmlite qemu`` / ``kvmlite-qemu``: QEMU's command line translated or refused; guests run through it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmlite.cli.qemu import QemuOptionError, drop_unsupported, main, parse_size_mib, split_opts, translate
from kvmlite.kvm.cpuid import CpuidEntry
from kvmlite.vmm.cpuid import FEATURES
from tests.conftest import KVM_OK, MULTIBOOT_HEADER, build_multiboot, requires_kvm
from tests.images import GUEST_LIB, GUEST_STATUS

QEMU = "qemu-system-x86_64"
TIMEOUT_S = 60
#: What kvm-unit-tests' x86/run passes (x86/run and scripts/arch-run.bash at the pinned commit).
KUT_COMMAND = (
    "--no-reboot -nodefaults -global kvm-pit.lost_tick_policy=discard -device pc-testdev "
    "-device isa-debug-exit,iobase=0xf4,iosize=0x4 -display none -serial stdio -machine accel=kvm "
    "-kernel x86/msr.flat -smp 1 -cpu max -initrd /tmp/env"
).split()


def opt(run_args: list[str], name: str) -> str:
    return run_args[run_args.index(name) + 1]


def test_kvm_unit_tests_command_line_maps_onto_kvmlite_run() -> None:
    tr = translate(KUT_COMMAND)
    assert tr.info is None and tr.warnings == []
    run = tr.run_args
    assert opt(run, "--kernel") == "x86/msr.flat"
    assert opt(run, "--initrd") == "/tmp/env"
    assert (opt(run, "--cpus"), opt(run, "--memory")) == ("1", "128")
    assert (opt(run, "--backend"), opt(run, "--serial"), opt(run, "--on-reset")) == ("kvm", "stdio", "exit")
    assert opt(run, "--device") == "pc-testdev"
    assert opt(translate([*KUT_COMMAND, "-device", "pci-testdev"]).run_args[-2:], "--device") == "pci-testdev"
    assert not any(a.startswith("--cpu-features") for a in run)


def test_defaults_follow_qemu_reboot_restarts_and_serial_goes_nowhere_without_a_console() -> None:
    run = translate(["-kernel", "k"]).run_args
    assert (opt(run, "--on-reset"), opt(run, "--serial")) == ("restart", "none")
    assert opt(run, "--backend") == "auto"
    assert opt(translate(["-kernel", "k", "-nographic"]).run_args, "--serial") == "stdio"


@pytest.mark.parametrize(
    ("args", "option", "value"),
    [
        (["-machine", "accel=tcg"], "--backend", "emu"),
        (["-M", "q35,accel=kvm"], "--backend", "kvm"),
        (["-accel", "tcg"], "--backend", "emu"),
        (["-enable-kvm"], "--backend", "kvm"),
        (["-machine", "pc,accel=kvm:tcg"], "--backend", "auto"),
        (["-machine", "microvm,kernel-irqchip=off"], "--irqchip", "userspace"),
        (["-machine", "kernel-irqchip=split"], "--irqchip", "split"),
        (["-m", "2G"], "--memory", "2048"),
        (["-m", "size=512M"], "--memory", "512"),
        (["-m", "4g"], "--memory", "4096"),
        (["-smp", "4"], "--cpus", "4"),
        (["-smp", "cpus=2,maxcpus=2"], "--cpus", "2"),
        (["-smp", "sockets=2,cores=2"], "--cpus", "4"),
        (["-append", "a b,c"], "--cmdline", "a b,c"),
        (["-serial", "file:/tmp/out"], "--serial", "file:/tmp/out"),
        (["-serial", "unix:/tmp/s,server=on,wait=off"], "--serial", "unix:/tmp/s"),
        (["-serial", "unix:/tmp/s,server,nowait"], "--serial", "unix:/tmp/s"),
        (["-serial", "null"], "--serial", "none"),
        (["-chardev", "file,id=c0,path=/tmp/f", "-serial", "chardev:c0"], "--serial", "file:/tmp/f"),
        (["-chardev", "socket,id=s,path=/tmp/x,server=on,wait=off", "-serial", "chardev:s"],
         "--serial", "unix:/tmp/x"),
        (["-sandbox", "on"], "--seccomp", "on"),
        (["-sandbox", "off"], "--seccomp", "off"),
        (["-chroot", "/srv/vm"], "--chroot", "/srv/vm"),
        (["-runas", "vm1"], "--runas", "vm1"),
    ],
)  # fmt: skip
def test_option_maps_to_run_argument(args: list[str], option: str, value: str) -> None:
    assert opt(translate(["-kernel", "k", *args]).run_args, option) == value


def test_cpu_features_take_qemu_names_and_a_model_is_a_warning() -> None:
    cpu = "qemu64,+x2apic,-tsc-deadline,pcid=on,invpcid=off,host-phys-bits"
    tr = translate(["-kernel", "k", "-cpu", cpu, "-accel", "tcg"])  # tcg: no host to drop features for
    assert "--cpu-features=+x2apic,-tsc_deadline_timer,+pcid,-invpcid" in tr.run_args
    assert tr.warnings and "qemu64" in tr.warnings[0] and "host's CPU" in tr.warnings[0]
    assert translate(["-kernel", "k", "-cpu", "host"]).warnings == []
    intel = translate(["-kernel", "k", "-cpu", "max,vendor=GenuineIntel"])
    assert "--cpu-features=vendor=GenuineIntel" in intel.run_args


def test_features_the_host_kvm_lacks_are_dropped_with_qemus_warning() -> None:
    supported = [CpuidEntry(1, 0, 0, 0, 0, 1 << FEATURES["x2apic"].bit, 0)]  # leaf 1: x2apic only
    warnings: list[str] = []
    kept = drop_unsupported(["+x2apic", "+pcid", "-fpu", "+svm", "vendor=AuthenticAMD"], warnings, supported)
    assert kept == ["+x2apic", "-fpu", "vendor=AuthenticAMD"]
    assert warnings == [
        "host doesn't support requested feature: pcid",
        "host doesn't support requested feature: svm",
    ]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["-hda", "disk.img"], "-hda"),
        (["disk.img"], "disk.img"),
        (["-device", "edu"], "-device edu"),
        (["-device", "isa-debug-exit"], "iobase=0x501"),
        (["-device", "isa-debug-exit,iobase=0x501,iosize=2"], "iobase=0x501"),
        (["-machine", "kernel-irqchip=maybe"], "kernel-irqchip=maybe"),
        (["-machine", "virt"], "-machine virt"),
        (["-machine", "pc,nvdimm=on"], "nvdimm=on"),
        (["-cpu", "max,+no-such-feature"], "no-such-feature"),
        (["-cpu", "Pentium9"], "Pentium9"),
        (["-cpu", "host,hv_passthrough"], "Hyper-V"),
        (["-cpu", "max,phys-bits=36"], "phys-bits=36"),
        (["-global", "kvm-pit.other=1"], "kvm-pit.other=1"),
        (["-mon", "chardev=m,mode=control"], "QMP"),
        (["-serial", "unix:/tmp/s"], "server=on"),
        (["-serial", "pty"], "pty"),
        (["-serial", "stdio", "-serial", "file:/tmp/2"], "one serial port"),
        (["-display", "gtk"], "-display gtk"),
        (["-m", "lots"], "lots"),
        (["-smp"], "-smp needs a value"),
        (["-initrd", "mod arg=1"], "module arguments"),
        (["-sandbox", "on,obsolete=deny"], "-sandbox on or -sandbox off"),
    ],
)
def test_refused_options_are_named_in_one_sentence(args: list[str], named: str) -> None:
    with pytest.raises(QemuOptionError, match=named.replace("+", r"\+").replace(".", r"\.")):
        translate(["-kernel", "k", *args])


def test_refusal_is_status_2_with_one_line_and_no_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-kernel", "k", "-hda", "disk.img"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kvmlite-qemu: -hda") and "Traceback" not in err


def test_missing_kernel_is_reported_as_qemu_does(capsys: pytest.CaptureFixture[str]) -> None:
    """kvm-unit-tests' runner probes with a kernel named _NO_FILE_4Uhere_ and greps QEMU's wording."""
    assert main(["-smp", "1", "-kernel", "_NO_FILE_4Uhere_"]) == 2
    assert "could not open kernel file '_NO_FILE_4Uhere_'" in capsys.readouterr().err


def test_help_and_device_list_answer_the_probes_of_kvm_unit_tests(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "QEMU" in capsys.readouterr().out
    for spelling in ("?", "help"):
        assert main(["-device", spelling]) == 0
        out = capsys.readouterr().out
        assert '"pc-testdev"' in out and '"isa-debug-exit"' in out and '"pci-testdev"' in out


def test_split_opts_and_sizes() -> None:
    assert split_opts("a,b=c,,d,") == ["a", "b=c,d", ""]
    assert parse_size_mib("-m", "1024k") == 1
    with pytest.raises(QemuOptionError):
        parse_size_mib("-m", "1k")


# --- guests run through the front end ------------------------------------------------------------

PC_TESTDEV_GUEST = (
    MULTIBOOT_HEADER
    + """
.text
.globl _start
_start:
    mov $stack_top, %esp
    mov $0x12345678, %eax
    out %eax, $0xe0          # scratch register
    xor %eax, %eax
    in $0xe2, %ax            # its upper half
    mov %eax, %edx
    mov $l_e2, %esi
    call line
    mov $0xab, %al
    out %al, $0xe9           # byte 1 through the byte-wise alias
    in $0xe0, %eax
    mov %eax, %edx
    mov $l_e0, %esi
    call line
    mov $0xe0, %dx           # string output: each byte lands on byte 0
    mov $l_str, %esi
    mov $3, %ecx
    rep outsb
    in $0xe0, %eax
    mov %eax, %edx
    mov $l_outs, %esi
    call line
    movl $0xcafef00d, 0xff000010    # iomem window
    movzwl 0xff000012, %edx
    mov $l_iomem, %esi
    call line
    jmp exit
line:                        # "<ESI>=<EDX in hex>\\n"
    call puts
    mov $'=', %al
    call putc
    call puthex
    mov $'\\n', %al
    jmp putc
l_e2: .asciz "in 0xe2"
l_e0: .asciz "in 0xe0"
l_outs: .asciz "after outsb"
l_iomem: .asciz "iomem"
l_str: .ascii "xyz"
"""
    + GUEST_LIB
    + """
.bss
.align 16
.space 4096
stack_top:
"""
)
PC_TESTDEV_OUTPUT = "in 0xe2=00001234\nin 0xe0=1234ab78\nafter outsb=1234ab7a\niomem=0000cafe\n"


@pytest.fixture(scope="module")
def testdev_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_multiboot(tmp_path_factory.mktemp("qemufe"), "testdev", PC_TESTDEV_GUEST)


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)


def _harness_args(kernel: Path, accel: str) -> list[str]:
    args = [*KUT_COMMAND[: KUT_COMMAND.index("-kernel")], "-kernel", str(kernel)]
    return [a.replace("accel=kvm", f"accel={accel}") for a in args]


@pytest.mark.parametrize("accel", [pytest.param("kvm", marks=requires_kvm), "tcg"])
def test_guest_uses_pc_testdev_through_the_front_end(accel: str, testdev_guest: Path) -> None:
    r = _run([sys.executable, "-m", "kvmlite", "qemu", *_harness_args(testdev_guest, accel)])
    assert (r.stdout, r.returncode, r.stderr) == (PC_TESTDEV_OUTPUT, GUEST_STATUS, "")


@pytest.mark.skipif(shutil.which(QEMU) is None, reason=f"{QEMU} is not installed")
def test_pc_testdev_guest_prints_the_same_under_qemu(testdev_guest: Path) -> None:
    q = _run([QEMU, *_harness_args(testdev_guest, "tcg")])
    assert (q.stdout, q.returncode) == (PC_TESTDEV_OUTPUT, GUEST_STATUS), q.stderr


def test_without_the_device_the_ports_are_unclaimed(testdev_guest: Path) -> None:
    args = _harness_args(testdev_guest, "kvm" if KVM_OK else "tcg")
    args.remove("pc-testdev")
    args.remove("-device")
    r = _run([sys.executable, "-m", "kvmlite.cli.qemu", *args])
    assert r.returncode == GUEST_STATUS
    assert r.stdout.splitlines()[0] == "in 0xe2=0000ffff"  # unclaimed ports read all ones
    assert "kvmlite-qemu: warning:" in r.stderr or r.stderr == ""
