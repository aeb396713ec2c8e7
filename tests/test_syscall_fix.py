"""SYSCALL from ring 3 on hosts that leave it at CPL 3: kvmlite completes it (kvmlite.vmm.syscall_fix)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import KVM_OK, kvmlite_run, requires_kvm

#: Sets up what Linux has when init makes its first system call: its own GDT, TSS, IDT with a #PF gate,
#: EFER.SCE/STAR/LSTAR/SFMASK, page tables whose first 2 MiB (the kernel, LSTAR) are supervisor-only and
#: whose next 2 MiB hold the user code; then IRETQ to ring 3, which executes SYSCALL.  The entry code
#: checks what SYSCALL must have done and writes to isa-debug-exit: 1 (status 3) all right, 2 (status 5)
#: wrong registers or segments, 3 (status 7) the page-fault handler ran instead: the SYSCALL stayed at
#: CPL 3 and faulted on the supervisor-only entry code, as an unmodified Linux's init does on this
#: project's kvm-pvm hosts.  Before the SYSCALL the user code takes one ordinary page fault, which the
#: guest's handler must see and resume from: kvmlite's breakpoint on that handler must let it through.
GUEST = r"""/* SYSCALL from ring 3 into a supervisor-only LSTAR page, as Linux does it. */
    .text
    .globl _start
_start:
    mov $kstack_top, %rsp
    /* TSS descriptor base and RSP0 */
    lea tss(%rip), %rax
    mov %ax, gdt+0x2a
    shr $16, %rax
    mov %al, gdt+0x2c
    mov %ah, gdt+0x2f
    movq $kstack_top, tss+4
    lgdt gdtr
    mov $0x28, %ax
    ltr %ax
    /* IDT gate 14 -> pf_handler */
    lea pf_handler(%rip), %rax
    mov %ax, idt+14*16
    movw $0x08, idt+14*16+2
    movw $0x8e00, idt+14*16+4
    shr $16, %rax
    mov %ax, idt+14*16+6
    shr $16, %rax
    mov %eax, idt+14*16+8
    lidt idtr
    /* EFER.SCE, STAR, LSTAR, SFMASK */
    mov $0xc0000080, %ecx
    rdmsr
    or $1, %eax
    wrmsr
    mov $0xc0000081, %ecx
    xor %eax, %eax
    mov $0x00100008, %edx
    wrmsr
    mov $0xc0000082, %ecx
    lea syscall_entry(%rip), %rax
    xor %edx, %edx
    wrmsr
    mov $0xc0000084, %ecx
    mov $0x200, %eax
    wrmsr
    /* our own tables: the first 2 MiB supervisor-only, the second user */
    mov $pml4, %rax
    mov %rax, %cr3
    pushq $0x1b
    pushq $ustack_top
    pushq $0x2
    pushq $0x23
    pushq $user_entry
    iretq

syscall_entry:                      /* must run at CPL 0 with RCX, R11 as SYSCALL leaves them */
    cmp $0x1234, %eax
    jne bad
    cmpl $1, faults(%rip)           /* the user's page fault was handled once, by the guest */
    jne bad
    cmp $user_after, %rcx
    jne bad
    mov %cs, %eax
    cmp $0x08, %eax
    jne bad
    mov %ss, %eax
    cmp $0x10, %eax
    jne bad
    cmp $ustack_top, %rsp
    jne bad
    mov $1, %eax
    jmp done
bad:
    mov $2, %eax
    jmp done
pf_handler:
.ifdef SINGLE_STEP_FIRST
    push %rax                       /* kvmlite single-steps this one past its breakpoint */
    pop %rax
.else
    nop                             /* kvmlite steps over this one by hand, as over Linux's padding */
    cld
.endif
    mov %cr2, %rax
    cmp $0x600000, %rax
    jne pf_bad
    incl faults(%rip)
    movq $user_resume, 8(%rsp)      /* the frame: error code, RIP, CS, RFLAGS, RSP, SS */
    add $8, %rsp
    iretq
pf_bad:                             /* the SYSCALL stayed at CPL 3 and faulted on this page */
    mov $3, %eax
done:
    mov $0xf4, %dx
    out %eax, %dx
    cli
    hlt

    .data
    .align 16
gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08 kernel code */
    .quad 0x00cf92000000ffff        /* 0x10 kernel data */
    .quad 0x00cff2000000ffff        /* 0x18 user data */
    .quad 0x00affa000000ffff        /* 0x20 user code */
    .quad 0x0000890000000067        /* 0x28 TSS (base filled in) */
    .quad 0
gdt_end:
gdtr: .word gdt_end - gdt - 1
      .quad gdt
idtr: .word 16*16 - 1
      .quad idt
    .align 16
idt: .fill 32, 8, 0
tss: .fill 26, 4, 0
faults: .long 0
    .align 4096
pml4: .quad pdpt + 7
    .fill 511, 8, 0
pdpt: .quad pd + 7
    .fill 511, 8, 0
pd:   .quad 0x000083                /* 0-2 MiB: present, writable, 2 MiB, supervisor */
    .quad 0x200087                  /* 2-4 MiB: the same, user-accessible */
    .fill 510, 8, 0
    .fill 512, 8, 0
kstack_top:

    .section .user, "ax"
user_entry:
    mov 0x600000, %eax              /* not mapped: an ordinary page fault first */
user_resume:
    mov $0x1234, %eax
    syscall
user_after:
    ud2
    .align 4096
    .fill 1024, 1, 0
ustack_top:
"""
LINKER_SCRIPT = (
    "ENTRY(_start)\nSECTIONS { . = 0x100000; .text : { *(.text) } .data : { *(.data) } "
    ". = 0x200000; .user : { *(.user) } }\n"
)
STATUS_OK, STATUS_WRONG_STATE, STATUS_FAULTED = 3, 5, 7


@pytest.fixture(scope="module", params=["by-hand", "single-step"])
def guest(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("needs GNU as and ld to build the test guest")
    tmp = tmp_path_factory.mktemp("syscall")
    (tmp / "g.S").write_text(GUEST)
    (tmp / "g.ld").write_text(LINKER_SCRIPT)
    defsym = ["--defsym", "SINGLE_STEP_FIRST=1"] if request.param == "single-step" else []
    subprocess.run(
        ["as", "--64", *defsym, "-o", str(tmp / "g.o"), str(tmp / "g.S")], check=True, capture_output=True
    )
    subprocess.run(
        [
            "ld",
            "-m",
            "elf_x86_64",
            "-T",
            str(tmp / "g.ld"),
            "--no-warn-rwx-segments",
            "-o",
            str(tmp / "g.elf"),
            str(tmp / "g.o"),
        ],
        check=True,
        capture_output=True,
    )
    return tmp / "g.elf"


def run(kernel: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return kvmlite_run("--kernel", str(kernel), "--stats", *args)


BACKENDS = ["emu", pytest.param("kvm", marks=pytest.mark.skipif(not KVM_OK, reason="needs /dev/kvm"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_syscall_from_ring3_reaches_the_kernel_at_cpl0(guest: Path, backend: str) -> None:
    proc = run(guest, "--backend", backend)
    assert proc.returncode == STATUS_OK, proc.stderr


@requires_kvm
def test_the_repair_is_what_makes_it_work_where_the_host_drops_the_privilege_change(guest: Path) -> None:
    from kvmlite.kvm import Kvm
    from kvmlite.vmm.syscall_fix import STATS_LABEL, host_drops_syscall_privilege

    with Kvm() as kvm:
        quirky = host_drops_syscall_privilege(kvm.create_vm)
    unrepaired = run(guest, "--backend", "kvm", "--syscall-fix", "off")
    repaired = run(guest, "--backend", "kvm")
    if quirky:
        assert unrepaired.returncode == STATUS_FAULTED, unrepaired.stderr
        assert repaired.returncode == STATUS_OK, repaired.stderr
        assert f"{STATS_LABEL}" in repaired.stderr  # counted under "rescued by kvmlite"
    else:  # a correct host: nothing to repair, nothing attached
        assert unrepaired.returncode == STATUS_OK and repaired.returncode == STATUS_OK
        assert STATS_LABEL not in repaired.stderr


def test_bad_syscall_fix_value_is_a_clear_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kvmlite", "run", "--syscall-fix", "sometimes"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "Traceback" not in proc.stderr
