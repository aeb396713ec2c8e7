"""KVM hypercalls: the probe, and the PV features kvmlite hides where the host never completes one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kvmlite.kvm.system import CpuidEntry
from kvmlite.vmm import hypercall as H
from tests.conftest import MULTIBOOT_HEADER, build_multiboot, requires_kvm

KVM_SIG = (0x4B4D564B, 0x564B4D56, 0x4D)  # "KVMKVMKVM\0\0\0" in EBX, ECX, EDX
ALL_PV = 0x0100_7EFB  # what this project's host supports in leaf 0x40000001 EAX
STATUS_FEATURES = 1  # (v << 1) | 1 for the value v the guest writes to port 0xf4
HUNG_AFTER_S = 10.0


def leaf(function: int, eax: int = 0, ebx: int = 0, ecx: int = 0, edx: int = 0) -> CpuidEntry:
    return CpuidEntry(function, 0, 0, eax, ebx, ecx, edx)


def test_only_the_hypercall_features_are_hidden() -> None:
    cpuid = [leaf(0, 0xD), leaf(0x4000_0000, 0x4000_0001, *KVM_SIG), leaf(0x4000_0001, ALL_PV)]
    out = H.without_hypercall_features(cpuid)
    assert out[:2] == cpuid[:2]
    eax = out[2].eax
    assert eax == ALL_PV & ~((1 << 7) | (1 << 11) | (1 << 13))
    assert eax & 1 << 3 and eax & 1 << 24, "kvmclock and its stable bit stay"


def test_a_leaf_0x40000001_of_another_hypervisor_is_left_alone() -> None:
    hyperv = leaf(0x4000_0000, 0x4000_0005, 0x7263694D, 0x666F736F, 0x76482074)  # "Microsoft Hv"
    cpuid = [hyperv, leaf(0x4000_0001, 0xFFFF_FFFF)]
    assert H.without_hypercall_features(cpuid) == cpuid
    assert H.without_hypercall_features([leaf(0, 0xD)]) == [leaf(0, 0xD)]


def _guest(tmp_path: Path, name: str, body: str) -> Path:
    return build_multiboot(
        tmp_path,
        name,
        f"{MULTIBOOT_HEADER}.text\n.globl _start\n_start:\n{body}\n  outb %al, $0xf4\n  cli\n  hlt\n",
    )


@requires_kvm
def test_the_guest_sees_the_pv_features_only_where_hypercalls_work(tmp_path: Path) -> None:
    """Bits 7, 11, 13 of leaf 0x40000001, packed into bits 0-2 of the exit status value."""
    from kvmlite.kvm import Kvm

    with Kvm() as kvm:
        works = H.host_completes_hypercalls(kvm.create_vm)
        supported = next(e.eax for e in kvm.supported_cpuid() if e.function == H.KVM_CPUID_FEATURES)
    body = """
  mov $0x40000001, %eax
  cpuid
  mov %eax, %ebx
  xor %eax, %eax
  bt $7, %ebx
  adc $0, %eax
  bt $11, %ebx
  jnc 1f
  or $2, %eax
1:bt $13, %ebx
  jnc 2f
  or $4, %eax
2:"""
    kernel = _guest(tmp_path, "pvfeatures", body)
    proc = subprocess.run(
        [sys.executable, "-m", "kvmlite", "run", "--kernel", str(kernel), "--serial", "none"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    offered = sum(1 << i for i, bit in enumerate((7, 11, 13)) if supported >> bit & 1)
    assert proc.returncode == ((offered if works else 0) << 1) | 1, proc.stderr


@requires_kvm
def test_the_probe_agrees_with_a_guest_that_makes_a_hypercall(tmp_path: Path) -> None:
    """A working host answers an unknown hypercall with -KVM_ENOSYS (-1000: AL = 0x18) and goes on."""
    from kvmlite.kvm import Kvm

    with Kvm() as kvm:
        works = H.host_completes_hypercalls(kvm.create_vm)
        amd = H._is_amd(kvm.supported_cpuid())
    insn = "vmmcall" if amd else "vmcall"
    kernel = _guest(tmp_path, "hypercall", f"  mov ${H.KVM_HC_UNKNOWN:#x}, %eax\n  {insn}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmlite", "run", "--kernel", str(kernel), "--serial", "none"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        status = proc.wait(timeout=HUNG_AFTER_S)
    except subprocess.TimeoutExpired:
        status = None
    finally:
        proc.kill()
        proc.wait()
    if works:
        assert status == (0x18 << 1) | 1
    else:  # this project's host: the vCPU stays on the hypercall for ever, without an exit
        assert status is None


@pytest.mark.parametrize("vendor", [b"AuthenticAMD", b"GenuineIntel"])
def test_the_probe_uses_the_vendors_hypercall_instruction(vendor: bytes) -> None:
    ebx, edx, ecx = (int.from_bytes(vendor[i : i + 4], "little") for i in (0, 4, 8))
    assert H._is_amd([leaf(0, 0xD, ebx, ecx, edx)]) == (vendor == b"AuthenticAMD")
